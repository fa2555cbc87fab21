"""metrics.py against independent implementations: sacrebleu for BLEU and its tokenizers, rouge-score for ROUGE-L.

Every test draws fresh random sentences; the seed is in each failure message, and `_rng(seed)` replays a run.
"""
import os
import random
import secrets
import sys

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_none import NoneTokenizer
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

import metrics

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from seeds import bootstrap_bleu  # noqa: E402  (bench/seeds.py's interval)

TOL = 1e-6
SACRE_TOK = {"13a": Tokenizer13a(), "zh": TokenizerZh(), "none": NoneTokenizer()}

DE_WORDS = ("morgen regen im norden und osten sonne temperaturen zwischen grad am tag nacht örtlich gewitter schnee "
            "südwesten über wind weht mäßig stark böen heute abend freundlich wolken küste alpen bayern es gibt "
            "kräftige schauer Deutschland Montag").split()
EN_WORDS = ("tomorrow rain in the north and east sun temperatures between degrees during day night locally storms "
            "snow southwest over wind blows moderate strong gusts today evening friendly clouds coast there are "
            "heavy showers Germany Monday it's well-known").split()
ZH_CHARS = "今天明天北方南方有雨雪风温度二十三度我们你他去学校吃饭的了是在不好很大小上下午晚天气会和东西"
ZH_EXTRA = ["，", "。", "！", "？", "、", "“", "”", "2024", "3.5", "CSL", " "]
NUMBERS = ["12", "3,5", "-2", "1.000", "20-25", "0.5", "2024", "7", "1,000.5"]
PUNCT = [".", ",", "!", "?", ":", ";", "(", ")", '"', "'", "-", "–", "/", "%", "&", "...", "&amp;"]
# raw material for fuzzing the tokenizers: every rule of mteval-v13a and of the zh tokenizer gets exercised
FUZZ = (list("abcXYZäöüßé0123456789 \t\n.,-'!\"#$%&()*+/:;<=>?@[\\]^_`{|}~我爱你。，！“”—…€→\u3000\uff0c\u2003")
        + ["\U00020000", "&quot;", "&amp;", "&lt;", "&gt;", "<skipped>", "-\n", "3.5", "1,000", ".5", "5.", " ."])


def _rng(seed=None):
    seed = secrets.randbits(32) if seed is None else seed
    return seed, random.Random(seed)


def _sentence(rng, lang):
    """A realistic sentence: words, numbers and punctuation, sometimes glued to the previous word as people write."""
    if lang == "zh":
        n = rng.randint(1, 25)
        return "".join(rng.choice(ZH_CHARS) if rng.random() < 0.85 else rng.choice(ZH_EXTRA) for _ in range(n)) \
            + rng.choice(["", "。", "？"])
    words = DE_WORDS if lang == "de" else EN_WORDS
    out = ""
    for i in range(rng.randint(1, 18)):
        u = rng.random()
        piece = rng.choice(words) if u < 0.75 else rng.choice(NUMBERS) if u < 0.87 else rng.choice(PUNCT)
        glue = "" if (i == 0 or (piece in PUNCT and rng.random() < 0.6)) else " "
        out += glue + piece
    if rng.random() < 0.3:
        out = out[:1].upper() + out[1:]
    return out + rng.choice(["", "", ".", "?", "!", " ."])


def _hypothesis(rng, ref, lang, pool=None):
    """A system output made from the reference: exact, edited, truncated (brevity penalty), shuffled, unrelated
    or empty, so that every branch of BLEU is reached across a corpus. `pool`: the only words it may add."""
    units = list(ref) if lang == "zh" else ref.split()
    sep = "" if lang == "zh" else " "
    mode = rng.choice(["copy", "edit", "edit", "edit", "truncate", "shuffle", "unrelated", "empty"])
    if mode == "empty":
        return ""
    if mode == "unrelated":
        return " ".join(rng.choices(pool, k=rng.randint(1, 12))) if pool else _sentence(rng, lang)
    if mode == "truncate":
        return sep.join(units[:rng.randint(0, len(units))])
    if mode == "shuffle":
        rng.shuffle(units)
    if mode == "edit":
        pool = pool or (list(ZH_CHARS) if lang == "zh" else DE_WORDS if lang == "de" else EN_WORDS)
        out = []
        for x in units:
            u = rng.random()
            out += [] if u < 0.1 else [rng.choice(pool)] if u < 0.2 else [x, x] if u < 0.25 else [x]
        units = out
    return sep.join(units)


def _corpus(rng, lang, n_max=40):
    refs = [_sentence(rng, lang) for _ in range(rng.randint(1, n_max))]
    return [_hypothesis(rng, r, lang) for r in refs], refs


def _sacre(hyps, refs, n, tok, effective_order=False):
    return sacrebleu.BLEU(max_ngram_order=n, tokenize=tok, effective_order=effective_order).corpus_score(hyps, [refs])


# ----------------------------------------------------------------------------------------------------------------------
# tokenizers

@pytest.mark.parametrize("tok", ["13a", "zh", "none"])
def test_tokenizers_match_sacrebleu(tok):
    seed, rng = _rng()
    lines = [_sentence(rng, lang) for lang in ("de", "en", "zh") for _ in range(50)]
    lines += ["".join(rng.choice(FUZZ) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    for line in lines:
        expected = SACRE_TOK[tok](line.rstrip()).split()  # sacrebleu rstrips a segment, then tokenizes it
        assert metrics.tokenize_line(line, tok) == expected, f"seed={seed} tok={tok} line={line!r}"


def test_zh_character_classes_match_sacrebleu():
    """Every BMP code point and a few astral ones: split off as a 'Chinese character' exactly when sacrebleu does."""
    seed, rng = _rng()
    points = [c for c in range(0x80, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    points += [rng.randrange(0x10000, 0x110000) for _ in range(2000)] + [0x20000, 0x2A6D6, 0x2F800, 0x2FA1D]
    for c in points:
        line = f"a{chr(c)}b"
        assert metrics.tokenize_line(line, "zh") == SACRE_TOK["zh"](line).split(), f"seed={seed} U+{c:04X}"


# ----------------------------------------------------------------------------------------------------------------------
# BLEU

@pytest.mark.parametrize("lang,toks", [("de", ("13a", "none")), ("en", ("13a", "none")), ("zh", ("zh", "13a"))])
def test_bleu_matches_sacrebleu_on_realistic_text(lang, toks):
    seed, rng = _rng()
    for trial in range(8):
        hyps, refs = _corpus(rng, lang)
        for tok in toks:
            for n in range(1, 5):
                for eff in (False, True):
                    ours, ref = metrics.bleu(hyps, refs, n, tok, effective_order=eff), _sacre(hyps, refs, n, tok, eff)
                    assert abs(ours - ref.score) <= TOL, f"seed={seed} trial={trial} {tok} BLEU-{n} eff={eff}: " \
                                                         f"{ours} vs sacrebleu {ref} on {list(zip(hyps, refs))}"


def test_bleu_matches_sacrebleu_on_fuzzed_text():
    seed, rng = _rng()
    for trial in range(20):
        m = rng.randint(1, 20)
        refs = ["".join(rng.choice(FUZZ) for _ in range(rng.randint(0, 30))) for _ in range(m)]
        hyps = [r[rng.randint(0, len(r)):] + r[:rng.randint(0, len(r))] if rng.random() < 0.7 else "" for r in refs]
        for tok in ("13a", "zh", "none"):
            for n in range(1, 5):
                ours, ref = metrics.bleu(hyps, refs, n, tok), _sacre(hyps, refs, n, tok).score
                assert abs(ours - ref) <= TOL, f"seed={seed} trial={trial} {tok} BLEU-{n}: {ours} vs {ref}"


def test_bleu_brevity_penalty():
    """Hypotheses are prefixes of their references: BP < 1 must bite, and precisions stay high."""
    seed, rng = _rng()
    refs = [_sentence(rng, "de") + " " + _sentence(rng, "de") for _ in range(rng.randint(5, 30))]
    hyps = [" ".join(r.split()[:max(1, len(r.split()) // rng.randint(2, 4))]) for r in refs]
    for n in range(1, 5):
        ref = _sacre(hyps, refs, n, "13a")
        assert ref.bp < 1, f"seed={seed}: test lost its point, sacrebleu's BP is {ref.bp}"
        assert abs(metrics.bleu(hyps, refs, n) - ref.score) <= TOL, f"seed={seed} BLEU-{n} vs {ref}"


def test_bleu_zero_matches_at_high_orders():
    """Words shuffled with no repeated word: unigrams match, (almost) no 4-gram does, so "exp" smoothing decides."""
    seed, rng = _rng()
    words = rng.sample(EN_WORDS, 20)
    refs = [" ".join(rng.sample(words, rng.randint(4, 9))) for _ in range(rng.randint(2, 6))]
    hyps = [" ".join(rng.sample(r.split(), len(r.split()))) for r in refs]
    ref4 = _sacre(hyps, refs, 4, "13a")
    if ref4.counts[3] > 0:  # a shuffle that kept a 4-gram: force zero matches at order 4 by reversing pairs
        hyps = [" ".join(sum(([b, a] for a, b in zip(r.split()[::2], r.split()[1::2])), [])) for r in refs]
        ref4 = _sacre(hyps, refs, 4, "13a")
    assert ref4.counts[0] > 0 and ref4.counts[3] == 0, f"seed={seed}: not the case under test: {ref4.counts}"
    for n in range(1, 5):
        ours, ref = metrics.bleu(hyps, refs, n), _sacre(hyps, refs, n, "13a").score
        assert abs(ours - ref) <= TOL and ours > 0, f"seed={seed} BLEU-{n}: {ours} vs {ref}"


def test_bleu_corner_cases():
    seed, rng = _rng()
    refs = [_sentence(rng, "en") for _ in range(rng.randint(2, 10))]
    cases = {
        "one-token hypotheses (no 2-grams at all)": [r.split()[0] for r in refs],
        "all hypotheses empty": ["" for _ in refs],
        "no word in common": [" ".join(["xyzzy"] * rng.randint(1, 6)) for _ in refs],
        "exact copies": list(refs),
    }
    for name, hyps in cases.items():
        for n in range(1, 5):
            for eff in (False, True):
                ours, ref = metrics.bleu(hyps, refs, n, effective_order=eff), _sacre(hyps, refs, n, "13a", eff).score
                assert abs(ours - ref) <= TOL, f"seed={seed} {name} BLEU-{n} eff={eff}: {ours} vs {ref}"


# ----------------------------------------------------------------------------------------------------------------------
# ROUGE-L

def _rouge_score_mean(hyps, refs):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return 100 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(hyps)


def test_rouge_l_matches_rouge_score_on_ascii():
    """rouge-score lowercases and keeps only [a-z0-9] runs; on lowercase alphanumeric words separated by spaces its
    tokens are our whitespace tokens (asserted), so the two must agree to rounding."""
    seed, rng = _rng()
    vocab = [w.lower() for w in EN_WORDS if w.isalnum() and w.isascii()] + ["12", "7", "2024"]
    for trial in range(10):
        refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 20))) for _ in range(rng.randint(1, 30))]
        hyps = [_hypothesis(rng, r, "en", pool=vocab) for r in refs]
        for s in hyps + refs:
            assert rouge_tokenize.tokenize(s, None) == s.split(), f"seed={seed}: tokenizers disagree on {s!r}"
        ours, ref = metrics.rouge_l(hyps, refs), _rouge_score_mean(hyps, refs)
        assert abs(ours - ref) <= TOL, f"seed={seed} trial={trial}: {ours} vs rouge-score {ref}"


@pytest.mark.parametrize("lang,tok", [("zh", "zh"), ("de", "none")])
def test_rouge_l_on_non_ascii_text_via_ascii_aliases(lang, tok):
    """rouge-score drops non-ASCII characters, so each distinct token (a Chinese character, 'über', 'grad.') is renamed
    to an ASCII word before rouge-score sees it. This checks LCS and F1 on our tokens; the tokens themselves are
    checked against sacrebleu's tokenizers above."""
    seed, rng = _rng()
    for trial in range(5):
        hyps, refs = _corpus(rng, lang)
        alias = {}

        def ascii_words(s):
            return " ".join(alias.setdefault(t, f"w{len(alias)}") for t in metrics.tokenize_line(s, tok))
        ref = _rouge_score_mean([ascii_words(h) for h in hyps], [ascii_words(r) for r in refs])
        ours = metrics.rouge_l(hyps, refs, tokenize=tok)
        assert abs(ours - ref) <= TOL, f"seed={seed} trial={trial}: {ours} vs rouge-score {ref}"


# ----------------------------------------------------------------------------------------------------------------------
# bootstrap interval of BLEU

def _draws(n, seed, S):
    return np.random.default_rng(seed).integers(0, S, (n, S))  # the draws bootstrap_bleu's docstring promises


@pytest.mark.parametrize("lang,tok", [("de", "13a"), ("zh", "zh")])
def test_bootstrap_resamples_match_sacrebleu(lang, tok):
    """Each resample's BLEU is sacrebleu's corpus BLEU of the drawn sentences: with n=1 the interval is that one score;
    with n=9 it is the 2.5/97.5 percentiles of the nine sacrebleu scores of the same draws."""
    seed, rng = _rng()
    hyps, refs = _corpus(rng, lang)
    for order in (4, 2):
        for s in (seed, seed + 1, seed + 2):
            i = _draws(1, s, len(hyps))[0]
            want = _sacre([hyps[j] for j in i], [refs[j] for j in i], order, tok).score
            lo, hi = bootstrap_bleu(hyps, refs, lang, n=1, seed=s, order=order)
            assert abs(lo - want) <= TOL and abs(hi - want) <= TOL, f"seed={seed} resample {s}: {lo} vs {want}"
        draws = _draws(9, seed, len(hyps))
        scores = [_sacre([hyps[j] for j in i], [refs[j] for j in i], order, tok).score for i in draws]
        want = np.percentile(scores, [2.5, 97.5])
        got = bootstrap_bleu(hyps, refs, lang, n=9, seed=seed, order=order)
        assert np.allclose(got, want, rtol=0, atol=TOL), f"seed={seed} order {order}: {got} vs {want}"


def test_bootstrap_interval_holds_the_score_and_narrows_with_more_sentences():
    seed, rng = _rng()
    widths = []
    for size in (60, 600):  # two corpora of the same kind of sentences and system outputs
        refs = [_sentence(rng, "de") for _ in range(size)]
        hyps = [_hypothesis(rng, r, "de") for r in refs]
        lo, hi = bootstrap_bleu(hyps, refs, "de", seed=seed)
        full = metrics.score_all(hyps, refs, "de")["B4"]
        assert lo < full < hi, f"seed={seed} {size} sentences: BLEU-4 {full} outside its interval ({lo}, {hi})"
        assert bootstrap_bleu(hyps, refs, "de", seed=seed) == (lo, hi), f"seed={seed}: not reproducible"
        widths.append(hi - lo)
    # the interval's width shrinks about as 1 / sqrt(sentences): sqrt(10) here
    assert widths[1] < 0.6 * widths[0], f"seed={seed}: widths {widths} for 60 and 600 sentences"


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match="n must be a positive int"):
        bootstrap_bleu(["a"], ["a"], "de", n=0)
    with pytest.raises(ValueError, match="order must be a positive int"):
        bootstrap_bleu(["a"], ["a"], "de", order=0)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bootstrap_bleu(["a", "b"], ["a"], "de")


# ----------------------------------------------------------------------------------------------------------------------
# score_all, the command line, bad input

@pytest.mark.parametrize("lang", ["de", "en", "zh", "zh-CN"])
def test_score_all_picks_tokenization_by_language(lang):
    seed, rng = _rng()
    hyps, refs = _corpus(rng, lang[:2])
    tok, rouge_tok = ("zh", "zh") if lang.startswith("zh") else ("13a", "none")
    scores = metrics.score_all(hyps, refs, lang)
    assert list(scores) == ["B1", "B2", "B3", "B4", "ROUGE-L"]
    for n in range(1, 5):
        ref = _sacre(hyps, refs, n, tok).score
        assert abs(scores[f"B{n}"] - ref) <= TOL, f"seed={seed} {lang} B{n}: {scores[f'B{n}']} vs sacrebleu {ref}"
    assert scores["ROUGE-L"] == metrics.rouge_l(hyps, refs, tokenize=rouge_tok), f"seed={seed}"
    if lang.startswith("zh"):  # Chinese text without Latin parts is scored per character
        pure = "".join(rng.choice(ZH_CHARS) for _ in range(30))
        assert metrics.tokenize_line(pure, "zh") == list(pure), f"seed={seed}"


def test_main_reads_files(tmp_path):
    seed, rng = _rng()
    hyps, refs = _corpus(rng, "de")
    hyps = [h.replace("\n", " ") for h in hyps]
    (tmp_path / "h.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    got = metrics.main([str(tmp_path / "h.txt"), str(tmp_path / "r.txt"), "--lang", "de"])
    assert got == metrics.score_all(hyps, refs, "de"), f"seed={seed}"
    (tmp_path / "r.txt").write_text("\n".join(refs + ["one more"]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="r.txt has"):
        metrics.main([str(tmp_path / "h.txt"), str(tmp_path / "r.txt")])


@pytest.mark.parametrize("fn", [metrics.bleu, metrics.rouge_l])
def test_bad_input_raises_clear_errors(fn):
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        fn(["a b", "c"], ["a b", "c", "d"])
    with pytest.raises(TypeError, match=r"hyps\[1\] is NoneType"):
        fn(["a", None], ["a", "b"])
    with pytest.raises(TypeError, match=r"refs\[0\] is list"):
        fn(["a"], [["a"]])  # sacrebleu's list-of-reference-streams layout is not ours
    with pytest.raises(TypeError, match="hyps must be a list"):
        fn("a b", "a b")
    with pytest.raises(ValueError, match="empty corpus"):
        fn([], [])
    with pytest.raises(ValueError, match="unknown tokenizer 'intl'"):
        fn(["a"], ["a"], tokenize="intl")


def test_bad_order_and_language():
    with pytest.raises(ValueError, match="max_order must be a positive int"):
        metrics.bleu(["a"], ["a"], max_order=0)
    with pytest.raises(ValueError, match="lang must be a language code"):
        metrics.score_all(["a"], ["a"], "")
