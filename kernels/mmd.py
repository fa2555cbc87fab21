"""RBF-kernel MMD of the sign-text alignment (Sec. 3.3, Eq. 6), forward and backward as tiled Triton kernels.

Eq. 6, biased estimate, with x = f(p) (n sign embeddings) and y = q (m text embeddings):
    MMD^2 = S(x, x) / n^2 + S(y, y) / m^2 - 2 S(x, y) / (n m),   S(a, b) = sum_ij k(a_i, b_j),
    k(a, b) = sum over sigmas of exp(-||a - b||^2 / (2 sigma^2))   (a sum of RBF kernels; the paper leaves k open).
Saves: with 3 sigmas the reference writes ~12 and reads ~15 (n, m) fp32 matrices per pair sum. The forward kernel sums
a tile of k in registers and writes one float per pair of tiles; the backward recomputes the tile as weights w_ij
(dk/da_i = w_ij (a_i - b_j)) and adds with atomics dS/da_i = (sum_j w_ij) a_i - (W b)_i. dS/db is the same kernel
with a and b swapped (k is symmetric): one gradient per kernel keeps it from spilling, at the cost of computing the
cross tile twice when both x and y need a gradient (cra.py's y, the LLM's text embeddings, needs none).
Expected speed-up (fp32, n = m = 16384, D = 576, 3 sigmas, H100): the reference's forward moves ~87 GB of (n, m)
matrices (26 ms at 3.35 TB/s) beside the 6 n m D FLOPs both do (14 ms at 67 TFLOP/s): up to ~3x; little at D = 4096.
With TF32 allowed (both sides) the FLOPs take ~2 ms and the reference's traffic sets the ratio (unmeasured).
Not done, for readability: S(x, x) and S(y, y) could skip half their tiles. Precision: common.dot_precision (W is
rounded to tf32 whenever the dots are tf32); partials are summed in float64, gradients with atomics (last bits vary
run to run). NaN in: NaN out.
"""
import torch
import triton
import triton.language as tl

from .common import check_inputs, default_blocks, interpreting, launch, tile_dot

def gammas_of(sigmas, device):
    """sigmas: positive floats, or a 1-D tensor of them (constants) -> gamma = 1 / (2 sigma^2), fp32 on device."""
    if isinstance(sigmas, torch.Tensor) and (sigmas.dim() != 1 or sigmas.requires_grad):
        raise ValueError(f"mmd: sigmas must be 1-D and constant, got {tuple(sigmas.shape)}, {sigmas.requires_grad=}")
    if not len(sigmas) or not all(0.0 < float(s) < float("inf") for s in sigmas):
        raise ValueError(f"mmd: sigmas must be a non-empty list of positive finite numbers, got {sigmas}")
    return torch.tensor([1.0 / (2.0 * s * s) for s in map(float, sigmas)], dtype=torch.float32, device=device)


def mmd_ref(x, y, sigmas):
    """Dense torch version of Eq. 6, differentiable by autograd. Computes in fp32 (float64 if an input is)."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    gammas = gammas_of(sigmas, x.device).tolist()

    def mean_k(a, b):  # read (n + m) D; write and read n m for the distances and twice n m per sigma
        d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.t()  # (n, D) @ (D, m) -> (n, m)
        return sum(torch.exp(-g * d2) for g in gammas).mean()

    return mean_k(x, x) + mean_k(y, y) - 2.0 * mean_k(x, y)  # Eq. 6


@triton.jit(do_not_specialize=["n_a", "n_b", "num_sigmas"])  # compiled per dtype, precision and D % 16 == 0 only
def mmd_fwd_kernel(a_ptr, b_ptr, gamma_ptr, partial_ptr, n_a, n_b, D, num_sigmas,
                   PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """partial[i, j] = sum of k(a_r, b_c) over the rows r of tile i and c of tile j. GPU tiles (common.GPU_BLOCKS):
    48-161 registers a thread and no spill on sm_80 and sm_90; 64 x 64 x 32 with 4 warps spilled up to 164 bytes."""
    pid_i, pid_j = tl.program_id(0), tl.program_id(1)
    rows = pid_i * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_j * BLOCK_M + tl.arange(0, BLOCK_M)
    ab, a2, b2 = tile_dot(a_ptr, b_ptr, rows, cols, n_a, n_b, D, PRECISION, BLOCK_N, BLOCK_M, BLOCK_K)
    d2 = a2[:, None] + b2[None, :] - 2.0 * ab  # ||a_i - b_j||^2
    k = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for s in range(num_sigmas):
        k += tl.exp(-tl.load(gamma_ptr + s) * d2)  # Eq. 6's k: sum over sigmas of exp(-||a - b||^2 / (2 sigma^2))
    k = tl.where((rows < n_a)[:, None] & (cols < n_b)[None, :], k, 0.0)
    tl.store(partial_ptr + pid_i * tl.num_programs(1) + pid_j, tl.sum(k))


@triton.jit(do_not_specialize=["n_a", "n_b", "num_sigmas"])
def mmd_bwd_kernel(a_ptr, b_ptr, gamma_ptr, g_ptr, ga_ptr, scale, n_a, n_b, D, num_sigmas, PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """ga += g scale dS(a, b)/da over one pair of tiles (g: the upstream gradient, read from memory). GPU tiles: 69-180
    registers a thread and no spill on sm_80 and sm_90; the 64 x 64 tile w stays in registers through the loop over D.
    The old kernel, dS/da and dS/db in one (w and its transpose), spilled up to 1.8 KB at 64 x 64 x 32 with 4 warps;
    at these tiles it used 244 registers, and its dS/db-only variant spilled 8 bytes on sm_90."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    ab, a2, b2 = tile_dot(a_ptr, b_ptr, rows, cols, n_a, n_b, D, PRECISION, BLOCK_N, BLOCK_M, BLOCK_K)
    d2 = a2[:, None] + b2[None, :] - 2.0 * ab  # ||a_i - b_j||^2, recomputed
    w = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for s in range(num_sigmas):
        gamma = tl.load(gamma_ptr + s)
        w += -2.0 * gamma * tl.exp(-gamma * d2)  # dk(a, b)/da = w (a - b)
    w = tl.where((rows < n_a)[:, None] & (cols < n_b)[None, :], w, 0.0) * (tl.load(g_ptr) * scale)
    w_rows = tl.sum(w, axis=1)  # (BLOCK_N,)
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * D + tl.arange(0, BLOCK_K)[None, :]  # (BLOCK_N, BLOCK_K)
    b_ptrs = b_ptr + cols.to(tl.int64)[:, None] * D + tl.arange(0, BLOCK_K)[None, :]  # (BLOCK_M, BLOCK_K)
    ga_ptrs = ga_ptr + rows.to(tl.int64)[:, None] * D + tl.arange(0, BLOCK_K)[None, :]
    for k0 in range(0, D, BLOCK_K):  # one chunk of BLOCK_K gradient columns at a time
        k_ok = k0 + tl.arange(0, BLOCK_K) < D
        a_mask = (rows < n_a)[:, None] & k_ok[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptrs, mask=(cols < n_b)[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        ga = w_rows[:, None] * a - tl.dot(w, b, input_precision=PRECISION)  # sum_j w_ij (a_i - b_j): (BN,BM) @ (BM,BK)
        tl.atomic_add(ga_ptrs, ga, mask=a_mask)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
        ga_ptrs += BLOCK_K


def _pair_sum(a, b, gammas, blocks, partial=None):
    """S(a, b) = sum_ij k(a_i, b_j) as a float64 0-d tensor. partial: an optional fp32 buffer of one float per pair
    of tiles, (cdiv(n_a, BN), cdiv(n_b, BM)); the kernel overwrites every entry (the tests poison it first)."""
    grid = (triton.cdiv(a.shape[0], blocks.n), triton.cdiv(b.shape[0], blocks.m))
    partial = torch.empty(grid, dtype=torch.float32, device=a.device) if partial is None else partial
    launch(mmd_fwd_kernel, grid, blocks, a, b, gammas, partial, a.shape[0], b.shape[0], a.shape[1], gammas.numel())
    return partial.sum(dtype=torch.float64)


def _pair_grad(a, b, gammas, g, scale, ga, blocks):
    """ga += g scale dS(a, b)/da, ga an fp32 buffer. dS(a, b)/db is _pair_grad(b, a, ...): k is symmetric."""
    grid = (triton.cdiv(a.shape[0], blocks.n), triton.cdiv(b.shape[0], blocks.m))
    launch(mmd_bwd_kernel, grid, blocks, a, b, gammas, g, ga, scale, a.shape[0], b.shape[0], a.shape[1],
           gammas.numel())


class MMD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, gammas, blocks):
        ctx.save_for_backward(x, y, gammas)
        ctx.blocks = blocks
        s_xx, s_yy, s_xy = (_pair_sum(a, b, gammas, blocks) for a, b in ((x, x), (y, y), (x, y)))
        return (s_xx / len(x)**2 + s_yy / len(y)**2 - 2.0 * s_xy / (len(x) * len(y))).float()  # Eq. 6

    @staticmethod
    def backward(ctx, grad_out):
        x, y, gammas = ctx.saved_tensors
        n, m = x.shape[0], y.shape[0]
        g = grad_out.detach().float().reshape(1).contiguous()  # read in-kernel: no device-to-host sync
        grads = [None, None]
        for i, (a, b, n_a) in enumerate(((x, y, n), (y, x, m))):
            if ctx.needs_input_grad[i]:
                ga = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
                _pair_grad(a, a, gammas, g, 2.0 / n_a**2, ga, ctx.blocks)  # S(a, a) is symmetric: twice the a-side
                _pair_grad(a, b, gammas, g, -2.0 / (n * m), ga, ctx.blocks)  # S(x, y) = S(y, x): k is symmetric
                grads[i] = ga.to(a.dtype)
        return grads[0], grads[1], None, None


def mmd(x, y, sigmas, blocks=None):
    """Biased MMD^2 of Eq. 6 between x (n, D) and y (m, D): a 0-d fp32 tensor, differentiable in x and y.
    sigmas: RBF bandwidths, floats or a 1-D tensor (constants). blocks: a common.Blocks, or None for the default."""
    check_inputs("mmd", x, "x", y, "y")
    if x.shape[0] == 0:
        raise ValueError("mmd: x has no rows")
    if not (x.is_cuda or interpreting()):  # CPU tensors take the reference, unless TRITON_INTERPRET=1
        return mmd_ref(x, y, sigmas)
    return MMD.apply(x, y, gammas_of(sigmas, x.device), blocks or default_blocks())
