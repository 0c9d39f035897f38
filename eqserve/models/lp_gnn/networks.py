"""The explicit GNN of Chen et al. (2023) and its implicit counterpart G(z, x) (Liu et al. 2026).

Both follow the paper's code (IMP-Power, gnn-lp/models_gnn.py), so the parameter counts are the
paper's: explicit 29d² + 29d, implicit 29d² + 59d + 22, all trainable, no normalisation layers.
The implicit net embeds the LP once, runs four half-convolutions over variable embeddings that carry
the state z as one extra column, reads a scalar per variable off them, and a head maps [embedding,
scalar] to the new z, so the state is the solution estimate itself.

Unlike the paper's, G is normalised to a contraction in z: z enters scaled by a gain μ / L, L the
spectral norm of ∂G/∂(gain·z) measured by power iteration on the actual graph operator at the
training fixed points (tracked while training, then the largest over the training set; a buffer,
frozen when serving). A bound from the weights' norms alone is a product over a dozen layers, loose
enough that the gain it allows leaves z almost unused; the measured norm is what Picard iteration
actually sees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from eqserve.models.lp_gnn.conv import HalfConv
from eqserve.models.lp_gnn.graph import Graph

CONS_FEATURES, VAR_FEATURES = 2, 3

MU = 0.8
"""The norm of ∂G/∂z the gain is set to at the training fixed points: nearer 1 lets z matter more and
converges slower; the margin below 1 covers LPs and iterates where the local norm is larger."""

FD_STEP = 1e-3
"""Length of the difference quotient's step, in scaled units (solutions are O(1) there)."""

Embedding = tuple[torch.Tensor, torch.Tensor]
"""(constraint embeddings, variable embeddings) of an LP graph: what G needs of x."""


def _orthogonal(module: nn.Module) -> None:
    """Orthogonal weights and zero biases, as the paper's code initialises every layer."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _convs(d_cons: int, d_var: int) -> nn.ModuleList:
    """Four half-convolutions: v→c, c→v, v→c, c→v."""
    return nn.ModuleList(HalfConv(d_cons, d_var, to_constraints=k % 2 == 0) for k in range(4))


def _propagate(convs: nn.ModuleList, g: Graph, h_cons: torch.Tensor, h_var: torch.Tensor) -> torch.Tensor:
    """The variable embeddings after the four half-convolutions, each followed by ReLU."""
    for conv in convs:
        if conv.to_constraints:
            h_cons = F.relu(conv(h_cons, h_var, g))
        else:
            h_var = F.relu(conv(h_cons, h_var, g))
    return h_var


class ExplicitGNN(nn.Module):
    """x ↦ ŷ in one pass: embeddings, four half-convolutions, then a per-variable head d → d → 1."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.cons_emb = nn.Linear(CONS_FEATURES, d)
        self.var_emb = nn.Linear(VAR_FEATURES, d)
        self.convs = _convs(d, d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1, bias=False))
        self.apply(_orthogonal)

    def forward(self, g: Graph) -> torch.Tensor:
        """The predicted solution (N,) in units of each LP's scale s."""
        h_cons, h_var = F.relu(self.cons_emb(g.cons)), F.relu(self.var_emb(g.var))
        return self.head(_propagate(self.convs, g, h_cons, h_var)).squeeze(1)


class ImplicitGNN(nn.Module):
    """G(z, x), normalised to ‖∂G/∂z‖ ≈ μ < 1; the state, one number per variable, is the solution."""

    def __init__(self, d: int, mu: float = MU) -> None:
        super().__init__()
        self.d = d
        self.cons_emb = nn.Linear(CONS_FEATURES, d)
        self.var_emb = nn.Linear(VAR_FEATURES, d)
        self.convs = _convs(d, d + 1)
        self.to_y = nn.Linear(d + 1, 1)
        self.head = nn.Sequential(nn.Linear(d + 1, d), nn.ReLU(), nn.Linear(d, 1, bias=False))
        self.register_buffer("mu", torch.tensor(float(mu)))
        self.register_buffer("lip", torch.tensor(1.0))
        """‖∂F/∂u‖ at the training fixed points, F(u) = G(u / gain): tracked by `calibrate` while training,
        then set to its largest value over the training set (`train.settle_gain`)."""
        self.apply(_orthogonal)

    def gain(self) -> torch.Tensor:
        """μ / L: the factor z is scaled by on entry."""
        return self.mu / self.lip

    def embed(self, g: Graph) -> Embedding:
        """The parts of G that depend on x alone, computed once per solve."""
        return F.relu(self.cons_emb(g.cons)), F.relu(self.var_emb(g.var))

    def step(self, g: Graph, emb: Embedding, z: torch.Tensor) -> torch.Tensor:
        """z ↦ G(z, x), all (N,) in units of each LP's scale s, given `embed(g)`."""
        h_cons, h_var = emb
        h = _propagate(self.convs, g, h_cons, torch.cat([h_var, (self.gain() * z)[:, None]], dim=1))
        return self.head(torch.cat([h_var, self.to_y(h)], dim=1)).squeeze(1)

    def forward(self, g: Graph, z: torch.Tensor) -> torch.Tensor:
        """One step z ↦ G(z, x)."""
        return self.step(g, self.embed(g), z)

    def unroll(self, g: Graph, iters: int) -> torch.Tensor:
        """z_T from z_0 = 0 after `iters` steps."""
        emb = self.embed(g)
        z = g.var.new_zeros(g.var.shape[0])
        for _ in range(iters):
            z = self.step(g, emb, z)
        return z

    def fixed_point(
        self, g: Graph, tol: float = 1e-4, max_iters: int = 100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Picard from z_0 = 0 to tolerance (see `solve`)."""
        return self.solve(g, self.embed(g), tol, max_iters)

    def solve(
        self, g: Graph, emb: Embedding, tol: float, max_iters: int, z0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Picard from z0 (default 0) to tolerance: see `picard`."""
        return picard(lambda z: self.step(g, emb, z), g, tol, max_iters, z0)

    def jacobian_norms(self, g: Graph, emb: Embedding, z: torch.Tensor, iters: int = 3) -> torch.Tensor:
        """Each LP's ‖∂G/∂z‖₂ at z, by `iters` steps of power iteration on JᵀJ (J is block-diagonal over
        the LPs of a batch, so every block converges to its own norm at once); a lower estimate. Jv is
        a difference quotient, exact where G is linear (it is piecewise linear) and cheaper than
        forward-mode; Jᵀu is a backward pass through one step."""
        emb = (emb[0].detach(), emb[1].detach())
        z_in = z.detach().requires_grad_()
        with torch.enable_grad():
            out = self.step(g, emb, z_in)
        v = torch.randn_like(z)
        norms = z.new_zeros(g.num_lps)
        for k in range(iters):
            v = v / per_lp_norm(v, g).clamp_min(1e-30)[g.lp]
            with torch.no_grad():
                jv = (self.step(g, emb, z + FD_STEP * v) - out.detach()) / FD_STEP
            norms = per_lp_norm(jv, g)
            if k + 1 < iters:
                (v,) = torch.autograd.grad(out, z_in, jv, retain_graph=k + 2 < iters)
        return norms

    def calibrate(self, norms: torch.Tensor, decay: float = 0.9) -> None:
        """Move L toward the largest measured ‖∂F/∂u‖ = ‖∂G/∂z‖ / gain, geometrically (a batch's largest
        norm varies with its LPs; a gain that jumped with it would make z an unreliable input)."""
        with torch.no_grad():
            seen = norms.max() / self.gain()
            self.lip.copy_(self.lip ** decay * seen ** (1 - decay))


def picard(
    step: Callable[[torch.Tensor], torch.Tensor],
    g: Graph,
    tol: float,
    max_iters: int,
    z0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Picard z ← step(z) from z0 (default 0), a number per variable of the batched graph `g`, until
    every LP's ‖step(z) − z‖ / ‖step(z)‖ ≤ tol (the server's `rel`) or max_iters; returns z and each
    LP's iteration count (max_iters + 1 where it did not get there)."""
    z = g.var.new_zeros(g.var.shape[0]) if z0 is None else z0
    iters = torch.full((g.num_lps,), max_iters + 1, dtype=torch.long, device=z.device)
    for t in range(1, max_iters + 1):
        gz = step(z)
        rel = per_lp_norm(gz - z, g) / (per_lp_norm(gz, g) + 1e-12)
        iters = torch.where((rel <= tol) & (iters > max_iters), t, iters)
        z = gz
        if bool((iters <= max_iters).all()):
            break
    return z, iters


def per_lp_norm(x: torch.Tensor, g: Graph) -> torch.Tensor:
    """‖x restricted to each LP‖ for a per-variable x over a batched graph."""
    out = x.new_zeros(g.num_lps)
    return out.index_add_(0, g.lp, x.detach() ** 2).sqrt()


def param_count(net: nn.Module) -> int:
    """Trainable scalars (the paper's counts are PyTorch's `sum(p.numel())`)."""
    return sum(p.numel() for p in net.parameters())
