"""Where served models come from: entry points, model directories and import strings.

A SPEC names one model: a name advertised in the `eqserve.models` entry-point group (the built-in
models are advertised there by eqserve itself, so they take the path users' packages take), a model
directory holding `eqserve.toml` (optionally with numbered version subdirectories, the highest
served unless one is pinned), or an import string `package.module:attr`. Each resolves to a
`ModelSource` that builds the model and applies its configuration: name, weights, dtype,
description, example input and request defaults.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points as _entry_points
from pathlib import Path
from typing import Any

import torch

from eqserve.models.base import DEFAULT_KEYS, ImplicitModel
from eqserve.models.looped import LoopedLM

Model = ImplicitModel | LoopedLM
"""What a source builds: a fixed-point model (/v1/solve) or a looped LM (/v1/completions)."""

GROUP = "eqserve.models"
"""The entry-point group a package advertises its models under."""

CONFIG = "eqserve.toml"
"""The file that makes a folder a model directory."""

CONFIG_KEYS = frozenset(
    {"name", "entry", "weights", "dtype", "description", "example_input", "defaults", "version"}
)
REQUIRED = ("encode", "state_shape", "step", "decode")
"""The methods a model must define; the rest of the contract is optional."""

_loaded = itertools.count(1)


class ModelLoadError(ValueError):
    """A model that cannot be served, with the reason (naming the file or method at fault)."""


@dataclass(frozen=True)
class ModelConfig:
    """What a model directory's `eqserve.toml` (or an import string's defaults) says."""

    name: str
    entry: str
    weights: Path | None = None
    dtype: str | None = None
    description: str | None = None
    example_input: dict[str, Any] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSource:
    """One model to serve: where it comes from and how to build it, configured."""

    name: str
    origin: str
    """For people: 'entry point …', 'directory … (version N)', 'import …'."""
    config: ModelConfig
    root: Path | None = None
    """The folder the entry and weights lie in (a model directory's version folder)."""

    def load(self, device: str | torch.device = "cpu") -> Model:
        """Import the code, build the model, load its weights strictly, move it to `device`."""
        cfg = self.config
        model = _instantiate(_import(cfg.entry, self.root), cfg.entry)
        model.name = self.name
        if cfg.description is not None:
            model.description = cfg.description
        if cfg.example_input is not None:
            model.example_input = cfg.example_input
        if cfg.defaults:
            model.defaults = {**model.defaults, **cfg.defaults}
        if cfg.weights is not None:
            try:
                model.load(cfg.weights)
            except Exception as exc:
                raise ModelLoadError(f"{cfg.weights}: weights do not fit {cfg.entry}: {exc}") from exc
        if cfg.dtype is not None:
            dtype = _dtype(cfg.dtype)
            model = model.to(dtype)
            model.state_dtype = dtype
        return model.to(torch.device(device)).eval()


def builtin() -> dict[str, ModelSource]:
    """Every model advertised in the `eqserve.models` entry-point group, eqserve's own included."""
    found: dict[str, ModelSource] = {}
    for ep in _entry_points(group=GROUP):
        if ep.name in found:
            raise ModelLoadError(
                f"two packages advertise a model named {ep.name!r}: {found[ep.name].origin}, {ep.value}"
            )
        found[ep.name] = ModelSource(ep.name, f"entry point {ep.value}", ModelConfig(ep.name, ep.value))
    return found


def names() -> list[str]:
    """Names of the models served when no SPEC is given."""
    return list(builtin())


def resolve(spec: str) -> ModelSource:
    """The model a SPEC names: a model directory, an import string, or an entry-point name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return from_directory(path)
    if ":" in spec:
        obj = _import(spec, None)
        name = getattr(obj, "name", "") or spec.partition(":")[2].lower().replace("_", "-")
        return ModelSource(str(name), f"import {spec}", ModelConfig(str(name), spec))
    known = builtin()
    if spec not in known:
        raise ModelLoadError(
            f"unknown model {spec!r}: not a directory, an import string (package.module:attr) or an "
            f"installed model; installed: {', '.join(known) or 'none'}"
        )
    return known[spec]


def from_directory(path: Path, version: int | None = None) -> ModelSource:
    """The model of a directory holding `eqserve.toml`; the highest numbered version unless pinned."""
    path = path.resolve()
    file = path / CONFIG
    if not file.is_file():
        raise ModelLoadError(f"{path} is not a model directory: it has no {CONFIG}")
    try:
        raw = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(f"{file}: {exc}") from None
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        known = ", ".join(sorted(CONFIG_KEYS))
        raise ModelLoadError(f"{file}: unknown key(s) {', '.join(unknown)}; known: {known}")
    if not isinstance(raw.get("entry"), str):
        raise ModelLoadError(f"{file}: 'entry' is required, e.g. entry = \"model.py:MyModel\"")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - DEFAULT_KEYS:
        raise ModelLoadError(f"{file}: [defaults] takes only {', '.join(sorted(DEFAULT_KEYS))}")
    versions = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    pinned = version if version is not None else raw.get("version")
    root, label = path, ""
    if pinned is not None:
        if pinned not in versions:
            raise ModelLoadError(f"{path}: version {pinned} is pinned but {path / str(pinned)} is missing")
        root, label = path / str(pinned), f" (version {pinned})"
    elif versions:
        root, label = path / str(versions[-1]), f" (version {versions[-1]})"
    weights = raw.get("weights")
    if weights is not None and not (root / weights).is_file():
        raise ModelLoadError(f"{path}: weights file {root / weights} does not exist")
    if "dtype" in raw:
        _dtype(raw["dtype"])
    name = raw.get("name", path.name)
    cfg = ModelConfig(
        name=name,
        entry=raw["entry"],
        weights=None if weights is None else root / weights,
        dtype=raw.get("dtype"),
        description=raw.get("description"),
        example_input=raw.get("example_input"),
        defaults=defaults,
    )
    return ModelSource(name, f"directory {path}{label}", cfg, root)


def repository(path: Path) -> dict[str, Path]:
    """The model directories directly under a model repository, by their served names.

    Only each `eqserve.toml`'s name is read: a directory whose newest version is still being copied
    in (or is broken) must not hide the others from the index, nor their load and unload.
    """
    if not path.is_dir():
        raise ModelLoadError(f"model repository {path} is not a directory")
    return {_configured_name(p): p for p in sorted(path.iterdir()) if (p / CONFIG).is_file()}


def _configured_name(path: Path) -> str:
    """The name a model directory's `eqserve.toml` gives it; the folder's name when it gives none or
    cannot be read (`from_directory` says why when the model is loaded)."""
    try:
        name = tomllib.loads((path / CONFIG).read_text()).get("name", path.name)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return path.name
    return name if isinstance(name, str) and name else path.name


def load_model(spec: str, device: str | torch.device = "cpu") -> Model:
    """Build the model a SPEC names, configured and in eval mode."""
    return resolve(spec).load(device)


def _dtype(name: str) -> torch.dtype:
    found = getattr(torch, str(name), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ModelLoadError(f"dtype {name!r} is not a torch floating dtype (float32, float64, ...)")
    return found


def _import(entry: str, root: Path | None) -> Any:
    """The object an entry names: 'file.py:attr' (a file under `root`) or 'package.module:attr'."""
    target, sep, attr = entry.partition(":")
    if not sep or not target or not attr:
        raise ModelLoadError(f"entry {entry!r} must look like 'model.py:MyModel' or 'package.module:MyModel'")
    if target.endswith(".py"):
        file = (root or Path.cwd()) / target
        if not file.is_file():
            raise ModelLoadError(f"entry {entry!r}: no file {file}")
        # A fresh module name per load, so that a reload runs the new code beside the old.
        spec = importlib.util.spec_from_file_location(f"eqserve_user_{next(_loaded)}_{file.stem}", file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(file.parent))  # the file may import its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"{file} failed to import: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(file.parent))
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"entry {entry!r}: cannot import {target}: {why}") from exc
    if not hasattr(module, attr):
        raise ModelLoadError(f"entry {entry!r}: {target} has no attribute {attr!r}")
    return getattr(module, attr)


def _instantiate(obj: Any, entry: str) -> Model:
    """A model from what an entry names: an ImplicitModel (or LoopedLM) subclass, an instance, or a
    factory; checked for the methods and schemas the contract requires."""
    if inspect.isclass(obj) and issubclass(obj, ImplicitModel):
        _check_class(obj, entry)
    if isinstance(obj, Model):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"entry {entry!r} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, Model):
            got = type(model).__name__
            raise ModelLoadError(f"entry {entry!r} returned {got}, not an eqserve.ImplicitModel")
    else:
        got = type(obj).__name__
        raise ModelLoadError(f"entry {entry!r} is a {got}, not an ImplicitModel class or factory")
    if isinstance(model, ImplicitModel):
        _check_class(type(model), entry)
    return model


def _check_class(cls: type[ImplicitModel], entry: str) -> None:
    missing = [m for m in REQUIRED if getattr(cls, m) is getattr(ImplicitModel, m)]
    if missing:
        raise ModelLoadError(f"{cls.__name__} does not define {', '.join(missing)} (entry {entry!r})")
    for schema in ("Input", "Output"):
        if not hasattr(cls, schema):
            raise ModelLoadError(f"{cls.__name__} has no {schema} (a pydantic model) (entry {entry!r})")
