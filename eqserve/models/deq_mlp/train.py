"""Train deq-mlp and its explicit twin on the same seeded data; write the three safetensors files."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from eqserve.models.deq_mlp.data import D_IN, D_OUT, make_dataset
from eqserve.models.deq_mlp.explicit import ExplicitMLP, matching_width
from eqserve.models.deq_mlp.model import EXPLICIT_FILE, HELDOUT_FILE, DeqMLP
from eqserve.models.fitting import fit, squared_relative_error

EVAL_ITERS = [1, 2, 4, 8, 16, 32, 64, 128]
POWER_STEPS = 4
"""Power-iteration steps per training step for σ_max(V) (V moves little between steps)."""
EARLY_STEPS = (2,)
"""Iterates y_t (from y0 = 0) whose readout error is also trained, with weight EARLY_WEIGHT each."""
EARLY_WEIGHT = 0.01


class _DeqTrainer(nn.Module):
    """The DEQ with W = γ·V/σ_max(V), solved to its fixed point, differentiated implicitly."""

    def __init__(self, hidden: int, gamma: float, solve_tol: float, solve_iters: int) -> None:
        super().__init__()
        self.V = nn.Parameter(torch.randn(hidden, hidden) / math.sqrt(hidden))
        self.inj = nn.Linear(D_IN, hidden)
        self.readout = nn.Linear(hidden, D_OUT)
        self.gamma = gamma
        self.solve_tol = solve_tol
        self.solve_iters = solve_iters
        self.register_buffer("u", nn.functional.normalize(torch.randn(hidden), dim=0))

    def weight(self, exact: bool = False) -> torch.Tensor:
        """W = γ·V/σ_max(V): σ by a few power-iteration steps from the kept vector `u` while training
        (an SVD of a 1024² matrix per step took ~0.2 s), by an exact SVD when `exact`."""
        if exact:
            return self.gamma * self.V / torch.linalg.matrix_norm(self.V, ord=2)
        with torch.no_grad():
            u = self.u
            for _ in range(POWER_STEPS):
                v = nn.functional.normalize(self.V.T @ u, dim=0)
                u = nn.functional.normalize(self.V @ v, dim=0)
            self.u.copy_(u)
        return self.gamma * self.V / (u @ self.V @ v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """readout(y*) for a batch."""
        return self.readout(self.fixed_point(self.weight(), self.inj(x)))

    def fixed_point(self, w: torch.Tensor, inj: torch.Tensor) -> torch.Tensor:
        """y* = tanh(y* Wᵀ + inj), found without grad and then stepped once with it; backward solves
        gᵀ = gᵀJ + ∂ℓ/∂y* by fixed-point iteration (implicit differentiation)."""
        w_fixed, inj_fixed = w.detach(), inj.detach()
        with torch.no_grad():
            y = torch.zeros_like(inj_fixed)
            for _ in range(self.solve_iters):
                y_next = torch.tanh(y @ w_fixed.T + inj_fixed)
                done = (y_next - y).norm(dim=1).max().item() < self.solve_tol
                y = y_next
                if done:
                    break
        y = torch.tanh(y @ w.T + inj)
        if y.requires_grad:
            slope = 1 - y.detach() ** 2

            def implicit_grad(grad: torch.Tensor) -> torch.Tensor:
                g = grad
                for _ in range(self.solve_iters):
                    g_next = (g * slope) @ w_fixed + grad
                    done = (g_next - g).norm() <= self.solve_tol * grad.norm()
                    g = g_next
                    if done:
                        break
                return g

            y.register_hook(implicit_grad)
        return y

    def loss(self, x: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """The fixed point's loss, plus EARLY_WEIGHT × the loss of each early iterate in EARLY_STEPS,
        all with one W and one injection per step.

        Only y* is the model's answer; the early terms (differentiated through the unrolled steps)
        keep the error of y_t falling from the first iterations on, so that every extra iteration
        a request pays for buys accuracy (the fixed point alone left E_2 above E_1 at h = 1024).
        """
        w, inj = self.weight(), self.inj(x)
        total = squared_relative_error(self.readout(self.fixed_point(w, inj)), y_true)
        y = torch.zeros_like(inj)
        for t in range(1, max(EARLY_STEPS) + 1):
            y = torch.tanh(y @ w.T + inj)
            if t in EARLY_STEPS:
                total = total + EARLY_WEIGHT * squared_relative_error(self.readout(y), y_true)
        return total

    def export(self) -> dict[str, torch.Tensor]:
        """The plain DeqMLP tensors (fp32, contiguous)."""
        with torch.no_grad():
            tensors = {
                "W": self.weight(exact=True),
                "inj.weight": self.inj.weight,
                "inj.bias": self.inj.bias,
                "readout.weight": self.readout.weight,
                "readout.bias": self.readout.bias,
            }
            return {k: v.detach().float().contiguous().clone() for k, v in tensors.items()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file readable by everyone (it ships as package data)."""
    save_file(tensors, str(path))
    path.chmod(0o644)


def train(
    out_dir: Path,
    *,
    epochs: int = 24,
    seed: int = 0,
    log: Callable[[str], None] = print,
    hidden: int = 1024,
    gamma: float = 0.95,
    n_train: int = 16384,
    n_heldout: int = 512,
    batch_size: int = 64,
    lr: float = 3e-3,
    explicit_depth: int = 3,
) -> dict:
    """Train deq-mlp (‖W‖₂ = γ) and an explicit MLP of about its size on the same data.

    Writes the DEQ, its explicit twin and the held-out set to out_dir; returns E_t and both sizes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    start = time.perf_counter()
    x, y = make_dataset(n_train, seed)
    x_val, y_val = make_dataset(n_heldout, seed + 1_000_003)
    data = (x, y, x_val, y_val)

    deq = _DeqTrainer(hidden, gamma, solve_tol=1e-4, solve_iters=150)
    fit(deq, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, tag="deq-mlp", log=log,
        loss=deq.loss)  # fmt: skip
    deq_s = time.perf_counter() - start
    _save(deq.export(), out_dir / "deq-mlp.safetensors")
    _save({"x": x_val.contiguous(), "y": y_val.contiguous()}, out_dir / HELDOUT_FILE)

    deq_params = sum(p.numel() for p in deq.export().values())
    width = matching_width(deq_params, D_IN, explicit_depth, D_OUT)
    explicit = ExplicitMLP(D_IN, width, explicit_depth, D_OUT)
    fit(explicit, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, tag="explicit-mlp", log=log)
    twin = {k: v.detach().contiguous() for k, v in explicit.state_dict().items()}
    _save(twin, out_dir / EXPLICIT_FILE)

    report = DeqMLP.from_weights(out_dir / "deq-mlp.safetensors").evaluate(EVAL_ITERS)
    w_norm = torch.linalg.matrix_norm(deq.export()["W"].double(), ord=2).item()
    elapsed = time.perf_counter() - start
    log(f"done in {elapsed:.0f} s (deq {deq_s:.0f} s); ‖W‖₂ = {w_norm:.4f}")
    for t, e in zip(report.t, report.error, strict=True):
        log(f"  E_{t} = {e:.4f}")
    log(f"  explicit-mlp ({report.baseline['params']} params): {report.baseline['error']:.4f}")
    return {
        "model": "deq-mlp",
        "params": report.params,
        "w_spectral_norm": w_norm,
        "t": report.t,
        "error": report.error,
        "baseline": report.baseline,
        "train_seconds": elapsed,
        "epochs": epochs,
        "seed": seed,
    }
