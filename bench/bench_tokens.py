"""What the word tokens learned: CRA's words against the synthetic generator's glosses (issue 6's benchmark).

    python bench/bench_tokens.py --ckpt out/ft --split dev

For every video of the split: VQ-Sign's characters (one per clip) -> runs -> CRA's repeat pre-processing (s0) ->
longest-match words. Each word occurrence covers a span of clips; its label is the gloss at the centre frame of that
span. Reported: purity and NMI of word ids vs those gloss labels (vq.token_alignment), the same for characters vs
glosses and characters vs primitives, words per gloss, and how often a word's span stays inside one gloss.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cra  # noqa: E402
import data  # noqa: E402
import synthetic  # noqa: E402
import train  # noqa: E402
from vq import token_alignment  # noqa: E402


def label_at(segments, frame):
    for name, start, end in segments:
        if start <= frame < end:
            return name
    return None


def word_spans(chars, tokens):
    """chars: one VQ code per clip -> [(word id, first clip, last clip)], following cra.preprocess exactly."""
    alpha, M = cra.repeat_alpha(chars), tokens.n_chars
    seq, span, t = [], [], 0
    for c, n in cra.runs(chars):
        seq.append(c)
        span.append((t, t + n - 1))
        if alpha is not None and n > alpha:
            seq.append(M)  # s0 covers the same clips as the run it slows down
            span.append((t, t + n - 1))
        t += n
    assert seq == cra.preprocess(chars, M)
    out, i = [], 0
    for w in cra.longest_match(seq, tokens.trie):
        j = i + len(tokens.vocab[w])
        out.append((w, span[i][0], span[j - 1][1]))
        i = j
    return out


def token_figures(model, data_cfg, split):
    """The figures of this benchmark for one split, as a dict (bench/report.py puts them in its table)."""
    gt = synthetic.read_ground_truth(data_cfg.root)["videos"]
    ds = data.SignDataset(data.load_split(data_cfg.root, split), data_cfg, train=False)
    words, word_gloss, chars, char_gloss, char_prim = [], [], [], [], []
    inside, n_glosses = 0, 0
    model.eval()
    for i in range(len(ds)):
        batch = data.collate([ds[i]])
        with torch.no_grad():
            codes = model.vq.encode(batch)[2][0].tolist()  # one video: no padding
        v = gt[batch["name"][0]]
        centre = lambda a, b: data.CLIP_STRIDE * (a + b) // 2 + data.CLIP_LEN // 2  # noqa: E731  frame at a span's centre
        for t, c in enumerate(codes):
            chars.append(c)
            char_gloss.append(str(label_at(v["glosses"], centre(t, t))))
            char_prim.append(str(label_at(v["primitives"], centre(t, t))))
        for w, a, b in word_spans(codes, model.cra):
            words.append(w)
            word_gloss.append(str(label_at(v["glosses"], centre(a, b))))
            first = label_at(v["glosses"], data.CLIP_STRIDE * a + data.CLIP_LEN // 2)
            last = label_at(v["glosses"], data.CLIP_STRIDE * b + data.CLIP_LEN // 2)
            inside += first == last
        n_glosses += len(v["glosses"])
    ids = lambda xs: torch.tensor([hash(x) % (1 << 61) if isinstance(x, str) else x for x in xs])  # noqa: E731
    M, vocab = model.cra.n_chars, model.cra.vocab
    f = dict(videos=len(ds), clips=len(chars), word_tokens=len(words), glosses=n_glosses,
             vocab_words=len(vocab) - M - 1, vocab_chars=M + 1, lexicon=len(synthetic.GLOSSES),
             multi_char=sum(len(vocab[x]) > 1 for x in words) / len(words), inside=inside / len(words))
    f["word_purity"], f["word_nmi"] = token_alignment(torch.tensor(words), ids(word_gloss))
    f["char_gloss_purity"], f["char_gloss_nmi"] = token_alignment(torch.tensor(chars), ids(char_gloss))
    f["char_purity"], f["char_nmi"] = token_alignment(torch.tensor(chars), ids(char_prim))
    return f


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="out/ft")
    p.add_argument("--split", default="dev")
    args = p.parse_args()
    model, cfg = train.load_model(args.ckpt)
    f = token_figures(model, cfg.data, args.split)
    print(f"{args.split}: {f['videos']} videos, {f['clips']} clips, {f['word_tokens']} word tokens for {f['glosses']} "
          f"glosses ({f['word_tokens'] / f['glosses']:.2f} words per gloss); vocabulary {f['vocab_words']} words + "
          f"{f['vocab_chars']} characters, {f['multi_char']:.2%} of word tokens are multi-character")
    print(f"words vs glosses:          purity {f['word_purity']:.3f}  NMI {f['word_nmi']:.3f}")
    print(f"characters vs glosses:     purity {f['char_gloss_purity']:.3f}  NMI {f['char_gloss_nmi']:.3f}")
    print(f"characters vs primitives:  purity {f['char_purity']:.3f}  NMI {f['char_nmi']:.3f}")
    print(f"word spans inside one gloss (first and last clip centre in the same gloss): {f['inside']:.2%}")
    print(f"true lexicon: {f['lexicon']} glosses; chosen codebook size: {f['vocab_words'] + f['vocab_chars']} tokens")


if __name__ == "__main__":
    main()
