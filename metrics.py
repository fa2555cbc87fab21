"""Translation metrics of Sec. 4.1 ("Evaluation Metrics"): BLEU-1..4 [47] and ROUGE-L [38], on sacrebleu's 0-100 scale.

`bleu`: corpus BLEU-n, equal to sacrebleu's `BLEU(max_ngram_order=n, tokenize=...)` with one reference per hypothesis;
`rouge_l`: mean sentence ROUGE-L F1 (rouge-score's "rougeL"); `score_all`: both, tokenized by language (Chinese per
character). Hypotheses are scored as given: nothing is lowercased or detokenized.

    python metrics.py hyps.txt refs.txt --lang de     # one sentence per line
"""
import argparse
import json
import math
import re
from collections import Counter
from pathlib import Path


# ----------------------------------------------------------------------------------------------------------------------
# tokenizers: "13a" (mteval-v13a.pl, sacrebleu's default), "zh" (sacrebleu's Chinese tokenizer), "none" (whitespace)

# mteval-v13a's "language-dependent part (assuming Western languages)": four substitutions, applied in this order
_WESTERN = ((re.compile(r"([!\"#$%&()*+/:;<=>?@\[\\\]^_`{|}~])"), r" \1 "),  # ASCII punctuation but ' , - . split off
            (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # split '.' and ',' unless preceded by a digit ...
            (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # ... and unless followed by one: "3.5", "1,000" stay whole
            (re.compile(r"([0-9])(-)"), r"\1 \2 "))      # split '-' after a digit: "3-4" -> "3 - 4"

# Code points the "zh" tokenizer splits off: the ranges sacrebleu's table really tests. Its astral entries are written
# with 4-digit escapes ("\u20000" is U+2000, "0"), so they cover U+2001-U+2A6D and U+2F81-U+2FA1 (copied as they are).
_ZH_RANGES = ((0x2001, 0x2A6D), (0x2E80, 0x2FDF), (0x2FF0, 0x303F), (0x3100, 0x312F), (0x31A0, 0x31EF),
              (0x3200, 0x4DB5), (0x4E00, 0x9FBB), (0xF900, 0xFA2D), (0xFA30, 0xFA6A), (0xFA70, 0xFAD9),
              (0xFE10, 0xFE1F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF))
_ZH_CHAR = re.compile("([" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in _ZH_RANGES) + "])")


def tokenize_line(line, name="13a"):
    """One sentence -> list of tokens, as sacrebleu tokenizes a segment (it strips trailing whitespace first)."""
    line = line.rstrip()
    if name == "none":
        return line.split()
    if name == "13a":
        # mteval-v13a's language-independent part: drop <skipped>, join hyphenated line breaks, unescape 4 SGML entities
        line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            line = line.replace(entity, char)
        line = f" {line} "  # the padding matters: ".5" at the start, "5." at the end are split
    elif name == "zh":  # each Chinese character alone, the rest by 13a's punctuation rules (no entities, no padding)
        line = _ZH_CHAR.sub(r" \1 ", line.strip())
    else:
        raise ValueError(f"unknown tokenizer {name!r}: expected '13a', 'zh' or 'none'")
    for pattern, replacement in _WESTERN:
        line = pattern.sub(replacement, line)
    return line.split()


def _check(hyps, refs, **counts):
    for side, seq in (("hyps", hyps), ("refs", refs)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"{side} must be a list of strings (one sentence each), got {type(seq).__name__}")
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{side}[{i}] is {type(s).__name__}, expected str (one reference per hypothesis)")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: need one reference per hypothesis")
    if not hyps:
        raise ValueError("empty corpus: no hypotheses to score")
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------------------------------------------------
# BLEU (Papineni et al. [47]), corpus level: n-gram counts and lengths are summed over all sentences first

def _ngrams(tokens, max_order):
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def _bleu_stats(hyp, ref, max_order, tokenize):
    """[hyp_len, ref_len, matches_1, totals_1, .., matches_N, totals_N] of a pair: corpus BLEU is a function of sums."""
    h, r = tokenize_line(hyp, tokenize), tokenize_line(ref, tokenize)
    stats = [len(h), len(r)] + [0] * (2 * max_order)
    ref_counts = _ngrams(r, max_order)
    for gram, count in _ngrams(h, max_order).items():
        stats[2 * len(gram)] += min(count, ref_counts[gram])  # matching n-grams, clipped by the count in the reference
        stats[2 * len(gram) + 1] += count  # hypothesis n-grams
    return stats


def _bleu_from_stats(stats, effective_order=False):
    hyp_len, ref_len, matches, totals = stats[0], stats[1], stats[2::2], stats[3::2]
    if not any(matches):
        return 0.0
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)  # brevity penalty, exp(1 - r / c) if c < r
    log_p, halving = [], 1
    for n in range(len(matches)):
        if totals[n] == 0:  # no hypothesis is n+1 tokens long: precision 0, BLEU 0 unless effective_order
            break
        if matches[n] == 0:  # "exp" smoothing (mteval's, Chen & Cherry method 3): 1/2, 1/4, ... of a match instead of 0
            halving *= 2
            log_p.append(math.log(100.0 / (halving * totals[n])))
        else:
            log_p.append(math.log(100.0 * matches[n] / totals[n]))  # modified n-gram precision p_n, in percent
    if len(log_p) < len(matches) and not effective_order:
        return 0.0
    return bp * math.exp(sum(log_p) / len(log_p))  # BLEU = BP * exp(sum_n log p_n / N), uniform weights 1/N


def bleu(hyps, refs, max_order=4, tokenize="13a", effective_order=False):
    """Cumulative corpus BLEU-`max_order` on 0-100: sacrebleu's BLEU(max_ngram_order, tokenize, effective_order)
    .corpus_score(hyps, [refs]).score. effective_order: average over the orders the hypotheses have n-grams of."""
    _check(hyps, refs, max_order=max_order)
    stats = [_bleu_stats(h, r, max_order, tokenize) for h, r in zip(hyps, refs)]
    return _bleu_from_stats([sum(column) for column in zip(*stats)], effective_order)


# ----------------------------------------------------------------------------------------------------------------------
# ROUGE-L (Lin [38]), sentence level: F1 of the longest common subsequence, averaged over sentences

def _lcs(a, b):
    """Length of the longest common subsequence of two token lists, O(len(a) * len(b)) dynamic programme by rows."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps, refs, tokenize="none"):
    """Mean over sentences of ROUGE-L F1 = 2 P R / (P + R), P = LCS / len(hyp), R = LCS / len(ref), on 0-100.
    A sentence whose hypothesis or reference has no tokens scores 0 (as rouge-score)."""
    _check(hyps, refs)
    total = 0.0
    for hyp, ref in zip(hyps, refs):
        h, r = tokenize_line(hyp, tokenize), tokenize_line(ref, tokenize)
        lcs = _lcs(h, r)
        if lcs:
            p, rec = lcs / len(h), lcs / len(r)
            total += 2 * p * rec / (p + rec)
    return 100.0 * total / len(hyps)


# ----------------------------------------------------------------------------------------------------------------------
# all scores of one corpus, tokenized by language; a bootstrap interval for BLEU

def _tokenizers(lang):
    """(BLEU tokenizer, ROUGE-L tokenizer) for a target language code such as "de", "zh" or "zh-CN"."""
    if not isinstance(lang, str) or not lang:
        raise ValueError(f"lang must be a language code such as 'de' or 'zh', got {lang!r}")
    return ("zh", "zh") if lang.lower().replace("_", "-").split("-")[0] == "zh" else ("13a", "none")


def score_all(hyps, refs, lang, max_order=4):
    """{"B1": .., .., "B4": .., "ROUGE-L": ..} on 0-100 (B1..B`max_order`) for a target language `lang`."""
    bleu_tok, rouge_tok = _tokenizers(lang)
    scores = {f"B{n}": bleu(hyps, refs, max_order=n, tokenize=bleu_tok) for n in range(1, max_order + 1)}
    scores["ROUGE-L"] = rouge_l(hyps, refs, tokenize=rouge_tok)
    return scores


def main(argv=None):
    ap = argparse.ArgumentParser(description="BLEU-1..4 and ROUGE-L (0-100) of hypotheses against references")
    ap.add_argument("files", nargs=2, help="hypotheses, references: text files, one sentence per line")
    ap.add_argument("--lang", default="de", help="target language code; 'zh' scores per character (default: de)")
    args = ap.parse_args(argv)
    texts = (Path(name).read_text(encoding="utf-8").split("\n") for name in args.files)
    hyps, refs = (t[:-1] if t[-1] == "" else t for t in texts)  # a final newline does not start another sentence
    if len(hyps) != len(refs):
        raise SystemExit(f"{args.files[0]} has {len(hyps)} lines but {args.files[1]} has {len(refs)}")
    scores = score_all(hyps, refs, args.lang)
    print(json.dumps({k: round(v, 2) for k, v in scores.items()}))
    return scores


if __name__ == "__main__":
    main()
