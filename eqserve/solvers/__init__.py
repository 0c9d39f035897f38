"""The solvers: the update y ← update(y, G(y)) of every row of a batch, with per-row state.

`state.SolverState` holds a batch's rows and picks each row's rule; `anderson` and `broyden` hold
their math (torch, and the fused Triton kernels of `eqserve.kernels.anderson` on that backend).
Damped Picard, the rule of a row without history, is `eqserve.kernels.reference.picard`. Imports
only torch, `eqserve.kernels` and `eqserve.models.padding`, so that kernels and benchmarks use it
without the server.
"""

from eqserve.solvers.state import METHODS, Method, SolverState

__all__ = ["METHODS", "Method", "SolverState"]
