"""Huginn's forward written out from the paper's and its code's equations, on raw tensors by name.

A tiny random checkpoint in Huginn's layout (its config keys, its parameter names, a tied head left out,
the rotary table stored) and the forward of `raven_modeling_minimal.py`, one token at a time over a
dict cache keyed (part, layer, step) → {position: (k, v)} as Huginn's `HuginnDynamicCache` keeps it,
with its `latest` lookup (or `skip`, the naive rule: positions lacking the step are left out). Nothing
here uses eqserve's looped_lm code: the tests compare that code against this.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

D, HEADS, INTER, VOCAB, BLOCK = 16, 2, 24, 8, 24
"""Sizes of the tiny checkpoint. VOCAB is a multiple of 4 as Huginn pads its vocabulary (`padding_multiple`):
`invariant.linear` is not row-invariant on this MKL for 5 to 11 output columns bar 8."""
PARTS = {"prelude": 1, "core_block": 2, "coda": 1}


def huginn_config() -> dict:
    """A config.json as Huginn writes one (RavenConfig's keys), tiny."""
    return {
        "architectures": ["RavenForCausalLM"], "model_type": "huginn_raven", "auto_map": {},
        "n_embd": D, "n_heads": HEADS, "n_layers": sum(PARTS.values()), "block_size": BLOCK,
        "vocab_size": VOCAB, "padding_multiple": 4, "tie_embeddings": True, "intermediate_size": INTER,
        "bias": False, "architecture_class_name": "RecurrentGPT", "block_class_name": "SandwichBlock",
        "norm_class_name": "RMSNorm_llama", "norm_eps": 1e-6, "mlp_class_name": "GatedMLP",
        "nonlin_name": "SiLU", "init_strategy": "takase", "init_orthogonal": False, "state_init": "like-init",
        "injection_type": "linear", "n_layers_in_recurrent_block": PARTS["core_block"], "mean_recurrence": 4,
        "sampling_scheme": "poisson-lognormal-filling", "mean_backprop_depth": 2,
        "n_layers_in_prelude": PARTS["prelude"], "n_layers_in_coda": PARTS["coda"], "qk_bias": True,
        "activation_checkpoint_impl": "per-iteration", "rope_base": 50000, "torch_dtype": "float32",
        "transformers_version": "4.47.1",
    }  # fmt: skip


def rope_angles(length: int) -> torch.Tensor:
    """θ_{t,i} = t · base^(−2i / head_dim)."""
    hd = D // HEADS
    return torch.arange(length, dtype=torch.float32)[:, None] * 50000.0 ** (-torch.arange(0, hd, 2) / hd)


def huginn_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under Huginn's published names (no lm_head: tied), with its `freqs_cis` table."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    t = {"transformer.wte.weight": rnd(VOCAB, D, scale=0.2), "transformer.adapter.weight": rnd(D, 2 * D)}
    t["transformer.ln_f.weight"] = 1 + rnd(D, scale=0.1)
    for part, n in PARTS.items():
        for i in range(n):
            p = f"transformer.{part}.{i}."
            for k in ("norm_1", "norm_2", "norm_3", "norm_4"):
                t[p + k + ".weight"] = 1 + rnd(D, scale=0.1)
            t[p + "attn.Wqkv.weight"] = rnd(3 * D, D)
            t[p + "attn.qk_bias"] = rnd(2, 1, HEADS, D // HEADS, scale=0.1)
            t[p + "attn.proj.weight"] = rnd(D, D)
            t[p + "mlp.fc.weight"] = rnd(2 * INTER, D)
            t[p + "mlp.proj.weight"] = rnd(D, INTER)
    a = rope_angles(BLOCK)
    t["freqs_cis"] = torch.stack([a.cos()[None, :, None, :], a.sin()[None, :, None, :]], dim=4)
    return t


def write_huginn(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint folder in Huginn's layout: config.json and model.safetensors; returns the tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = huginn_tensors(seed)
    (folder / "config.json").write_text(json.dumps(huginn_config()))
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def _rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean() + 1e-6) * g


def _rotate(x: torch.Tensor, pos: int) -> torch.Tensor:
    """x (H, hd) with each pair rotated as the complex number x[2i] + i·x[2i+1] times e^{iθ}."""
    z = torch.view_as_complex(x.reshape(HEADS, -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones(()), rope_angles(pos + 1)[pos])).reshape(HEADS, -1)


def _block(w: dict, p: str, x: torch.Tensor, pos: int, past: list) -> tuple[torch.Tensor, tuple]:
    """Huginn's SandwichBlock on one token attending to `past` [(k, v)] and itself."""
    q, k, v = (w[p + "attn.Wqkv.weight"] @ _rms(x, w[p + "norm_1.weight"])).reshape(3, HEADS, -1)
    q, k = _rotate(q + w[p + "attn.qk_bias"][0, 0], pos), _rotate(k + w[p + "attn.qk_bias"][1, 0], pos)
    keys = torch.stack([pk for pk, _ in past] + [k])
    values = torch.stack([pv for _, pv in past] + [v])
    att = torch.softmax(torch.einsum("hd,thd->ht", q, keys) / math.sqrt(D // HEADS), dim=-1)
    a = w[p + "attn.proj.weight"] @ torch.einsum("ht,thd->hd", att, values).reshape(-1)
    x = _rms(a + x, w[p + "norm_2.weight"])
    gate, up = (w[p + "mlp.fc.weight"] @ _rms(x, w[p + "norm_3.weight"])).chunk(2)
    return _rms(w[p + "mlp.proj.weight"] @ (F.silu(gate) * up) + x, w[p + "norm_4.weight"]), (k, v)


def reference_logits(w: dict, tokens: list[int], steps: list[int], lookup: str = "latest") -> torch.Tensor:
    """(T, vocab) logits of `tokens`, token t run with steps[t] core steps from a zero state."""
    cache: dict[tuple[str, int, int], dict[int, tuple]] = {}
    out = []
    for pos, tok in enumerate(tokens):

        def layer(part: str, i: int, x: torch.Tensor, step: int = 0, pos: int = pos) -> torch.Tensor:
            key = (part, i, step)
            if part == "core_block" and lookup == "latest":
                past = [
                    cache[(part, i, max(j for j in range(step + 1) if q in cache.get((part, i, j), {})))][q]
                    for q in range(pos)
                ]
            else:
                past = [kv for q, kv in sorted(cache.get(key, {}).items()) if q < pos]
            x, kv = _block(w, f"transformer.{part}.{i}.", x, pos, past)
            cache.setdefault(key, {})[pos] = kv
            return x

        x = w["transformer.wte.weight"][tok] * math.sqrt(D)
        for i in range(PARTS["prelude"]):
            x = layer("prelude", i, x)
        e, s = x, torch.zeros(D)
        for j in range(steps[pos]):
            s = w["transformer.adapter.weight"] @ torch.cat([s, e])
            for i in range(PARTS["core_block"]):
                s = layer("core_block", i, s, j)
        x = _rms(s, w["transformer.ln_f.weight"])
        for i in range(PARTS["coda"]):
            x = layer("coda", i, x)
        out.append(w["transformer.wte.weight"] @ _rms(x, w["transformer.ln_f.weight"]))
    return torch.stack(out)
