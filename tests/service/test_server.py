"""The uvicorn server eqserve runs on: its listening socket and its batched WebSocket sends."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from uvicorn.server import ServerState
from websockets.sync.client import connect

from eqserve.service.routes_stream import batch_sender
from eqserve.service.server import listen
from eqserve.service.ws_protocol import SEND_TEXTS, BatchingWebSocketProtocol
from tests.live_server import live_server


def test_serve_listens_with_a_bounded_send_buffer() -> None:
    """Accepted connections inherit the listening socket's send buffer (Linux doubles the value)."""
    sock = listen("127.0.0.1", 0, 65536)
    try:
        assert 65536 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 65536
        sock.listen()
        with socket.create_connection(sock.getsockname()):
            conn, _ = sock.accept()
            with conn:
                assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 65536
    finally:
        sock.close()


class RecordingTransport(asyncio.Transport):
    """Records each write; closing it does nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def server_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked, unfragmented text frames in `data`."""
    frames, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x81, "a final text frame"
        n, pos = data[pos + 1], pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        frames.append(data[pos : pos + n])
        pos += n
    return frames


HANDSHAKE = (
    b"GET /s HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_batch_of_texts_goes_out_as_its_own_messages_in_one_write() -> None:
    texts = ["a", "bb", "c" * 200, "d" * 70_000]

    async def run() -> list[bytes]:
        sent = asyncio.Event()

        async def app(scope: dict, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await scope["extensions"][SEND_TEXTS]["send"](texts)
            sent.set()

        config = uvicorn.Config(app, ws=BatchingWebSocketProtocol, log_level="warning")
        config.load()
        protocol = BatchingWebSocketProtocol(config, ServerState(), {})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(HANDSHAKE)
        await asyncio.wait_for(sent.wait(), 5)
        return transport.writes

    accept, batch = asyncio.run(run())
    assert accept.startswith(b"HTTP/1.1 101")
    assert server_frames(batch) == [t.encode() for t in texts]


def burst_app(sizes: list[int], offered: list[bool]) -> FastAPI:
    """Sends one batch of texts of the given sizes through `batch_sender`; notes whether the server
    offered the batch extension."""
    app = FastAPI()

    @app.websocket("/burst")
    async def burst(ws: WebSocket) -> None:
        await ws.accept()
        offered.append(SEND_TEXTS in ws.scope.get("extensions", {}))
        await batch_sender(ws)([str(i) * size for i, size in enumerate(sizes)])
        await ws.close()

    return app


SIZES = [1, 90, 125, 126, 1000, 65535, 65536, 200_000]


def test_a_batch_reaches_a_real_client_as_the_same_messages() -> None:
    """Over a real uvicorn server configured like `eqserve serve`, with the extension."""
    offered: list[bool] = []
    with (
        live_server(burst_app(SIZES, offered)) as url,
        connect(url.replace("http", "ws", 1) + "/burst", max_size=None) as ws,
    ):
        got = [ws.recv(timeout=10) for _ in SIZES]
    assert offered == [True]
    assert got == [str(i) * size for i, size in enumerate(SIZES)]


def test_without_the_extension_a_batch_goes_out_one_message_at_a_time() -> None:
    offered: list[bool] = []
    with TestClient(burst_app(SIZES, offered)).websocket_connect("/burst") as ws:
        got = [ws.receive_text() for _ in SIZES]
    assert offered == [False]
    assert got == [str(i) * size for i, size in enumerate(SIZES)]
