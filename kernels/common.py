"""What the kernel files share: tile sizes, input checks, the tile loop of a.b^T with the norms, and the launch."""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@dataclass(frozen=True)
class Blocks:
    """Tile sizes: powers of two, >= 16 (tl.dot's minimum on a real compile). No autotuning."""
    n: int = 64  # rows of the first input per program
    m: int = 64  # rows of the second input per program (nearest_code: codes scored per step of its search)
    k: int = 16  # feature columns per step (the dot product's K, and the MMD backward's output chunk)
    num_warps: int = 8

    def __post_init__(self):
        for field in ("n", "m", "k"):
            v = getattr(self, field)
            if v < 16 or v & (v - 1):
                raise ValueError(f"Blocks: block size {field}={v} must be a power of two >= 16")


# The GPU tiles, chosen by compiling every kernel x dtype x precision for sm_80 and sm_90 (tests/test_kernels.py;
# the table is in BENCHMARKS.md). 64 x 64 x 16 with 8 warps holds a 64 x 64 fp32 tile in 16 registers a thread and
# spills nothing, at 48-209 registers. The old 64 x 64 x 32 with 4 warps spilled up to 12 KB a thread, most with fp32
# FMAs and D not a multiple of 16 (loads not vectorized); 128 x 64 x 16 spilled 28 bytes. A GPU launch accepts only
# the tiles in GPU_SAFE_BLOCKS, and the compile test checks each of them.
GPU_BLOCKS = Blocks()
GPU_SAFE_BLOCKS = (GPU_BLOCKS,)
INTERPRETER_BLOCKS = Blocks(n=256, m=256, k=128, num_warps=4)  # the interpreter runs tile ops in numpy: few, big tiles


def interpreting():
    return bool(triton.knobs.runtime.interpret)  # reads TRITON_INTERPRET now, at call time


def default_blocks():
    return INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS


def dot_precision(a, b):
    """How every tl.dot of a launch on a, b multiplies: the one place this is decided.
    fp16/bf16 inputs (cast to fp32 in the kernels): "tf32", exact, as tf32 holds their 11- and 8-bit significands.
    fp32 inputs follow torch's own switch for fp32 matmuls: "tf32" on the tensor cores (10-bit mantissa) when torch
    allows TF32 (torch.backends.cuda.matmul.fp32_precision = "tf32", or allow_tf32 = True, or
    set_float32_matmul_precision("high" / "medium")), else "ieee": fp32 FMAs, exact as torch's own default.
    The interpreter ignores the choice: its tl.dot is a numpy fp32 matmul, so on a CPU every mode is "ieee"."""
    if a.dtype != torch.float32 and b.dtype != torch.float32:
        return "tf32"
    switch = getattr(torch.backends.cuda.matmul, "fp32_precision", None)  # newer torch: "ieee", "tf32" or "none"
    tf32 = switch == "tf32" if switch is not None else torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else "ieee"


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


@triton.jit
def tile_dot(a_ptr, b_ptr, rows, cols, n_a, n_b, D, PRECISION: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows `rows` of a (n_a, D) and `cols` of b (n_b, D), one read of each: a.b^T (BLOCK_N, BLOCK_M), ||a||^2
    (BLOCK_N,), ||b||^2 (BLOCK_M,). Rows out of range read as zeros."""
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * D + tl.arange(0, BLOCK_K)[None, :]  # (BLOCK_N, BLOCK_K); int64
    b_ptrs = b_ptr + cols.to(tl.int64)[None, :] * D + tl.arange(0, BLOCK_K)[:, None]  # (BLOCK_K, BLOCK_M); n D > 2^31
    ab = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    a2 = tl.zeros((BLOCK_N,), tl.float32)
    b2 = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = k0 + tl.arange(0, BLOCK_K) < D  # masks the tail when D is not a multiple of BLOCK_K
        a = tl.load(a_ptrs, mask=(rows < n_a)[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & (cols < n_b)[None, :], other=0.0).to(tl.float32)
        ab = tl.dot(a, b, ab, input_precision=PRECISION)  # (BLOCK_N, BLOCK_K) @ (BLOCK_K, BLOCK_M)
        a2 += tl.sum(a * a, axis=1)
        b2 += tl.sum(b * b, axis=0)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    return ab, a2, b2


def launch(kernel, grid, blocks, a, b, *args, **constexprs):
    """kernel[grid](a, b, *args) with the tile sizes and dot_precision(a, b). Refused when TRITON_INTERPRET has changed
    since @triton.jit read it (at the import of `signllm_kernels`), and on a GPU for tiles not in GPU_SAFE_BLOCKS."""
    if isinstance(kernel, InterpretedFunction) != interpreting():
        raise RuntimeError(f"{kernel.__name__}: TRITON_INTERPRET changed after `signllm_kernels` was imported; "
                           "set it before the import (tests/conftest.py does)")
    if not interpreting() and blocks not in GPU_SAFE_BLOCKS:
        raise ValueError(f"{kernel.__name__}: {blocks} has not been compiled and checked for sm_80 and sm_90 (larger "
                         "tiles spill registers to local memory, and one ptxas run took over 6 minutes and 16 GB); "
                         f"use one of {GPU_SAFE_BLOCKS}, or add yours there and run tests/test_kernels.py")
    kernel[grid](a, b, *args, PRECISION=dot_precision(a, b), BLOCK_N=blocks.n, BLOCK_M=blocks.m, BLOCK_K=blocks.k,
                 num_warps=blocks.num_warps, **constexprs)
