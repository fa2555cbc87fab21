"""Benchmark of cra.py (Sec. 3.3 codebook reconstruction), CPU only.

1. search time for 1k / 10k / 100k synthetic sequences and 1k / 10k candidate words, split into BPE candidates,
   Sinkhorn and the rest (segmentation passes, bookkeeping). One run per cell (a cell takes seconds to minutes), not
   a median. The r-th codebook holds r * m words with R = 8 and m = candidates / 8, so the last size uses them all.
2. our log-domain `cra.sinkhorn` (torch) vs POT's `ot.sinkhorn` (numpy, plain domain) on the same problems, both
   run to the same marginal tolerance: median time of 5 runs and the largest difference between the plans.
3. planted lexicon: how the chosen words line up with the generator's words (precision / recall), paper's m = 32.

    python bench/bench_cra.py            # about 6 minutes on a 2-core CPU
    python bench/bench_cra.py --quick    # drops the 100k-sequence cells
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import ot
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import cra  # noqa: E402
from test_cra import planted_corpus, precision_recall, random_problem  # noqa: E402  (the tests' generators)


class Timer:
    """Wraps a cra function and adds up the seconds spent inside it."""
    def __init__(self, name):
        self.name, self.fn, self.total = name, getattr(cra, name), 0.0
        setattr(cra, name, self)

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.last = self.fn(*args, **kwargs)
        self.total += time.perf_counter() - t
        return out

    def restore(self):
        setattr(cra, self.name, self.fn)


def search_times(n_seqs, n_cands, rng):
    _, _, raw = planted_corpus(n_seqs, rng, n_words=400)
    seqs = [cra.preprocess(s, 256) for s in raw]
    cfg = cra.CRAConfig(n_chars=256, m=max(n_cands // 8, 1), R=8, max_candidates=n_cands)
    timers = [Timer("bpe_candidates"), Timer("sinkhorn")]
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cra.search(seqs, cfg)
    total = time.perf_counter() - t
    for tm in timers:
        tm.restore()
    n_chars = sum(map(len, seqs))
    bpe, sk = timers[0].total, timers[1].total
    max_iters = max(it for _, it in res.sinkhorn)
    print(f"| {n_seqs:,} | {n_chars:,} | {n_cands:,} ({len(timers[0].last):,}) | {total:.1f} | {bpe:.1f} | {sk:.1f} | {total - bpe - sk:.1f} | "
          f"{res.chosen_r} | {len(res.vocab) - 257} | {max_iters} | {len(caught)} |", flush=True)


def sinkhorn_vs_pot(name, a, b, cost, eps, tol, repeats=5):
    ta, tb, tc = map(torch.from_numpy, (a, b, cost))
    ours, pots = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        P, err, iters = cra.sinkhorn(ta, tb, tc, eps, n_iters=100000, tol=tol)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref, log = ot.sinkhorn(a, b, cost, reg=eps, numItermax=100000, stopThr=tol, log=True)
        pots.append(time.perf_counter() - t)
    diff = np.abs(P.numpy() - ref).max()
    t_ours, t_pot = statistics.median(ours), statistics.median(pots)
    print(f"| {name} | {cost.shape[0]} x {cost.shape[1]} | {eps:g} | {t_ours * 1e3:.1f} ({iters} it) | "
          f"{t_pot * 1e3:.1f} ({log['niter'] + 1} it) | {t_ours / t_pot:.2f} | {diff:.1e} |", flush=True)


def search_problem(n_cands, rng):
    """The OT problem of the search's last size on a synthetic corpus: words x characters, infeasible pairs = inf."""
    _, _, raw = planted_corpus(3000, rng, n_words=400)
    seqs = [cra.preprocess(s, 256) for s in raw]
    cands = cra.bpe_candidates(seqs, n_cands)
    vocab = [(c,) for c in range(257)] + [w for w, _ in cands]
    counts = np.bincount([t for s in cra.segment_all(seqs, vocab) for t in s], minlength=len(vocab))
    used, _, cond, _, _ = cra.codebook_transport(vocab, counts.tolist(), cra.CRAConfig(sinkhorn_iters=1))
    p_w = counts[used] / counts.sum()
    p_s = p_w @ np.stack([np.bincount(vocab[j], minlength=257) / len(vocab[j]) for j in used])  # as cra does
    cond = cond.numpy()
    return p_w, p_s[p_s > 0], np.where(cond > 0, -np.log(np.where(cond > 0, cond, 1)), np.inf)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small problems on a shared 2-core machine: torch's thread pool only adds waiting
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, POT {ot.__version__}, numpy {np.__version__}, torch threads 1")

    print("\n## 1. search time (seconds, one run each)\n")
    print("| sequences | characters | candidates (found) | total | BPE | Sinkhorn | rest | chosen r | words kept | "
          "max Sinkhorn it | warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n_seqs in (1000, 10000) + (() if args.quick else (100000,)):
        for n_cands in (1000, 10000):
            search_times(n_seqs, n_cands, rng)

    print("\n## 2. cra.sinkhorn vs ot.sinkhorn, same problem, same tolerance (ms, median of 5)\n")
    print("| problem | size | eps | ours | POT | ours / POT | max abs plan diff |")
    print("|---|---|---|---|---|---|---|")
    for n, k, eps in ((300, 200, 1.0), (1000, 257, 0.5)):
        a, b, cost = random_problem(n, k, 0.9, rng)
        sinkhorn_vs_pot("random, 90% inf", a, b, cost, eps, tol=1e-9)
    for n_cands in (1000, 10000):
        p_w, p_s, cost = search_problem(n_cands, rng)
        sinkhorn_vs_pot(f"search, {n_cands} cands", p_w, p_s, cost, 1.0, tol=1e-9)

    print("\n## 3. planted lexicon: chosen words vs the generator's words\n")
    print("| sequences | lexicon | noise, slow, jitter | m | R | chosen r | words kept | precision | recall | "
          "weighted recall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n_seqs, n_words, m, R, noise in ((5000, 40, 16, 10, 0.01), (5000, 40, 32, 6, 0.01),
                                         (20000, 200, 32, 24, 0.01), (20000, 200, 32, 24, 0.0)):
        kw = dict(noise=noise, slow=0.03 if noise else 0.0, jitter=0.01 if noise else 0.0)
        lexicon, weights, raw = planted_corpus(n_seqs, rng, n_words=n_words, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cra.search([cra.preprocess(s, 256) for s in raw], cra.CRAConfig(n_chars=256, m=m, R=R))
        p, r, wr = precision_recall(res, lexicon, weights)
        print(f"| {n_seqs:,} | {n_words} | {kw['noise']}, {kw['slow']}, {kw['jitter']} | {m} | {R} | {res.chosen_r} | "
              f"{len(res.vocab) - 257} | {p:.2f} | {r:.2f} | {wr:.2f} |", flush=True)


if __name__ == "__main__":
    main()
