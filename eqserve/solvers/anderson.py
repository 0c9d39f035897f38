"""Anderson acceleration in difference form (Walker & Ni), over a ring of history slots per row.

A row with m slots keeps its newest point (x_k, f_k), f = G(x) − x, in slot `point` and the
consecutive differences (Δx, Δf) of its last m points in the other m − 1 slots: each step the slot
that held the previous point becomes the difference to the new one, and the new point overwrites
the oldest difference. The weights γ minimise ‖f_k − ΔF γ‖² + λ Σ_j ‖Δf_j‖² γ_j² and the new
iterate is x_k + βf_k − Σγ_j (Δx_j + βΔf_j): the constrained (Σα = 1) form over the same m points,
without forming history-minus-newest, so a step streams the Δf half once to refresh the kept Gram
matrix and both halves once to mix. The Gram matrix (fp64) holds the dot products of every slot's
f-half, the point's included: its point column is the least-squares right-hand side ΔFᵀf_k.

Safeguards, per row: a ridge λ relative to each difference's own norm; where the system is not
positive definite, γ is not finite or the same combination written over the points has weights
Σ|α| ≥ MAX_WEIGHT, γ = 0: the damped Picard step.
"""

from __future__ import annotations

import functools

import torch

from eqserve.kernels.dispatch import Backend
from eqserve.kernels.reference import picard

RIDGE = 1e-8
"""λ, relative to each difference's squared norm ‖Δf_j‖²."""

MAX_WEIGHT = 1e4
"""Point weights with Σ|α| at or above this mean an ill-conditioned system: take a Picard step."""

GRAM_DTYPE = torch.float64
"""The kept Gram matrix and its solve run in fp64: (M, M) per row costs next to nothing, and the
system stays solvable with a relative ridge far below fp32's resolution."""


@functools.lru_cache(maxsize=64)
def arange(end: int, step: int, device: torch.device) -> torch.Tensor:
    """torch.arange(0, end, step), built once per batch shape: a step's index vectors cost launches
    that a one-row step notices. Shared: never written to."""
    return torch.arange(0, end, step, device=device)


def gram(hist: torch.Tensor) -> torch.Tensor:
    """The Gram matrix (B, M, M) of the f-halves of a history (B, M, 2n) [x-half | f-half], as
    `record` keeps it, two columns per product: a recomputed Gram then holds the kept one's values
    bitwise (a square product takes another BLAS path, which rounds differently)."""
    f = hist[:, :, hist.shape[2] // 2 :]
    slots = f.shape[1]
    cols = [dots(f, torch.stack([f[:, j], f[:, min(j + 1, slots - 1)]], 2)) for j in range(0, slots, 2)]
    return torch.cat(cols, 2)[:, :, :slots].contiguous()  # the kernels update it in place


def dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The batched product a @ b, b (B, n, 2), as the Gram keeps dot products: in fp32 or wider (bf16
    histories), stored in GRAM_DTYPE. Two columns is the shape every dot product of the solvers
    takes: its rounding depends neither on the rows' count nor on zero padding past a row's entries
    (a sum's or a matrix-vector product's does), so a row's values are those it has alone."""
    acc = torch.promote_types(a.dtype, torch.float32)
    return torch.bmm(a.to(acc), b.to(acc)).to(GRAM_DTYPE)


def record(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    gram: torch.Tensor,
    prev: torch.Tensor,
    point: torch.Tensor,
    pair: torch.Tensor | None = None,
) -> None:
    """In place: slot `prev` (the previous point) becomes (y, r) minus it, r = G(y) − y, or `pair`
    (B, 2n) where given (Broyden's rows); slot `point` takes (y, r); the Gram rows and columns of
    both slots are refreshed (2M dot products per row, in fp32 or wider). Where prev == point (a
    row's first step, or one slot) only the point is written."""
    b, slots, two_n = hist.shape
    n = two_n // 2
    rows = arange(b * slots, slots, y.device)
    flat = hist.view(b * slots, two_n)
    new = torch.cat([y, gy - y], 1)
    diff = new - flat.index_select(0, rows + prev) if pair is None else pair
    flat.index_copy_(0, rows + prev, diff)
    flat.index_copy_(0, rows + point, new)
    fresh = dots(hist[:, :, n:], torch.stack([diff[:, n:], new[:, n:]], 2))  # (B, M, 2)
    gflat = gram.view(b * slots, slots)
    for i, s in enumerate((prev, point)):  # the point last: it wins where prev == point
        g = fresh[:, :, i]
        gflat.index_copy_(0, rows + s, g)
        gram.scatter_(2, s.view(b, 1, 1).expand(b, slots, 1), g.unsqueeze(2))


def solve(
    gram: torch.Tensor,
    point: torch.Tensor,
    ring: torch.Tensor,
    ridge: float = RIDGE,
    max_weight: float = MAX_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights γ (B, M) and ok (B,) from the kept Gram matrix of rows with `ring` (B,) slots in use:
    γ solves (ΔFᵀΔF + λD) γ = ΔFᵀ f over the written difference slots (positive diagonal, not
    `point`; the others get 0), with D the diagonal, by Cholesky of the system scaled to a unit
    diagonal. ok is False where it is not positive definite, γ is not finite or the weights of the
    same combination over the points, Σ|α|, reach `max_weight`."""
    gram = gram.to(torch.promote_types(gram.dtype, torch.float32))
    slots = gram.shape[1]
    d = torch.diagonal(gram, dim1=1, dim2=2)
    s = d.rsqrt().nan_to_num_(nan=torch.nan, posinf=0.0)  # D^-1/2 on written slots, 0 elsewhere
    s = s.masked_fill(arange(slots, 1, gram.device) == point.unsqueeze(1), 0.0)
    rhs = gram.gather(2, point.view(-1, 1, 1).expand(-1, slots, 1)).squeeze(2)
    a = gram * (s.unsqueeze(2) * s.unsqueeze(1))
    a.diagonal(dim1=1, dim2=2).fill_(1.0 + ridge)  # unused slots: identity rows, 0 right-hand side
    chol, info = torch.linalg.cholesky_ex(a)
    gamma = torch.cholesky_solve((s * rhs).unsqueeze(2), chol).squeeze(2).mul_(s)
    return gamma, (info == 0) & (point_weight(gamma, point, ring) < max_weight)  # NaN < w is False


def solve_sized(
    gram: torch.Tensor, point: torch.Tensor, ring: torch.Tensor, sizes: frozenset[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`solve` for a batch whose rows use different numbers of slots: once per size r in `sizes`
    (known on the host), on the leading r × r block, which holds the whole system of the rows with
    `ring` r. A row's weights then come from a factorisation of its own size, bitwise as when it runs
    alone: LAPACK's Cholesky rounds differently with the matrix's size, identity padding or not.
    Rows whose ring is not in `sizes` get the first size's weights: none on a Picard row (it has no
    difference slot), meaningless ones on a Broyden row (it takes its own)."""
    slots = gram.shape[1]
    out: tuple[torch.Tensor, torch.Tensor] | None = None
    for r in sorted(sizes, reverse=True):  # the batch's own slots first, if a row has them all
        if r == slots:
            gamma, ok = solve(gram, point, ring)
        else:
            gamma, ok = solve(gram[:, :r, :r], point.clamp(max=r - 1), ring.clamp(max=r))
            gamma = torch.nn.functional.pad(gamma, (0, slots - r))
        if out is not None:
            own = ring == r
            gamma, ok = torch.where(own.unsqueeze(1), gamma, out[0]), torch.where(own, ok, out[1])
        out = gamma, ok
    if out is None:
        dtype = torch.promote_types(gram.dtype, torch.float32)
        return gram.new_zeros(gram.shape[:2], dtype=dtype), point.new_ones(point.shape, dtype=torch.bool)
    return out


def point_weight(gamma: torch.Tensor, point: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Σ|α| (B,) of x_k − Σγ_j Δx_j written as Σα_i x_i over the points: with g_a the weight of the
    difference a steps old (g_0 = 1, 0 past the ring), α = g_a − g_{a+1}. Large where the
    combination cancels large terms, which γ alone does not show (slow convergence makes every
    difference small and γ large, with modest α)."""
    slots = gamma.shape[1]
    age = arange(slots, 1, gamma.device)
    held = age.unsqueeze(0) < ring.unsqueeze(1)
    src = torch.remainder(point.unsqueeze(1) - age, ring.unsqueeze(1))
    g = torch.where(held, gamma.gather(1, src), 0.0)
    g[:, 0] = 1.0
    return (g - torch.nn.functional.pad(g[:, 1:], (0, 1))).abs().sum(1)


def mix(
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    wx: torch.Tensor,
    wf: torch.Tensor,
    beta: torch.Tensor,
) -> torch.Tensor:
    """The damped Picard step minus a weighted sum of the history: (1−β)y + βG(y) − Σ_j (wx_j x_j +
    wf_j f_j) over the slots' halves, weights (B, M). Anderson: wx = γ, wf = βγ; all zero: Picard
    exactly."""
    b, slots, two_n = hist.shape
    w = torch.stack([wx, wf], 2).to(y.dtype).view(b, 1, 2 * slots)
    return picard(y, gy, beta) - torch.bmm(w, hist.view(b, 2 * slots, two_n // 2)).view(b, -1)


def record_on(
    backend: Backend,
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    gram: torch.Tensor,
    prev: torch.Tensor,
    point: torch.Tensor,
) -> None:
    """`record` on a backend: torch, or one fused Triton launch."""
    if backend == "torch":
        record(y, gy, hist, gram, prev, point)
        return
    from eqserve.kernels import anderson

    anderson.record(y, gy, hist, gram, prev, point)


def mix_on(
    backend: Backend,
    y: torch.Tensor,
    gy: torch.Tensor,
    hist: torch.Tensor,
    wx: torch.Tensor,
    wf: torch.Tensor,
    beta: torch.Tensor,
) -> torch.Tensor:
    """`mix` on a backend: torch, or one fused Triton launch."""
    if backend == "torch":
        return mix(y, gy, hist, wx, wf, beta)
    from eqserve.kernels import anderson

    return anderson.mix(y, gy, hist, wx, wf, beta)
