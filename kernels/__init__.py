"""Triton kernels of SignLLM beside their torch references: kernels/nearest_code.py (VQ-Sign's nearest-codebook
lookup, Sec. 3.2) and kernels/mmd.py (RBF-kernel MMD, Sec. 3.3, Eq. 6); kernels/common.py holds what both share.
Import from the submodules, e.g. `from kernels.mmd import mmd`: this package re-exports nothing.
"""
