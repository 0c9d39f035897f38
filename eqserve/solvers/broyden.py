"""Limited-memory ("good") Broyden per row, over the same history slots as Anderson.

It approximates the inverse Jacobian of g(x) = G(x) − x as H = −I + Σ_j u_j v_jᵀ, starting from
−I (the first step is Picard's), and steps x ← x − βHg. A row with m slots keeps its newest point
(x_k, g_k) in slot `point` and up to m − 1 rank-one updates (u_j | v_j) in the others: each step
the slot of the previous point takes the update that makes H Δg = Δx, v = Hᵀ Δx,
u = (Δx − H Δg) / (vᵀ Δg) (torchdeq's `broyden_solver` without line search, per row, within a ring).
The kept Gram matrix's point column is then vᵀg for every update slot: the step's weights.

Memory: once a row holds m − 1 updates it restarts from H = −I (`held`), rather than dropping its
oldest update for the next: good Broyden's updates are built on one another (each satisfies its
secant condition through the ones before it), and a sliding window of them stalls on rotation-like
maps, where a full restart keeps converging. A restart writes nothing: the slots it drops weigh 0 in
every product until they are overwritten.

Safeguards, per row: an update whose denominator vanishes or that is not finite is dropped (its
slot zeroed); a step that is not finite or more than MAX_WEIGHT times the Picard step's length
falls back to the Picard step.
"""

from __future__ import annotations

import torch

from eqserve.solvers.anderson import MAX_WEIGHT, arange, dots

DENOMINATOR_EPS = 1e-12
"""An update with |vᵀΔg| ≤ this × ‖v‖‖Δg‖ is dropped: its direction is nearly orthogonal to Δg."""


def _combine(hist: torch.Tensor, wx: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """Σ_j (wx_j u_j + wf_j v_j) per row (B, n), weights (B, M)."""
    b, slots, two_n = hist.shape
    w = torch.stack([wx, wf], 2).to(hist.dtype).view(b, 1, 2 * slots)
    return torch.bmm(w, hist.view(b, 2 * slots, two_n // 2)).view(b, -1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[[aᵀa, aᵀb], [bᵀa, bᵀb]] (B, 2, 2) per row of a, b (B, n), by `dots`."""
    return dots(torch.stack([a, b], 1), torch.stack([a, b], 2))


def held(step: torch.Tensor, ring: torch.Tensor, prev: torch.Tensor, slots: int) -> torch.Tensor:
    """(B, M) True on the update slots of each row's H once step `step` (B,) has written its update
    into slot `prev`: the updates since the row's last restart, the newest (in `prev`, age 0) first.
    A row of `ring` slots holds up to ring − 1 updates and restarts after every ring − 1 steps."""
    slot = arange(slots, 1, prev.device)
    age = torch.remainder(prev.unsqueeze(1) - slot, ring.unsqueeze(1))
    count = torch.where(step > 0, torch.remainder(step - 1, (ring - 1).clamp(min=1)) + 1, 0)
    return (age < count.unsqueeze(1)) & (slot < ring.unsqueeze(1))


def pair(
    y: torch.Tensor, gy: torch.Tensor, hist: torch.Tensor, prev: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """The new update (u | v) (B, 2n) of every row from the previous point in slot `prev` and the
    updates in the slots `kept` (B, M) other than `prev`; zero where the update is dropped."""
    b, slots, two_n = hist.shape
    n = two_n // 2
    rows = arange(b * slots, slots, y.device)
    last = hist.view(b * slots, two_n).index_select(0, rows + prev)
    dx, dg = y - last[:, :n], (gy - y) - last[:, n:]
    updates = (kept & (arange(slots, 1, y.device) != prev.unsqueeze(1))).to(y.dtype)
    # rows 2j, 2j + 1 of the view are u_j, v_j: column 0 holds uⱼᵀ Δx, column 1 vⱼᵀ Δg
    both = dots(hist.view(b, 2 * slots, n), torch.stack([dx, dg], 2)).to(y.dtype).view(b, slots, 2, 2)
    vdg = both[:, :, 1, 1] * updates
    udx = both[:, :, 0, 0] * updates
    h_dg = _combine(hist, vdg, torch.zeros_like(vdg)) - dg  # H Δg
    v = _combine(hist, torch.zeros_like(udx), udx) - dx  # Hᵀ Δx
    cross = _cross(v, dg)
    den = cross[:, 0, 1:].to(y.dtype)
    u = (dx - h_dg) / den
    ok = cross[:, 0, 1:].abs() > DENOMINATOR_EPS * (cross[:, 0, :1] * cross[:, 1, 1:]).sqrt()
    new = torch.cat([u, v], 1)
    ok &= new.isfinite().all(1, keepdim=True)
    return torch.where(ok, new, torch.zeros_like(new))


def weights(gram: torch.Tensor, point: torch.Tensor, beta: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The mixing weights on the u-halves: β vⱼᵀg from the Gram's point column on the update slots
    `kept` (B, M), 0 elsewhere."""
    slots = gram.shape[1]
    vg = gram.gather(2, point.view(-1, 1, 1).expand(-1, slots, 1)).squeeze(2)
    return vg.masked_fill(~kept, 0.0) * beta.to(vg.dtype)


def sound(y: torch.Tensor, gy: torch.Tensor, y_next: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(B, 1) True where Broyden's step is finite and at most MAX_WEIGHT times the Picard step."""
    cross = _cross(y_next - y, gy - y)
    step, picard_step = cross[:, 0, :1].sqrt(), cross[:, 1, 1:].sqrt() * beta.to(cross.dtype)
    return step <= MAX_WEIGHT * picard_step  # NaN fails
