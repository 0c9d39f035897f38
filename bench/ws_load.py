"""A lean WebSocket client for the streaming benchmark: one blocking socket, frames cut out of large reads.

The benchmark's client shares the machine's two cores with the server it measures, so its CPU is
taken from the engine whose tick is being timed. The websockets library's sync client spends about
11 µs of CPU per message here (a reader thread, a frame object, a queue hand-off per message). This
one reads up to 64 KiB at a time, cuts the frames out of it and parses only the final event's JSON;
iterate events are recognised by their first bytes. It masks what it sends, answers pings and
reassembles fragments, as RFC 6455 asks of a client.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ITERATE = b'{"type": "iterate"'
"""How every iterate event eqserve sends begins."""

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class WsError(Exception):
    """The handshake failed, the server closed without a final event, or a frame is malformed."""


@dataclass
class StreamRun:
    """What one streamed solve delivered."""

    final: dict[str, Any]
    """The last event: the result, or an error."""
    events: int
    """Iterate events received."""
    first: float | None
    """perf_counter() of the read that brought the first iterate event."""
    last: float | None
    """perf_counter() of the read that brought the last iterate event."""


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, `opcode`, masked `payload`."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def _connect(url: str, path: str, timeout: float) -> tuple[socket.socket, bytearray]:
    """An upgraded connection and the bytes that followed the 101 response."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise WsError("connection closed during the handshake")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise WsError(f"handshake refused: {head.splitlines()[0].decode(errors='replace')}")
    return sock, bytearray(rest)


def stream_solve(url: str, request: dict[str, Any], stall_s: float = 0.0, timeout: float = 600) -> StreamRun:
    """Send `request` to WS /v1/solve/stream, read nothing for `stall_s`, then read every event."""
    sock, buf = _connect(url, "/v1/solve/stream", timeout)
    with sock:
        sock.sendall(_frame(TEXT, json.dumps(request).encode()))
        time.sleep(stall_s)
        events, first, last = 0, None, None
        fragments: list[bytes] = []
        pos = 0
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise WsError("the server closed the connection before the final event")
            now = time.perf_counter()
            buf = buf[pos:] + chunk
            pos = 0
            while len(buf) - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                if b1 & 0x80:
                    raise WsError("a server frame is masked")
                n, start = b1 & 0x7F, pos + 2
                if n == 126:
                    n, start = int.from_bytes(buf[start : start + 2], "big"), start + 2
                elif n == 127:
                    n, start = int.from_bytes(buf[start : start + 8], "big"), start + 8
                if len(buf) < start + n:
                    break
                payload, pos, opcode = bytes(buf[start : start + n]), start + n, b0 & 0x0F
                if opcode == PING:
                    sock.sendall(_frame(PONG, payload))
                    continue
                if opcode == CLOSE:
                    raise WsError(f"the server closed the stream before the final event: {payload[2:]!r}")
                if opcode == PONG:
                    continue
                fragments.append(payload)
                if not b0 & 0x80:  # more fragments follow
                    continue
                message, fragments = b"".join(fragments), []
                if message.startswith(ITERATE):
                    events += 1
                    first = first or now
                    last = now
                    continue
                final = json.loads(message)
                if final.get("type") in ("result", "error"):
                    return StreamRun(final, events, first, last)
