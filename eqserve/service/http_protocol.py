"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn bounds how long an idle keep-alive connection stays open, but not how long a client may take
to send a request's headers: a client trickling a byte a second holds its connection (and a file
descriptor) for ever, and a few hundred such clients exhaust the server (slowloris). Here a
connection that has not completed its headers `header_timeout_s` after it opened, or after its last
response, is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """httptools-based HTTP/1.1 whose request headers must arrive within `header_timeout_s`."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the first request's header deadline."""
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        """The headers are in: the deadline is met."""
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """The next request's headers get a deadline of their own."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """No deadline for a connection that is gone."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class with a header deadline of `seconds` (uvicorn takes a class, not settings)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})
