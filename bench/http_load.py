"""A lean HTTP/1.1 keep-alive client for load generation: one connection, one request in flight.

The serving benchmark's clients share the machine's two cores with the server, so every
millisecond of client CPU is taken from the server being measured. httpx (h11 underneath) costs
about 0.55 ms of CPU per request here; this client writes the request bytes once and reads the
response by its Content-Length (or chunked framing), as wrk or hey would, over a real TCP socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


class HttpError(Exception):
    """The connection broke or the server answered something this client cannot frame."""


@dataclass
class Reply:
    """One HTTP response: status code, lower-cased headers, body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One persistent connection to host:port; `post` sends a request and reads its whole reply."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, reused): a new connection unless the kept one is still open.

        The server closes a connection that stayed idle past its keep-alive timeout (uvicorn: 5 s);
        the EOF it sent is seen here before the connection is used again.
        """
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None and not writer.is_closing() and not reader.at_eof():
            return reader, writer, True
        await self.close()
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer, False

    async def post(self, path: str, body: bytes) -> Reply:
        """POST `body` (JSON) to `path` and read the whole reply.

        A kept-alive connection that the server closed before answering anything is opened anew and
        the request sent once more (it never reached the application), as HTTP clients do.
        """
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        while True:
            reader, writer, reused = await self._open()
            raw = b""
            try:
                writer.write(head + body)
                raw = await reader.readuntil(b"\r\n\r\n")
                return await self._read(reader, raw)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await self.close()
                partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
                if not reused or raw or partial:
                    raise HttpError(f"connection to {self.host}:{self.port} broke: {exc!r}") from exc

    async def _read(self, reader: asyncio.StreamReader, raw: bytes) -> Reply:
        """The reply whose header block `raw` was read: its body by Content-Length or chunks."""
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"bad status line {status_line!r}") from None
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(reader)
        else:
            raise HttpError("response without Content-Length or chunked framing")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, headers, body)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return b"".join(parts)

    async def close(self) -> None:
        """Close the socket (a later `post` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None
