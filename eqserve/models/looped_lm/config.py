"""The model's configuration under Huginn's config keys (RavenConfig), so a Huginn config.json reads as is.

Only the architecture Huginn published is implemented (sandwich blocks, RMSNorm, gated SiLU MLP, a linear
adapter injecting the prelude's output); a config asking for another variant is refused rather than read
as something it is not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

FIXED = {
    "block_class_name": "SandwichBlock",
    "norm_class_name": "RMSNorm_llama",
    "mlp_class_name": "GatedMLP",
    "nonlin_name": "SiLU",
    "injection_type": "linear",
}
"""Huginn's architecture choices that this implementation follows: any other value is refused."""

IGNORED = frozenset(
    {
        "architectures",
        "auto_map",
        "model_type",
        "torch_dtype",
        "transformers_version",
        "padding_multiple",
        "architecture_class_name",
        "init_strategy",
        "init_orthogonal",
        "sampling_scheme",
        "activation_checkpoint_impl",
        "n_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_size",
        "num_hidden_layers",
        "head_dim",
        "padded_vocab_size",
        "effective_expected_depth",
        "init_values",
        "tie_word_embeddings",
        "test_time_noise",
        "test_time_noise_type",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    }
)
"""Keys of a Huginn config.json that say nothing about the forward pass (or are derived from others)."""


@dataclass(frozen=True)
class LoopedConfig:
    """Huginn's keys (names and meaning as in RavenConfig), plus `chars`, the char-level vocabulary."""

    n_embd: int = 64
    n_heads: int = 4
    n_layers_in_prelude: int = 1
    n_layers_in_recurrent_block: int = 2
    n_layers_in_coda: int = 1
    mean_recurrence: int = 8
    mean_backprop_depth: int = 4
    vocab_size: int = 4
    block_size: int = 64
    intermediate_size: int = 128
    bias: bool = False
    qk_bias: bool = True
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    rope_base: float = 50_000.0
    state_init: str = "like-init"
    injection_type: str = "linear"
    chars: str = ""
    """The characters of token ids 0, 1, ...; the id after the last is the end token (empty: no text)."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_heads or (self.n_embd // self.n_heads) % 2:
            raise ValueError(f"n_embd {self.n_embd} must split into {self.n_heads} heads of even size")
        if self.state_init not in ("like-init", "zero"):
            raise ValueError(f"state_init {self.state_init!r}: only 'like-init' and 'zero' are implemented")
        if self.chars and len(self.chars) + 1 > self.vocab_size:
            raise ValueError(f"{len(self.chars)} chars and an end token exceed vocab_size {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.n_embd // self.n_heads

    @property
    def init_std(self) -> float:
        """Huginn's init_values['std']: the scale of weights and of the random starting state."""
        return math.sqrt(2 / (5 * self.n_embd))

    @property
    def embed_scale(self) -> float:
        """Huginn's init_values['embed_scale']: token embeddings are multiplied by it."""
        return math.sqrt(self.n_embd)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LoopedConfig:
        """Read a Huginn config.json (or our own `to_dict`); refuse keys and variants not implemented."""
        for key, value in FIXED.items():
            if key in raw and raw[key] != value:
                raise ValueError(f"config {key} = {raw[key]!r}: only {value!r} is implemented")
        noise = raw.get("test_time_noise", 0)
        if noise:
            raise ValueError(f"config test_time_noise = {noise!r}: only 0 is implemented")
        ours = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - ours - IGNORED - set(FIXED))
        if unknown:
            raise ValueError(f"config keys not understood: {', '.join(unknown)}")
        cfg = cls(**{k: v for k, v in raw.items() if k in ours})
        layers = cfg.n_layers_in_prelude + cfg.n_layers_in_recurrent_block + cfg.n_layers_in_coda
        if "n_layers" in raw and raw["n_layers"] != layers:
            raise ValueError(f"config n_layers = {raw['n_layers']} but the three parts hold {layers} layers")
        for key in ("num_key_value_heads", "num_attention_heads"):
            if key in raw and raw[key] != cfg.n_heads:
                raise ValueError(f"config {key} = {raw[key]} differs from n_heads = {cfg.n_heads}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The keys as Huginn writes them (plus the fixed architecture names and `n_layers`)."""
        layers = self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda
        return {**asdict(self), **FIXED, "n_layers": layers}
