"""The name our code imports kernels/ by: `from signllm_kernels.mmd import mmd` reads kernels/mmd.py.

kernels/ (Triton kernels beside their torch references: nearest_code.py, mmd.py, common.py) has no __init__.py, so the
plain name `kernels` never resolves to it while another `kernels` is installed: Hugging Face's package of that name,
which transformers >= 5 imports, outranks a folder without __init__.py (PEP 420). Our modules never use the plain name,
so they get ours whatever else is installed. A module with a __path__ is a package (Python's language reference, 5.2).
"""
import os

__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")]
