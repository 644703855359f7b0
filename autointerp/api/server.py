"""Running the app (:func:`autointerp.api.app.create_app`) under uvicorn, with the deadlines a
socket that anyone may connect to needs.

Why this exists: uvicorn alone gives a client unlimited time to send a request's headers (its
keep-alive timeout only runs between requests, and one byte cancels it), and its concurrency limit
counts every open connection. So 70 sockets that each sent a header byte every 2 s held the server's
64 connection slots for as long as they liked, and every normal request got 503. Here:

* **A header deadline.** A connection must deliver each request's headers within
  ``header_seconds`` of opening (or of its previous response); a client that has not is
  disconnected (:func:`with_header_deadline`, a subclass of whichever uvicorn protocol ``--http``
  chose). The body has its own deadline in the app (:class:`autointerp.api.app.BodyLimit`).
* **Requests, not connections, are capped.** At most :data:`MAX_REQUESTS` requests are served at
  once (503 beyond, :class:`RequestCap`); a connection that is still sending its headers is no
  request yet, so slow clients cannot use up the cap. Open sockets are bounded separately and far
  higher (:data:`MAX_CONNECTIONS`), each for at most the header deadline while it sends nothing
  useful.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

#: Requests served at once; more get 503 (uvicorn's own 503 response).
MAX_REQUESTS = 64
#: Open connections at once, whatever they are doing; a connection beyond is closed at once.
MAX_CONNECTIONS = 1024
#: Seconds a client may take to send a request's headers (``serve --header-timeout``).
HEADER_SECONDS = 10.0


class RequestCap:
    """At most ``limit`` requests in the app at once; beyond, uvicorn's 503 "Service
    Unavailable"."""

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUESTS):
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            from uvicorn.protocols.http.flow_control import service_unavailable

            await service_unavailable(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def with_header_deadline(base: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's h11 or httptools protocol) with a deadline for each request's headers:
    armed when the connection opens and when a response is complete, it closes a connection that
    has no request in progress by then. Also closes a connection beyond
    :data:`MAX_CONNECTIONS` at once."""

    class HeaderDeadline(base):  # type: ignore[valid-type, misc]
        _headers_due: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                transport.close()
                return
            self._expect_headers()

        def on_response_complete(self) -> None:
            self._expect_headers()  # before a pipelined request starts, which then has its headers
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._forget_deadline()
            super().connection_lost(exc)

        def _expect_headers(self) -> None:
            self._forget_deadline()
            self._headers_due = self.loop.call_later(seconds, self._headers_late)

        def _forget_deadline(self) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
                self._headers_due = None

        def _headers_late(self) -> None:
            self._headers_due = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


def protocol_class(http: str, header_seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol for ``--http`` (``auto``: httptools when installed, else h11) with
    the header deadline."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    return with_header_deadline(import_from_string(HTTP_PROTOCOLS[http]), header_seconds)


def serve(
    app: ASGIApp,
    host: str,
    port: int,
    http: str = "auto",
    loop: str = "auto",
    header_seconds: float = HEADER_SECONDS,
    log_level: str = "warning",
    access_log: bool = False,
) -> None:
    """Serve ``app`` until interrupted: idle keep-alive connections close after 5 s, headers must
    arrive within ``header_seconds``, at most :data:`MAX_REQUESTS` requests at once."""
    import uvicorn

    uvicorn.run(
        RequestCap(app),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=5,
        http=protocol_class(http, header_seconds),
        loop=loop,
    )
