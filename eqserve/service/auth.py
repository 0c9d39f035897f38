"""Optional bearer-token auth: when a key is set, model and inference routes need it."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from fastapi import Request

from eqserve.service.errors import ApiError

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/v2/health/", "/static/")
"""Paths that stay open with a key set (health, metrics, the page's assets)."""


def check(request_path: str, authorization: str | None, api_key: str) -> None:
    """Raise 401 unless no key is set, the path is open, or the header carries the key."""
    if not api_key or request_path == "/" or request_path.startswith(OPEN_PATHS):
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
        raise ApiError(
            401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


async def require_key(request: Request) -> None:
    """FastAPI dependency form of `check` for HTTP routes."""
    check(request.url.path, request.headers.get("authorization"), request.app.state.eq.settings.api_key)


def same_origin_or_allowed(headers: Mapping[str, str], allowed: list[str]) -> bool:
    """Whether a WebSocket handshake may proceed: no Origin (not a browser), the server's own origin,
    or one of `allowed` (`*`: any). Browsers let any page open a WebSocket to any server, so without
    this a page the user visits could drive a local server."""
    origin = headers.get("origin")
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in (a.rstrip("/").lower() for a in allowed):
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
