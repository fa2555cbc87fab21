"""Custom Triton kernels of SignLLM, each next to its torch reference: the nearest-codebook lookup of VQ-Sign
(Sec. 3.2, kernels/nearest_code.py) and the RBF-kernel MMD of the sign-text alignment (Sec. 3.3, Eq. 6,
kernels/mmd.py).

Triton runs for CUDA tensors and whenever TRITON_INTERPRET=1 (set it before importing this package: @triton.jit reads
it at import); CPU tensors otherwise take the torch reference. The choice is made at every call.
Note: `kernels.nearest_code` and `kernels.mmd` are the functions below, which shadow the submodules of the same name;
import from the submodules with `from kernels.mmd import Blocks` (or find them in sys.modules).
"""
from .mmd import mmd, mmd_ref
from .nearest_code import nearest_code, nearest_code_ref

__all__ = ["nearest_code", "nearest_code_ref", "mmd", "mmd_ref"]
