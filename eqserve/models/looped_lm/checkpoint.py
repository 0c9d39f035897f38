"""Checkpoints: our single safetensors file, and Huginn's layout (a folder of config.json + safetensors).

Both hold the tensors under Huginn's names. Ours carries its config in the file's metadata, so one file
is the whole model; Huginn's folder carries it in config.json. Huginn ties lm_head to wte and saves the
head without its own tensor, and keeps the rotary table `freqs_cis` as a tensor: a tied head is read
from wte, and the table is checked against the one the config implies, then dropped (it is recomputed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from eqserve.models.looped_lm.config import LoopedConfig
from eqserve.models.looped_lm.layers import rope_table
from eqserve.models.looped_lm.model import LoopedTransformer

ROPE_TOLERANCE = 1e-2
"""How far a checkpoint's rotary table may be from ours (it may be stored in bfloat16)."""


def state_of(model: LoopedTransformer) -> dict[str, torch.Tensor]:
    """The tensors to save: contiguous, the tied head left out as Huginn leaves it out."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        del state["lm_head.weight"]
    return state


def build(cfg: LoopedConfig, state: dict[str, torch.Tensor], weights_dir: Path) -> LoopedTransformer:
    """The model of `cfg` with `state` loaded strictly (a tied head may be absent, a rotary table present)."""
    state = dict(state)
    table = state.pop("freqs_cis", None)
    if table is not None:
        want = rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base)
        if table.shape != want.shape or not torch.allclose(table.float(), want, atol=ROPE_TOLERANCE):
            raise ValueError("the checkpoint's freqs_cis is not the rotary table of its config")
    model = LoopedTransformer(cfg, weights_dir)
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])
    dtype = state["transformer.wte.weight"].dtype
    model.to(dtype).load_state_dict(state, strict=True)
    return model


def save(model: LoopedTransformer, path: Path) -> None:
    """One safetensors file, the config in its metadata; readable by everyone (it ships as package data)."""
    save_file(state_of(model), str(path), metadata={"config": json.dumps(model.config.to_dict())})
    path.chmod(0o644)


def load(path: str | Path) -> LoopedTransformer:
    """A model from `save`'s file, or from a folder in Huginn's layout."""
    path = Path(path)
    if path.is_dir():
        cfg = LoopedConfig.from_dict(json.loads((path / "config.json").read_text()))
        state: dict[str, torch.Tensor] = {}
        for file in sorted(path.glob("*.safetensors")):
            state |= load_file(str(file))
        return build(cfg, state, path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no config in the file's metadata (a Huginn checkpoint is a folder)")
    return build(LoopedConfig.from_dict(json.loads(meta["config"])), load_file(str(path)), path.parent)
