"""`eqserve check`: a model's contract, tried on its example input before anyone serves it.

Per-row exit rests on batch invariance (a row's iterates do not depend on the rows beside it), and
the solvers on G being a contraction, so both are measured here, with what a step costs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from eqserve.models.base import ImplicitModel

INVARIANCE_STEPS = 5
"""Steps a batch of three rows takes before each row is compared with the same row alone."""

CONTRACTION_STEPS = 30
"""Picard steps whose residuals estimate the contraction factor."""

WARMUP_STEPS = 3
"""Picard steps left out of that estimate."""

TIMED_BATCHES = (1, 64)


class ContractError(Exception):
    """A broken part of the contract; the message says which and how."""


@dataclass
class CheckReport:
    """What `check_model` found: lines to print, problems (fatal) and warnings."""

    model: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the contract holds (warnings allowed)."""
        return not self.problems

    def render(self) -> str:
        """The report as a person reads it."""
        out = [f"model {self.model!r}", *(f"  ok    {line}" for line in self.lines)]
        out += [f"  warn  {w}" for w in self.warnings]
        out += [f"  FAIL  {p}" for p in self.problems]
        out.append("contract holds" if self.ok else f"{len(self.problems)} problem(s): not servable")
        return "\n".join(out)


def check_model(model: ImplicitModel) -> CheckReport:
    """Run the contract on the model's example input; stops at the first broken step."""
    report = CheckReport(model.name or type(model).__name__)
    try:
        with torch.inference_mode():
            _check(model, report)
    except ContractError as exc:
        report.problems.append(str(exc))
    return report


def _check(model: ImplicitModel, report: CheckReport) -> None:
    if model.example_input is None:
        raise ContractError("no example_input: set one on the class or in eqserve.toml, so it can be tried")
    inp = _call("Input.model_validate(example_input)", model.Input.model_validate, model.example_input)
    ctx = _call("encode", model.encode, inp)
    if not isinstance(ctx, dict) or not all(isinstance(v, torch.Tensor) for v in ctx.values()):
        raise ContractError(f"encode returned {type(ctx).__name__}, not a dict of tensors")
    for k, v in ctx.items():
        if v.dim() == 0 or v.shape[0] != 1:
            why = "one row's tensors need a leading dim of 1"
            raise ContractError(f"encode's tensor {k!r} has shape {tuple(v.shape)}: {why}")
    report.lines.append("encode → " + ", ".join(f"{k} {tuple(v.shape)} {_dtype(v)}" for k, v in ctx.items()))
    shape = _call("state_shape", model.state_shape, ctx)
    if not isinstance(shape, tuple) or not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ContractError(f"state_shape returned {shape!r}, not a tuple of positive ints such as (16,)")
    y0 = _call("init", model.init, ctx)
    _same_shape("init", y0, (1, *shape), model.dtype())
    bctx = _call("collate", model.collate, [ctx])
    y1 = _call("step", model.step, y0, bctx)
    _same_shape("step", y1, (1, *shape), y0.dtype)
    if not torch.isfinite(y1).all():
        raise ContractError("step returned non-finite values on the example input")
    report.lines.append(f"state shape {shape}, {_dtype(y0)}; step keeps shape and dtype, finite")
    out = _call("decode", model.decode, y1, ctx)
    _call("Output.model_validate(decode(...))", model.Output.model_validate, out)
    try:
        json.dumps(out)
    except TypeError as exc:
        raise ContractError(f"decode returned something JSON cannot hold: {exc}") from None
    report.lines.append(f"decode → {_short(out)}")
    _check_invariance(model, ctx, y0, report)
    _check_contraction(model, bctx, y0, report)
    report.lines.append("time per step: " + ", ".join(_time_step(model, ctx, y0, b) for b in TIMED_BATCHES))


def _check_invariance(model: ImplicitModel, ctx: dict, y0: torch.Tensor, report: CheckReport) -> None:
    """Three rows (the example from three starting states) stepped together and alone agree."""
    g = torch.Generator(device="cpu").manual_seed(0)
    starts = [y0] + [y0 + 0.1 * torch.randn(y0.shape, generator=g).to(y0) for _ in range(2)]
    batch = torch.cat(starts)
    bctx = model.collate([ctx] * 3)
    alone = [(s, model.collate([ctx])) for s in starts]
    for _ in range(INVARIANCE_STEPS):
        batch = model.step(batch, bctx)
        alone = [(model.step(y, c), c) for y, c in alone]
    tol = 1e-4 if y0.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    for i, (y, _) in enumerate(alone):
        gap = float((batch[i : i + 1] - y).abs().max())
        scale = float(y.abs().max()) + 1.0
        if not gap <= tol * scale:
            raise ContractError(
                f"batch invariance: row {i}'s iterate in a batch of 3 differs from the same row alone by "
                f"{gap:.3g} after {INVARIANCE_STEPS} steps (rows must not influence each other)"
            )
    report.lines.append(f"batch invariance: 3 rows together equal each alone over {INVARIANCE_STEPS} steps")


def _check_contraction(model: ImplicitModel, bctx: dict, y0: torch.Tensor, report: CheckReport) -> None:
    """The contraction factor, from the decay of Picard residuals over the last steps."""
    y, res = y0, []
    for _ in range(CONTRACTION_STEPS):
        gy = model.step(y, bctx)
        res.append(float((gy - y).norm()))
        y = gy
    # Residuals above rounding noise, past the first few steps (the decay settles to its rate there).
    noise = 100 * torch.finfo(y0.dtype).eps * (float(y.abs().max()) + 1.0) * math.sqrt(y.numel())
    tail = [(t, r) for t, r in enumerate(res) if t >= WARMUP_STEPS and r > noise]
    if not all(math.isfinite(r) for r in res):
        report.warnings.append("Picard iterates became non-finite on the example input: G may diverge")
    elif len(tail) < 2:
        report.lines.append(f"Picard converged to rounding noise within {WARMUP_STEPS + 1} steps")
    else:
        late = [(t, r) for t, r in tail if t >= CONTRACTION_STEPS // 2]  # the asymptotic rate, where it shows
        (t0, r0), (t1, r1) = (late if len(late) >= 2 else tail)[0], tail[-1]
        factor = (r1 / r0) ** (1 / (t1 - t0))
        line = f"contraction factor ≈ {factor:.3g} (Picard residual decay over steps {t0}–{t1})"
        if factor >= 1:
            report.warnings.append(line + ": ≥ 1, so plain Picard may not converge (damping or Anderson may)")
        else:
            report.lines.append(line)


def _time_step(model: ImplicitModel, ctx: dict, y0: torch.Tensor, rows: int) -> str:
    bctx = model.collate([ctx] * rows)
    y = y0.expand(rows, *y0.shape[1:]).contiguous()
    model.step(y, bctx)  # warm-up
    best, deadline = math.inf, time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        model.step(y, bctx)
        if y.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return f"{best * 1e6:,.0f} µs at batch {rows}"


def _call(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise ContractError(f"{what} raised {type(exc).__name__}: {exc}") from None


def _same_shape(what: str, y: Any, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(y, torch.Tensor):
        raise ContractError(f"{what} returned {type(y).__name__}, not a tensor")
    if tuple(y.shape) != shape:
        raise ContractError(f"{what} returned shape {tuple(y.shape)} for state shape {shape[1:]}")
    if y.dtype != dtype:
        want = str(dtype).removeprefix("torch.")
        raise ContractError(f"{what} returned {_dtype(y)} where the state is {want}")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _short(out: Any, cap: int = 80) -> str:
    text = json.dumps(out)
    return text if len(text) <= cap else text[: cap - 1] + "…"
