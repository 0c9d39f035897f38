"""Shared fixtures: models, engines and in-process apps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from eqserve.models.base import ImplicitModel
from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.fake_models import Faulty


def make_client(models: dict[str, ImplicitModel], **settings: object) -> TestClient:
    """A TestClient of an app serving `models` with the given settings."""
    cfg = Settings(models=[], **settings)  # type: ignore[arg-type]
    return TestClient(create_app(cfg, models))


@pytest.fixture
def client() -> Iterator[TestClient]:
    """An app serving reciprocal and the faulty test model."""
    with make_client(
        {"reciprocal": Reciprocal(), "faulty": Faulty()}, max_iters_cap=5000, timeout_cap_s=60
    ) as c:
        yield c


@contextmanager
def one_running_one_waiting(client: TestClient, model: str, body: dict) -> Iterator[list[int]]:
    """On a server with one row and a queue of one, hold one `body` request running and one
    waiting; the yielded list receives their status codes once both have ended."""
    engine = client.app.state.eq.served[model].engine  # type: ignore[attr-defined]
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(client.post("/v1/solve", json=body).status_code))
        for _ in range(2)
    ]
    threads[0].start()
    while engine.running < 1:
        time.sleep(0.005)
    threads[1].start()
    while engine.waiting < 1:
        time.sleep(0.005)
    try:
        yield answers
    finally:
        for t in threads:
            t.join()
