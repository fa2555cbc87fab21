"""Benchmark of kernels/ (Sec. 3.2 nearest-code lookup, Sec. 3.3 Eq. 6 MMD): ours vs torch, on a GPU, in one command.

    python bench/bench_kernels.py [--reps 10]

On a GPU, side by side in one run, each row with the median time, the references' time as a ratio to ours, and ours
in TFLOP/s and GB/s and as a share of the card's peak (looked up by name below, or given with --peak-*):
  nearest_code vs torch.cdist(z, c).min(1) and vs the addmm form (nearest_code_ref), at the paper's codebook
  (M = 256 codes, d = 1024) for N = 4096 and 65536 rows, and at a large codebook (262144, 8192, 256);
  mmd vs mmd_ref (dense torch, autograd) over n sign tokens and m text tokens of a batch, (n, m) = (400, 200),
  (3000, 1500) and (16384, 16384), at D = 576 (SmolLM2) and 4096 (LLaMA-7B): forward, and forward + backward for x
  (as cra.py uses it), with the peak memory above the inputs.
Each shape runs with fp32 inputs under torch's TF32 switch off (both sides exact: our dots are FMAs) and on (both
sides in tf32: common.dot_precision follows torch's switch), and with bf16 inputs (ours: exact tf32 products).
Bytes counted are the least any implementation moves (inputs read once, outputs written once): the GB/s column is a
lower bound of our traffic. FLOPs are those of the dot products (2 per multiply-add).
Without a GPU it runs nothing of ours and says so, then times the torch references on the CPU.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from signllm_kernels.common import dot_precision  # noqa: E402
from signllm_kernels.mmd import mmd, mmd_ref  # noqa: E402
from signllm_kernels.nearest_code import nearest_code, nearest_code_ref  # noqa: E402

NC_SHAPES = [(4096, 256, 1024), (65536, 256, 1024), (262144, 8192, 256)]  # (N, M, d)
MMD_SHAPES = [(n, m, D) for n, m in ((400, 200), (3000, 1500), (16384, 16384)) for D in (576, 4096)]
SIGMAS = [0.5, 1.0, 2.0]
# Dense peaks (without sparsity) from NVIDIA's datasheets: H100 (SXM and PCIe) and H200 (SXM) from the H100 and H200
# product pages' spec tables, A100 from the A100 datasheet. (fp32 FMA FLOP/s, tf32 tensor-core FLOP/s, memory bytes/s);
# our fp16/bf16 inputs run tf32 dots, so tf32 is their peak too. Checked in order: the first key in the name wins.
PEAKS = [("H100 80GB HBM3", (67e12, 494.7e12, 3.35e12)), ("H100 PCIe", (51.2e12, 378e12, 2.0e12)),
         ("H200", (67e12, 494.7e12, 4.8e12)), ("A100-SXM4-80GB", (19.5e12, 156e12, 2.039e12)),
         ("A100 80GB PCIe", (19.5e12, 156e12, 1.935e12)), ("A100", (19.5e12, 156e12, 1.555e12))]  # 40 GB cards


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


def timed_or_why(fn, reps, **kwargs):
    """Median seconds, or the reason a reference could not run (no bf16 kernel, out of memory)."""
    try:
        return median_s_gpu(fn, reps, **kwargs)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        return f"n/a: {type(e).__name__}"
    finally:
        torch.cuda.empty_cache()


def ratio(t_ref, t_ours):
    return f"{t_ref * 1e3:9.3f} ({t_ref / t_ours:5.2f}x)" if isinstance(t_ref, float) else f"{t_ref:>18}"


def ours_vs_peak(flops, nbytes, t, precision, peaks):
    """TFLOP/s, GB/s, and each as % of the card's peak for this precision."""
    flop_peak = peaks[0] if precision == "ieee" else peaks[1]
    pct = (f"{100 * flops / t / flop_peak:5.1f}% {100 * nbytes / t / peaks[2]:5.1f}%" if flop_peak and peaks[2]
           else "  n/a    n/a")
    return f"{flops / t / 1e12:7.1f} {nbytes / t / 1e9:7.0f} {pct}"


CASES = [("fp32", torch.float32, False), ("fp32+tf32", torch.float32, True), ("bf16", torch.bfloat16, False)]


def gpu(args):
    name = torch.cuda.get_device_name()
    found = next((p for key, p in PEAKS if key in name), (None, None, None))
    peaks = (args.peak_fp32 or found[0], args.peak_tf32 or found[1], args.peak_bw or found[2])
    print(f"GPU: {name}, capability {torch.cuda.get_device_capability()}; peaks: fp32 "
          f"{peaks[0] and peaks[0] / 1e12} TFLOP/s, tf32 {peaks[1] and peaks[1] / 1e12} TFLOP/s, memory "
          f"{peaks[2] and peaks[2] / 1e12} TB/s ({'datasheet' if found[0] else 'unknown card: pass --peak-*'})")
    ours_head = f"{'TFLOP/s':>7} {'GB/s':>7} {'%flop':>6} {'%bw':>6}"
    print(f"\nnearest_code: ours vs cdist+min and vs addmm+min (nearest_code_ref); median of do_bench\n"
          f"{'N':>7} {'M':>5} {'d':>5} {'inputs':>9} {'dots':>5} | {'ours ms':>9} {'cdist ms (/ours)':>18} "
          f"{'addmm ms (/ours)':>18} | {ours_head}")
    for N, M, d in NC_SHAPES:
        for label, dtype, tf32 in CASES:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            z = torch.randn(N, d, device="cuda", dtype=dtype)
            c = torch.randn(M, d, device="cuda", dtype=dtype)
            ours = median_s_gpu(lambda: nearest_code(z, c), args.reps)
            refs = [timed_or_why(lambda: ref(z, c), args.reps) for ref in (cdist_min, nearest_code_ref)]
            flops, nbytes = 2.0 * N * M * d, (N + M) * d * z.element_size() + 12 * N  # read z, c; write idx, dist
            precision = dot_precision(z, c)
            print(f"{N:7d} {M:5d} {d:5d} {label:>9} {precision:>5} | {ours * 1e3:9.3f} {ratio(refs[0], ours)} "
                  f"{ratio(refs[1], ours)} | {ours_vs_peak(flops, nbytes, ours, precision, peaks)}")
            del z, c
            torch.cuda.empty_cache()

    print(f"\nmmd (sigmas {SIGMAS}): ours vs mmd_ref (dense torch); forward, then forward + backward for x; "
          f"peak MB above the inputs\n{'n':>6} {'m':>6} {'D':>5} {'inputs':>9} {'dots':>5} {'pass':>4} | "
          f"{'ours ms':>9} {'ref ms (/ours)':>18} | {ours_head} | {'MB ours':>8} {'MB ref':>8}")
    for n, m, D in MMD_SHAPES:
        for label, dtype, tf32 in CASES:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x = (torch.randn(n, D, device="cuda") / D**0.5).to(dtype).requires_grad_()
            y = (torch.randn(m, D, device="cuda") / D**0.5 + 0.1 / D**0.5).to(dtype)
            precision, elt = dot_precision(x, y), x.element_size()
            dots = 2.0 * (n * n + m * m + n * m) * D  # the forward's three pair sums
            for pass_, fn_of, flops, nbytes in (
                    ("fwd", lambda f: (lambda: f(x, y, SIGMAS)), dots, (n + m) * D * elt),
                    ("f+b", lambda f: mmd_fwd_bwd(f, x, y), dots + 4.0 * (n * n + n * m) * D,  # recompute + W @ b
                     2 * (n + m) * D * elt + n * D * 4)):  # read x, y twice, write dS/dx in fp32
                ours = median_s_gpu(fn_of(mmd), args.reps, grad_to_none=[x])
                ref = timed_or_why(fn_of(mmd_ref), args.reps, grad_to_none=[x])
                mem = (f"{peak_extra_mb(fn_of(mmd)):8.1f} {peak_extra_mb(fn_of(mmd_ref)):8.1f}" if pass_ == "f+b"
                       and isinstance(ref, float) else "")
                print(f"{n:6d} {m:6d} {D:5d} {label:>9} {precision:>5} {pass_:>4} | {ours * 1e3:9.3f} "
                      f"{ratio(ref, ours)} | {ours_vs_peak(flops, nbytes, ours, precision, peaks)} | {mem}")
            del x, y
            torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False


def cpu(args):
    print("No CUDA device: the GPU benchmark (our kernels vs torch) did NOT run; no figure below is for our kernels.")
    print(f"Below: the torch references on the CPU ({torch.get_num_threads()} threads), median of {args.reps} runs "
          "after one warm-up.\n")
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
    print(f"{'n':>6} {'m':>6} {'D':>5} | {'fwd':>9} {'fwd+bwd':>9}")
    for n, m, D in MMD_SHAPES:
        if n * n * D > 4096**2 * 576:  # 2 n^2 D per pair sum: beyond this, minutes per run on 2 cores
            print(f"{n:6d} {m:6d} {D:5d} | skipped: fwd+bwd is ~{6 * (n * n + m * m + 2 * n * m) * D / 1e12:.1f} TFLOP "
                  f"and the reference holds {(2 + 2 * len(SIGMAS)) * n * n * 4 / 2**30:.1f} GiB of (n, n) matrices")
            continue
        x = (torch.randn(n, D) / D**0.5).requires_grad_()
        y = torch.randn(m, D) / D**0.5 + 0.1 / D**0.5
        t_fwd = median_s_cpu(lambda: mmd_ref(x, y, SIGMAS), args.reps)
        t_fb = median_s_cpu(mmd_fwd_bwd(mmd_ref, x, y), args.reps)
        print(f"{n:6d} {m:6d} {D:5d} | {t_fwd * 1e3:9.1f} {t_fb * 1e3:9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--peak-fp32", type=float, help="peak fp32 FLOP/s of this GPU (FMA, no tensor cores)")
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
