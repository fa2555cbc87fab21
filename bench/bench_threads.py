"""OpenMP's wait policy beside another busy program: the time of a small matrix product (one LLaMA layer's on a few
tokens, as generation and ft make them) with torch's default (OpenMP's bounded spin), PASSIVE (waiting threads sleep:
train.py's default) and ACTIVE (they spin), on a quiet machine and beside one busy loop at nice 19 and at nice 0,
side by side in one run. Each cell: the median of 3 processes, microseconds per product, 2 threads.

    python bench/bench_threads.py
"""
import os
import subprocess
import sys
import time

PRODUCT = r"""
import time, torch
torch.set_num_threads(2)
a, b = torch.randn(64, 576), torch.randn(576, 1536)
for _ in range(50):
    a @ b
t0 = time.perf_counter()
for _ in range(3000):
    a @ b
print(f"{(time.perf_counter() - t0) / 3000 * 1e6:.0f}")
"""
POLICIES = {"default (unset)": None, "PASSIVE": "PASSIVE", "ACTIVE": "ACTIVE"}


def micros(policy):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"OMP_WAIT_POLICY": policy} if policy else {})
    runs = sorted(int(subprocess.run([sys.executable, "-c", PRODUCT], env=env, capture_output=True, text=True).stdout)
                  for _ in range(3))
    return runs[1]


def main():
    rows = {}
    for load, nice in (("quiet", None), ("busy loop, nice 19", 19), ("busy loop, nice 0", 0)):
        busy = None if nice is None else subprocess.Popen(
            [sys.executable, "-c", f"import os\nos.nice({nice})\nwhile True:\n    pass\n"])
        time.sleep(0 if busy is None else 1)
        try:
            rows[load] = {name: micros(p) for name, p in POLICIES.items()}
        finally:
            if busy:
                busy.kill()
    print("| load | " + " | ".join(f"{n} us (x quiet)" for n in POLICIES) + " |\n|" + " --- |" * (len(POLICIES) + 1))
    for load, r in rows.items():
        print(f"| {load} | " + " | ".join(f"{r[n]} ({r[n] / rows['quiet'][n]:.2f}x)" for n in POLICIES) + " |")
    return rows


if __name__ == "__main__":
    main()
