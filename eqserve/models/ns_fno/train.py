"""Train ns-fno and its explicit twin on the same solver-generated data; write the three safetensors files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from eqserve.models.fitting import fit
from eqserve.models.ns_fno.data import make_dataset
from eqserve.models.ns_fno.layers import ExplicitFNO, FourierLayer, Lift, Readout, operator_norm
from eqserve.models.ns_fno.model import (
    EXPLICIT_FILE,
    FORCING_SCALE,
    HELDOUT_FILE,
    VORTICITY_SCALE,
    NsFno,
    fourier_step,
)

EVAL_ITERS = [1, 2, 4, 8, 16, 32, 64]
HELDOUT_SEED = 1_000_003


class _DeqTrainer(nn.Module):
    """The DEQ with (K, W) scaled to ‖K + W‖₂ = γ each step, solved forward to a tolerance without
    grad, then differentiated through `unroll` steps from the fixed point (a phantom gradient: the
    truncated Neumann series of implicit differentiation, cheap and stable for a contraction)."""

    def __init__(
        self,
        channels: int,
        modes: int,
        lift_depth: int,
        gamma: float,
        tol: float,
        max_iters: int,
        unroll: int,
    ) -> None:
        super().__init__()
        self.lift = Lift(channels, modes, lift_depth)
        self.block = FourierLayer(channels, channels, modes)
        self.readout = Readout(channels)
        self.gamma, self.tol, self.max_iters, self.unroll = gamma, tol, max_iters, unroll

    def scale(self) -> torch.Tensor:
        """γ/‖K + W‖₂: the factor that makes the block's operator norm exactly γ."""
        return self.gamma / operator_norm(self.block.spectral, self.block.pointwise.weight[:, :, 0, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled forcing (B, n, n) → scaled vorticity at the fixed point."""
        inj = self.lift(x.unsqueeze(1))
        s = self.scale()
        with torch.no_grad():
            z = torch.zeros_like(inj)
            for _ in range(self.max_iters):
                z_next = fourier_step(self.block, z, inj, s)
                moved = (z_next - z).flatten(1).norm(dim=1) / z_next.flatten(1).norm(dim=1).clamp_min(1e-12)
                z = z_next
                if moved.max().item() < self.tol:
                    break
        for _ in range(self.unroll):
            z = fourier_step(self.block, z, inj, s)
        return self.readout(z)

    def export(self) -> dict[str, torch.Tensor]:
        """The plain NsFno tensors with the scale baked into K and W (fp32, contiguous)."""
        with torch.no_grad():
            s = self.scale()
            tensors = dict(self.state_dict())
            tensors["block.spectral.weight"] = self.block.spectral.weight * s
            tensors["block.pointwise.weight"] = self.block.pointwise.weight * s
            return {k: v.detach().float().contiguous().clone() for k, v in tensors.items()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file readable by everyone (it ships as package data)."""
    save_file(tensors, str(path))
    path.chmod(0o644)


def _matching_width(params: int, modes: int, depth: int) -> int:
    """The explicit FNO width whose parameter count is nearest `params`."""
    return min(range(1, 129), key=lambda c: abs(ExplicitFNO(c, modes, depth).num_params() - params))


def train(
    out_dir: Path,
    *,
    epochs: int = 40,
    seed: int = 0,
    log: Callable[[str], None] = print,
    channels: int = 14,
    modes: int = 5,
    lift_depth: int = 3,
    gamma: float = 0.97,
    n_train: int = 1024,
    n_heldout: int = 64,
    n_heldout64: int = 16,
    batch_size: int = 8,
    lr: float = 1e-2,
    explicit_depth: int = 4,
) -> dict:
    """Generate data with our solver, train ns-fno (‖K + W‖₂ = γ) and an explicit FNO of about its size.

    5 modes hold all but a small share of the steady fields' energy (the forcings live on |k| ≤ 4),
    so the parameters go to channels; both nets were data-limited at a few hundred samples.

    Writes the DEQ, its explicit twin and the held-out sets (32² and 64², the latter on the first
    forcings of the former) to out_dir; returns E_t, both sizes and the time taken.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the budget is one core: the machine is shared
    torch.manual_seed(seed)
    start = time.perf_counter()
    f, w = make_dataset(n_train, 32, seed)
    f_val, w_val = make_dataset(n_heldout, 32, seed + HELDOUT_SEED)
    f64, w64 = make_dataset(n_heldout64, 64, seed + HELDOUT_SEED)
    data_s = time.perf_counter() - start
    log(f"data: {n_train} + {n_heldout} at 32², {n_heldout64} at 64² in {data_s:.0f} s")
    heldout = {"f32": f_val, "w32": w_val, "f64": f64, "w64": w64}
    _save({k: v.float().contiguous() for k, v in heldout.items()}, out_dir / HELDOUT_FILE)
    pairs = (FORCING_SCALE * f, VORTICITY_SCALE * w, FORCING_SCALE * f_val, VORTICITY_SCALE * w_val)
    data = tuple(t.float() for t in pairs)

    deq = _DeqTrainer(channels, modes, lift_depth, gamma, tol=1e-3, max_iters=60, unroll=3)
    fit(deq, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, tag="ns-fno", log=log, warmup=0.1)
    deq_s = time.perf_counter() - start - data_s
    _save(deq.export(), out_dir / "ns-fno.safetensors")

    deq_params = sum(p.numel() for p in deq.export().values())
    explicit = ExplicitFNO(_matching_width(deq_params, modes, explicit_depth), modes, explicit_depth)
    fit(explicit, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, tag="explicit-fno", log=log,
        warmup=0.1)  # fmt: skip
    _save({k: v.detach().contiguous() for k, v in explicit.state_dict().items()}, out_dir / EXPLICIT_FILE)

    model = NsFno.from_weights(out_dir / "ns-fno.safetensors")
    report = model.evaluate(EVAL_ITERS)
    report64 = model.evaluate(EVAL_ITERS, grid=64)
    elapsed = time.perf_counter() - start
    bound = model.contraction_bound()
    log(f"done in {elapsed:.0f} s (data {data_s:.0f} s, deq {deq_s:.0f} s); ‖K + W‖₂ = {bound:.4f}")
    for t, e, e64 in zip(report.t, report.error, report64.error, strict=True):
        log(f"  E_{t} = {e:.4f} (64²: {e64:.4f})")
    log(f"  explicit-fno ({report.baseline['params']} params): {report.baseline['error']:.4f}")
    return {
        "model": "ns-fno",
        "params": report.params,
        "contraction_bound": bound,
        "t": report.t,
        "error": report.error,
        "baseline": report.baseline,
        "error_64": report64.error,
        "baseline_64": report64.baseline,
        "train_seconds": elapsed,
        "data_seconds": data_s,
        "epochs": epochs,
        "seed": seed,
    }
