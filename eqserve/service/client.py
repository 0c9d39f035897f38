"""Python clients of a running eqserve server: sync and async, plain and streaming."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Self

import httpx
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

DEFAULT_URL = "http://127.0.0.1:8000"


class EqserveError(Exception):
    """The server answered with an error; `status` and the error JSON's fields are kept."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.type = err.get("type", "http_error")
        self.field = err.get("field")
        super().__init__(f"{status} {self.type}: {err.get('message', body)}")


def solve_body(
    model: str,
    input: dict[str, Any],
    *,
    max_iters: int | None = None,
    tol: float | None = None,
    stop_mode: str | None = None,
    timeout_s: float | None = None,
    method: str | None = None,
    damping: float | None = None,
    m: int | None = None,
    trace: bool = False,
    every: int = 1,
    output: bool = False,
    state: bool = False,
) -> dict[str, Any]:
    """The /v1/solve request body; options left None take the model's defaults."""
    budget = {"max_iters": max_iters, "tol": tol, "stop_mode": stop_mode, "timeout_s": timeout_s}
    solver = {"method": method, "damping": damping, "m": m}
    return {
        "model": model,
        "input": input,
        "budget": {k: v for k, v in budget.items() if v is not None},
        "solver": {k: v for k, v in solver.items() if v is not None},
        "return": {"trace": trace, "every": every, "output": output, "state": state},
    }


def _check(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    if resp.status_code >= 400:
        raise EqserveError(resp.status_code, body)
    return body


def completion_body(
    model: str,
    prompt: str,
    *,
    max_tokens: int | None = None,
    max_iters: int | None = None,
    criterion: str | None = None,
    threshold: float | None = None,
    min_steps: int | None = None,
    check_every: int | None = None,
    timeout_s: float | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    per_token: bool = False,
    continuous_compute: bool = False,
) -> dict[str, Any]:
    """The /v1/completions request body; options left None take the model's (or OpenAI's) defaults."""
    exit_ = {"criterion": criterion, "threshold": threshold, "min_steps": min_steps}
    exit_["check_every"] = check_every
    budget: dict[str, Any] = {"max_iters": max_iters, "timeout_s": timeout_s}
    budget = {k: v for k, v in budget.items() if v is not None}
    budget["exit"] = {k: v for k, v in exit_.items() if v is not None}
    top = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, "stop": stop}
    return {
        "model": model,
        "prompt": prompt,
        **{k: v for k, v in top.items() if v is not None},
        "budget": budget,
        "continuous_compute": continuous_compute,
        "return": {"per_token": per_token},
    }


def _ws_url(url: str, api_key: str | None, path: str) -> str:
    base = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/")
    return f"{base}{path}" + (f"?token={api_key}" if api_key else "")


def _raise_on_error(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("type") == "error":
        raise EqserveError(0, event)
    return event


class _Stream:
    """One request streamed over a WebSocket at `PATH`: iterate it for its events up to and including
    its result (kept in `result`); `cancel()`, then the result says `cancelled`."""

    PATH: ClassVar[str]

    def __init__(self, url: str, body: dict[str, Any], api_key: str | None) -> None:
        self._ws = ws_connect(_ws_url(url, api_key, self.PATH)).__enter__()
        self._ws.send(json.dumps(body))
        self.result: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events up to and including the next result."""
        while True:
            event = _raise_on_error(json.loads(self._ws.recv()))
            yield event
            if event["type"] == "result":
                self.result = event
                return

    def cancel(self) -> None:
        """Stop the request; its result arrives with status `cancelled` (a no-op once it has ended)."""
        with contextlib.suppress(ConnectionClosed):
            self._ws.send(json.dumps({"type": "cancel"}))

    def close(self) -> None:
        """Close the connection (the server cancels a request still running)."""
        self._ws.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SolveStream(_Stream):
    """One streaming solve: `iterate` events, then its result; `cancel()` and `extend(n)`."""

    PATH = "/v1/solve/stream"

    def extend(self, max_iters: int) -> None:
        """Go on for `max_iters` more iterations (after a result with status max_iters or deadline)."""
        self._ws.send(json.dumps({"type": "extend", "max_iters": max_iters}))


class CompletionStream(_Stream):
    """One streaming completion: `token` events (`text`, `iterations`, `exit_value`), then its result;
    `cancel()` ends it with the tokens so far."""

    PATH = "/v1/completions/stream"


class Client:
    """Synchronous client: `solve`, `stream`, `complete`, `complete_stream`, `models`, `model`."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 600) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url, self.api_key = url, api_key
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def solve(self, model: str, input: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Solve and return the /v1/solve answer."""
        return _check(self._http.post("/v1/solve", json=solve_body(model, input, **options)))

    def stream(self, model: str, input: dict[str, Any], **options: Any) -> SolveStream:
        """Start a streaming solve; iterate the returned stream for its events."""
        return SolveStream(self.url, solve_body(model, input, **options), self.api_key)

    def complete(self, model: str, prompt: str, **options: Any) -> dict[str, Any]:
        """A looped LM's completion of `prompt` (POST /v1/completions; options as `completion_body`)."""
        return _check(self._http.post("/v1/completions", json=completion_body(model, prompt, **options)))

    def complete_stream(self, model: str, prompt: str, **options: Any) -> CompletionStream:
        """Start a streaming completion; iterate the returned stream for its tokens."""
        return CompletionStream(self.url, completion_body(model, prompt, **options), self.api_key)

    def models(self) -> list[dict[str, Any]]:
        """The served models."""
        return _check(self._http.get("/v1/models"))["models"]

    def analyze(self, model: str, **options: Any) -> dict[str, Any]:
        """E_t and L_t of a served model (POST /v1/analyze; options as its request fields)."""
        return _check(self._http.post("/v1/analyze", json={"model": model, **options}))

    def model(self, name: str) -> dict[str, Any]:
        """One model's schemas, defaults and example input."""
        return _check(self._http.get(f"/v1/models/{name}"))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSolveStream:
    """The async twin of SolveStream; use `async with client.stream(...) as s: async for e in s`."""

    def __init__(self, url: str, body: dict[str, Any], api_key: str | None) -> None:
        self._url, self._body = _ws_url(url, api_key, SolveStream.PATH), body
        self._ws: Any = None
        self.result: dict[str, Any] | None = None

    async def __aenter__(self) -> AsyncSolveStream:
        self._ws = await websockets.connect(self._url)
        await self._ws.send(json.dumps(self._body))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Events up to and including the next result."""
        while True:
            event = _raise_on_error(json.loads(await self._ws.recv()))
            yield event
            if event["type"] == "result":
                self.result = event
                return

    async def extend(self, max_iters: int) -> None:
        """Go on for `max_iters` more iterations."""
        await self._ws.send(json.dumps({"type": "extend", "max_iters": max_iters}))

    async def cancel(self) -> None:
        """Stop the solve (a no-op once it has ended)."""
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps({"type": "cancel"}))


class AsyncClient:
    """Asynchronous client: `solve`, `stream`, `models`, `model`."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 600) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url, self.api_key = url, api_key
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)

    async def solve(self, model: str, input: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Solve and return the /v1/solve answer."""
        return _check(await self._http.post("/v1/solve", json=solve_body(model, input, **options)))

    def stream(self, model: str, input: dict[str, Any], **options: Any) -> AsyncSolveStream:
        """A streaming solve, to be entered with `async with`."""
        return AsyncSolveStream(self.url, solve_body(model, input, **options), self.api_key)

    async def models(self) -> list[dict[str, Any]]:
        """The served models."""
        return _check(await self._http.get("/v1/models"))["models"]

    async def model(self, name: str) -> dict[str, Any]:
        """One model's schemas, defaults and example input."""
        return _check(await self._http.get(f"/v1/models/{name}"))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
