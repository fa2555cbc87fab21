"""Nearest-codebook lookup of VQ-Sign (Sec. 3.2): j = argmin_i ||z_t - s_i||^2, fused into one Triton kernel.

Saves: the reference (addmm form) writes the (N, M) scores ||c||^2 - 2 z.c and reads them back for the argmin, 8NM
bytes (fp32) and an N x M buffer. The kernel keeps a running min/argmin in registers and writes 12 bytes per row.
    paper scale     (N, M, d) = (4096, 256, 1024):   8.4 MB of the reference's 26 MB saved
    large codebook  (N, M, d) = (262144, 8192, 256): 17.2 GB of 17.5 GB saved, and an 8.6 GB buffer
Expected speed-up: the 2NMd FLOPs of both bound them (H100 fp32, large shape: 16 ms at 67 TFLOP/s, against 5 ms for
the 17.2 GB at 3.35 TB/s), so up to ~1.3x over addmm+argmin; more over cdist (a sqrt pass). With TF32 allowed (for
both: common.dot_precision) the FLOPs take 2.2 ms at 495 TFLOP/s and the saved bytes dominate: up to ~3x. A NaN row
of z gets idx 0 and dist NaN; a NaN code is never chosen; dist can be slightly negative when z sits on a code.
"""
import torch
import triton
import triton.language as tl

from .common import check_inputs, default_blocks, interpreting, launch, tile_dot

@torch.no_grad()
def nearest_code_ref(z, codebook):
    """Plain torch: (idx int64 (N,), dist fp32 (N,)). fp32 matmul under torch's default (TF32 off on CUDA)."""
    z, codebook = z.float(), codebook.float()  # read N d + M d
    score = torch.addmm(codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0)  # (N, d) @ (d, M) -> (N, M); write N M
    score.masked_fill_(score.isnan(), float("inf"))  # read N M twice, write N M bools: NaN never wins
    best, idx = score.min(1)  # read N M, write 2 N; ties -> lowest index
    dist = best + z.pow(2).sum(1)  # ||z||^2 added to the winner only, as in the kernel
    return idx, dist


@triton.jit(do_not_specialize=["N", "M"])  # compiled per dtype, precision and d % 16 == 0 only
def nearest_code_kernel(z_ptr, c_ptr, idx_ptr, dist_ptr, N, M, d, PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """BLOCK_N rows of z per program against all M codes, BLOCK_M a step. GPU tiles (common.GPU_BLOCKS): 67-209
    registers a thread and no spill on sm_80 and sm_90 (209: fp32 FMAs, d not a multiple of 16, on sm_80, where
    64 x 64 x 32 with 4 warps spilled 1.2 KB); the 64 x 64 score tile is 16 registers a thread with 8 warps."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) rows of z owned by this program
    best = tl.full((BLOCK_N,), float("inf"), tl.float32)  # running min of ||c||^2 - 2 z.c
    best_idx = tl.zeros((BLOCK_N,), tl.int32)  # running argmin
    z2 = tl.zeros((BLOCK_N,), tl.float32)  # ||z||^2, added to the winner only
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) codes of this step
        zc, z2, c2 = tile_dot(z_ptr, c_ptr, rows, cols, N, M, d, PRECISION, BLOCK_N, BLOCK_M, BLOCK_K)
        score = c2[None, :] - 2.0 * zc  # (BLOCK_N, BLOCK_M) = ||z - c||^2 - ||z||^2
        score = tl.where((cols < M)[None, :] & (score == score), score, float("inf"))  # padding and NaN never win
        tile_best = tl.min(score, axis=1)  # (BLOCK_N,)
        tile_idx = tl.min(tl.where(score == tile_best[:, None], cols[None, :], M), axis=1)  # lowest index of a tie
        better = tile_best < best  # strict: on a tie the earlier (lower-index) tile keeps the row
        best_idx = tl.where(better, tile_idx, best_idx)
        best = tl.where(better, tile_best, best)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=rows < N)
    tl.store(dist_ptr + rows, best + z2, mask=rows < N)  # Sec. 3.2: ||z_t - s_j||^2 at j = argmin


def _nearest_code_triton(z, codebook, idx, dist, blocks):
    """Launch into caller-owned buffers idx (N,) int64 and dist (N,) fp32 (the tests poison them first)."""
    N, d = z.shape
    launch(nearest_code_kernel, (triton.cdiv(N, blocks.n),), blocks, z, codebook, idx, dist, N, codebook.shape[0], d)
    return idx, dist


def nearest_code(z, codebook, blocks=None):
    """z (N, d), codebook (M, d) -> idx int64 (N,), dist fp32 (N,) = ||z - codebook[idx]||^2. Ties: lowest index.
    blocks: a common.Blocks, or None for the default. No gradient."""
    check_inputs("nearest_code", z, "z", codebook, "codebook")
    if not (z.is_cuda or interpreting()):  # CPU tensors take the reference, unless TRITON_INTERPRET=1
        return nearest_code_ref(z, codebook)
    idx = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    dist = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    if z.shape[0] == 0:
        return idx, dist
    return _nearest_code_triton(z.detach(), codebook.detach(), idx, dist, blocks or default_blocks())
