"""Nearest-codebook lookup of VQ-Sign (Sec. 3.2): j = argmin_i ||z_t - s_i||^2, fused into one Triton kernel.

Three things live here, as in the Triton tutorials: the torch reference, the kernel, and the wrapper that picks one.

What the kernel saves. The reference (the addmm form) writes the (N, M) score matrix ||c||^2 - 2 z.c and reads it
back for the argmin: 8NM bytes of traffic (fp32) on top of reading z and the codebook, in extra passes and launches,
plus an N x M allocation. The kernel keeps a tile of scores in registers, folds it into a running min/argmin and moves
on: it reads z and the codebook and writes 12 bytes per row (int64 index, fp32 distance), never the N x M matrix.
    paper scale     (N, M, d) = (4096, 256, 1024):   saves 8.4 MB of the reference's 26 MB (fp32 inputs)
    large codebook  (N, M, d) = (262144, 8192, 256): saves 17.2 GB of 17.5 GB and an 8.6 GB buffer
Both do the same 2NMd FLOPs, and at these shapes that is what bounds them (H100: 2NMd / 67 TFLOP/s fp32 = 16 ms
at the large shape, against 5 ms for the reference's 17.2 GB at 3.35 TB/s). So expect up to ~1.3x over addmm+argmin
in fp32 (more where the N M round trip is not hidden, e.g. against cdist, which also takes a sqrt pass), and the
allocation gone. ||z||^2 is the same for every code of a row: it is added to the winner only, after the search.

Precision: every tl.dot takes fp32 operands (the interpreter returns garbage for bf16 dots). fp32 inputs multiply in
IEEE fp32 ("ieee", as the reference does with TF32 off); fp16/bf16 inputs use "tf32", which is exact for their
products (a tf32 mantissa holds an fp16 or bf16 one) and runs on tensor cores. Accumulation is always fp32.

NaN: a row of z with a NaN gets idx 0 and dist NaN; a codebook row with a NaN is never chosen (its score counts as
+inf). nearest_code_ref does the same, so the two agree. dist can be slightly negative when z sits on a code: the
expansion cancels (the reference has the same rounding). No gradient flows through either function: VQ-Sign gathers
codebook[idx] itself and differentiates that.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of the kernel: powers of two, >= 16 (tl.dot's minimum on a real compile). No autotuning."""
    n: int = 64  # rows of z per program
    m: int = 64  # codes scored per step of the search
    k: int = 32  # feature columns per step of the dot product
    num_warps: int = 4


GPU_BLOCKS = Blocks()
INTERPRETER_BLOCKS = Blocks(n=256, m=256, k=128)  # the interpreter runs each tile op in numpy: few, big tiles are fast


# ----------------------------------------------------------------------------- torch reference

@torch.no_grad()
def nearest_code_ref(z, codebook):
    """Plain torch: (idx int64 (N,), dist fp32 (N,)). fp32 matmul under torch's default (TF32 off on CUDA)."""
    z, codebook = z.float(), codebook.float()  # read N d + M d
    score = torch.addmm(codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0)  # (N, d) @ (d, M) -> (N, M); write N M
    score.masked_fill_(score.isnan(), float("inf"))  # read N M twice, write N M bools: NaN never wins
    best, idx = score.min(1)  # read N M, write 2 N; ties -> lowest index
    dist = best + z.pow(2).sum(1)  # ||z||^2 added to the winner only, as in the kernel
    return idx, dist


# ----------------------------------------------------------------------------- Triton kernel

@triton.jit
def nearest_code_kernel(z_ptr, c_ptr, idx_ptr, dist_ptr, N, M, d,
                        PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) rows of z owned by this program
    row_ok = rows < N
    z_row = z_ptr + rows.to(tl.int64)[:, None] * d  # (BLOCK_N, 1) int64 offsets: N d may pass 2^31
    best = tl.full((BLOCK_N,), float("inf"), tl.float32)  # running min of ||c||^2 - 2 z.c
    best_idx = tl.zeros((BLOCK_N,), tl.int32)  # running argmin
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) codes of this step
        col_ok = cols < M
        c_col = c_ptr + cols.to(tl.int64)[None, :] * d  # (1, BLOCK_M)
        zc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)  # z . c
        c2 = tl.zeros((BLOCK_M,), tl.float32)  # ||c||^2, from the same loads as the dot
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < d  # masks the tail when d is not a multiple of BLOCK_K
            zt = tl.load(z_row + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
            ct = tl.load(c_col + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_M)
            zt, ct = zt.to(tl.float32), ct.to(tl.float32)
            zc = tl.dot(zt, ct, zc, input_precision=PRECISION)  # (BLOCK_N, BLOCK_K) @ (BLOCK_K, BLOCK_M)
            c2 += tl.sum(ct * ct, axis=0)
        score = c2[None, :] - 2.0 * zc  # (BLOCK_N, BLOCK_M) = ||z - c||^2 - ||z||^2
        score = tl.where(col_ok[None, :] & (score == score), score, float("inf"))  # padding and NaN never win
        tile_best = tl.min(score, axis=1)  # (BLOCK_N,)
        tile_idx = tl.min(tl.where(score == tile_best[:, None], cols[None, :], M), axis=1)  # lowest index of a tie
        better = tile_best < best  # strict: on a tie the earlier (lower-index) tile keeps the row
        best_idx = tl.where(better, tile_idx, best_idx)
        best = tl.where(better, tile_best, best)
    z2 = tl.zeros((BLOCK_N,), tl.float32)  # ||z||^2, for the winner only
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        zt = tl.load(z_row + ks[None, :], mask=row_ok[:, None] & (ks < d)[None, :], other=0.0).to(tl.float32)
        z2 += tl.sum(zt * zt, axis=1)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, best + z2, mask=row_ok)  # Sec. 3.2: ||z_t - s_j||^2 at j = argmin


# ----------------------------------------------------------------------------- wrapper

def interpreting():
    return bool(triton.knobs.runtime.interpret)  # reads TRITON_INTERPRET now, at call time


def use_triton(t):
    """Triton runs for CUDA tensors and whenever TRITON_INTERPRET=1; CPU tensors otherwise take the reference."""
    return interpreting() or t.is_cuda


def check_launchable(kernel):
    """@triton.jit chose compiler or interpreter when this module was imported; refuse a launch that now disagrees."""
    if isinstance(kernel, InterpretedFunction) != interpreting():
        raise RuntimeError(f"{kernel.__name__}: TRITON_INTERPRET changed after `kernels` was imported; "
                           "set it before the import (tests/conftest.py does)")


def check_inputs(name, a, a_name, b, b_name):
    """Clear errors, naming the tensor, for what the kernels do not handle."""
    for t, t_name in ((a, a_name), (b, b_name)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {t_name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}: {t_name} must be 2-D, got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{name}: {t_name} must be float32, float16 or bfloat16, got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: {t_name} must be contiguous (call .contiguous()), got strides {t.stride()}")
    if a.device != b.device:
        raise ValueError(f"{name}: {a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: feature sizes differ: {a_name} {tuple(a.shape)} vs {b_name} {tuple(b.shape)}")
    if b.shape[0] == 0:
        raise ValueError(f"{name}: {b_name} has no rows")


def dot_precision(a, b):
    return "ieee" if torch.float32 in (a.dtype, b.dtype) else "tf32"  # tf32 is exact for fp16/bf16 products


def check_blocks(name, blocks):
    for field in ("n", "m", "k"):
        v = getattr(blocks, field)
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name}: block size {field}={v} must be a power of two >= 16")


def _nearest_code_triton(z, codebook, idx, dist, blocks):
    """Launch into caller-owned buffers idx (N,) int64 and dist (N,) fp32 (the tests poison them first)."""
    check_launchable(nearest_code_kernel)
    N, d = z.shape
    grid = (triton.cdiv(N, blocks.n),)
    nearest_code_kernel[grid](z, codebook, idx, dist, N, codebook.shape[0], d, PRECISION=dot_precision(z, codebook),
                              BLOCK_N=blocks.n, BLOCK_M=blocks.m, BLOCK_K=blocks.k, num_warps=blocks.num_warps)
    return idx, dist


def nearest_code(z, codebook, blocks=None):
    """z (N, d), codebook (M, d) -> idx int64 (N,), dist fp32 (N,) = ||z - codebook[idx]||^2. Ties: lowest index.

    blocks: a Blocks; None takes GPU_BLOCKS, or INTERPRETER_BLOCKS under TRITON_INTERPRET=1. No gradient.
    """
    check_inputs("nearest_code", z, "z", codebook, "codebook")
    if not use_triton(z):
        return nearest_code_ref(z, codebook)
    blocks = blocks or (INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS)
    check_blocks("nearest_code", blocks)
    idx = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    dist = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    if z.shape[0] == 0:
        return idx, dist
    return _nearest_code_triton(z.detach(), codebook.detach(), idx, dist, blocks)
