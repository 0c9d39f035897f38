"""The uvicorn server eqserve runs on: its configuration and its listening socket."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from eqserve.service.ws_protocol import BatchingWebSocketProtocol


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for `app`.

    Iterate events are ~90 bytes: per-message deflate saves little and costs the engine GIL hand-offs;
    a stream's batch of events goes out in one write (service/ws_protocol.py).
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws=BatchingWebSocketProtocol,
        ws_per_message_deflate=False,
    )


def listen(host: str, port: int, send_buffer: int) -> socket.socket:
    """The listening socket. Accepted connections inherit its send buffer (Linux), which bounds the
    bytes the kernel takes for a client that stopped reading: its stream notices and mutes the solve."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(info[4])
    return sock
