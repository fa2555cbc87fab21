"""Benchmark of kernels/ (Sec. 3.2 nearest-code lookup, Sec. 3.3 Eq. 6 MMD): ours vs the torch references.

On a GPU, side by side in one run:
  nearest_code vs torch.cdist(...).min(1) and vs the addmm form (nearest_code_ref), fp32 and bf16, at
  (N, M, d) = (4096, 256, 1024) (paper scale), (65536, 1024, 1024), (262144, 8192, 256): median time, achieved FLOP/s
  and bytes/s, and the share of the roofline floor max(FLOPs / peak FLOP/s, bytes / peak bytes/s), counted first.
  mmd vs mmd_ref at n = m in {512, 4096, 16384}, D in {576, 4096}: forward and forward+backward median time (grad for
  x only, as cra.py uses it) and peak memory above the inputs.
Without a GPU it times the torch references on the CPU at the shapes a 2-core machine can hold, and says so.

Run: python bench/bench_kernels.py [--reps 10]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from signllm_kernels.mmd import mmd, mmd_ref  # noqa: E402
from signllm_kernels.nearest_code import nearest_code, nearest_code_ref  # noqa: E402

NC_SHAPES = [(4096, 256, 1024), (65536, 1024, 1024), (262144, 8192, 256)]
MMD_SHAPES = [(n, D) for n in (512, 4096, 16384) for D in (576, 4096)]
SIGMAS = [0.5, 1.0, 2.0]
# Dense peaks from NVIDIA's datasheets (no sparsity): fp32 FLOP/s (our fp32 path, IEEE FMAs), tf32 tensor-core FLOP/s
# (our fp16/bf16 path), memory bytes/s. Override with --peak-fp32 / --peak-tf32 / --peak-bw on other cards.
PEAKS = {"H100 80GB HBM3": (67e12, 494.7e12, 3.35e12), "H100 PCIe": (51.2e12, 378e12, 2.0e12),
         "H200": (67e12, 494.7e12, 4.8e12)}


def median_s_cpu(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def median_s_gpu(fn, reps, grad_to_none=None):
    import triton.testing
    return triton.testing.do_bench(fn, rep=max(25, 10 * reps), grad_to_none=grad_to_none, return_mode="median") / 1e3


def peak_extra_mb(fn):
    """Peak CUDA memory during fn, above what was allocated before it (the inputs), in MB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def cdist_min(z, c):
    return torch.cdist(z, c).min(1)  # (N, M) Euclidean distances, then min and argmin


def mmd_fwd_bwd(fn, x, y):
    def run():
        fn(x, y, SIGMAS).backward()
    return run


def gpu(args):
    name = torch.cuda.get_device_name()
    peaks = next((p for key, p in PEAKS.items() if key in name), (None, None, None))
    fp32_peak, tf32_peak, bw_peak = (args.peak_fp32 or peaks[0], args.peak_tf32 or peaks[1], args.peak_bw or peaks[2])
    print(f"GPU: {name}; peaks (TFLOP/s, TB/s): fp32 {fp32_peak and fp32_peak / 1e12}, tf32 "
          f"{tf32_peak and tf32_peak / 1e12}, memory {bw_peak and bw_peak / 1e12} "
          f"({'datasheet' if peaks[0] else 'unknown card: pass --peak-*'})")
    print("\nnearest_code: median ms (speed-up of ours); ours: TFLOP/s, GB/s, % of the roofline floor")
    print(f"{'N':>7} {'M':>5} {'d':>5} {'dtype':>8} | {'ours':>8} {'cdist+min':>14} {'addmm ref':>14} | "
          f"{'TFLOP/s':>8} {'GB/s':>7} {'roofline':>8}")
    for N, M, d in NC_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            z = torch.randn(N, d, device="cuda", dtype=dtype)
            c = torch.randn(M, d, device="cuda", dtype=dtype)
            flops = 2.0 * N * M * d  # the z.c products; ||c||^2 and the argmin are O(M d + N M) more
            nbytes = (N + M) * d * z.element_size() + 12 * N  # read z and the codebook once, write idx and dist
            peak = fp32_peak if dtype == torch.float32 else tf32_peak
            ours = median_s_gpu(lambda: nearest_code(z, c), args.reps)
            row = []
            for ref in (cdist_min, nearest_code_ref):
                try:
                    t = median_s_gpu(lambda: ref(z, c), args.reps)
                    row.append(f"{t * 1e3:8.3f} ({t / ours:4.1f}x)")
                except (RuntimeError, torch.OutOfMemoryError) as e:  # e.g. cdist without a bf16 kernel
                    row.append(f"{'n/a: ' + type(e).__name__:>14}")
                torch.cuda.empty_cache()
            floor = max(flops / peak, nbytes / bw_peak) if peak and bw_peak else float("nan")
            print(f"{N:7d} {M:5d} {d:5d} {str(dtype)[6:]:>8} | {ours * 1e3:8.3f} {row[0]} {row[1]} | "
                  f"{flops / ours / 1e12:8.1f} {nbytes / ours / 1e9:7.0f} {100 * floor / ours:7.0f}%")
            del z, c
            torch.cuda.empty_cache()
    print(f"\nmmd (sigmas {SIGMAS}, fp32, grad for x only): median ms (speed-up of ours), peak MB above the inputs")
    print(f"{'n=m':>6} {'D':>5} | {'fwd ours':>9} {'fwd ref':>16} | {'f+b ours':>9} {'f+b ref':>16} | "
          f"{'MB ours':>8} {'MB ref':>8}")
    for n, D in MMD_SHAPES:
        x = (torch.randn(n, D, device="cuda") / D**0.5).requires_grad_()
        y = torch.randn(n, D, device="cuda") / D**0.5 + 0.1 / D**0.5
        t_fwd = [median_s_gpu(lambda: f(x, y, SIGMAS), args.reps) for f in (mmd, mmd_ref)]
        t_fb = [median_s_gpu(mmd_fwd_bwd(f, x, y), args.reps, grad_to_none=[x]) for f in (mmd, mmd_ref)]
        mem = [peak_extra_mb(mmd_fwd_bwd(f, x, y)) for f in (mmd, mmd_ref)]
        print(f"{n:6d} {D:5d} | {t_fwd[0] * 1e3:9.3f} {t_fwd[1] * 1e3:9.3f} ({t_fwd[1] / t_fwd[0]:4.1f}x) | "
              f"{t_fb[0] * 1e3:9.3f} {t_fb[1] * 1e3:9.3f} ({t_fb[1] / t_fb[0]:4.1f}x) | {mem[0]:8.1f} {mem[1]:8.1f}")
        del x, y
        torch.cuda.empty_cache()


def cpu(args):
    print("No CUDA device: the GPU part (the Triton kernels, compiled) did NOT run. Below: the torch references")
    print(f"on the CPU ({torch.get_num_threads()} threads), median of {args.reps} runs after one warm-up.\n")
    print("nearest_code references, fp32: median ms")
    print(f"{'N':>7} {'M':>5} {'d':>5} | {'cdist+min':>10} {'addmm ref':>10} {'ratio':>6}")
    for N, M, d in NC_SHAPES:
        if N * M * 4 > 2**30:  # the (N, M) score matrix alone
            print(f"{N:7d} {M:5d} {d:5d} | skipped: the references' (N, M) fp32 matrix is {N * M * 4 / 2**30:.1f} GiB "
                  f"and 2 N M d = {2 * N * M * d / 1e12:.1f} TFLOP")
            continue
        z, c = torch.randn(N, d), torch.randn(M, d)
        t_cdist = median_s_cpu(lambda: cdist_min(z, c), args.reps)
        t_ref = median_s_cpu(lambda: nearest_code_ref(z, c), args.reps)
        print(f"{N:7d} {M:5d} {d:5d} | {t_cdist * 1e3:10.1f} {t_ref * 1e3:10.1f} {t_cdist / t_ref:5.2f}x")
    print(f"\nmmd_ref (sigmas {SIGMAS}, fp32, grad for x only): median ms")
    print(f"{'n=m':>6} {'D':>5} | {'fwd':>9} {'fwd+bwd':>9}")
    for n, D in MMD_SHAPES:
        if n * D > 4096 * 576:  # 2 n^2 D per pair sum: beyond this, minutes per run on 2 cores
            print(f"{n:6d} {D:5d} | skipped: fwd+bwd is ~{12 * n * n * D / 1e12:.1f} TFLOP and the reference holds "
                  f"{(2 + 2 * len(SIGMAS)) * n * n * 4 / 2**30:.1f} GiB of (n, m) matrices per pair sum")
            continue
        x = (torch.randn(n, D) / D**0.5).requires_grad_()
        y = torch.randn(n, D) / D**0.5 + 0.1 / D**0.5
        t_fwd = median_s_cpu(lambda: mmd_ref(x, y, SIGMAS), args.reps)
        t_fb = median_s_cpu(mmd_fwd_bwd(mmd_ref, x, y), args.reps)
        print(f"{n:6d} {D:5d} | {t_fwd * 1e3:9.1f} {t_fb * 1e3:9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--peak-fp32", type=float, help="peak fp32 FLOP/s of this GPU")
    parser.add_argument("--peak-tf32", type=float, help="peak dense tf32 tensor-core FLOP/s of this GPU")
    parser.add_argument("--peak-bw", type=float, help="peak memory bytes/s of this GPU")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("bench_kernels.py: unset TRITON_INTERPRET; the interpreter checks correctness, it is not benchmarked")
    torch.manual_seed(0)
    if torch.cuda.is_available():
        gpu(args)
    else:
        cpu(args)
