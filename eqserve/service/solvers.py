"""Where the engine still imports the solver state from; the solvers live in `eqserve.solvers`."""

from eqserve.solvers import SolverState

__all__ = ["SolverState"]
