"""Huginn's exit values of a token's inner loop, over a batch of rows at once.

Each is a row-wise reduction over the state or the distribution, so a row's value has the same bits
alone as amid mates (row-wise reductions of one shape take one path per row on the CPU); the
batch-invariance tests of the token engine hold this to account.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEEDS_LOGITS = frozenset({"entropy-diff", "kl", "argmax-stability"})
"""Criteria that look at the distribution: the coda and head run every `check_every` inner steps."""


def latent_diff(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """‖s_j − s_{j−1}‖ / ‖s_j‖ per row: how far the latent state still moves."""
    return torch.linalg.vector_norm(cur - prev, dim=-1) / torch.linalg.vector_norm(cur, dim=-1)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """The next-token log-distribution, in fp32 whatever the model's dtype."""
    return F.log_softmax(logits.float(), dim=-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """The distribution's entropy per row (entropy-diff compares consecutive checks)."""
    return -(logp.exp() * logp).sum(dim=-1)


def kl(prev_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(previous check ‖ this check) per row, as Huginn's `kl` criterion."""
    return (prev_logp.exp() * (prev_logp - logp)).sum(dim=-1)
