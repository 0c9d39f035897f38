"""eqserve: serve implicit (fixed-point) models with per-request test-time compute.

The public API is imported lazily, so that `import eqserve.kernels` (on a GPU box with torch and
Triton alone) never pulls in the server, pydantic or httpx.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eqserve.models.base import ImplicitModel, InputError
    from eqserve.models.wrap import from_module
    from eqserve.service.client import AsyncClient, Client, EqserveError

__all__ = ["AsyncClient", "Client", "EqserveError", "ImplicitModel", "InputError", "from_module"]

_WHERE = {
    "ImplicitModel": "eqserve.models.base",
    "InputError": "eqserve.models.base",
    "from_module": "eqserve.models.wrap",
    "Client": "eqserve.service.client",
    "AsyncClient": "eqserve.service.client",
    "EqserveError": "eqserve.service.client",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'eqserve' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
