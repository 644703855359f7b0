"""`autointerp serve`: one FastAPI app serving the JSON API and the web pages, read from the SQLite
store.

Everything is local: templates and static files ship inside this package, pictures are drawn on the
server (matplotlib, Pillow), and the API docs page is rendered from the OpenAPI spec here instead of
loading Swagger UI from a CDN. Errors always say what exists: an unknown model, service, layer or
neuron is a 404 whose JSON body lists the valid ones; a parameter of the wrong type or value is a
422; a text over the limit is a 413.

Where things are: this module builds the app (:func:`create_app`), its middleware (the body limit
and deadline, UTF-8 paths and query strings, encoded slashes in model names) and its error
handlers; :mod:`.server` runs it under uvicorn. The JSON routes are registered by one
function per resource: :mod:`.routes_models`, :mod:`.routes_search` (search and rank),
:mod:`.routes_live` (live activations, Layerscope), :mod:`.routes_neurons` (a neuron's or a layer's
services, GraphML), :mod:`.routes_score` (scoring a description sent by the client) and
:mod:`.routes_images` (``/img/``); the pages by :mod:`.pages`.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autointerp.api.catalog import BadRequest
from autointerp.api.data import ApiData
from autointerp.api.fastpath import dumps
from autointerp.api.pages import error_page, page_routes
from autointerp.api.responses import JSONBytes
from autointerp.api.routes_images import image_routes
from autointerp.api.routes_live import live_routes
from autointerp.api.routes_models import model_routes
from autointerp.api.routes_neurons import neuron_routes
from autointerp.api.routes_score import ServerLLM, score_routes
from autointerp.api.routes_search import query_routes
from autointerp.errors import UserError
from autointerp.live import Live, LiveUnavailable, TooLong
from autointerp.records import NotFound

if TYPE_CHECKING:
    from autointerp.llm.client import LLMSettings

HERE = Path(__file__).parent
MAX_BODY_BYTES = 64 * 1024  # a request body larger than this is refused before it is read (413)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before the JSON parser sees them (a 1 MB
    text must not cost a 1 MB parse and a forward pass to reject), and bodies that have not arrived
    whole ``seconds`` after the request's headers with 408: one deadline for the whole body, so a
    client that trickles it in a byte at a time is cut off too."""

    def __init__(self, app: ASGIApp, limit: int, seconds: float = 30.0):
        self.app = app
        self.limit = limit
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, int(value), self.limit)
                return
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        arrived = False  # the whole body is in: what is received next (a disconnect) may wait

        async def limited() -> Message:
            nonlocal seen, arrived
            if arrived:
                return await receive()
            try:  # a client that trickles its body in (or stops) must not hold a worker forever
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _BodyTooSlow(self.seconds) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(seen)
            arrived = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge as exc:
            await _too_large(send, exc.size, self.limit)
        except _BodyTooSlow as exc:
            await _refuse(
                send, 408, f"The request body did not arrive within {exc.seconds:g} seconds."
            )


class StrictUtf8:
    """Refuse, never replace: a percent-encoded path or query string that is not UTF-8
    (``?query=%C0%AF``) is a 422 naming the first bad byte, as text anywhere else is; decoded with
    replacement characters it would be a search for "\ufffd\ufffd"."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for what, raw in (
                ("path", scope.get("raw_path") or b""),
                ("query string", scope.get("query_string") or b""),
            ):
                data = urllib.parse.unquote_to_bytes(raw)
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    await _refuse(
                        send,
                        422,
                        f"The {what} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte"
                        f" {exc.start} of it (percent-decoded) cannot be decoded.",
                    )
                    return
        await self.app(scope, receive, send)


class SlashedNames:
    """``/api/EleutherAI%2Fpythia-70m/...`` (what ``encodeURIComponent`` makes of a Hugging Face id)
    reaches the router as two path segments once decoded; an encoded slash is read as ``--``, the
    form the pages link with."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            path = urllib.parse.unquote(re.sub(rb"%2[fF]", b"--", raw).decode("latin-1"))
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


class _BodyTooLarge(BaseException):  # noqa: N818
    """Not an ``Exception``: FastAPI turns any Exception raised while reading a body into a 400, and
    this must reach :class:`BodyLimit` to become a 413."""

    def __init__(self, size: int):
        self.size = size


class _BodyTooSlow(BaseException):  # noqa: N818 - not an Exception, as _BodyTooLarge
    def __init__(self, seconds: float):
        self.seconds = seconds


async def _too_large(send: Send, size: int, limit: int) -> None:
    await _refuse(
        send,
        413,
        f"The request body is {size} bytes; this server takes at most {limit} "
        "(texts are limited to a few thousand characters).",
    )


async def _refuse(send: Send, status: int, message: str) -> None:
    body = dumps({"detail": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    db_path: str | Path,
    loader: Callable[[str], Any] | None = None,
    max_chars: int = 2000,
    max_tokens: int = 256,
    cors_origins: Sequence[str] = (),
    share_recent: bool = False,
    body_seconds: float = 30.0,
    llm: LLMSettings | None = None,
) -> FastAPI:
    """The server for ``db_path``. ``loader(name) -> SubjectModel`` loads subject models for live
    activations (default :func:`autointerp.models.load_model`); ``max_chars``/``max_tokens`` bound
    every live text. ``cors_origins``: web origins allowed to read answers from a browser (none by
    default: another website open in the same browser must not read a local server).
    ``share_recent``: list every client's recent Layerscope prompts to everyone. ``body_seconds``: a
    client that takes longer to send its request body gets 408. ``llm``: the endpoint that compiles
    descriptions outside the template grammar into rules for ``POST /api/{model}/score/...`` (None:
    only template descriptions are scored; :mod:`autointerp.api.routes_score`)."""
    data = ApiData(db_path)
    scoring = ServerLLM(llm)
    live = Live(loader, max_chars=max_chars, max_tokens=max_tokens, share_recent=share_recent)
    app = FastAPI(
        title="autointerp",
        version="1",
        description=(
            "Neurons of transformer MLPs: examples, statistics, N2G graphs, explanations and"
            " scores, plus live activations. Pages: / (models), /m/{model},"
            " /m/{model}/neuron/{layer}/{neuron}, /m/{model}/layer/{layer}, /m/{model}/search."
        ),
        docs_url=None,
        redoc_url=None,  # both load JavaScript from a CDN; /docs is rendered here instead
    )
    app.state.data = data
    app.state.live = live
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, seconds=body_seconds)
    app.add_middleware(SlashedNames)
    app.add_middleware(StrictUtf8)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _install_errors(app)
    # the order of registration is the order of the paths in /openapi.json and the order in which
    # the routes are tried
    model_routes(app, data)
    query_routes(app, data)
    live_routes(app, data, live)
    neuron_routes(app, data)
    score_routes(app, data, scoring)
    image_routes(app, data, live)
    page_routes(app, data, live, scoring_llm=scoring.available)
    return app


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/api/") or path == "/openapi.json" or path.startswith("/img/"))


def _install_errors(app: FastAPI) -> None:
    def respond(
        request: Request, status: int, message: str, extra: dict[str, Any] | None = None
    ) -> Response:
        if _wants_html(request):
            return HTMLResponse(error_page(status, message, extra or {}), status_code=status)
        return JSONBytes(dumps({"detail": message, **(extra or {})}), status_code=status)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return respond(
            request, 404, exc.message, {"available": exc.available} if exc.available else None
        )

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return respond(request, 422, str(exc))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> Response:
        return respond(request, 422, str(exc))

    @app.exception_handler(TooLong)
    async def too_long(request: Request, exc: TooLong) -> Response:
        return respond(request, 413, str(exc))

    @app.exception_handler(LiveUnavailable)
    async def unavailable(request: Request, exc: LiveUnavailable) -> Response:
        # 404, not 503: the live model is a resource this server does not have, and no retry will
        # change that
        return respond(request, 404, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        parts = []
        for err in errors[:3]:
            loc = list(err.get("loc", ()))
            if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
                loc = loc[1:]  # the location kind only; a parameter may itself be called "query"
            where = ".".join(str(x) for x in loc)
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        message = "Bad parameter - " + "; ".join(parts)
        if _wants_html(request):
            return respond(request, 422, message)
        clean = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return JSONBytes(dumps({"detail": clean, "message": message}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = (
                f"No page or endpoint at {request.url.path}; the API is described at /docs"
                " (/openapi.json)."
            )
        return respond(request, exc.status_code, message)
