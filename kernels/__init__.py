"""Triton kernels beside their torch references (nearest_code.py, mmd.py, common.py); the package re-exports nothing."""
