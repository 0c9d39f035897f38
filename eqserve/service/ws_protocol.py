"""uvicorn's WebSocket protocol with one addition: a batch of text messages sent in one write.

A stream sends its iterate events a batch at a time, each as its own WebSocket message. Through
ASGI each message costs a trip down the middleware stack, a frame and, on uvloop, a `write` system
call made with the GIL held that also wakes the client: ~3 µs of the ~7.5 µs of event-loop GIL time
an event cost, time the engine's worker waits for. The connection's scope offers the extension
`SEND_TEXTS`, whose `send` frames every text of a batch as its own message and writes them
together. Messages, their order and flow control are as with `websocket.send`.
"""

from __future__ import annotations

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

SEND_TEXTS = "eqserve.websocket.send_texts"
"""The scope extension: {"send": async (texts: list[str]) -> None}."""


class BatchingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol whose scope offers `SEND_TEXTS`."""

    async def run_asgi(self) -> None:
        """Run the app with the extension in its scope."""
        self.scope["extensions"][SEND_TEXTS] = {"send": self.send_texts}  # type: ignore[index]
        await super().run_asgi()

    async def send_texts(self, texts: list[str]) -> None:
        """Send each of `texts` as a text message, all in one write; wait first while the
        transport's buffer is over its high-water mark, as `websocket.send` does."""
        await self.writable.wait()
        if self.disconnected or self.close_sent:
            raise ClientDisconnected()
        try:
            for text in texts:
                self.conn.send_text(text.encode())
        except InvalidState as exc:
            raise ClientDisconnected() from exc
        self.transport.write(b"".join(self.conn.data_to_send()))
