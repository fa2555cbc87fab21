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
    for w in cra.segment(seq, tokens.vocab):
        j = i + len(tokens.vocab[w])
        out.append((w, span[i][0], span[j - 1][1]))
        i = j
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="out/ft")
    p.add_argument("--split", default="dev")
    args = p.parse_args()
    model, cfg = train.load_signllm(args.ckpt)
    gt = data.read_ground_truth(cfg.data.root)["videos"]
    ds = data.SignDataset(data.load_split(cfg.data.root, args.split), cfg.data, train=False)
    words, word_gloss, chars, char_gloss, char_prim = [], [], [], [], []
    inside, n_words, n_glosses = 0, 0, 0
    for i in range(len(ds)):
        batch = data.collate([ds[i]])
        codes = model.vq.tokenize_batch(batch["frames"], batch["clip_mask"])[0]
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
        n_words += len(word_spans(codes, model.cra))
        n_glosses += len(v["glosses"])
    ids = lambda xs: torch.tensor([hash(x) % (1 << 61) if isinstance(x, str) else x for x in xs])  # noqa: E731
    pw, nw = token_alignment(torch.tensor(words), ids(word_gloss))
    pc, nc = token_alignment(torch.tensor(chars), ids(char_gloss))
    pp, np_ = token_alignment(torch.tensor(chars), ids(char_prim))
    M, vocab = model.cra.n_chars, model.cra.vocab
    print(f"{args.split}: {len(ds)} videos, {len(chars)} clips, {n_words} word tokens for {n_glosses} glosses "
          f"({n_words / n_glosses:.2f} words per gloss); vocabulary {len(vocab) - M - 1} words + {M + 1} characters, "
          f"{sum(len(w) > 1 for w in (vocab[x] for x in words)) / len(words):.2%} of word tokens are multi-character")
    print(f"words vs glosses:          purity {pw:.3f}  NMI {nw:.3f}")
    print(f"characters vs glosses:     purity {pc:.3f}  NMI {nc:.3f}")
    print(f"characters vs primitives:  purity {pp:.3f}  NMI {np_:.3f}")
    print(f"word spans inside one gloss (first and last clip centre in the same gloss): {inside / len(words):.2%}")
    print(f"true lexicon: {len(data.GLOSSES)} glosses; chosen codebook size: {len(vocab)} tokens")


if __name__ == "__main__":
    main()
