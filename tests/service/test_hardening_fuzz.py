"""Schemathesis against the served OpenAPI document: generated requests, valid and not, to every
operation of a live server; every answer must be no server error and match the document."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.config import Settings
from tests.live_server import live_server

EXAMPLES = 30
"""Examples per operation: enough to reach every error path, few enough for the suite (a longer
run is a benchmark)."""


def check_operation(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> None:
    """Run every schemathesis check on `EXAMPLES` calls of one operation, generated valid or not."""

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(timeout=30)

    run()


def test_the_api_answers_as_its_document_says() -> None:
    """Small caps keep every generated budget short; the body cap keeps generated bodies small."""
    cfg = Settings(models=[], max_iters_cap=200, timeout_cap_s=2.0, max_body_bytes=1 << 20)
    with live_server(create_app(cfg, {"reciprocal": Reciprocal()})) as url:
        spec = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures: dict[str, str] = {}
        for result in spec.get_all_operations():
            operation = result.ok()
            # Invalid requests can only be made of a body: the path parameters take any string.
            modes = (
                list(schemathesis.GenerationMode)
                if len(operation.body)
                else [schemathesis.GenerationMode.POSITIVE]
            )
            for mode in modes:
                try:
                    check_operation(operation, mode)
                except Exception as exc:  # collected, so that one run reports every operation
                    failures[f"{operation.label} ({mode.value})"] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
