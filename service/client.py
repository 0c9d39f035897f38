"""A Python client of a running eqserve server."""

from __future__ import annotations

from typing import Any

import httpx


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
) -> dict[str, Any]:
    """The /v1/solve request body; options left None take the model's defaults."""
    budget = {"max_iters": max_iters, "tol": tol, "stop_mode": stop_mode, "timeout_s": timeout_s}
    solver = {"method": method, "damping": damping, "m": m}
    return {
        "model": model,
        "input": input,
        "budget": {k: v for k, v in budget.items() if v is not None},
        "solver": {k: v for k, v in solver.items() if v is not None},
        "return": {"trace": trace},
    }


class Client:
    """Synchronous client: `solve`, `models`, `model`."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 600
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def _check(self, resp: httpx.Response) -> dict[str, Any]:
        body = resp.json()
        if resp.status_code >= 400:
            raise EqserveError(resp.status_code, body)
        return body

    def solve(self, model: str, input: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Solve and return the /v1/solve answer."""
        return self._check(self._http.post("/v1/solve", json=solve_body(model, input, **options)))

    def models(self) -> list[dict[str, Any]]:
        """The served models."""
        return self._check(self._http.get("/v1/models"))["models"]

    def model(self, name: str) -> dict[str, Any]:
        """One model's schemas, defaults and example input."""
        return self._check(self._http.get(f"/v1/models/{name}"))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
