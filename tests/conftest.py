"""Test configuration.

Without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before `triton` (and so `kernels`)
is imported, which is why it happens here, at collection time, and not inside a test.
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the project is a set of flat modules at the repository root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
