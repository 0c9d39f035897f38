"""The explicit baseline: the same sandwich blocks stacked once each, no recurrence, about the same size."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from eqserve.models.looped_lm.config import LoopedConfig
from eqserve.models.looped_lm.layers import RMSNorm, SandwichBlock, dense, rope_table


class ExplicitLM(nn.Module):
    """wte → `n_layers` sandwich blocks → ln_f → lm_head: a plain transformer of fixed depth."""

    def __init__(self, cfg: LoopedConfig, n_layers: int) -> None:
        super().__init__()
        self.config, self.n_layers = cfg, n_layers
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "h": nn.ModuleList(SandwichBlock(cfg) for _ in range(n_layers)),
                "ln_f": RMSNorm(cfg.n_embd, cfg.norm_eps),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        table = rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base)
        self.register_buffer("freqs_cis", table, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of token ids (B, T)."""
        table = self.freqs_cis[:, : tokens.shape[1]]
        x = self.transformer.wte(tokens) * self.config.embed_scale
        for block in self.transformer.h:
            x, _ = block(x, table)
        return dense(self.transformer.ln_f(x), self.lm_head.weight).float()

    def save(self, path: Path) -> None:
        """The weights, with the config and depth in the file's metadata."""
        from safetensors.torch import save_file

        meta = {"config": json.dumps(self.config.to_dict()), "n_layers": str(self.n_layers)}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)
        path.chmod(0o644)

    @classmethod
    def from_weights(cls, path: str | Path) -> ExplicitLM:
        """Build from `save`'s file."""
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        model = cls(LoopedConfig.from_dict(json.loads(meta["config"])), int(meta["n_layers"]))
        model.load_state_dict(state, strict=True)
        return model


def block_params(cfg: LoopedConfig) -> int:
    """Parameters of one sandwich block."""
    return sum(p.numel() for p in SandwichBlock(cfg).parameters())


def matching_layers(cfg: LoopedConfig, params: int) -> int:
    """The depth whose explicit model's size is closest to `params`."""
    rest = sum(p.numel() for p in ExplicitLM(cfg, 0).parameters())
    return max(1, round((params - rest) / block_params(cfg)))
