"""A client that goes away mid-solve cancels its row: no work is done for it afterwards."""

from __future__ import annotations

import time

import httpx
import pytest

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob, SolveResult
from eqserve.engine.observer import NullObserver
from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.live_server import live_server


def assert_engine_goes_idle(engine: Engine) -> None:
    """The engine's batch empties within a second and no tick runs after that."""
    deadline = time.monotonic() + 5
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.running == 0
    ticks = engine.steps
    time.sleep(0.2)
    assert engine.steps == ticks


def test_client_disconnect_cancels_the_solve() -> None:
    app = create_app(Settings(models=[], max_iters_cap=10**8), {"reciprocal": Reciprocal()})
    with live_server(app) as url:
        engine = app.state.eq.served["reciprocal"].engine
        statuses: list[str] = []

        class Rec(NullObserver):
            def finished(self, job: SolveJob, result: SolveResult) -> None:
                statuses.append(result.status)

        engine.observer = Rec()
        body = {"model": "reciprocal", "input": {"x": [1e-5]}, "budget": {"tol": 0, "max_iters": 10**8}}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/solve", json=body, timeout=0.5)
        assert_engine_goes_idle(engine)
        assert statuses == ["cancelled"]
