"""`autointerp serve`: one FastAPI app serving the JSON API and the web pages, read from the SQLite
store.

Everything is local: templates and static files ship inside this package, pictures are drawn on the
server (matplotlib, Pillow), and the API docs page is rendered from the OpenAPI spec here instead of
loading Swagger UI from a CDN. Errors always say what exists: an unknown model, service, layer or
neuron is a 404 whose JSON body lists the valid ones; a parameter of the wrong type or value is a
422; a text over the limit is a 413.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autointerp.api.catalog import BadRequest, ModelView
from autointerp.api.data import NEUROSCOPE_LIMIT, ApiData
from autointerp.api.fastpath import dumps
from autointerp.api.pages import error_page, page_routes
from autointerp.api.params import MAX_INDEX, Index
from autointerp.errors import UserError
from autointerp.live import VIEWS, Live, LiveUnavailable, TooLong, layer_scales, threshold_view
from autointerp.records import EXAMPLE_KINDS, NotFound
from autointerp.untrusted import check_unicode

HERE = Path(__file__).parent
MAX_BODY_BYTES = 64 * 1024  # a request body larger than this is refused before it is read (413)
# which browser ran which Layerscope prompts (they are listed only to it)
CLIENT_COOKIE = "autointerp_client"
RANK_BY = ("max", "min", "frac_positive", "variance", "n2g", "explanation", "baseline")


class JSONBytes(Response):
    media_type = "application/json"


def _valid_unicode(text: str) -> str:
    """Lone surrogates (``"\\ud800"``) are valid JSON but not text: refused (422) like any invalid
    value."""
    try:
        return check_unicode(text, "text")
    except UserError as exc:
        raise ValueError(str(exc)) from None


class ActivationsRequest(BaseModel):
    """Text to run, and which layer (and optionally which neuron) to read."""

    text: str = Field(description="the text to run the subject model on (BOS is prepended)")
    layer: int = Field(description="MLP layer", ge=0, le=MAX_INDEX)
    neuron: int | None = Field(
        default=None, ge=0, le=MAX_INDEX, description="one neuron; omit for the whole layer"
    )

    text_is_unicode = field_validator("text")(classmethod(lambda cls, text: _valid_unicode(text)))


class LayerscopeRequest(BaseModel):
    text: str = Field(description="the prompt to run over every layer")

    text_is_unicode = field_validator("text")(classmethod(lambda cls, text: _valid_unicode(text)))


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before the JSON parser sees them (a 1 MB
    text must not cost a 1 MB parse and a forward pass to reject)."""

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

        async def limited() -> Message:
            nonlocal seen
            try:  # a client that trickles its body in (or stops) must not hold a worker forever
                message = await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                raise _BodyTooSlow(self.seconds) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(seen)
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge as exc:
            await _too_large(send, exc.size, self.limit)
        except _BodyTooSlow as exc:
            await _refuse(
                send, 408, f"The request body did not arrive within {exc.seconds:g} seconds."
            )


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
) -> FastAPI:
    """The server for ``db_path``. ``loader(name) -> SubjectModel`` loads subject models for live
    activations (default :func:`autointerp.models.load_model`); ``max_chars``/``max_tokens`` bound
    every live text. ``cors_origins``: web origins allowed to read answers from a browser (none by
    default: another website open in the same browser must not read a local server).
    ``share_recent``: list every client's recent Layerscope prompts to everyone. ``body_seconds``: a
    client that takes longer to send its request body gets 408."""
    data = ApiData(db_path)
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
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _install_errors(app)
    _api_routes(app, data, live)
    page_routes(app, data, live)
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


def _api_routes(app: FastAPI, data: ApiData, live: Live) -> None:
    def view_of(model: str) -> ModelView:
        return data.model(model)

    def json_of(obj: Any) -> JSONBytes:
        return JSONBytes(dumps(obj))

    @app.get(
        "/api/models", tags=["models"], summary="Models with a complete harvest in this database"
    )
    def api_models() -> JSONBytes:
        return json_of({"models": data.models_list()})

    @app.get(
        "/api/{model}",
        tags=["models"],
        summary=(
            "One model: layers, d_mlp, activation function, corpus, per-layer counts, available"
            " services"
        ),
    )
    def api_model(model: str) -> JSONBytes:
        return json_of(data.model_record(view_of(model)))

    @app.get(
        "/api/{model}/search",
        tags=["queries"],
        summary="Neurons by token query (query=any:the) and/or explanation text (text=...)",
    )
    def api_search(
        model: str,
        query: str | None = Query(None, max_length=500, description="token query, e.g. any:the"),
        text: str | None = Query(
            None,
            max_length=500,
            description=(
                "what explanations should say: "
                "ranked by meaning (sentence embeddings), or exact words with exact"
            ),
        ),
        exact: bool = Query(False, description="match explanation words exactly (FTS5) instead"),
        limit: int = Query(20, ge=1, le=500),
    ) -> JSONBytes:
        return json_of(data.search(view_of(model), query, text, limit, exact))

    @app.get(
        "/api/{model}/rank", tags=["queries"], summary="Neurons ranked by a statistic or score"
    )
    def api_rank(
        model: str,
        layer: int | None = Query(None, ge=0, le=MAX_INDEX),
        by: str = Query("max", description=", ".join(RANK_BY)),
        limit: int = Query(20, ge=1, le=1000),
    ) -> JSONBytes:
        return json_of(data.rank(view_of(model), by, layer, limit))

    @app.post(
        "/api/{model}/activations",
        tags=["live"],
        summary="Per-token activations of one neuron (or a whole layer) on any text, computed live",
    )
    def api_activations(model: str, req: ActivationsRequest) -> JSONBytes:
        view = view_of(model)
        live.check_text(req.text)
        n_layers, d_mlp = view.info.get("n_layers"), view.d_mlp
        if n_layers is not None and req.layer >= n_layers:
            raise NotFound(
                f"Layer {req.layer} does not exist: {view.name} has layers 0-{n_layers - 1}.",
                layers=[0, n_layers - 1],
            )
        if req.neuron is not None and d_mlp is not None and req.neuron >= d_mlp:
            raise NotFound(
                f"Neuron {req.neuron} does not exist: {view.name} has neurons 0-{d_mlp - 1} per"
                " layer.",
                neurons=[0, d_mlp - 1],
            )
        return json_of(live.activations(view.name, req.text, req.layer, req.neuron))

    @app.post(
        "/api/{model}/layerscope",
        tags=["live"],
        summary=(
            "Run a prompt over every layer once (kept among the recent prompts); returns its id"
        ),
    )
    def api_layerscope_run(model: str, req: LayerscopeRequest, request: Request) -> JSONBytes:
        view = view_of(model)
        client = request.cookies.get(CLIENT_COOKIE) or secrets.token_hex(12)
        prompt = live.layerscope(view.name, req.text, owner=client)
        response = json_of(
            {
                **prompt.summary(),
                **_prompt_links(view.url, prompt.prompt_id),
                "scales": {v: layer_scales(prompt, v) for v in VIEWS},
            }
        )
        response.set_cookie(CLIENT_COOKIE, client, httponly=True, samesite="strict")
        return response

    @app.get(
        "/api/{model}/layerscope",
        tags=["live"],
        summary=(
            "Recent Layerscope prompts of this client (of everyone with serve "
            "--share-recent-prompts)"
        ),
    )
    def api_layerscope_recent(model: str, request: Request) -> JSONBytes:
        view = view_of(model)
        return json_of(
            {
                "model": view.name,
                "shared": live.share_recent,
                "prompts": [
                    {k: v for k, v in p.summary().items() if k != "tokens"}
                    | _prompt_links(view.url, p.prompt_id)
                    for p in live.recent(view.name, request.cookies.get(CLIENT_COOKIE))
                ],
            }
        )

    @app.get(
        "/api/{model}/layerscope/{prompt_id}/{layer}",
        tags=["live"],
        summary="Threshold view: units of a layer above hi or below lo on a recent prompt",
    )
    def api_layerscope_threshold(
        model: str,
        prompt_id: str,
        layer: Index,
        hi: float = Query(3.0, allow_inf_nan=False),
        lo: float = Query(0.0, allow_inf_nan=False),
        view: str = Query("mlp"),
        limit: int = Query(100, ge=1, le=5000),
    ) -> JSONBytes:
        prompt = _prompt(data, live, model, prompt_id, layer, view)
        return json_of(threshold_view(prompt, layer, view, hi, lo, limit))

    @app.get(
        "/api/{model}/n2g/{layer}/{neuron}/graphml",
        tags=["neurons"],
        summary="The neuron's N2G graph as GraphML (download)",
    )
    def api_graphml(model: str, layer: Index, neuron: Index) -> Response:
        from autointerp.api.plots import graphml_bytes

        view = view_of(model)
        data.check_neuron(view, layer, neuron)
        row = data.store().graph(view.name, layer, neuron)
        if row is None:
            raise NotFound(f"No N2G graph computed for {view.name} {layer}/{neuron}.")
        return Response(
            graphml_bytes(row, view.name, layer, neuron),
            media_type="application/graphml+xml",
            headers={
                "Content-Disposition": f'attachment; filename="{view.url}_{layer}_{neuron}.graphml"'
            },
        )

    @app.get(
        "/api/{model}/{service}/{layer}",
        tags=["layers"],
        summary="Layer summary for a service (paginated by neuron index)",
    )
    def api_layer(
        model: str,
        service: str,
        layer: Index,
        offset: int = Query(0, ge=0, le=MAX_INDEX),
        limit: int = Query(100, ge=1, le=1000),
    ) -> JSONBytes:
        view = view_of(model)
        data.check_service(service)
        return json_of(data.layer_record(view, service, layer, offset, limit))

    @app.get(
        "/api/{model}/{service}/{layer}/{neuron}",
        tags=["neurons"],
        summary="One neuron: neuroscope, n2g, explanation, similar, stats, weights or all",
    )
    async def api_neuron(
        model: str,
        service: str,
        layer: Index,
        neuron: Index,
        kinds: str | None = Query(
            None, description="neuroscope: comma list of top,bottom,quantile,random"
        ),
        limit: int = Query(
            NEUROSCOPE_LIMIT,
            ge=0,
            le=1000,
            description=(
                f"neuroscope: examples per kind (default {NEUROSCOPE_LIMIT}, as "
                "many as the page shows; 1000 for all of them)"
            ),
        ),
    ) -> JSONBytes:
        # async: a cached answer is sent straight from the event loop; anything that reads the
        # database goes to the thread pool (each pool thread has its own SQLite connection)
        view = view_of(model)
        data.check_service(service)
        wanted = _kinds(kinds)
        hit = data.cached_neuron(view, service, layer, neuron, wanted, limit)
        if hit is None:
            hit = await run_in_threadpool(
                data.neuron_bytes, view, service, layer, neuron, wanted, limit
            )
        return JSONBytes(hit)

    # ---- pictures (not part of the JSON API, so not in the OpenAPI spec)
    @app.get("/img/{model}/scores.svg", include_in_schema=False)
    def img_scores(model: str) -> Response:
        from autointerp.api.plots import cached, score_plot

        view = view_of(model)
        store = data.store()
        per_layer = {
            layer: store.score_values(run["id"], layer) for layer, run in view.layers.items()
        }
        key = (
            "scores",
            view.name,
            repr(
                sorted(
                    (k, sorted((m, len(v), sum(v)) for m, v in s.items()))
                    for k, s in per_layer.items()
                )
            ),
        )
        return Response(
            cached(key, lambda: score_plot(view.name, per_layer)), media_type="image/svg+xml"
        )

    @app.get("/img/{model}/eval.png", include_in_schema=False)
    def img_eval(model: str) -> Response:
        """The newest `autointerp eval` of the model: score distributions per method with the
        controls."""
        from autointerp.api.plots import cached
        from autointerp.eval.plot import eval_plot

        view = view_of(model)
        store = data.store()
        evaluation = store.latest_evaluation(view.name, "eval")
        if evaluation is None:
            raise NotFound(
                f"{view.name} has no stored evaluation; run `autointerp eval {view.name}`."
            )
        known = store.latest_evaluation(view.name, "calibrate")
        rows = known["result"]["features"] if known else None
        key = ("eval", view.name, evaluation["run_id"], known["run_id"] if known else None)
        png = cached(key, lambda: eval_plot(evaluation["result"], rows))
        return Response(png, media_type="image/png")

    @app.get("/img/{model}/n2g/{layer}/{neuron}.svg", include_in_schema=False)
    def img_graph(model: str, layer: Index, neuron: Index) -> Response:
        from autointerp.api.plots import cached, graph_svg

        view = view_of(model)
        data.check_neuron(view, layer, neuron)
        row = data.store().graph(view.name, layer, neuron)
        if row is None:
            raise NotFound(f"No N2G graph computed for {view.name} {layer}/{neuron}.")
        key = ("graph", view.name, layer, neuron, row["config_hash"], row["created"])
        return Response(
            cached(key, lambda: graph_svg(row, view.name, layer, neuron)),
            media_type="image/svg+xml",
        )

    @app.get("/img/{model}/layerscope/{prompt_id}/{layer}.png", include_in_schema=False)
    def img_layer(model: str, prompt_id: str, layer: Index, view: str = "mlp") -> Response:
        prompt = _prompt(data, live, model, prompt_id, layer, view)
        return Response(live.image(prompt, layer, view), media_type="image/png")

    @app.get("/img/{model}/layerscope/{prompt_id}.gif", include_in_schema=False)
    def img_gif(model: str, prompt_id: str, view: str = "mlp") -> Response:
        prompt = _prompt(data, live, model, prompt_id, 0, view)
        return Response(
            live.gif(prompt, view),
            media_type="image/gif",
            headers={
                "Content-Disposition": (
                    f'attachment; filename="layerscope_{prompt.model}_{prompt_id}_{view}.gif"'
                )
            },
        )


def _kinds(text: str | None) -> tuple[str, ...] | None:
    if text is None or not text.strip():
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in EXAMPLE_KINDS]
    if bad:
        raise BadRequest(f"Unknown example kind {bad[0]!r}; kinds: {', '.join(EXAMPLE_KINDS)}.")
    return kinds


def _prompt_links(model: str, prompt_id: str) -> dict[str, str]:
    return {
        "image_url": f"/img/{model}/layerscope/{prompt_id}/{{layer}}.png?view={{view}}",
        "gif_url": f"/img/{model}/layerscope/{prompt_id}.gif?view={{view}}",
        "threshold_url": f"/api/{model}/layerscope/{prompt_id}/{{layer}}?hi=3&lo=0&view={{view}}",
    }


def _prompt(data: ApiData, live: Live, model: str, prompt_id: str, layer: int, view: str) -> Any:
    name = data.model(model).name
    if view not in VIEWS:
        raise NotFound(f"Unknown view {view!r}; views: {', '.join(VIEWS)}.", views=list(VIEWS))
    prompt = live.prompt(name, prompt_id)
    if prompt is None:
        recent = [p.prompt_id for p in live.recent(name)]
        raise NotFound(
            f"No recent Layerscope prompt {prompt_id!r} for {name} (prompts are kept in memory; "
            f"POST the text to /api/{name}/layerscope again).",
            prompts=recent,
        )
    n_layers = prompt.mlp.shape[0]
    if not 0 <= layer < n_layers:
        raise NotFound(
            f"Layer {layer} does not exist: {name} has layers 0-{n_layers - 1}.",
            layers=[0, n_layers - 1],
        )
    return prompt
