"""Test configuration.

Without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before `triton` (and so `kernels`)
is imported, which is why it happens here, at collection time, and not inside a test.
"""
import os
import sys

# The Triton interpreter runs each tile op through numpy; a multithreaded BLAS on a busy 2-core machine slows each
# interpreted tl.dot by orders of magnitude. Set before numpy/torch load their BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the project is a set of flat modules at the repository root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def restore_threads():
    """train.main(--threads=1) sets torch's thread count for the whole process: give it back after each test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
