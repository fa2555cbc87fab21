"""Nearest-codebook lookup of VQ-Sign (Sec. 3.2): j = argmin_i ||z_t - s_i||^2, fused into one Triton kernel.

Saves: the reference (addmm form) writes the (N, M) score matrix ||c||^2 - 2 z.c and reads it back for the argmin,
8NM bytes (fp32) and an N x M buffer on top of reading z and the codebook. The kernel folds each tile of scores into
a running min/argmin in registers and writes 12 bytes per row (int64 index, fp32 distance).
    paper scale     (N, M, d) = (4096, 256, 1024):   8.4 MB of the reference's 26 MB saved
    large codebook  (N, M, d) = (262144, 8192, 256): 17.2 GB of 17.5 GB saved, and an 8.6 GB buffer
Expected speed-up: both do 2NMd FLOPs, which bound them here (H100 fp32, large shape: 16 ms at 67 TFLOP/s, against
5 ms for the 17.2 GB at 3.35 TB/s), so up to (16 + 5) / 16 = ~1.3x over addmm+argmin; more over cdist (a sqrt pass).

NaN: a NaN row of z gets idx 0 and dist NaN; a NaN code is never chosen (as in nearest_code_ref). dist can be
slightly negative when z sits on a code (the expansion cancels). No gradient: VQ-Sign differentiates codebook[idx].
"""
import torch
import triton
import triton.language as tl

from .common import check_inputs, check_launchable, dot_precision, pick_blocks, use_triton

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
def nearest_code_kernel(z_ptr, c_ptr, idx_ptr, dist_ptr, N, M, d, PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
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
    blocks: a common.Blocks, or None for the default. No gradient."""
    check_inputs("nearest_code", z, "z", codebook, "codebook")
    if not use_triton(z):
        return nearest_code_ref(z, codebook)
    blocks = pick_blocks("nearest_code", blocks)
    idx = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    dist = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    if z.shape[0] == 0:
        return idx, dist
    return _nearest_code_triton(z.detach(), codebook.detach(), idx, dist, blocks)
