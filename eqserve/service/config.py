"""One settings object: CLI flags over EQSERVE_* environment variables over defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from eqserve.kernels.dispatch import CHOICES
from eqserve.models.registry import names


@dataclass
class Settings:
    """Everything `eqserve serve` can be told; each field is a flag and an EQSERVE_* variable."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    models: list[str] = field(default_factory=names, metadata={"help": "models to serve (comma-separated)"})
    device: str = field(default="cpu", metadata={"help": "torch device for the models (cpu, cuda, cuda:1)"})
    kernels: str = field(
        default="auto",
        metadata={"help": "auto: Triton where CUDA is present and the model has a kernel; triton; torch"},
    )
    torch_threads: int = field(
        default=1,
        metadata={"help": "torch CPU threads (0: torch's default); 1 suits many small steps on a shared CPU"},
    )
    max_batch_rows: int = field(default=64, metadata={"help": "rows one model's batch holds at once"})
    max_queue: int = field(default=256, metadata={"help": "waiting requests per model before 429"})
    batching: str = field(
        default="continuous",
        metadata={"help": "continuous: join and leave every tick; static: a batch runs to its slowest row"},
    )
    max_iters_cap: int = field(default=10_000, metadata={"help": "largest budget.max_iters accepted"})
    max_state_cap: int = field(
        default=1_000_000, metadata={"help": "largest state (entries) one request may have"}
    )
    timeout_cap_s: float = field(
        default=300.0, metadata={"help": "largest budget.timeout_s; also the default"}
    )
    api_key: str = field(
        default="", metadata={"help": "if set, /v1 and /v2 model routes need 'Bearer <key>'"}
    )
    stream_grace_s: float = field(
        default=30.0, metadata={"help": "how long a stream keeps a stopped solve's state for 'extend'"}
    )
    stream_buffer: int = field(
        default=64, metadata={"help": "iterate events a slow stream client may lag behind"}
    )
    send_buffer: int = field(
        default=65536,
        metadata={
            "help": "kernel send buffer of each connection, bytes (0: the kernel's autotuning); small so "
            "that a stream client that stops reading is noticed within a second and its solve muted"
        },
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in names()]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; built-in: {', '.join(names())}")
        if self.batching not in ("continuous", "static"):
            raise ValueError(f"batching must be continuous or static, not {self.batching!r}")
        if self.kernels not in CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(CHOICES)}, not {self.kernels!r}")
        if self.torch_threads < 0:
            raise ValueError("torch_threads must be ≥ 0")
        if self.send_buffer < 0:
            raise ValueError("send_buffer must be ≥ 0")
        if self.max_batch_rows < 1 or self.max_queue < 0:
            raise ValueError("max_batch_rows must be ≥ 1 and max_queue ≥ 0")


def _parse(f: dataclasses.Field, text: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind.startswith("list"):
        return [s.strip() for s in text.split(",") if s.strip()]
    return {"int": int, "float": float}.get(kind, str)(text)


def env_var(name: str) -> str:
    """The environment variable of a settings field."""
    return f"EQSERVE_{name.upper()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --flag per settings field; unset flags fall back to the environment, then defaults."""
    for f in dataclasses.fields(Settings):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=lambda s, f=f: _parse(f, s),
            default=None,
            help=f"{f.metadata['help']} [{env_var(f.name)}]",
        )


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from flags (when given), then EQSERVE_* variables, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        flag = getattr(args, f.name, None) if args is not None else None
        if flag is not None:
            values[f.name] = flag
        elif env_var(f.name) in environ:
            values[f.name] = _parse(f, environ[env_var(f.name)])
    return Settings(**values)
