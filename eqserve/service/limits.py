"""The request body cap: a body over `--max-body-bytes` is refused with 413 before the rest is read.

Without it one large body holds memory (JSON parsing takes many times the body's size) and, while it
is parsed, the CPU. The cap applies when the route reads the body: a declared Content-Length over
the cap is refused at the first read, before any of it is taken; a chunked body when its running
count passes the cap. Refusing is raising `ApiError(413)` from the read, so that each route answers
in its own error shape.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eqserve.service.errors import ApiError


def too_large(cap: int) -> ApiError:
    """The 413 of a body over `cap` bytes."""
    return ApiError(413, "body_too_large", f"request body exceeds the server's cap of {cap} bytes")


class BodyCap:
    """ASGI middleware: HTTP request bodies of at most `cap` bytes."""

    def __init__(self, app: ASGIApp, cap: int) -> None:
        self.app, self.cap = app, cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        over = declared.isdigit() and int(declared) > self.cap
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            if over:
                raise too_large(self.cap)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.cap:
                    raise too_large(self.cap)
            return message

        await self.app(scope, capped, send)
