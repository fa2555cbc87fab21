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
    k: int = 32  # feature columns per step (the dot product's K, and the MMD backward's output chunk)
    num_warps: int = 4

    def __post_init__(self):
        for field in ("n", "m", "k"):
            v = getattr(self, field)
            if v < 16 or v & (v - 1):
                raise ValueError(f"Blocks: block size {field}={v} must be a power of two >= 16")


GPU_BLOCKS = Blocks()
INTERPRETER_BLOCKS = Blocks(n=256, m=256, k=128)  # the interpreter runs each tile op in numpy: few, big tiles are fast


def interpreting():
    return bool(triton.knobs.runtime.interpret)  # reads TRITON_INTERPRET now, at call time


def default_blocks():
    return INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS


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
    a_row = a_ptr + rows.to(tl.int64)[:, None] * D  # (BLOCK_N, 1) int64 offsets: n D may pass 2^31
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
    return ab, a2, b2


def launch(kernel, grid, blocks, a, b, *args, **constexprs):
    """kernel[grid](a, b, *args) with the tile sizes and the dot precision of the inputs a, b. Refused when
    TRITON_INTERPRET has changed since @triton.jit read it (at the import of `signllm_kernels`)."""
    if isinstance(kernel, InterpretedFunction) != interpreting():
        raise RuntimeError(f"{kernel.__name__}: TRITON_INTERPRET changed after `signllm_kernels` was imported; "
                           "set it before the import (tests/conftest.py does)")
    # fp32 inputs multiply in IEEE fp32 (as the references, TF32 off), fp16/bf16 ones in tf32, exact for their products.
    # tile_dot hands tl.dot fp32 operands (the interpreter's bf16 dots are wrong), accumulating in fp32
    precision = "ieee" if torch.float32 in (a.dtype, b.dtype) else "tf32"
    kernel[grid](a, b, *args, PRECISION=precision, BLOCK_N=blocks.n, BLOCK_M=blocks.m, BLOCK_K=blocks.k,
                 num_warps=blocks.num_warps, **constexprs)
