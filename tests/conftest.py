"""Shared fixtures: models, engines and in-process apps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from models.base import ImplicitModel
from models.reciprocal import Reciprocal
from service.app import create_app
from service.config import Settings
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
