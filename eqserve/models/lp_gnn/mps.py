"""An LP from the text of an MPS file, read by HiGHS' own reader (highspy), in the form `A y ∘ b, ∘ ∈ {≤, =}`.

Rows `lo ≤ aᵀy ≤ up` become `=` (lo = up), `≤` (a, up), `≤` (−a, −lo), or both `≤` rows when ranged;
free rows are dropped; a maximisation is turned into a minimisation. The GNN's features need finite
bounds, so infinite column bounds (MPS' default upper bound among them) are refused, as are integers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import highspy
import numpy as np
import scipy.sparse as sp

from eqserve.models.base import InputError
from eqserve.models.lp_gnn.data import LP

FIELD = "input.mps"


def _read(text: str) -> highspy.HighsLp:
    """HiGHS' model of the MPS text (it reads files only, so the text goes through a temporary one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.mps"
        path.write_text(text)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        if h.readModel(str(path)) not in (highspy.HighsStatus.kOk, highspy.HighsStatus.kWarning):
            raise InputError(FIELD, "HiGHS cannot read this MPS text")
        return h.getLp()


def read_mps(text: str) -> LP:
    """The LP of an MPS text; InputError naming `input.mps` if unreadable or out of the model's reach."""
    lp = _read(text)
    m, n = lp.num_row_, lp.num_col_
    if n == 0:
        raise InputError(FIELD, "the MPS model has no variables")
    if any(v != highspy.HighsVarType.kContinuous for v in lp.integrality_):
        raise InputError(FIELD, "the MPS model has integer variables; lp-gnn serves linear programs only")
    low, up = np.asarray(lp.col_lower_, dtype=np.float64), np.asarray(lp.col_upper_, dtype=np.float64)
    names = list(lp.col_names_) or [f"column {j}" for j in range(n)]
    for j in range(n):
        if not (np.isfinite(low[j]) and np.isfinite(up[j])):
            raise InputError(
                FIELD, f"variable {names[j]} has bounds [{low[j]}, {up[j]}]; lp-gnn needs finite ones"
            )
        if low[j] > up[j]:
            raise InputError(
                FIELD, f"variable {names[j]} has lower bound {low[j]} above its upper bound {up[j]}"
            )
    a = lp.a_matrix_
    matrix = (sp.csc_matrix if a.format_ == highspy.MatrixFormat.kColwise else sp.csr_matrix)(
        (np.asarray(a.value_), np.asarray(a.index_), np.asarray(a.start_)), shape=(m, n)
    )
    rows: list[tuple[int, float, float, bool]] = []  # (HiGHS row, sign, right-hand side, is "=")
    for i, (lo, hi) in enumerate(zip(lp.row_lower_, lp.row_upper_, strict=True)):
        if lo == hi:
            rows.append((i, 1.0, hi, True))
            continue
        if np.isfinite(hi):
            rows.append((i, 1.0, hi, False))
        if np.isfinite(lo):
            rows.append((i, -1.0, -lo, False))
    spec = np.array(rows, dtype=np.float64).reshape(-1, 4)
    select = sp.csr_matrix(
        (spec[:, 1], (np.arange(len(spec)), spec[:, 0].astype(np.int64))), shape=(len(spec), m)
    )
    coo = (select @ matrix).tocoo()
    sense = -1.0 if lp.sense_ == highspy.ObjSense.kMaximize else 1.0
    out = LP(
        coo.row.astype(np.int64),
        coo.col.astype(np.int64),
        coo.data.astype(np.float64),
        spec[:, 2].copy(),
        spec[:, 3].astype(bool),
        sense * np.asarray(lp.col_cost_, dtype=np.float64),
        low,
        up,
    )
    if not all(np.isfinite(x).all() for x in (out.vals, out.b, out.c)):
        raise InputError(FIELD, "the MPS model has non-finite coefficients")
    return out
