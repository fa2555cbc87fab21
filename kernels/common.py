"""What the kernel files share: tile sizes, the choice of Triton or torch at each call, the checks before a launch."""
from dataclasses import dataclass

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction


@dataclass(frozen=True)
class Blocks:
    """Tile sizes: powers of two, >= 16 (tl.dot's minimum on a real compile). No autotuning."""
    n: int = 64  # rows of the first input per program
    m: int = 64  # rows of the second input per program (nearest_code: codes scored per step of its search)
    k: int = 32  # feature columns per step (the dot product's K, and the MMD backward's output chunk)
    num_warps: int = 4


GPU_BLOCKS = Blocks()
INTERPRETER_BLOCKS = Blocks(n=256, m=256, k=128)  # the interpreter runs each tile op in numpy: few, big tiles are fast


def interpreting():
    return bool(triton.knobs.runtime.interpret)  # reads TRITON_INTERPRET now, at call time


def use_triton(t):
    """Triton for CUDA tensors and whenever TRITON_INTERPRET=1; CPU tensors otherwise take the torch reference."""
    return interpreting() or t.is_cuda


def pick_blocks(name, blocks):
    blocks = blocks or (INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS)
    for field in ("n", "m", "k"):
        v = getattr(blocks, field)
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name}: block size {field}={v} must be a power of two >= 16")
    return blocks


def check_launchable(kernel):
    """@triton.jit read TRITON_INTERPRET when `kernels` was imported; refuse a launch if it has changed since."""
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
    """fp32 inputs multiply in IEEE fp32, as the references do with TF32 off; fp16/bf16 ones in tf32 (tensor cores),
    exact for their products. tl.dot gets fp32 operands (the interpreter's bf16 dots are wrong), accumulates in fp32."""
    return "ieee" if torch.float32 in (a.dtype, b.dtype) else "tf32"
