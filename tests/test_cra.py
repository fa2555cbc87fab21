"""Tests of cra.py (Sec. 3.3, codebook reconstruction): each compares against something that could disagree, namely
the paper's worked examples, an independent re-implementation in this file, POT's Sinkhorn, a closed form, or a
planted lexicon."""
import itertools
import math
import random

import numpy as np
import ot
import pytest
import torch

import cra


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the OT problems here are small; on a shared 2-core machine torch's thread pool only adds waiting
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------------------------
# pre-processing of repeated characters

M = 7  # a small VQ codebook: characters 0..6, s0 = 7


def test_preprocess_paper_examples():
    s0 = M
    # [s1, s1, s1] -> [s1, s0] when alpha < 3: the runs 3 and 2 give alpha = 2.5
    assert cra.preprocess([1, 1, 1, 2, 2], M) == [1, s0, 2]
    assert cra.repeat_alpha([1, 1, 1, 2, 2]) == 2.5
    # the paper's pair of signers, [s1, s2] vs [s1, s1, s1, s2, s2]: the same characters, the slow one marked
    assert cra.preprocess([1, 2], M) == [1, 2]
    # [s1, s1, s1] alone: alpha = 3, a run of exactly alpha is not "more than alpha"
    assert cra.preprocess([1, 1, 1], M) == [1]


def test_preprocess_edge_cases():
    s0 = M
    assert cra.preprocess([3, 1, 4, 1, 5], M) == [3, 1, 4, 1, 5]  # no repeats: alpha undefined, nothing changes
    assert cra.repeat_alpha([3, 1, 4]) is None
    assert cra.preprocess([6] * 9, M) == [6]                      # all one token: one run of length alpha
    assert cra.preprocess([], M) == []
    # alpha exactly an integer: runs 2, 4, 3 -> alpha = 3; only the run of 4 is longer
    assert cra.preprocess([0, 0, 2, 2, 2, 2, 5, 5, 5, 4], M) == [0, 2, s0, 5, 4]
    # single tokens do not count towards alpha: runs 2 and 4 (alpha 3) among singles
    assert cra.preprocess([1, 2, 2, 3, 4, 4, 4, 4, 5], M) == [1, 2, 3, 4, s0, 5]
    for bad in ([0, M], [0, -1], [0, 2.0]):
        with pytest.raises(ValueError, match="position 1"):
            cra.preprocess(bad, M)


def test_preprocess_against_groupby():
    rng = random.Random()
    for _ in range(200):
        seq = [rng.randrange(M) for _ in range(rng.randrange(0, 40))]
        seq = [t for t in seq for _ in range(rng.choice([1, 1, 2, 3, 5]))]
        groups = [(k, len(list(g))) for k, g in itertools.groupby(seq)]
        rep = [n for _, n in groups if n >= 2]
        alpha = np.mean(rep) if rep else math.inf
        expect = [x for k, n in groups for x in ([k, M] if n > alpha else [k])]
        assert cra.preprocess(seq, M) == expect


# ----------------------------------------------------------------------------------------------------------------------
# candidates: incremental BPE == recount-everything BPE


def naive_bpe(seqs, max_candidates, min_count):
    """Textbook BPE: recount every adjacent pair before each merge; most frequent pair first, smaller pair on ties."""
    words = [list(s) for s in seqs]
    spell = {c: (c,) for w in words for c in w}
    new, out = max(spell, default=-1) + 1, {}
    while len(out) < max_candidates:
        counts = {}
        for w in words:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < min_count:
            break
        applied = 0
        for k, w in enumerate(words):
            o, i = [], 0
            while i < len(w):
                if w[i:i + 2] == list(best):
                    o.append(new)
                    i += 2
                    applied += 1
                else:
                    o.append(w[i])
                    i += 1
            words[k] = o
        spell[new] = spell[best[0]] + spell[best[1]]
        out[spell[new]] = out.get(spell[new], 0) + applied
        new += 1
    return list(out.items())


def test_bpe_candidates_match_naive_bpe():
    rng = random.Random()
    for _ in range(150):
        A = rng.randint(2, 7)  # small alphabets: overlapping pairs ("a a a") and touching merges ("a b a b")
        seqs = [[rng.randrange(A) for _ in range(rng.randint(0, 29))] for _ in range(rng.randint(1, 17))]
        assert cra.bpe_candidates(seqs, 37, 2) == naive_bpe(seqs, 37, 2)


# ----------------------------------------------------------------------------------------------------------------------
# segmentation


def test_segment_longest_match():
    rng = random.Random()
    for _ in range(100):
        A = rng.randint(2, 9)
        vocab = [(c,) for c in range(A)]
        vocab += list({tuple(rng.randrange(A) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(0, 23))})
        seq = [rng.randrange(A) for _ in range(rng.randint(0, 53))]
        ids = cra.segment(seq, vocab)
        # reference: scan the whole vocabulary at each position, keep the longest word that matches
        i, expect = 0, []
        while i < len(seq):
            j = max((k for k, w in enumerate(vocab) if tuple(seq[i:i + len(w)]) == w), key=lambda k: len(vocab[k]))
            expect.append(j)
            i += len(vocab[j])
        assert ids == expect
        assert [c for j in ids for c in vocab[j]] == seq
    with pytest.raises(ValueError, match="character 9 at position 2"):
        cra.segment([0, 1, 9], [(0,), (1,)])


# ----------------------------------------------------------------------------------------------------------------------
# Sinkhorn


def random_problem(n, k, p_inf, rng):
    """Random costs with a fraction p_inf of infeasible pairs; the marginals are those of a random plan living on
    the feasible pairs, so a solution exists (arbitrary marginals on a sparse support may admit no plan at all)."""
    feasible = rng.random((n, k)) >= p_inf
    feasible[np.arange(n), rng.integers(k, size=n)] = True  # every row and column keeps a feasible pair
    feasible[rng.integers(n, size=k), np.arange(k)] = True
    plan = rng.random((n, k)) * feasible
    plan /= plan.sum()
    cost = np.where(feasible, rng.random((n, k)) * 3, np.inf)
    return plan.sum(1), plan.sum(0), cost


def test_sinkhorn_matches_pot_with_infeasible_pairs():
    rng = np.random.default_rng()
    for n, k, eps in ((37, 23, 1.0), (19, 41, 0.3), (5, 3, 2.0)):
        a, b, cost = random_problem(n, k, 0.4, rng)
        ta, tb, tc = map(torch.from_numpy, (a, b, cost))
        # converged: the plan of the problem, whatever the path
        P, err, iters = cra.sinkhorn(ta, tb, tc, eps, n_iters=20000, tol=1e-13)
        ref = ot.sinkhorn(a, b, cost, reg=eps, numItermax=200000, stopThr=1e-14)  # POT handles inf (K = 0)
        assert err <= 1e-13 and iters < 20000
        assert (P[torch.from_numpy(np.isinf(cost))] == 0).all()
        torch.testing.assert_close(P.sum(1), ta, atol=1e-13, rtol=0)
        torch.testing.assert_close(P.sum(0), tb, atol=1e-13, rtol=0)
        torch.testing.assert_close(P, torch.from_numpy(ref), atol=1e-11, rtol=0)
        # not converged: after the same 37 iterations the two loops hold the same iterate
        P, _, _ = cra.sinkhorn(ta, tb, tc, eps, n_iters=37, tol=0)
        ref = ot.sinkhorn(a, b, cost, reg=eps, numItermax=37, stopThr=0, warn=False)
        torch.testing.assert_close(P, torch.from_numpy(ref), atol=1e-13, rtol=0)


def test_sinkhorn_small_eps_log_domain():
    # at eps = 1e-3, exp(-C / eps) underflows to 0 on feasible pairs (the plain loop then divides by zero); the log
    # domain does not. POT's own log-domain loop, run for the same 300 iterations, holds the same iterate.
    rng = np.random.default_rng()
    a, b, cost = random_problem(31, 19, 0.3, rng)
    assert (np.exp(-cost[np.isfinite(cost)] / 1e-3) == 0).any()
    P, err, _ = cra.sinkhorn(*map(torch.from_numpy, (a, b, cost)), 1e-3, n_iters=300, tol=0)
    ref = ot.sinkhorn(a, b, cost, reg=1e-3, method="sinkhorn_log", numItermax=300, stopThr=0, warn=False)
    assert torch.isfinite(P).all()
    torch.testing.assert_close(P, torch.from_numpy(ref), atol=1e-12, rtol=0)
    assert err == pytest.approx((P.sum(0) - torch.from_numpy(b)).abs().max().item(), abs=1e-15)
    torch.testing.assert_close(P.sum(1), torch.from_numpy(a), atol=1e-14, rtol=0)  # rows exact after the u update


def test_sinkhorn_2x2_closed_form():
    # P = diag(u) K diag(v) gives P11 P22 / (P12 P21) = kappa = exp(-(C11 + C22 - C12 - C21) / eps); with the
    # marginals (p, 1-p), (q, 1-q) and x = P11 this is (1 - kappa) x^2 + (1 - p - q + kappa (p + q)) x - kappa p q = 0
    rng = np.random.default_rng()
    p, q, eps = rng.uniform(0.1, 0.9, size=2).tolist() + [rng.uniform(0.2, 2)]
    C = rng.random((2, 2))
    kappa = math.exp(-(C[0, 0] + C[1, 1] - C[0, 1] - C[1, 0]) / eps)
    A, B, Cq = 1 - kappa, 1 - p - q + kappa * (p + q), -kappa * p * q
    roots = [(-B + s * math.sqrt(B * B - 4 * A * Cq)) / (2 * A) for s in (1, -1)]
    x = [r for r in roots if max(0, p + q - 1) <= r <= min(p, q)][0]
    expect = torch.tensor([[x, p - x], [q - x, 1 - p - q + x]], dtype=torch.float64)
    a, b = torch.tensor([p, 1 - p], dtype=torch.float64), torch.tensor([q, 1 - q], dtype=torch.float64)
    P, _, _ = cra.sinkhorn(a, b, torch.from_numpy(C), eps, n_iters=10000, tol=1e-15, check_every=1)
    torch.testing.assert_close(P, expect, atol=1e-12, rtol=0)
    # an infeasible corner forces the plan: P12 = 0, so P11 = p, P21 = q - p, P22 = 1 - q (needs q > p)
    p, q = sorted([p, q])
    C[0, 1] = np.inf
    a, b = torch.tensor([p, 1 - p], dtype=torch.float64), torch.tensor([q, 1 - q], dtype=torch.float64)
    P, _, _ = cra.sinkhorn(a, b, torch.from_numpy(C), eps, n_iters=100000, tol=1e-13)
    expect = torch.tensor([[p, 0], [q - p, 1 - q]], dtype=torch.float64)
    torch.testing.assert_close(P, expect, atol=1e-12, rtol=0)


def test_sinkhorn_rejects_bad_problems():
    a = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="unbalanced"):
        cra.sinkhorn(a, torch.tensor([0.5, 0.6], dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="row 1 has no finite entry"):
        cra.sinkhorn(a, a, torch.tensor([[0.0, 1.0], [math.inf, math.inf]], dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="disagree"):
        cra.sinkhorn(a, a, torch.zeros(3, 2, dtype=torch.float64), 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# entropy of a codebook, two ways


def codebook_and_corpus(rng, n_chars, repeated_char):
    """A vocabulary (all single characters + random words) and a corpus made of its words."""
    words = {tuple(rng.choice(n_chars, rng.integers(2, 6), replace=False).tolist()) for _ in range(23)}
    if repeated_char:
        words.add((1, 2, 1))
    vocab = [(c,) for c in range(n_chars)] + sorted(words)
    seqs = [[c for j in rng.integers(len(vocab), size=rng.integers(1, 30)) for c in vocab[j]] for _ in range(300)]
    return vocab, seqs


@pytest.mark.parametrize("repeated_char", [False, True])
def test_entropy_eq3_vs_eq4(repeated_char):
    """Eq. 4 on the Sinkhorn plan against Eq. 3 on the segmentation's token frequencies.

    Chain rule: H(P) = H(W) + sum_j P(w_j) H(S | w_j), so Eq. 4 - Eq. 3 = sum_j P(w_j) [H(S | w_j) - log len(w_j)]
    where H(S | w_j) is the entropy of the plan's row j, normalised. That gap is <= 0 (a row has at most len(w_j)
    non-zero entries) and is 0 exactly when every row is uniform on len(w_j) distinct characters. With our
    character marginal the plan is that uniform split when the characters of each word are distinct, so the two
    agree; a word with a repeated character (1, 2, 1) breaks it and Eq. 4 comes out strictly below Eq. 3.
    """
    rng = np.random.default_rng()
    cfg = cra.CRAConfig(n_chars=16, sinkhorn_iters=20000, sinkhorn_tol=1e-12)
    vocab, seqs = codebook_and_corpus(rng, cfg.n_chars + 1, repeated_char)
    counts = np.bincount([t for s in cra.segment_all(seqs, vocab) for t in s], minlength=len(vocab))
    p_w = torch.from_numpy(counts / counts.sum())
    h3 = cra.entropy(p_w)                                                      # Eq. 3
    used, P, cond, err, _ = cra.codebook_transport(vocab, counts.tolist(), cfg)
    h4 = cra.entropy_from_plan(P, cond)                                        # Eq. 4
    assert err <= 1e-12
    rows = P / P.sum(1, keepdim=True)
    h_rows = torch.stack([-(r[r > 0] * r[r > 0].log()).sum() for r in rows])
    lengths = torch.tensor([len(vocab[j]) for j in used], dtype=torch.float64)
    gap = (p_w[used] * (h_rows - lengths.log())).sum().item()
    assert h4 - h3 == pytest.approx(gap, abs=1e-10)
    if repeated_char:
        assert gap < -1e-4
    else:
        assert h4 == pytest.approx(h3, abs=1e-10)
        # and the plan is the segmentation's own joint: P(w_j, s_i) = P(w_j) / len(w_j) on the word's characters
        torch.testing.assert_close(P, p_w[used, None] * cond, atol=1e-12, rtol=0)


def test_entropy_with_corpus_character_frequencies():
    """The paper's other reading of the character marginal, P(s_i) = the characters' corpus frequency, is not the
    marginal of the joint Eq. 4 decomposes (it weights long words more): the plan stops being uniform per word and
    Eq. 4 no longer gives Eq. 3. Corpus "0 1 2" x 9 + "0": tokens (0 1 2) x 9 and (0) x 1, characters 10/28, 9/28,
    9/28. The word's row must then send 10/28 - 1/10 to character 0 and 9/28 to each of 1 and 2 (the plan is forced).
    """
    vocab = [(0,), (1,), (2,), (0, 1, 2)]
    counts = [1, 0, 0, 9]
    h3 = cra.entropy(torch.tensor([0.1, 0.9], dtype=torch.float64))
    used, P, cond, _, _ = cra.codebook_transport(vocab, counts, cra.CRAConfig(n_chars=2, sinkhorn_tol=1e-13))
    assert cra.entropy_from_plan(P, cond) == pytest.approx(h3, abs=1e-12)  # our marginal: Eq. 4 = Eq. 3
    p_s = torch.tensor([10, 9, 9], dtype=torch.float64) / 28
    P2, err, _ = cra.sinkhorn(torch.tensor([0.1, 0.9], dtype=torch.float64), p_s, -cond.log(), 1.0, tol=1e-13)
    forced = torch.tensor([[0.1, 0, 0], [10 / 28 - 0.1, 9 / 28, 9 / 28]], dtype=torch.float64)
    torch.testing.assert_close(P2, forced, atol=1e-12, rtol=0)
    h4 = -(forced[forced > 0] * forced[forced > 0].log()).sum().item() - 0.9 * math.log(3)
    assert cra.entropy_from_plan(P2, cond) == pytest.approx(h4, abs=1e-12) and h4 < h3 - 1e-3


# ----------------------------------------------------------------------------------------------------------------------
# the search on a planted lexicon


def planted_corpus(n_seqs, rng, n_chars=256, n_words=40, zipf=0.7, noise=0.01, slow=0.03, jitter=0.01):
    """VQ-like sequences spelled from a known lexicon of words over the characters.

    Each sequence: 4-10 words drawn with frequencies 1 / rank^zipf; every character repeated `base` frames (2 or 3, the
    signer's speed), a whole word signed slowly (2 * base frames) with probability `slow`, a run one frame longer or
    shorter with probability `jitter`, a character replaced by a random one with probability `noise`.
    """
    lexicon = set()
    while len(lexicon) < n_words:
        lexicon.add(tuple(rng.choice(n_chars, rng.integers(3, 6), replace=False).tolist()))
    lexicon = sorted(lexicon)
    weights = 1.0 / np.arange(1, n_words + 1) ** zipf
    weights /= weights.sum()
    seqs = []
    for _ in range(n_seqs):
        base, seq = int(rng.integers(2, 4)), []
        for w in rng.choice(n_words, rng.integers(4, 11), p=weights):
            frames = 2 * base if rng.random() < slow else base
            for c in lexicon[w]:
                c = int(rng.integers(n_chars)) if rng.random() < noise else c
                seq += [c] * (frames + (int(rng.choice([-1, 1])) if rng.random() < jitter else 0))
        seqs.append(seq)
    return lexicon, weights, seqs


def precision_recall(res, lexicon, weights):
    """Share of the chosen words that are planted words; share of the planted words chosen, plain and weighted by
    how often the generator uses each word."""
    words = set(res.vocab[res.n_chars + 1:])
    found = [w in words for w in lexicon]
    return sum(found) / max(len(words), 1), sum(found) / len(lexicon), float(np.dot(found, weights))


def test_search_recovers_planted_words(tmp_path):
    rng = np.random.default_rng()
    cfg = cra.CRAConfig(n_chars=256, m=32, R=6)  # the paper's increment m = 32
    lexicon, weights, raw = planted_corpus(1500, rng, n_words=20)
    seqs = [cra.preprocess(s, cfg.n_chars) for s in raw]
    res = cra.search(seqs, cfg)
    precision, recall, weighted = precision_recall(res, lexicon, weights)
    print(f"planted: chosen r={res.chosen_r}, {len(res.vocab) - 257} words, precision {precision:.2f}, "
          f"recall {recall:.2f}, recall weighted by use {weighted:.2f}")
    # 30 seeds of this setting gave precision 0.77-0.95 (median 0.87), recall >= 0.95 in 28 and weighted recall
    # 0.72-1.00 (median 1.00); in 2 the largest-drop rule stopped one size early (recall 0.50, 0.55)
    assert precision >= 0.7 and recall >= 0.4 and weighted >= 0.65
    # the search's own bookkeeping: H_0 is the characters' entropy, r is the largest drop, every character stays
    chars = np.bincount([c for s in seqs for c in s])
    assert res.entropies[0] == pytest.approx(cra.entropy(torch.from_numpy(chars / chars.sum())), abs=1e-9)
    drops = np.array(res.entropies[:-1]) - np.array(res.entropies[1:])
    assert res.chosen_r == 1 + int(np.argmax(drops))
    assert res.vocab[:257] == [(c,) for c in range(257)]
    ids = cra.segment_all(seqs, res.vocab)
    assert np.bincount([t for s in ids for t in s], minlength=len(res.vocab)).tolist() == res.freqs
    # negative control: the same frames shuffled inside each sequence, so no word survives and the bar is missed
    shuffled = [cra.preprocess(rng.permutation(s).tolist(), 256) for s in raw]
    precision, recall, weighted = precision_recall(cra.search(shuffled, cfg), lexicon, weights)
    assert weighted < 0.2
    # the vocabulary file round-trips and reads as text
    path = tmp_path / "vocab.txt"
    cra.save_vocab(path, res)
    back = cra.load_vocab(path)
    assert (back.vocab, back.freqs, back.entropies, back.chosen_r) == (res.vocab, res.freqs, res.entropies,
                                                                       res.chosen_r)
    assert path.read_text().splitlines()[-1] == "\t".join([str(res.freqs[-1]), " ".join(map(str, res.vocab[-1]))])


def test_load_vocab_errors(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# n_chars 2\n# chosen_r 1\n5\t0\n4\t1\n3\t2\n2\t0 x\n")
    with pytest.raises(ValueError, match="vocab.txt:6: malformed"):
        cra.load_vocab(path)
    path.write_text("# n_chars 2\n# chosen_r 1\n# entropy 0\n5\t0\n4\t1\n3\t2\n")
    with pytest.raises(ValueError, match="vocab.txt:3: malformed"):
        cra.load_vocab(path)
    path.write_text("# n_chars 2\n# chosen_r 1\n5\t0\n4\t1\n3\t2\n2\t0 3\n")
    with pytest.raises(ValueError, match="outside"):
        cra.load_vocab(path)
    path.write_text("# n_chars 2\n# chosen_r 1\n5\t0\n3\t2\n")
    with pytest.raises(ValueError, match="single characters"):
        cra.load_vocab(path)


def test_search_rejects_raw_sequences():
    with pytest.raises(ValueError, match="sequence 1: character 9"):
        cra.search([[0, 1], [2, 9]], cra.CRAConfig(n_chars=8))
