"""The explicit GNN of Chen et al. (2023) and its implicit counterpart G(z, x) (Liu et al. 2026).

Both follow the paper's code (IMP-Power, gnn-lp/models_gnn.py), so the parameter counts are the
paper's: explicit 29d² + 29d, implicit 29d² + 59d + 22, all trainable, no normalisation layers.
The implicit net embeds the LP once, runs four half-convolutions over variable embeddings that carry
the state z as one extra column, reads a scalar per variable off them, and a head maps [embedding,
scalar] to the new z. Unlike the paper's, G is a contraction in z by construction: z enters scaled
by a gain μ / B, B a bound on the Lipschitz constant in z of the rest of G (a product of the weights'
spectral norms, ‖A‖₂ ≤ 1 from `lp_graph`), so Lip_z G ≤ μ < 1 whatever the weights; then Picard
iteration converges from any start, to a fixed point that exists and is unique.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from eqserve.models.lp_gnn.conv import HalfConv, mlp_bound, spectral
from eqserve.models.lp_gnn.graph import Graph

CONS_FEATURES, VAR_FEATURES = 2, 3

MU = 0.9
"""The contraction factor G is built to: a bound, the realised one is smaller; nearer 1 is more expressive
and slower to converge."""

RADIUS = 3.0
"""The spectral norm `project` holds each bounded weight block to. At 1 the bound is tight enough that
z matters (‖∂G/∂z‖ ≈ 0.3) but the convolutions, which carry x too, learn slower (held-out 0.48 against
0.39 after 8 epochs on 500 LPs, d = 16); at 3 the x path learns as if unconstrained."""

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
    """G(z, x), a μ-contraction in z: the state, one number per variable, is the solution estimate."""

    def __init__(self, d: int, mu: float = MU) -> None:
        super().__init__()
        self.d = d
        self.cons_emb = nn.Linear(CONS_FEATURES, d)
        self.var_emb = nn.Linear(VAR_FEATURES, d)
        self.convs = _convs(d, d + 1)
        self.to_y = nn.Linear(d + 1, 1)
        self.head = nn.Sequential(nn.Linear(d + 1, d), nn.ReLU(), nn.Linear(d, 1, bias=False))
        self.register_buffer("mu", torch.tensor(float(mu)))
        self.apply(_orthogonal)

    def project(self) -> None:
        """Scale each weight block the bound multiplies to spectral norm ≤ RADIUS (after each optimiser step).

        The contraction does not rest on this (the gain uses the bound of whatever weights there
        are); it keeps the bound, a product of norms, from growing with the weights and with it the
        gain from shrinking until z barely matters. Blocks that see only x (the embeddings, the first
        constraint self-map, the x columns beside z's) stay free."""
        d = self.d
        c0, c1, c2, c3 = self.convs
        blocks = [(c0.msg[0].weight, slice(d, d + 1)), (c0.out[0].weight, slice(0, d + 1))]
        blocks += [(c1.self_[0].weight, slice(d, d + 1)), (self.head[0].weight, slice(d, d + 1))]
        blocks += [(w, slice(None)) for w in (c0.msg[2].weight, c0.out[2].weight, self.to_y.weight)]
        blocks += [(c1.msg[0].weight, slice(None)), (c1.msg[2].weight, slice(None))]
        blocks += [(c1.self_[2].weight, slice(None)), (self.head[2].weight, slice(None))]
        blocks += [(c.out[k].weight, slice(None)) for c in (c1,) for k in (0, 2)]
        blocks += [(m.weight, slice(None)) for c in (c2, c3) for m in c.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for w, cols in blocks:
                w[:, cols] /= (spectral(w[:, cols]) / RADIUS).clamp_min(1.0)

    def embed(self, g: Graph) -> Embedding:
        """The parts of G that depend on x alone, computed once per solve."""
        return F.relu(self.cons_emb(g.cons)), F.relu(self.var_emb(g.var))

    def bound(self) -> torch.Tensor:
        """An upper bound on Lip_z of G with gain 1, from the spectral norms of the weights z passes."""
        d = self.d
        c0, c1, c2, c3 = self.convs
        l_cons1 = c0.lipschitz(src=[(d, 0.0), (1, 1.0)], dst=[(d, 0.0)])
        l_var1 = c1.lipschitz(src=[(d, l_cons1)], dst=[(d, 0.0), (1, 1.0)])
        l_cons2 = c2.lipschitz(src=[(d + 1, l_var1)], dst=[(d, l_cons1)])
        l_var2 = c3.lipschitz(src=[(d, l_cons2)], dst=[(d + 1, l_var1)])
        return mlp_bound(self.head, [(d, 0.0), (1, spectral(self.to_y.weight) * l_var2)])

    def gain(self) -> torch.Tensor:
        """μ / B: the factor z is scaled by on entry, which makes Lip_z G ≤ μ."""
        return self.mu / self.bound().clamp_min(1e-12)

    def step(self, g: Graph, emb: Embedding, z: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """z ↦ G(z, x), all (N,) in units of each LP's scale s, given `embed(g)` and `gain()`."""
        h_cons, h_var = emb
        h = _propagate(self.convs, g, h_cons, torch.cat([h_var, (gain * z)[:, None]], dim=1))
        return self.head(torch.cat([h_var, self.to_y(h)], dim=1)).squeeze(1)

    def forward(self, g: Graph, z: torch.Tensor) -> torch.Tensor:
        """One step z ↦ G(z, x)."""
        return self.step(g, self.embed(g), z, self.gain())

    def unroll(self, g: Graph, iters: int) -> torch.Tensor:
        """z_T from z_0 = 0 after `iters` steps."""
        emb, gain = self.embed(g), self.gain()
        z = g.var.new_zeros(g.var.shape[0])
        for _ in range(iters):
            z = self.step(g, emb, z, gain)
        return z

    def fixed_point(
        self, g: Graph, tol: float = 1e-4, max_iters: int = 100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Picard from z_0 = 0 to tolerance (see `solve`)."""
        return self.solve(g, self.embed(g), self.gain(), tol, max_iters)

    def solve(
        self, g: Graph, emb: Embedding, gain: torch.Tensor, tol: float, max_iters: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Picard from z_0 = 0 until every LP's ‖G(z) − z‖ / ‖G(z)‖ ≤ tol (the server's `rel`), or
        max_iters; returns z and each LP's iteration count (max_iters + 1 where it did not get there)."""
        z = g.var.new_zeros(g.var.shape[0])
        iters = torch.full((g.num_lps,), max_iters + 1, dtype=torch.long, device=z.device)
        for t in range(1, max_iters + 1):
            gz = self.step(g, emb, z, gain)
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
