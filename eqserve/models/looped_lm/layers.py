"""Huginn's sandwich block and its parts, each with a whole-sequence forward and a batch step.

The parameter names are Huginn's (`norm_1`, `attn.Wqkv`, `attn.qk_bias`, `attn.proj`, `norm_2`, `mlp.fc`,
`mlp.proj`, `norm_3`, `norm_4`), so its checkpoints load. The batch step serves, in one pass, a token
for each decoding row (rows at different positions) and whole prompts being prefilled: its dense
products go through `invariant.linear` and each row or prompt attends to its own keys alone, so its
bits do not depend on its batch-mates in batch-invariant mode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eqserve.kernels import invariant
from eqserve.models.looped_lm.config import LoopedConfig

KV = tuple[torch.Tensor, torch.Tensor]
"""Keys and values of one layer: (..., heads, head_dim) each, after the rotary embedding."""


def dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x Wᵀ (+ b) over the last axis, through `invariant.linear` (fixed-shape blocks in that mode)."""
    y = invariant.linear(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[0])
    return y if b is None else y + b


def rope_table(head_dim: int, length: int, base: float) -> torch.Tensor:
    """Huginn's `freqs_cis`: (1, length, 1, head_dim / 2, 2), the cosine and sine of each pair's angle."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    return torch.stack([angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]], dim=4)


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of the last axis by its angle; `table` broadcasts over x's
    leading axes with (..., head_dim / 2, 2) last."""
    pairs = x.float().unflatten(-1, (-1, 2))
    cos, sin = table[..., 0], table[..., 1]
    re, im = pairs[..., 0], pairs[..., 1]
    return torch.stack([re * cos - im * sin, im * cos + re * sin], -1).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    """x / rms(x) · weight, computed in float32 as Huginn does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """Causal multi-head self-attention with one fused q/k/v product and Huginn's learned q/k bias."""

    def __init__(self, cfg: LoopedConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.Wqkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        if cfg.qk_bias:
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, cfg.n_heads, cfg.head_dim))
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def qkv(self, x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (..., heads, head_dim) of x (..., d), q and k biased and rotated by `table`."""
        q, k, v = dense(x, self.Wqkv.weight).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        if hasattr(self, "qk_bias"):
            q, k = q + self.qk_bias[0, 0], k + self.qk_bias[1, 0]
        return rotate(q, table), rotate(k, table), v

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """Whole sequences x (B, T, d), position t seeing 0..t; also the keys and values (B, T, H, hd)."""
        q, k, v = self.qkv(x, table)
        q, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kt, vt, is_causal=True)
        return dense(y.transpose(1, 2).flatten(2), self.proj.weight), (k, v)

    def step(
        self, x: torch.Tensor, table: torch.Tensor, past: list[KV], lengths: Sequence[int] = ()
    ) -> tuple[torch.Tensor, KV]:
        """A batch step's positions x (P, d), each with its own rotary row of `table` (P, 1, hd / 2, 2):
        first one token per decoding row, attending to its row's `past` keys and values (T_i, H, hd) and
        to itself; then whole prompts of `lengths` packed end to end, each position seeing its prompt's
        positions up to itself. Also every position's keys and values (P, H, hd). The dense products
        run once over all positions, the attention row by row and prompt by prompt, so each gets the
        bits it gets alone."""
        q, k, v = self.qkv(x, table)
        scale = 1.0 / math.sqrt(self.head_dim)
        rows = []
        for i, (pk, pv) in enumerate(past):
            keys, values = torch.cat([pk, k[i : i + 1]]), torch.cat([pv, v[i : i + 1]])
            w = torch.softmax((keys.transpose(0, 1) @ q[i, :, :, None])[..., 0] * scale, dim=-1)
            rows.append((w[:, None] @ values.transpose(0, 1)).transpose(0, 1))
        ends = list(itertools.accumulate(lengths, initial=len(past)))
        for a, b in itertools.pairwise(ends):
            qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
            rows.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1))
        return dense(torch.cat(rows).flatten(1), self.proj.weight), (k, v)


class GatedMLP(nn.Module):
    """silu(x W₁) ⊙ (x W₂) then a projection, W₁ and W₂ stacked in one product `fc` as in Huginn."""

    def __init__(self, cfg: LoopedConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = dense(x, self.fc.weight).chunk(2, dim=-1)
        return dense(F.silu(gate) * up, self.proj.weight)


class SandwichBlock(nn.Module):
    """x ← norm_2(x + attn(norm_1 x)); x ← norm_4(x + mlp(norm_3 x)): Huginn's block, normed on both sides
    of each sublayer so that iterating it keeps the state's scale."""

    def __init__(self, cfg: LoopedConfig) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = GatedMLP(cfg)
        self.norm_3 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.norm_4 = RMSNorm(cfg.n_embd, cfg.norm_eps)

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """Whole sequences (B, T, d); also the block's keys and values."""
        a, kv = self.attn(self.norm_1(x), table)
        return self._finish(x, a), kv

    def step(
        self, x: torch.Tensor, table: torch.Tensor, past: list[KV], lengths: Sequence[int] = ()
    ) -> tuple[torch.Tensor, KV]:
        """A batch step's positions (P, d): a token per decoding row against its past, then packed
        prompts (see `Attention.step`); also their keys and values."""
        a, kv = self.attn.step(self.norm_1(x), table, past, lengths)
        return self._finish(x, a), kv

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = self.norm_2(a + x)
        return self.norm_4(self.mlp(self.norm_3(x)) + x)
