"""One fine-tuning step's L_sim (forward + backward through the frozen LLM to W), with the prompt's opening served
from a KV cache computed once (signllm.prefix_cache, the default) vs fed every step, side by side in one run.

    python bench/bench_ft_step.py --ckpt out/ft [--batch 8 --reps 5 --threads 1]

Same sign sentences W and targets for both; prints the two losses (equal up to rounding) and the median times.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import train  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="out/ft")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, cfg = train.load_model(a.ckpt)
    data_cfg = cfg.data
    ds = data.SignDataset(data.load_split(data_cfg.root, "train"), data_cfg, train=False)
    batch = data.collate([ds[i] for i in range(a.batch)])
    with torch.no_grad():
        _, _, idx = model.vq.encode(batch)
        W, W_mask = model.sign_sentence(idx)
    times, losses = {True: [], False: []}, {}
    for _ in range(a.reps):
        for cached in (True, False):  # interleaved, so that load on the machine hits both alike
            model.cfg.prefix_cache = cached
            w = W.clone().requires_grad_()
            t0 = time.perf_counter()
            loss = model.L_sim(w, W_mask, batch["text"])
            loss.backward()
            times[cached].append(time.perf_counter() - t0)
            losses[cached] = loss.item()
    a_, b_ = statistics.median(times[True]), statistics.median(times[False])
    print(f"prompt opening: {len(model.prompt_before)} tokens; L_sim cached {losses[True]:.6f}, whole {losses[False]:.6f}")
    print(f"L_sim forward+backward, batch {a.batch}, {a.threads} thread(s), median of {a.reps}: prefix cache {a_:.3f} s, "
          f"whole prompt {b_:.3f} s, speed-up {b_ / a_:.2f}x")


if __name__ == "__main__":
    main()
