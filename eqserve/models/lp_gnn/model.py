"""lp-gnn: an implicit GNN whose state is the solution estimate of an LP, one number per variable.

A request's row is its n variable values; its context is its normalised graph. `collate` joins B
graphs into one of disjoint pieces and records where each variable node sits in the padded (B, n_max)
state, so that `step` gathers y there, runs G once over the whole batch and scatters G(y) back,
leaving the padding zero. With `"reference": true`, `encode` solves the LP with HiGHS once per
request: `decode` runs on the engine's thread, at every streamed iterate, and must stay cheap.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from eqserve.models.base import Ctx, EvalReport, ImplicitModel
from eqserve.models.lp_gnn.data import LP, load_lps, solve
from eqserve.models.lp_gnn.graph import Graph, lp_graph, union
from eqserve.models.lp_gnn.inputs import LpInput, to_lp
from eqserve.models.lp_gnn.lpset import LpSet, errors
from eqserve.models.lp_gnn.networks import ExplicitGNN, ImplicitGNN, param_count
from eqserve.models.shipped import WEIGHTS_DIR

IMPLICIT_FILE = "lp-gnn.safetensors"
EXPLICIT_FILE = "lp-gnn-explicit.safetensors"
HELDOUT_FILE = "lp-gnn-heldout.safetensors"
STATUSES = ("optimal", "infeasible", "unbounded", "failed")
GRAPH_KEYS = ("cons", "var", "edges", "vals", "scale", "lp")


class Reference(BaseModel):
    """HiGHS' answer and the prediction's error ‖ŷ − y*‖ / (‖y*‖ + 1) (null unless optimal)."""

    status: str
    y: list[float] | None
    objective: float | None
    error: float | None


class LpOutput(BaseModel):
    """The predicted solution; with `reference`, HiGHS' solution beside it."""

    y: list[float]
    reference: Reference | None = None


def _state_dim(state: dict[str, torch.Tensor]) -> int:
    return state["cons_emb.weight"].shape[0]


class LpGnn(ImplicitModel):
    """G(y, x) = the implicit GNN's step on the LP x, in the LP's own units: a contraction in y."""

    name = "lp-gnn"
    Input = LpInput
    Output = LpOutput
    defaults = {"max_iters": 100, "tol": 1e-4, "stop_mode": "rel"}  # noqa: RUF012
    """To the fixed point: G is normalised to a contraction (‖∂G/∂z‖ ≈ μ < 1), so plain Picard stops on
    the `rel` tolerance; 100 is a bound, not a depth."""
    compile_step = True  # gathers, scatters and small MLPs over a graph, which inductor fuses

    def __init__(self, d: int, weights_dir: Path = WEIGHTS_DIR) -> None:
        super().__init__()
        self.net = ImplicitGNN(d)
        self.weights_dir = Path(weights_dir)

    @classmethod
    def from_weights(cls, path: str | Path) -> LpGnn:
        """The model of a checkpoint (embedding size from its shapes; held-out set and twin beside it)."""
        path = Path(path)
        model = cls(_state_dim(load_file(str(path))), weights_dir=path.parent)
        return model.load(path)

    def load(self, path: str | Path) -> LpGnn:
        """Load the implicit network's weights (strict), in eval mode."""
        self.net.load_state_dict(load_file(str(path)), strict=True)
        return self.eval()

    @cached_property
    def _heldout(self) -> tuple[list[LP], list]:
        return load_lps(self.weights_dir / HELDOUT_FILE)

    @property
    def description(self) -> str:  # type: ignore[override]
        return (
            f"implicit bipartite GNN (d = {self.net.d}, normalised to a {float(self.net.mu):g}-contraction "
            "in y) predicting the solution of min cᵀy s.t. Ay ∘ b, l ≤ y ≤ u at its fixed point; trained "
            "as a DEQ on 10 × 50 LPs (Chen et al. 2023)"
        )

    @property
    def example_input(self) -> dict[str, Any]:  # type: ignore[override]
        lp = self._heldout[0][0]
        return {
                "A": {
                    "shape": [lp.m, lp.n],
                    "indices": [[int(i), int(j)] for i, j in zip(lp.rows, lp.cols, strict=True)],
                    "values": [round(float(v), 4) for v in lp.vals],
                },
                "b": [round(float(v), 4) for v in lp.b],
                "c": [round(float(v), 6) for v in lp.c],
                "constraint_types": ["=" if e else "<=" for e in lp.eq],
                "l": [round(float(v), 4) for v in lp.l],
                "u": [round(float(v), 4) for v in lp.u],
            }

    def encode(self, inp: LpInput) -> Ctx:  # type: ignore[override]
        lp = to_lp(inp)
        g = lp_graph(lp).to(self.device(), self.dtype())
        ctx = {k: getattr(g, k).unsqueeze(0) for k in GRAPH_KEYS}
        if inp.reference:
            sol = solve(lp)
            ctx["ref_status"] = torch.tensor([STATUSES.index(sol.status)])
            if sol.y is not None and sol.objective is not None:
                ctx["ref_y"] = torch.as_tensor(sol.y, dtype=torch.float64).unsqueeze(0)
                ctx["ref_objective"] = torch.tensor([sol.objective], dtype=torch.float64)
        return ctx

    def state_shape(self, ctx: Ctx) -> tuple[int, ...]:
        return (ctx["var"].shape[1],)

    def collate(self, ctxs: list[Ctx]) -> Ctx:
        """One graph of B pieces; variable node k is entry (lp[k], col[k]) of the padded (B, n_max) state."""
        g = union([Graph(*(c[k][0] for k in GRAPH_KEYS)) for c in ctxs])
        sizes = torch.tensor([self.state_size(c) for c in ctxs], device=g.var.device)
        col = torch.arange(len(g.lp), device=g.var.device) - (torch.cumsum(sizes, 0) - sizes)[g.lp]
        return {k: getattr(g, k) for k in GRAPH_KEYS} | {"col": col}

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        g = Graph(*(ctx[k] for k in GRAPH_KEYS))
        row, col = g.lp, ctx["col"]
        out = torch.zeros_like(y)
        out[row, col] = self.net(g, y[row, col] / g.scale) * g.scale
        return out

    def decode(self, y: torch.Tensor, ctx: Ctx) -> dict[str, Any]:
        pred = y[0].double()
        out: dict[str, Any] = {"y": pred.tolist()}
        if "ref_status" in ctx:
            ref_y = ctx.get("ref_y")
            out["reference"] = {
                "status": STATUSES[int(ctx["ref_status"][0])],
                "y": None if ref_y is None else ref_y[0].tolist(),
                "objective": None if ref_y is None else float(ctx["ref_objective"][0]),
                "error": None if ref_y is None else float((pred - ref_y[0]).norm() / (ref_y[0].norm() + 1)),
            }
        return out

    def evaluate(self, iters: list[int]) -> EvalReport:
        """Mean error of y_t (y_0 = 0) on the shipped held-out LPs; the explicit twin's as baseline."""
        data = LpSet(*self._heldout)
        twin_state = load_file(str(self.weights_dir / EXPLICIT_FILE))
        twin = ExplicitGNN(_state_dim(twin_state))
        twin.load_state_dict(twin_state, strict=True)
        return EvalReport(
            model=self.name,
            metric="mean over LPs of ‖y_t − y*‖ / (‖y*‖ + 1)",
            t=list(iters),
            error=[errors(self.net, data, t).mean().item() for t in iters],
            params=param_count(self.net),
            baseline={
                "name": "lp-gnn-explicit",
                "params": param_count(twin),
                "error": errors(twin, data, None).mean().item(),
            },
        )
