"""Benchmark of cra.py (Sec. 3.3 codebook reconstruction), CPU only.

1. our sparse log-domain `cra.sinkhorn` vs POT's `ot.unbalanced.sinkhorn_unbalanced` (dense, plain domain) on the
   search's own problems: every size r of one search, recorded as the search poses them. Both run the same number of
   iterations (the number ours needed to reach the tolerance); median of 5 timings each, the largest plan difference.
2. the search on VQ-Sign tokens of the synthetic demo (out/tokens.json, see below): its entropy curve and choice.
3. planted lexicon (with prefix families and noise): per size r, the words the plan keeps against the first n merges
   (the same number of words) and against all r*m merges (which is also what the even split keeps), the search's
   choice, and the same figures with VOLT's sign of the cost (cfg.cost = "volt").
4. search time for 1k / 10k (/ 100k with --full) planted sequences.

    python bench/bench_cra.py              # about 15 seconds on a 2-core CPU
    python bench/bench_cra.py --full

out/tokens.json: {"M": 64, "train": [[VQ index, ...], ...]}, the training videos tokenized as train.py's cra stage
does (after the codebook refit); it is made by running the vq stage and tokenize_videos, and is not committed.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter

import numpy as np
import ot
import ot.unbalanced

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import cra  # noqa: E402
from test_cra import even_split, planted_corpus, precision_recall  # noqa: E402  (the tests' generators)


def recorded_problems(seqs, cfg):
    """The (a, b, row, col, cost, eps, tau) of every Sinkhorn call one search makes, and the search's result."""
    calls, solve = [], cra.sinkhorn
    cra.sinkhorn = lambda *args, **kw: (calls.append(args[:7]), solve(*args, **kw))[1]
    try:
        res = cra.search(seqs, cfg)
    finally:
        cra.sinkhorn = solve
    return calls, res


def sinkhorn_vs_pot(name, seqs, cfg, repeats=5):
    calls, _ = recorded_problems(seqs, cfg)
    print(f"\n{name}: {len(calls)} problems (r = 0..{len(calls) - 1})\n")
    print("| r | characters x words | pairs | iterations | ours (ms) | POT (ms) | POT / ours | max abs plan diff |")
    print("|---|---|---|---|---|---|---|---|")
    total_ours, total_pot = 0.0, 0.0
    for r, (a, b, row, col, cost, eps, tau) in enumerate(calls):
        _, _, iters = cra.sinkhorn(a, b, row, col, cost, eps, tau, n_iters=100000, tol=cfg.sinkhorn_tol)
        M = np.full((len(a), len(b)), np.inf)
        M[row, col] = cost
        ours, pots = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            P, _, _ = cra.sinkhorn(a, b, row, col, cost, eps, tau, n_iters=iters, tol=0)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = ot.unbalanced.sinkhorn_unbalanced(a, b, M, eps, (math.inf, tau), numItermax=iters, stopThr=0)
            pots.append(time.perf_counter() - t)
        t_ours, t_pot = statistics.median(ours), statistics.median(pots)
        total_ours, total_pot = total_ours + t_ours, total_pot + t_pot
        diff = np.abs(ref[row, col] - P).max()
        print(f"| {r} | {len(a)} x {len(b)} | {len(row)} | {iters} | {t_ours * 1e3:.2f} | {t_pot * 1e3:.2f} | "
              f"{t_pot / t_ours:.1f}x | {diff:.1e} |", flush=True)
    print(f"| all | | | | {total_ours * 1e3:.1f} | {total_pot * 1e3:.1f} | {total_pot / total_ours:.1f}x | |")


def planted_table(seqs, lexicon, cfg):
    cands = cra.bpe_candidates(seqs, cfg.max_candidates, cfg.min_count)
    char_counts = Counter(c for s in seqs for c in s)
    M = cfg.n_chars
    print("| r | merges | OT readout: words, P, R | first n merges: P, R | all r*m merges = even split: P, R | "
          "VOLT's cost: words, P, R |")
    print("|---|---|---|---|---|---|")
    for r in range(1, cfg.R + 1):
        vocab = [(c,) for c in range(M + 1)] + [w for w, _ in cands[: r * cfg.m]]
        counts = [char_counts[c] for c in range(M + 1)] + [n for _, n in cands[: r * cfg.m]]
        out = []
        for cost in ("paper", "volt"):
            used, share, _, _, _ = cra.transport(vocab, counts, char_counts, Config(cfg, cost=cost))
            out.append([vocab[j] for j, s in zip(used, share) if j > M and s >= cfg.keep_ratio])
        first_n = [w for w, _ in cands[:len(out[0])]]
        (p, rc), (pb, rb) = precision_recall(out[0], lexicon), precision_recall(first_n, lexicon)
        (pa, ra), (pv, rv) = precision_recall(vocab[M + 1:], lexicon), precision_recall(out[1], lexicon)
        print(f"| {r} | {len(vocab) - M - 1} | {len(out[0])}, {p:.2f}, {rc:.2f} | {pb:.2f}, {rb:.2f} | {pa:.2f}, "
              f"{ra:.2f} | {len(out[1])}, {pv:.2f}, {rv:.2f} |", flush=True)


def Config(cfg, **kw):
    return cra.CRAConfig(**{**cfg.__dict__, **kw})


def search_report(name, seqs, cfg, lexicon=None):
    for rule in ("muv", "eq4"):
        res = cra.search(seqs, Config(cfg, size_rule=rule))
        print(f"\n{name}, size rule {rule}:")
        print("\n".join("    " + line for line in res.describe()))
        if lexicon is not None:
            p, r = precision_recall(res.vocab[cfg.n_chars + 1:], lexicon)
            print(f"    chosen vs planted: {len(res.vocab) - cfg.n_chars - 1} words, {len(lexicon)} planted, "
                  f"precision {p:.2f}, recall {r:.2f}")
    if lexicon is not None:  # the same code with the plan replaced by the even split of the word marginal
        solve, cra.sinkhorn = cra.sinkhorn, even_split
        try:
            res = cra.search(seqs, cfg)
        finally:
            cra.sinkhorn = solve
        p, r = precision_recall(res.vocab[cfg.n_chars + 1:], lexicon)
        print(f"\n{name}, even split instead of the plan: chosen r={res.chosen_r}, "
              f"{len(res.vocab) - cfg.n_chars - 1} words, precision {p:.2f}, recall {r:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--tokens", default="out/tokens.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, POT {ot.__version__}; defaults {cra.CRAConfig()}")
    lexicon, _, raw = planted_corpus(3000, rng)
    planted = [cra.preprocess(s, 256) for s in raw]
    demo = None
    if os.path.exists(args.tokens):
        with open(args.tokens) as f:
            tokens = json.load(f)
        demo = ([cra.preprocess(s, tokens["M"]) for s in tokens["train"]], cra.CRAConfig(n_chars=tokens["M"]))
    else:
        print(f"({args.tokens} not found: the demo rows are skipped)")

    print("\n## 1. cra.sinkhorn vs ot.unbalanced.sinkhorn_unbalanced on the search's problems (median of 5)")
    if demo:
        sinkhorn_vs_pot("synthetic demo tokens, R = 16", *demo)
    sinkhorn_vs_pot("planted lexicon, 3000 sequences, R = 10", planted, cra.CRAConfig(n_chars=256, R=10))

    print("\n## 2. the search on the synthetic demo's tokens")
    if demo:
        search_report("synthetic demo", *demo)

    print("\n## 3. planted lexicon: 40 words + 10 that extend one of them, noise 1%, 3000 sequences\n")
    cfg = cra.CRAConfig(n_chars=256, R=10)
    planted_table(planted, lexicon, cfg)
    search_report("planted lexicon", planted, cfg, lexicon)

    print("\n## 4. search time (seconds, one run each)\n")
    print("| sequences | characters | candidates | total | chosen r | words kept |")
    print("|---|---|---|---|---|---|")
    for n in (1000, 10000) + ((100000,) if args.full else ()):
        _, _, raw = planted_corpus(n, rng, n_words=400, n_ext=100)
        seqs = [cra.preprocess(s, 256) for s in raw]
        t = time.perf_counter()
        res = cra.search(seqs, cra.CRAConfig(n_chars=256, m=125, R=8, max_candidates=1000))
        print(f"| {n:,} | {sum(map(len, seqs)):,} | 1,000 | {time.perf_counter() - t:.1f} | {res.chosen_r} | "
              f"{len(res.vocab) - 257} |", flush=True)


if __name__ == "__main__":
    main()
