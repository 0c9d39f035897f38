"""Random LPs of Chen et al. (2023), their HiGHS solutions, and a compact safetensors format for them.

An LP is `min cᵀy s.t. A y ∘ b, l ≤ y ≤ u` with `∘ᵢ ∈ {≤, =}`. Generated numbers are rounded to
float32 before solving, so that a stored LP is exactly the LP whose solution is stored with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from scipy.optimize import linprog

M, N, NNZ, P_EQUAL = 10, 50, 100, 0.3


@dataclass(frozen=True)
class LP:
    """A linear program with A in coordinate form (rows, cols, vals); `eq[i]` marks `=` rows."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    b: np.ndarray
    eq: np.ndarray
    c: np.ndarray
    l: np.ndarray  # noqa: E741 - the paper's name for the lower bounds
    u: np.ndarray

    @property
    def m(self) -> int:
        """Number of constraints."""
        return len(self.b)

    @property
    def n(self) -> int:
        """Number of variables."""
        return len(self.c)


@dataclass(frozen=True)
class Solution:
    """HiGHS' verdict: status "optimal" with y and objective, else "infeasible", "unbounded" or "failed"."""

    status: str
    y: np.ndarray | None = None
    objective: float | None = None


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


def random_lp(
    rng: np.random.Generator, m: int = M, n: int = N, nnz: int = NNZ, p_equal: float = P_EQUAL
) -> LP:
    """One LP of the paper's distribution: A with nnz N(0,1) entries at random places, c ~ 0.01·U(−1,1),
    b ~ U(−1,1), (l, u) a sorted pair of N(0,10) draws, each row `=` with probability p_equal."""
    c = _f32(0.01 * rng.uniform(-1, 1, n))
    b = _f32(rng.uniform(-1, 1, m))
    bounds = np.sort(_f32(rng.normal(0, 10, (n, 2))), axis=1)
    flat = rng.choice(m * n, size=nnz, replace=False)
    vals = _f32(rng.normal(0, 1, nnz))
    eq = rng.random(m) < p_equal
    return LP(flat // n, flat % n, vals, b, eq, c, bounds[:, 0].copy(), bounds[:, 1].copy())


def solve(lp: LP) -> Solution:
    """Solve with HiGHS through scipy."""
    a = sp.csr_matrix((lp.vals, (lp.rows, lp.cols)), shape=(lp.m, lp.n))
    le, eq = ~lp.eq, lp.eq
    res = linprog(
        lp.c,
        A_ub=a[le] if le.any() else None,
        b_ub=lp.b[le] if le.any() else None,
        A_eq=a[eq] if eq.any() else None,
        b_eq=lp.b[eq] if eq.any() else None,
        bounds=np.stack([lp.l, lp.u], axis=1),
        method="highs",
    )
    if res.status == 0:
        return Solution("optimal", np.asarray(res.x, dtype=np.float64), float(res.fun))
    return Solution({2: "infeasible", 3: "unbounded"}.get(res.status, "failed"))


def make_dataset(count: int, seed: int) -> tuple[list[LP], list[np.ndarray]]:
    """`count` solvable LPs and their solutions, deterministic from `seed` (infeasible draws dropped)."""
    rng = np.random.default_rng(seed)
    lps: list[LP] = []
    sols: list[np.ndarray] = []
    while len(lps) < count:
        lp = random_lp(rng)
        sol = solve(lp)
        if sol.status == "optimal":
            assert sol.y is not None
            lps.append(lp)
            sols.append(sol.y)
    return lps, sols


def save_lps(path: str | Path, lps: list[LP], sols: list[np.ndarray]) -> None:
    """Write LPs and solutions as concatenated arrays plus per-LP sizes (int32/float32/float64)."""

    def cat(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([getattr(lp, name) for lp in lps])).to(dtype).contiguous()

    tensors = {
        "sizes": torch.tensor([[lp.m, lp.n, len(lp.vals)] for lp in lps], dtype=torch.int32),
        "rows": cat("rows", torch.int16),
        "cols": cat("cols", torch.int16),
        "vals": cat("vals", torch.float32),
        "b": cat("b", torch.float32),
        "eq": cat("eq", torch.uint8),
        "c": cat("c", torch.float32),
        "l": cat("l", torch.float32),
        "u": cat("u", torch.float32),
        "y": torch.from_numpy(np.concatenate(sols)).to(torch.float64).contiguous(),
    }
    save_file(tensors, str(path))


def load_lps(path: str | Path) -> tuple[list[LP], list[np.ndarray]]:
    """Read what `save_lps` wrote."""
    t = {k: v.numpy() for k, v in load_file(str(path)).items()}
    lps: list[LP] = []
    sols: list[np.ndarray] = []
    at = np.zeros(3, dtype=np.int64)
    for m, n, nnz in t["sizes"].astype(np.int64):
        (i, j, e) = at
        lps.append(
            LP(
                t["rows"][e : e + nnz].astype(np.int64),
                t["cols"][e : e + nnz].astype(np.int64),
                t["vals"][e : e + nnz].astype(np.float64),
                t["b"][i : i + m].astype(np.float64),
                t["eq"][i : i + m].astype(bool),
                t["c"][j : j + n].astype(np.float64),
                t["l"][j : j + n].astype(np.float64),
                t["u"][j : j + n].astype(np.float64),
            )
        )
        sols.append(t["y"][j : j + n])
        at += (m, n, nnz)
    return lps, sols
