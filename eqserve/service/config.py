"""One settings object: CLI flags over EQSERVE_* environment variables over defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqserve.kernels.dispatch import CHOICES
from eqserve.models.registry import names, resolve


@dataclass
class Settings:
    """Everything `eqserve serve` can be told; each field is a flag and an EQSERVE_* variable."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    models: list[str] = field(
        default_factory=names,
        metadata={
            "help": "models to serve, comma-separated: installed names, model directories or "
            "package.module:attr (as `eqserve serve SPEC ...`); default: every installed model"
        },
    )
    model_repository: str = field(
        default="",
        metadata={"help": "a folder whose model directories are all served (alone, unless SPECs are given)"},
    )
    model_control: bool = field(
        default=False,
        metadata={"help": "enable /v2/repository/* to load and unload the repository's models (runs code)"},
    )
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
        metadata={
            "help": "continuous: join and leave between runs of steps; static: a batch runs to its "
            "slowest row"
        },
    )
    compile_step: list[str] = field(
        default_factory=list,
        metadata={
            "help": "models (comma-separated, *, or auto: those that declare a gain) whose step runs under "
            "torch.compile, compiled at load (seconds to a minute a model), never on a request"
        },
    )
    batch_invariant: list[str] = field(
        default_factory=list,
        metadata={
            "help": "models (comma-separated, or *) whose rows' bits never depend on their batch-mates; "
            "costs step time, most for models that do not declare it (their rows step one at a time)"
        },
    )
    max_iters_cap: int = field(default=10_000, metadata={"help": "largest budget.max_iters accepted"})
    max_tokens_cap: int = field(
        default=512, metadata={"help": "largest max_tokens a looped LM's completion may ask for"}
    )
    analyze_cap: int = field(
        default=200_000, metadata={"help": "most row-iterations one /v1/analyze may spend (rows × max t)"}
    )
    max_state_cap: int = field(
        default=1_000_000, metadata={"help": "largest state (entries) one request may have"}
    )
    timeout_cap_s: float = field(
        default=300.0, metadata={"help": "largest budget.timeout_s; also the default"}
    )
    api_key: str = field(
        default="",
        metadata={
            "help": "if set, /v1 and /v2 model routes need 'Bearer <key>'; prefer EQSERVE_API_KEY or "
            "--api-key-file, which, unlike a flag, do not show in the process list"
        },
    )
    api_key_file: str = field(
        default="", metadata={"help": "a file holding the API key (its surrounding whitespace ignored)"}
    )
    allowed_origins: list[str] = field(
        default_factory=list,
        metadata={
            "help": "origins (scheme://host[:port], or *) whose pages may open the stream besides the "
            "server's own (comma-separated)"
        },
    )
    max_body_bytes: int = field(
        default=32 * 1024 * 1024, metadata={"help": "largest request body; a larger one is refused with 413"}
    )
    max_connections: int = field(
        default=1000, metadata={"help": "open connections (and requests) beyond which requests get 503"}
    )
    header_timeout_s: float = field(
        default=10.0, metadata={"help": "a connection that has not sent its request's headers by then closes"}
    )
    keep_alive_s: float = field(
        default=5.0, metadata={"help": "an idle keep-alive connection is closed after this long"}
    )
    drain_timeout_s: float = field(
        default=20.0,
        metadata={
            "help": "on SIGTERM, how long solves in flight may run before they are cancelled (under "
            "Kubernetes' 30 s grace)"
        },
    )
    stuck_tick_s: float = field(
        default=30.0,
        metadata={
            "help": "a model whose worker has spent this long in one turn is reported not ready, and its "
            "requests are answered 503 this long after their deadline (a step that hangs)"
        },
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
    engine_process: str = field(
        default="on",
        metadata={
            "help": "on: each model's engine runs in a process of its own, restarted when it dies; off: "
            "in the HTTP process (debugging, the smallest boxes)"
        },
    )
    api_workers: int = field(
        default=1,
        metadata={
            "help": "HTTP front processes sharing the port (SO_REUSEPORT) and the engine processes; "
            "metrics are aggregated across them (needs --engine-process on)"
        },
    )
    max_model_rss: int = field(
        default=0,
        metadata={
            "help": "MiB of resident memory an engine process may grow to before it is drained and "
            "restarted (0: no bound)"
        },
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})

    def __post_init__(self) -> None:
        for spec in self.models:
            resolve(spec)  # a ValueError naming the problem
        if self.model_control and not self.model_repository:
            raise ValueError("model_control needs a model_repository to load models from")
        if self.batching not in ("continuous", "static"):
            raise ValueError(f"batching must be continuous or static, not {self.batching!r}")
        if self.kernels not in CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(CHOICES)}, not {self.kernels!r}")
        if self.engine_process not in ("on", "off"):
            raise ValueError(f"engine_process must be on or off, not {self.engine_process!r}")
        if self.api_workers < 1:
            raise ValueError("api_workers must be ≥ 1")
        if self.api_workers > 1 and self.engine_process != "on":
            raise ValueError("api_workers > 1 needs engine_process on: the fronts share the engine processes")
        if self.max_model_rss < 0:
            raise ValueError("max_model_rss must be ≥ 0")
        if self.torch_threads < 0:
            raise ValueError("torch_threads must be ≥ 0")
        if self.send_buffer < 0:
            raise ValueError("send_buffer must be ≥ 0")
        if self.max_tokens_cap < 1:
            raise ValueError("max_tokens_cap must be ≥ 1")
        if self.max_batch_rows < 1 or self.max_queue < 0:
            raise ValueError("max_batch_rows must be ≥ 1 and max_queue ≥ 0")
        if self.max_body_bytes < 1 or self.max_connections < 1:
            raise ValueError("max_body_bytes and max_connections must be ≥ 1")
        if min(self.header_timeout_s, self.keep_alive_s, self.drain_timeout_s, self.stuck_tick_s) <= 0:
            raise ValueError("header_timeout_s, keep_alive_s, drain_timeout_s and stuck_tick_s must be > 0")
        if self.api_key_file and not self.api_key:
            try:
                self.api_key = Path(self.api_key_file).read_text().strip()
            except OSError as exc:
                raise ValueError(f"api_key_file: {exc}") from None


def _parse(f: dataclasses.Field, text: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind.startswith("list"):
        return [s.strip() for s in text.split(",") if s.strip()]
    if kind == "bool":
        return text.strip().lower() in ("1", "true", "yes", "on")
    return {"int": int, "float": float}.get(kind, str)(text)


def env_var(name: str) -> str:
    """The environment variable of a settings field."""
    return f"EQSERVE_{name.upper()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --flag per settings field; unset flags fall back to the environment, then defaults."""
    for f in dataclasses.fields(Settings):
        flag, help_ = f"--{f.name.replace('_', '-')}", f"{f.metadata['help']} [{env_var(f.name)}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=lambda s, f=f: _parse(f, s), default=None, help=help_)


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
    specs = getattr(args, "specs", None)
    if specs:
        values["models"] = specs
    elif values.get("model_repository") and "models" not in values:
        values["models"] = []  # a repository alone: its models, not the installed ones
    return Settings(**values)
