"""RBF-kernel MMD of the sign-text alignment (Sec. 3.3, Eq. 6), forward and backward as tiled Triton kernels.

Eq. 6 with x = f(p) (n_s sign embeddings, here n) and y = q (n_t text embeddings, here m), biased estimate:
    MMD^2 = S(x, x) / n^2 + S(y, y) / m^2 - 2 S(x, y) / (n m),   S(a, b) = sum_ij k(a_i, b_j),
    k(a, b) = sum over sigmas of exp(-||a - b||^2 / (2 sigma^2))   (a sum of RBF kernels; the paper leaves k open).
Three things live here, as in the Triton tutorials: the torch reference, the kernels, and the wrapper that picks one.

What the kernels save. The reference builds, per pair sum, the (n, m) distance matrix and per sigma the scaled
distances, their exponentials and a running sum: with 3 sigmas about 12 (n, m) fp32 matrices written and 15 read
(~27 n m floats), several kept alive by autograd, so its memory grows as n m. The forward kernel computes a tile of
distances in registers (||a||^2 + ||b||^2 - 2 a.b from one read of each tile), sums the kernel over sigmas and over
the tile, and writes one float per pair of tiles (n m / 4096 floats at 64 x 64 tiles). The backward kernel recomputes
that tile of distances rather than saving anything n x m, turns it into weights w_ij (dk/da_i = w_ij (a_i - b_j)),
and accumulates, chunk by chunk of features, with fp32 atomic adds into the (n, D) and (m, D) gradients:
    dS/da_i = sum_j w_ij (a_i - b_j) = (sum_j w_ij) a_i - (W b)_i        dS/db_j = (sum_i w_ij) b_j - (W^T a)_j
Memory: inputs, gradients and the tile partials; nothing of size n x m.
Expected gain (fp32, n = m = 16384, 3 sigmas, H100 datasheet): the reference's forward moves ~87 GB of (n, m)
matrices (~26 ms at 3.35 TB/s) on top of the 6 n m D FLOPs both do (0.93 TFLOP at D = 576: ~14 ms at 67 TFLOP/s),
so up to ~3x at D = 576 and little at D = 4096, where the FLOPs dominate. The backward (grad for x only) does 8 n m D
FLOPs: the distances again, then W b for S(x, y) and W x for S(x, x); S(y, y) is skipped when y needs no gradient.
Left on the table, for readability: S(x, x) and S(y, y) are symmetric and could skip half their tiles.

Precision as in nearest_code.py: fp32 operands in every tl.dot, "ieee" for fp32 inputs, "tf32" for fp16/bf16 inputs
(exact for their products; W is rounded to tf32 in the backward). The value is fp32; the tile partials are summed
in float64. Gradients are summed with atomics, so their last bits can change from run to run. NaN in x or y gives a
NaN value, as in the reference. Input checks are shared with nearest_code.py.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .nearest_code import check_blocks, check_inputs, check_launchable, dot_precision, interpreting, use_triton


@dataclass(frozen=True)
class Blocks:
    """Tile sizes: powers of two, >= 16 (tl.dot's minimum on a real compile). No autotuning."""
    n: int = 64  # rows of a per program
    m: int = 64  # rows of b per program
    k: int = 32  # feature columns per step (the dot product's K, and the backward's output chunk)
    num_warps: int = 4


GPU_BLOCKS = Blocks()
INTERPRETER_BLOCKS = Blocks(n=256, m=256, k=128)  # the interpreter runs each tile op in numpy: few, big tiles are fast


def gammas_of(sigmas, device):
    """sigmas: a non-empty sequence of positive python floats, or a 1-D tensor of them; constants (no gradient).
    Returns gamma = 1 / (2 sigma^2) as an fp32 tensor on `device`."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.dim() != 1 or sigmas.requires_grad:
            raise ValueError(f"mmd: sigmas tensor must be 1-D and not require grad, got shape {tuple(sigmas.shape)}"
                             f" requires_grad={sigmas.requires_grad}")
        sigmas = sigmas.tolist()
    sigmas = [float(s) for s in sigmas]
    if not sigmas or not all(0.0 < s < float("inf") for s in sigmas):
        raise ValueError(f"mmd: sigmas must be a non-empty list of positive finite numbers, got {sigmas}")
    return torch.tensor([1.0 / (2.0 * s * s) for s in sigmas], dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------- torch reference

def mmd_ref(x, y, sigmas):
    """Dense torch version of Eq. 6, differentiable by autograd. Computes in fp32 (float64 if an input is)."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    gammas = gammas_of(sigmas, x.device).tolist()

    def mean_k(a, b):  # read (n + m) D; write and read n m for the distances and twice n m per sigma
        d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.t()  # (n, D) @ (D, m) -> (n, m)
        return sum(torch.exp(-g * d2) for g in gammas).mean()

    return mean_k(x, x) + mean_k(y, y) - 2.0 * mean_k(x, y)  # Eq. 6


# ----------------------------------------------------------------------------- Triton kernels

@triton.jit
def _sq_dists(a_ptr, b_ptr, rows, cols, n_a, n_b, D, PRECISION: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N, BLOCK_M) tile of ||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j, one read of each input tile."""
    a_row = a_ptr + rows.to(tl.int64)[:, None] * D  # (BLOCK_N, 1)
    b_col = b_ptr + cols.to(tl.int64)[None, :] * D  # (1, BLOCK_M)
    ab = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    a2 = tl.zeros((BLOCK_N,), tl.float32)
    b2 = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D  # masks the tail when D is not a multiple of BLOCK_K
        a = tl.load(a_row + ks[None, :], mask=(rows < n_a)[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
        b = tl.load(b_col + ks[:, None], mask=k_ok[:, None] & (cols < n_b)[None, :], other=0.0)  # (BLOCK_K, BLOCK_M)
        a, b = a.to(tl.float32), b.to(tl.float32)
        ab = tl.dot(a, b, ab, input_precision=PRECISION)  # (BLOCK_N, BLOCK_K) @ (BLOCK_K, BLOCK_M)
        a2 += tl.sum(a * a, axis=1)
        b2 += tl.sum(b * b, axis=0)
    return a2[:, None] + b2[None, :] - 2.0 * ab


@triton.jit
def mmd_fwd_kernel(a_ptr, b_ptr, gamma_ptr, partial_ptr, n_a, n_b, D, num_sigmas,
                   PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """partial[i, j] = sum of k(a_r, b_c) over the rows r of tile i and c of tile j."""
    pid_i, pid_j = tl.program_id(0), tl.program_id(1)
    rows = pid_i * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_j * BLOCK_M + tl.arange(0, BLOCK_M)
    d2 = _sq_dists(a_ptr, b_ptr, rows, cols, n_a, n_b, D, PRECISION, BLOCK_N, BLOCK_M, BLOCK_K)
    k = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for s in range(num_sigmas):
        k += tl.exp(-tl.load(gamma_ptr + s) * d2)  # Eq. 6's k: sum over sigmas of exp(-||a - b||^2 / (2 sigma^2))
    k = tl.where((rows < n_a)[:, None] & (cols < n_b)[None, :], k, 0.0)
    tl.store(partial_ptr + pid_i * tl.num_programs(1) + pid_j, tl.sum(k))


@triton.jit
def mmd_bwd_kernel(a_ptr, b_ptr, gamma_ptr, g_ptr, ga_ptr, gb_ptr, scale, n_a, n_b, D, num_sigmas,
                   GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """ga += g scale dS/da, gb += g scale dS/db over one pair of tiles (g: the upstream gradient, read from memory)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok, col_ok = rows < n_a, cols < n_b
    d2 = _sq_dists(a_ptr, b_ptr, rows, cols, n_a, n_b, D, PRECISION, BLOCK_N, BLOCK_M, BLOCK_K)  # recomputed
    w = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for s in range(num_sigmas):
        gamma = tl.load(gamma_ptr + s)
        w += -2.0 * gamma * tl.exp(-gamma * d2)  # dk(a, b)/da = w (a - b)
    w = tl.where(row_ok[:, None] & col_ok[None, :], w, 0.0) * (tl.load(g_ptr) * scale)  # (BLOCK_N, BLOCK_M)
    w_rows, w_cols = tl.sum(w, axis=1), tl.sum(w, axis=0)  # (BLOCK_N,), (BLOCK_M,)
    a_row = a_ptr + rows.to(tl.int64)[:, None] * D  # (BLOCK_N, 1)
    b_row = b_ptr + cols.to(tl.int64)[:, None] * D  # (BLOCK_M, 1)
    for k0 in range(0, D, BLOCK_K):  # one chunk of BLOCK_K gradient columns at a time
        ks = k0 + tl.arange(0, BLOCK_K)
        a_mask, b_mask = row_ok[:, None] & (ks < D)[None, :], col_ok[:, None] & (ks < D)[None, :]
        a = tl.load(a_row + ks[None, :], mask=a_mask, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_K)
        b = tl.load(b_row + ks[None, :], mask=b_mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_K)
        if GRAD_A:  # sum_j w_ij (a_i - b_j): (BLOCK_N, BLOCK_M) @ (BLOCK_M, BLOCK_K)
            ga = w_rows[:, None] * a - tl.dot(w, b, input_precision=PRECISION)
            tl.atomic_add(ga_ptr + rows.to(tl.int64)[:, None] * D + ks[None, :], ga, mask=a_mask)
        if GRAD_B:  # sum_i w_ij (b_j - a_i): (BLOCK_M, BLOCK_N) @ (BLOCK_N, BLOCK_K)
            gb = w_cols[:, None] * b - tl.dot(tl.trans(w), a, input_precision=PRECISION)
            tl.atomic_add(gb_ptr + cols.to(tl.int64)[:, None] * D + ks[None, :], gb, mask=b_mask)


# ----------------------------------------------------------------------------- wrapper

def _pair_sum(a, b, gammas, blocks, partial):
    """S(a, b) = sum_ij k(a_i, b_j) as a float64 0-d tensor; partial: caller-owned (cdiv(n_a, BN), cdiv(n_b, BM))
    fp32 buffer, every entry of which the kernel overwrites (the tests poison it first)."""
    check_launchable(mmd_fwd_kernel)
    grid = (triton.cdiv(a.shape[0], blocks.n), triton.cdiv(b.shape[0], blocks.m))
    assert partial.shape == grid and partial.dtype == torch.float32 and partial.is_contiguous()
    mmd_fwd_kernel[grid](a, b, gammas, partial, a.shape[0], b.shape[0], a.shape[1], gammas.numel(),
                         PRECISION=dot_precision(a, b), BLOCK_N=blocks.n, BLOCK_M=blocks.m, BLOCK_K=blocks.k,
                         num_warps=blocks.num_warps)
    return partial.sum(dtype=torch.float64)


def _pair_grad(a, b, gammas, g, scale, ga, gb, blocks):
    """ga += g scale dS(a, b)/da (ga None: skip), gb += g scale dS(a, b)/db (gb None: skip); fp32 buffers."""
    check_launchable(mmd_bwd_kernel)
    grid = (triton.cdiv(a.shape[0], blocks.n), triton.cdiv(b.shape[0], blocks.m))
    mmd_bwd_kernel[grid](a, b, gammas, g, ga if ga is not None else a, gb if gb is not None else b, scale,
                         a.shape[0], b.shape[0], a.shape[1], gammas.numel(), GRAD_A=ga is not None,
                         GRAD_B=gb is not None, PRECISION=dot_precision(a, b), BLOCK_N=blocks.n, BLOCK_M=blocks.m,
                         BLOCK_K=blocks.k, num_warps=blocks.num_warps)


class MMD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, gammas, blocks):
        n, m = x.shape[0], y.shape[0]
        ctx.save_for_backward(x, y, gammas)
        ctx.blocks = blocks
        s = []
        for a, b in ((x, x), (y, y), (x, y)):
            grid = (triton.cdiv(a.shape[0], blocks.n), triton.cdiv(b.shape[0], blocks.m))
            s.append(_pair_sum(a, b, gammas, blocks, torch.empty(grid, dtype=torch.float32, device=x.device)))
        return (s[0] / n**2 + s[1] / m**2 - 2.0 * s[2] / (n * m)).float()  # Eq. 6

    @staticmethod
    def backward(ctx, grad_out):
        x, y, gammas = ctx.saved_tensors
        n, m = x.shape[0], y.shape[0]
        g = grad_out.detach().float().reshape(1).contiguous()  # read in-kernel: no device-to-host sync
        gx = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if ctx.needs_input_grad[0] else None
        gy = torch.zeros(y.shape, dtype=torch.float32, device=y.device) if ctx.needs_input_grad[1] else None
        # S(x, x) is symmetric, so dS/dx_i = 2 sum_j w_ij (x_i - x_j): the a-side alone, scaled by 2
        if gx is not None:
            _pair_grad(x, x, gammas, g, 2.0 / n**2, gx, None, ctx.blocks)
        if gy is not None:
            _pair_grad(y, y, gammas, g, 2.0 / m**2, gy, None, ctx.blocks)
        _pair_grad(x, y, gammas, g, -2.0 / (n * m), gx, gy, ctx.blocks)
        return (gx.to(x.dtype) if gx is not None else None, gy.to(y.dtype) if gy is not None else None, None, None)


def mmd(x, y, sigmas, blocks=None):
    """Biased MMD^2 of Eq. 6 between x (n, D) and y (m, D): a 0-d fp32 tensor, differentiable in x and y.

    sigmas: RBF bandwidths, a sequence of python floats or a 1-D tensor (constants, no gradient).
    blocks: a Blocks; None takes GPU_BLOCKS, or INTERPRETER_BLOCKS under TRITON_INTERPRET=1.
    """
    check_inputs("mmd", x, "x", y, "y")
    if x.shape[0] == 0:
        raise ValueError("mmd: x has no rows")
    if not use_triton(x):
        return mmd_ref(x, y, sigmas)
    blocks = blocks or (INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS)
    check_blocks("mmd", blocks)
    return MMD.apply(x, y, gammas_of(sigmas, x.device), blocks)
