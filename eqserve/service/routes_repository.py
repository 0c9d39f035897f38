"""The model-control API, Triton's repository extension: index, load and unload model directories.

Mounted only with `--model-control` (loading a model runs its Python code), behind the API key when
one is set, and only for directories under `--model-repository`, never an arbitrary path. Loading and
unloading block on model code and on draining solves, so they run off the event loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from eqserve.service.state import ServerState

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.eq


@router.post("/v2/repository/index")
async def index(request: Request) -> list[dict[str, Any]]:
    """Every model directory of the repository, with its version and state (READY or UNAVAILABLE)."""
    return await run_in_threadpool(_state(request).index)


@router.post("/v2/repository/models/{name}/load")
async def load(name: str, request: Request) -> dict[str, Any]:
    """Load (or reload: the new version beside the old, then swapped) a model of the repository."""
    await run_in_threadpool(_state(request).load, name)
    return {}


@router.post("/v2/repository/models/{name}/unload")
async def unload(name: str, request: Request) -> dict[str, Any]:
    """Stop serving a model: new solves get 503, those in flight finish, then its worker is freed."""
    await run_in_threadpool(_state(request).unload, name)
    return {}
