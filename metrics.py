"""Translation metrics of Sec. 4.1 ("Evaluation Metrics"): BLEU-1..4 [47] and ROUGE-L [38].

- `bleu`: cumulative corpus BLEU-n, the number sacrebleu's `BLEU(max_ngram_order=n, tokenize=...)` prints for one
  reference per hypothesis (case-sensitive, "exp" smoothing), re-implemented here from the mteval-v13a rules.
- `rouge_l`: ROUGE-L F1 (beta = 1, as rouge-score's "rougeL" fmeasure) of each sentence, averaged over sentences.
- `score_all`: B1..B4 and ROUGE-L with the tokenization chosen by language: Chinese is scored per character.

Every score is on sacrebleu's 0-100 scale. Hypotheses are scored exactly as given: nothing is lowercased, appended
or detokenized here.

    python metrics.py hyps.txt refs.txt --lang de     # one sentence per line
"""
import argparse
import json
import math
import re
from collections import Counter
from dataclasses import dataclass

# ----------------------------------------------------------------------------------------------------------------------
# tokenizers: "13a" (mteval-v13a.pl, sacrebleu's default), "zh" (sacrebleu's Chinese tokenizer), "none" (whitespace)

# mteval-v13a's "language-dependent part (assuming Western languages)", four substitutions applied in this order
_PUNCT = re.compile(r"([!\"#$%&()*+/:;<=>?@\[\\\]^_`{|}~])")  # ASCII punctuation except ' , - . : own token
_PERIOD_COMMA_1 = re.compile(r"([^0-9])([.,])")  # split '.' and ',' unless preceded by a digit ...
_PERIOD_COMMA_2 = re.compile(r"([.,])([^0-9])")  # ... and unless followed by a digit, so "3.5" and "1,000" stay whole
_DASH = re.compile(r"([0-9])(-)")                # split '-' after a digit: "3-4" -> "3 - 4"

# Code points the "zh" tokenizer makes single-character tokens: the ranges sacrebleu's table really tests. Its two
# astral entries are written with 4-digit escapes ("\u20000" is U+2000 followed by "0"), so they cover U+2001-U+2A6D
# (general punctuation, currency, arrows, maths) and U+2F81-U+2FA1, not CJK Extension B; we copy that to stay identical.
_ZH_RANGES = ((0x2001, 0x2A6D), (0x2E80, 0x2FDF), (0x2FF0, 0x303F), (0x3100, 0x312F), (0x31A0, 0x31EF),
              (0x3200, 0x4DB5), (0x4E00, 0x9FBB), (0xF900, 0xFA2D), (0xFA30, 0xFA6A), (0xFA70, 0xFAD9),
              (0xFE10, 0xFE1F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF))
_ZH_CHAR = re.compile("([" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in _ZH_RANGES) + "])")

TOKENIZERS = ("13a", "zh", "none")


def _western(line):
    line = _PUNCT.sub(r" \1 ", line)
    line = _PERIOD_COMMA_1.sub(r"\1 \2 ", line)
    line = _PERIOD_COMMA_2.sub(r" \1 \2", line)
    line = _DASH.sub(r"\1 \2 ", line)
    return line.split()


def tokenize_line(line, name="13a"):
    """One sentence -> list of tokens, as sacrebleu tokenizes a segment (it strips trailing whitespace first)."""
    line = line.rstrip()
    if name == "13a":
        # mteval-v13a's language-independent part: drop <skipped>, join hyphenated line breaks, unescape 4 SGML entities
        line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            line = line.replace(entity, char)
        return _western(f" {line} ")  # the padding matters: ".5" at the start, "5." at the end are split
    if name == "zh":
        return _western(_ZH_CHAR.sub(r" \1 ", line.strip()))  # each Chinese character alone; the rest by 13a's
        # punctuation rules, without its entity unescaping and padding (a final "5." stays whole)
    if name == "none":
        return line.split()
    raise ValueError(f"unknown tokenizer {name!r}: expected one of {TOKENIZERS}")


def _check(hyps, refs, tokenize_name):
    for side, seq in (("hyps", hyps), ("refs", refs)):
        if isinstance(seq, str) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{side} must be a list of strings (one sentence each), got {type(seq).__name__}")
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{side}[{i}] is {type(s).__name__}, expected str (one reference per hypothesis)")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: need one reference per hypothesis")
    if not hyps:
        raise ValueError("empty corpus: no hypotheses to score")
    if tokenize_name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenize_name!r}: expected one of {TOKENIZERS}")


# ----------------------------------------------------------------------------------------------------------------------
# BLEU (Papineni et al. [47]), corpus level: n-gram counts and lengths are summed over all sentences first

def _ngrams(tokens, max_order):
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def bleu(hyps, refs, max_order=4, tokenize="13a", effective_order=False):
    """Cumulative corpus BLEU-`max_order` on 0-100, equal to sacrebleu's BLEU(max_ngram_order=max_order, tokenize=...,
    effective_order=...).corpus_score(hyps, [refs]).score. effective_order=True averages only over the orders for which
    the corpus has any hypothesis n-gram (sacrebleu's option for sentence-level BLEU)."""
    _check(hyps, refs, tokenize)
    if not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    hyp_len = ref_len = 0
    matches, totals = [0] * max_order, [0] * max_order  # per order n: clipped matching n-grams, hypothesis n-grams
    for hyp, ref in zip(hyps, refs):
        h, r = tokenize_line(hyp, tokenize), tokenize_line(ref, tokenize)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        ref_counts = _ngrams(r, max_order)
        for gram, count in _ngrams(h, max_order).items():
            totals[len(gram) - 1] += count
            matches[len(gram) - 1] += min(count, ref_counts[gram])  # clipped by the count in the reference

    if not any(matches):
        return 0.0
    # brevity penalty: BP = exp(1 - r / c) when the hypotheses are shorter than the references (c < r), else 1
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    log_p, halving = [], 1
    for n in range(max_order):
        if totals[n] == 0:  # no hypothesis is n+1 tokens long: precision 0, BLEU 0 unless effective_order
            break
        if matches[n] == 0:  # "exp" smoothing (mteval's, Chen & Cherry method 3): 1/2, 1/4, ... of a match instead of 0
            halving *= 2
            log_p.append(math.log(100.0 / (halving * totals[n])))
        else:
            log_p.append(math.log(100.0 * matches[n] / totals[n]))  # modified n-gram precision p_n, in percent
    if len(log_p) < max_order and not effective_order:
        return 0.0
    return bp * math.exp(sum(log_p) / len(log_p))  # BLEU = BP * exp(sum_n log p_n / N), uniform weights 1/N


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
    _check(hyps, refs, tokenize)
    total = 0.0
    for hyp, ref in zip(hyps, refs):
        h, r = tokenize_line(hyp, tokenize), tokenize_line(ref, tokenize)
        lcs = _lcs(h, r) if h and r else 0
        if lcs:
            p, rec = lcs / len(h), lcs / len(r)
            total += 2 * p * rec / (p + rec)
    return 100.0 * total / len(hyps)


# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class MetricsConfig:
    max_order: int = 4              # score_all reports B1..B{max_order}, each a cumulative BLEU-n
    char_langs: tuple = ("zh",)     # scored per character ("zh" tokenizer) by BLEU and ROUGE-L
    bleu_tokenize: str = "13a"      # every other language: 13a for BLEU ...
    rouge_tokenize: str = "none"    # ... and whitespace tokens for ROUGE-L


def score_all(hyps, refs, lang, cfg=None):
    """{"B1": .., .., "B4": .., "ROUGE-L": ..} on 0-100. `lang` is a language code: "zh" (also "zh-CN") or e.g. "de"."""
    cfg = cfg or MetricsConfig()
    if not isinstance(lang, str) or not lang:
        raise ValueError(f"lang must be a language code such as 'de' or 'zh', got {lang!r}")
    chars = lang.lower().replace("_", "-").split("-")[0] in cfg.char_langs
    bleu_tok, rouge_tok = ("zh", "zh") if chars else (cfg.bleu_tokenize, cfg.rouge_tokenize)
    scores = {f"B{n}": bleu(hyps, refs, max_order=n, tokenize=bleu_tok) for n in range(1, cfg.max_order + 1)}
    scores["ROUGE-L"] = rouge_l(hyps, refs, tokenize=rouge_tok)
    return scores


def main(argv=None):
    ap = argparse.ArgumentParser(description="BLEU-1..4 and ROUGE-L (0-100) of hypotheses against references")
    ap.add_argument("hyps", help="text file, one hypothesis per line")
    ap.add_argument("refs", help="text file, one reference per line (same line count)")
    ap.add_argument("--lang", default="de", help="target language code; 'zh' scores per character (default: de)")
    args = ap.parse_args(argv)
    lines = {}
    for name in (args.hyps, args.refs):
        with open(name, encoding="utf-8") as f:
            lines[name] = f.read().split("\n")
        if lines[name] and lines[name][-1] == "":
            lines[name].pop()  # the newline that ends the last line does not start another sentence
    hyps, refs = lines[args.hyps], lines[args.refs]
    if len(hyps) != len(refs):
        raise SystemExit(f"{args.hyps} has {len(hyps)} lines but {args.refs} has {len(refs)}")
    scores = score_all(hyps, refs, args.lang)
    print(json.dumps({k: round(v, 2) for k, v in scores.items()}))
    return scores


if __name__ == "__main__":
    main()
