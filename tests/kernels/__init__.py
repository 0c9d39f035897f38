"""Tests of the Triton kernels against their torch references (interpreted on the CPU, compiled on CUDA)."""
