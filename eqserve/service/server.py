"""The uvicorn server eqserve runs on: its configuration and its listening socket."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from eqserve.service.config import Settings
from eqserve.service.http_protocol import with_header_timeout
from eqserve.service.redact import log_config
from eqserve.service.ws_protocol import BatchingWebSocketProtocol

SHUTDOWN_S = 10.0
"""After the drain has answered every solve, how long uvicorn waits for connections to finish writing."""


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for `app`, with the limits of its eqserve settings: header and keep-alive timeouts,
    the connection limit, and a log whose lines carry no API key.

    Iterate events are ~90 bytes: per-message deflate saves little and costs the engine GIL hand-offs;
    a stream's batch of events goes out in one write (service/ws_protocol.py).
    """
    state = getattr(app.state, "eq", None)  # an app of eqserve's, or a test's bare one
    settings = state.settings if state is not None else Settings(models=[])
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=log_config(LOGGING_CONFIG),
        http=with_header_timeout(settings.header_timeout_s),
        ws=BatchingWebSocketProtocol,
        ws_per_message_deflate=False,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=SHUTDOWN_S,  # type: ignore[arg-type]
    )


def listen(host: str, port: int, send_buffer: int, shared: bool = False) -> socket.socket:
    """The listening socket. Accepted connections inherit its send buffer (Linux), which bounds the
    bytes the kernel takes for a client that stopped reading: its stream notices and mutes the solve.
    `shared`: each front process (`--api-workers`) binds its own with SO_REUSEPORT, and the kernel
    spreads the connections over them."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(info[4])
    return sock
