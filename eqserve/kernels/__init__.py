"""Fused Triton kernels for the dense family, their torch references (also the CPU path), dispatch.

Importing this package, `kernels.reference` or `kernels.dispatch` never imports a Triton kernel
module: those are imported on first use, so the package works without Triton and tests may set
TRITON_INTERPRET=1 until then.
"""
