"""POST /v1/completions and its streams on a looped LM whose tokens and inner steps are known
(tests/looped_models.py): OpenAI's shapes, eqserve's per-token budget, bad input, metrics, and the
official `openai` client against a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from eqserve.models.reciprocal import Reciprocal
from eqserve.service.app import create_app
from eqserve.service.client import Client
from eqserve.service.config import Settings
from tests.conftest import make_client
from tests.live_server import live_server
from tests.looped_models import CountLM

LATENT = {"max_iters": 40, "exit": {"criterion": "latent-diff", "threshold": 1e-3, "min_steps": 2}}


@pytest.fixture
def lm() -> Iterator[TestClient]:
    with make_client({"count-lm": CountLM(), "reciprocal": Reciprocal()}, max_tokens_cap=20) as c:
        yield c


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_completion_in_openai_shape_with_recurrence_usage(lm: TestClient):
    r = lm.post(
        "/v1/completions",
        json={
            "model": "count-lm",
            "prompt": "25",
            "max_tokens": 3,
            "budget": LATENT,
            "return": {"per_token": True},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert (choice["text"], choice["finish_reason"], choice["index"]) == ("678", "length", 0)
    per_token = [t["iterations"] for t in choice["tokens"]]
    assert (
        len(set(per_token)) > 1
        and all(n < 40 for n in per_token)
        and all(t["exited"] for t in choice["tokens"])
    )
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (2, 3, 5)
    rec = usage["recurrence"]
    assert rec["per_token"] == per_token and rec["max"] == max(per_token) and rec["total"] == sum(per_token)


def test_budget_defaults_and_the_end_token(lm: TestClient):
    body = lm.post("/v1/completions", json={"model": "count-lm", "prompt": "7", "max_tokens": 10}).json()
    assert (body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == ("89", "stop")
    assert body["usage"]["recurrence"]["mean"] == CountLM.default_exit.max_iters


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"prompt": "1" * 40}, "prompt"),
        ({"prompt": "12a"}, "prompt"),
        ({"max_tokens": 21}, "max_tokens"),
        ({"budget": {"exit": {"criterion": "vibes"}}}, "budget.exit.criterion"),
        ({"budget": {"exit": {"criterion": "kl", "threshold": -1}}}, "budget.exit.threshold"),
        ({"budget": {"max_iters": 10**6}}, "budget.max_iters"),
        ({"n": 2}, "n"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"logprobs": 2}, "logprobs"),
    ],
)
def test_bad_input_is_422_naming_the_field(lm: TestClient, patch: dict, field: str):
    r = lm.post("/v1/completions", json={"model": "count-lm", "prompt": "1"} | patch)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_each_model_kind_has_its_own_endpoint(lm: TestClient):
    r = lm.post("/v1/completions", json={"model": "reciprocal", "prompt": "1"})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "model")
    r = lm.post("/v1/solve", json={"model": "count-lm", "input": {}})
    assert (r.status_code, r.json()["error"]["type"]) == (422, "wrong_endpoint")
    listing = {m["name"]: m for m in lm.get("/v1/models").json()["models"]}
    assert listing["count-lm"]["kind"] == "looped-lm" and listing["reciprocal"]["kind"] == "fixed-point"
    assert lm.get("/v1/models/count-lm").json()["defaults"]["budget"]["exit"]["criterion"] == "none"


def test_sse_stream_in_openai_chunks(lm: TestClient):
    body = {"model": "count-lm", "prompt": "5", "max_tokens": 9, "stream": True, "budget": LATENT}
    body["stream_options"] = {"include_usage": True}
    with lm.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is None]
    assert "".join(t["text"] for t in tokens) == "6789"
    assert all(t["iterations"] >= 2 and t["exited"] for t in tokens)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_websocket_streams_tokens_then_the_answer(lm: TestClient):
    with lm.websocket_connect("/v1/completions/stream") as ws:
        ws.send_text(json.dumps({"model": "count-lm", "prompt": "3", "max_tokens": 3, "budget": LATENT}))
        msgs = [ws.receive_json() for _ in range(4)]
    assert [m["type"] for m in msgs] == ["token"] * 3 + ["result"]
    assert [m["text"] for m in msgs[:3]] == ["4", "5", "6"]
    assert msgs[3]["usage"]["recurrence"]["total"] == sum(m["iterations"] for m in msgs[:3])


def test_websocket_cancel_ends_the_completion(lm: TestClient):
    slow = {"max_iters": 5000, "exit": {"criterion": "none"}}
    with lm.websocket_connect("/v1/completions/stream") as ws:
        ws.send_text(json.dumps({"model": "count-lm", "prompt": "1", "max_tokens": 5, "budget": slow}))
        ws.send_text(json.dumps({"type": "cancel"}))
        last = ws.receive_json()
        while last["type"] == "token":
            last = ws.receive_json()
    assert last["type"] == "result" and last["status"] == "cancelled"


def test_metrics_count_tokens_by_criterion(lm: TestClient):
    lm.post("/v1/completions", json={"model": "count-lm", "prompt": "25", "max_tokens": 3, "budget": LATENT})
    text = lm.get("/metrics").text
    assert 'eqserve_token_exits_total{by="rule",criterion="latent-diff",model="count-lm"} 3.0' in text
    assert 'eqserve_token_iterations_count{model="count-lm"} 3.0' in text
    assert 'eqserve_requests_total{model="count-lm",status="ok"} 1.0' in text


def test_the_official_openai_client_sync_async_streaming():
    app = create_app(Settings(models=[]), {"count-lm": CountLM()})
    with TestClient(app), live_server(app) as url:  # TestClient runs the lifespan: the engines start
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        extra = {"budget": LATENT, "return": {"per_token": True}}
        done = client.completions.create(model="count-lm", prompt="25", max_tokens=3, extra_body=extra)
        assert done.choices[0].text == "678" and done.choices[0].finish_reason == "length"
        assert done.usage.completion_tokens == 3
        assert len(done.choices[0].model_extra["tokens"]) == 3
        stream = client.completions.create(
            model="count-lm", prompt="5", max_tokens=9, stream=True, extra_body=extra
        )
        pieces = [c.choices[0].text for c in stream if c.choices]
        assert "".join(pieces) == "6789"

        async def both() -> list[str]:
            aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
            one = await aclient.completions.create(model="count-lm", prompt="1", max_tokens=2)
            texts = [one.choices[0].text]
            astream = await aclient.completions.create(
                model="count-lm", prompt="3", max_tokens=2, stream=True
            )
            texts.append("".join([c.choices[0].text async for c in astream if c.choices]))
            await aclient.close()
            return texts

        assert asyncio.run(both()) == ["23", "45"]


def test_eqserve_client_and_cli_stream_tokens_with_their_iterations():
    app = create_app(Settings(models=[]), {"count-lm": CountLM()})
    with TestClient(app), live_server(app) as url, Client(url) as client:
        done = client.complete("count-lm", "25", max_tokens=3, criterion="latent-diff", threshold=1e-3)
        assert done["choices"][0]["text"] == "678"
        with client.complete_stream("count-lm", "25", max_tokens=3, max_iters=5) as stream:
            events = list(stream)
        assert [e["iterations"] for e in events[:-1]] == [5, 5, 5]
        assert stream.result is not None and stream.result["choices"][0]["text"] == "678"
        options = ["--stream", "--max-tokens", "2", "--max-iters", "7", "--url", url]
        cli = subprocess.run(
            [sys.executable, "-m", "eqserve.service.cli", "complete", "count-lm", "5", *options],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == "67"  # not a terminal: the tokens as they are, no shading
    assert "[7, 7]" in cli.stderr


def test_a_client_that_leaves_frees_its_row():
    """The completion's steps sleep 1 ms, so after its first token it has at least 7 s of work left
    (7 more tokens of 1,000 steps): it ends cancelled, by the client leaving, not by finishing."""
    app = create_app(Settings(models=[]), {"count-lm": CountLM(step_s=1e-3)})
    engine_of = lambda: app.state.eq.served["count-lm"].engine  # noqa: E731
    budget = {"max_iters": 1000, "exit": {"criterion": "none"}}
    body = {"model": "count-lm", "prompt": "1", "max_tokens": 500, "stream": True, "budget": budget}
    with TestClient(app) as client, live_server(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # the first token is out: the completion runs
            assert engine_of().running == 1
        deadline = time.monotonic() + 30
        while engine_of().running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine_of().running == 0
        metrics = client.get("/metrics").text
    assert 'eqserve_requests_total{model="count-lm",status="cancelled"} 1.0' in metrics
    assert 'eqserve_requests_total{model="count-lm",status="ok"} 0.0' in metrics


def test_a_looped_lm_in_its_own_engine_process():
    """Loaded from its source, a looped LM runs in an engine process as any model does: completions,
    token streams and per-token metrics cross the channel."""
    settings = Settings(models=["tests.looped_models:CountLM"], engine_process="on")
    app = create_app(settings)
    with TestClient(app) as client:
        (name,) = app.state.eq.served
        assert app.state.eq.served[name].engine.pid is not None  # not this process's thread
        body = {
            "model": name,
            "prompt": "25",
            "max_tokens": 3,
            "budget": LATENT,
            "return": {"per_token": True},
        }
        done = client.post("/v1/completions", json=body).json()
        assert done["choices"][0]["text"] == "678" and done["usage"]["recurrence"]["max"] < 40
        with client.websocket_connect("/v1/completions/stream") as ws:
            ws.send_text(json.dumps(body))
            msgs = [ws.receive_json() for _ in range(4)]
        assert [m["type"] for m in msgs] == ["token"] * 3 + ["result"]
        assert [m["iterations"] for m in msgs[:3]] == [t["iterations"] for t in done["choices"][0]["tokens"]]
        metrics = client.get("/metrics").text
        assert f'eqserve_token_iterations_count{{model="{name}"}} 6.0' in metrics
