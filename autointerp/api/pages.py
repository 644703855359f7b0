"""The web pages: server-rendered HTML (Jinja2, autoescaped: tokens are untrusted text) from the
same records the JSON API serves, plus a little vanilla JavaScript (static/app.js) for the live
parts. Every section says plainly when its data has not been computed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from autointerp.api.catalog import BadRequest, random_neuron
from autointerp.api.data import ApiData
from autointerp.api.neuron_view import (
    example_text,
    example_view,
    hist_bars,
    hist_range,
    hist_ticks,
    summary_card,
    weights_view,
)
from autointerp.api.params import CLIENT_COOKIE, Index
from autointerp.live import Live
from autointerp.records import SERVICES, NotFound, url_name

HERE = Path(__file__).parent

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def token_colour(value: float | None, scale: float) -> str:
    """Red for positive, blue for negative, white at zero (the Neuroscope convention)."""
    if value is None or not scale or not math.isfinite(value):
        return "#ffffff"
    v = max(-1.0, min(1.0, value / scale))
    if v >= 0:
        level = int(round(255 - 215 * v))
        return f"rgb(255,{level},{level})"
    level = int(round(255 + 215 * v))
    return f"rgb({level},{level},255)"


def show_token(token: str) -> str:
    """Whitespace made visible: newlines and tabs would otherwise vanish in a line of coloured
    tokens."""
    return token.replace("\n", "⏎").replace("\t", "⇥") if token else "∅"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


_env.filters["colour"] = token_colour
_env.filters["tok"] = show_token
_env.filters["fmt"] = fmt
_env.filters["u"] = url_name  # a model name as a URL path segment


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)


def error_page(status: int, message: str, extra: dict[str, Any]) -> str:
    return render("error.html", title=f"{status}", status=status, message=message, extra=extra)


def page_routes(app: FastAPI, data: ApiData, live: Live, scoring_llm: bool = False) -> None:
    """Every page, registered in a fixed order (the order in which the routes are tried).
    ``scoring_llm``: whether the server can compile descriptions outside the template grammar (the
    neuron page's "test your own explanation" box says so)."""
    _home_pages(app, data)
    _model_pages(app, data)
    _neuron_page(app, data, live, scoring_llm)
    _layer_page(app, data, live)
    _search_page(app, data)


def _home_pages(app: FastAPI, data: ApiData) -> None:
    """``/`` (the models) and ``/docs`` (the API, rendered from the app's own OpenAPI spec)."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return render(
            "index.html", title="autointerp", models=data.models_list(), db=str(data.db_path)
        )

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        endpoints = api_endpoints(app.openapi())
        return render("docs.html", title="API", endpoints=endpoints, services=SERVICES)


def api_endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each operation of an OpenAPI spec as the docs page lists it: method, path, summary, its
    parameters and the fields of its JSON body."""
    endpoints = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            params = [
                {
                    "name": p["name"],
                    "in": p["in"],
                    "required": p.get("required", False),
                    "description": p.get("description", ""),
                    "type": (
                        p.get("schema", {}).get("type")
                        or ", ".join(
                            s.get("type", "") for s in p.get("schema", {}).get("anyOf", [])
                        )
                    ),
                }
                for p in op.get("parameters", [])
            ]
            body = None
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"].get("$ref", "")
                schema = (
                    spec.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
                )
                body = {
                    k: v.get("description", "") for k, v in schema.get("properties", {}).items()
                }
            endpoints.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "params": params,
                    "body": body,
                }
            )
    return endpoints


def _model_pages(app: FastAPI, data: ApiData) -> None:
    """``/m/{model}`` (layers, scores, evaluation, top neurons) and ``/m/{model}/random``."""

    @app.get("/m/{model}", response_class=HTMLResponse, include_in_schema=False)
    def model_page(model: str, by: str | None = Query(None, max_length=40)) -> str:
        """``by``: rank the top neurons by that (e.g. cos_in_out); by default the best score
        there is."""
        view = data.model(model)
        record = data.model_record(view)
        ranked: list[dict[str, Any]] = []
        rank_error = None
        for ranked_by in [by] if by else ["explanation", "n2g", "max"]:
            try:
                ranked = data.rank(view, ranked_by, None, 20)["items"]
            except BadRequest as exc:
                rank_error = str(exc)
                continue
            if ranked:
                rank_error = None
                break
        if not by and not ranked:
            ranked_by, rank_error = "max", None
        evaluation = data.store().latest_evaluation(view.name, "eval")
        return render(
            "model.html",
            title=view.name,
            m=record,
            ranked=ranked,
            ranked_by=ranked_by,
            rank_error=rank_error,
            evaluation=evaluation["result"] if evaluation else None,
        )

    @app.get("/m/{model}/random", include_in_schema=False)
    def random_page(model: str) -> RedirectResponse:
        view = data.model(model)
        layer, neuron = random_neuron(view)
        return RedirectResponse(f"/m/{view.url}/neuron/{layer}/{neuron}", status_code=302)


def _neuron_page(app: FastAPI, data: ApiData, live: Live, scoring_llm: bool) -> None:
    """``/m/{model}/neuron/{layer}/{neuron}``: everything known about one neuron."""

    @app.get(
        "/m/{model}/neuron/{layer}/{neuron}", response_class=HTMLResponse, include_in_schema=False
    )
    def neuron_page(model: str, layer: Index, neuron: Index) -> str:
        view = data.model(model)
        rec = data.neuron_record(view, "all", layer, neuron)
        stats = rec["stats"]
        s = stats["stats"]
        edges = stats["hist_edges"]
        bins = hist_range(edges, stats["hist"], stats["ctx_max_hist"])
        scale = max(abs(s["max"] or 0.0), abs(s["min"] or 0.0), 1e-9)
        groups: dict[str, list[dict[str, Any]]] = {
            k: [] for k in ("top", "bottom", "quantile", "random")
        }
        for ex in rec["neuroscope"]["examples"]:
            shown = {**example_view(ex), "text": example_text(ex, live.max_chars)}
            groups.setdefault(ex["kind"], []).append(shown)
        layers = list(view.layers)
        d_mlp = view.d_mlp or 1
        prev_link = _step(view.url, layers, d_mlp, layer, neuron, -1)
        next_link = _step(view.url, layers, d_mlp, layer, neuron, +1)
        return render(
            "neuron.html",
            title=f"{view.name} {layer}/{neuron}",
            model=view.name,
            layer=layer,
            neuron=neuron,
            rec=rec,
            s=s,
            scale=scale,
            groups=groups,
            card=summary_card(rec, groups["top"]),
            weights=weights_view(rec["weights"].get("facts")),
            hist=hist_bars(stats["hist"], edges, bins),
            ctx_hist=hist_bars(stats["ctx_max_hist"], edges, bins),
            hist_ticks=hist_ticks(edges, bins),
            prev_link=prev_link,
            next_link=next_link,
            n_layers=view.info.get("n_layers"),
            d_mlp=view.d_mlp,
            gated=view.info.get("gated_mlp"),
            max_chars=live.max_chars,
            scoring_llm=scoring_llm,
        )


def _layer_page(app: FastAPI, data: ApiData, live: Live) -> None:
    """``/m/{model}/layer/{layer}``: the layer's top neurons, and Layerscope (live)."""

    @app.get("/m/{model}/layer/{layer}", response_class=HTMLResponse, include_in_schema=False)
    def layer_page(
        model: str,
        layer: Index,
        request: Request,
        per_page: int = Query(60, ge=1, le=500, description="threshold view units per page"),
    ) -> str:
        view = data.model(model)
        n_layers = view.info.get("n_layers") or (max(view.layers) + 1)
        if not 0 <= layer < n_layers:
            raise NotFound(
                f"Layer {layer} does not exist: {view.name} has layers 0-{n_layers - 1}."
            )
        top: list[dict[str, Any]] = []
        counts = None
        if layer in view.layers:
            top = data.rank(view, "max", layer, 20)["items"]
            counts = data.store().layer_counts(view.run_id(layer), layer)
        return render(
            "layer.html",
            title=f"{view.name} layer {layer}",
            model=view.name,
            layer=layer,
            n_layers=n_layers,
            harvested=list(view.layers),
            gated=bool(view.info.get("gated_mlp")),
            per_page=per_page,
            top=top,
            counts=counts,
            recent=live.recent(view.name, request.cookies.get(CLIENT_COOKIE)),
            max_chars=live.max_chars,
        )


def _search_page(app: FastAPI, data: ApiData) -> None:
    """``/m/{model}/search``: the search form and its results (a bad query is shown on the page)."""

    @app.get("/m/{model}/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(
        model: str,
        query: str | None = Query(None, max_length=500),
        text: str | None = Query(None, max_length=500),
        exact: bool = Query(False),
        limit: int = Query(20, ge=1, le=500),
    ) -> str:
        view = data.model(model)
        result = None
        error = None
        if query or text:
            try:
                result = data.search(view, query or None, text or None, limit, exact)
            except BadRequest as exc:
                error = str(exc)
        return render(
            "search.html",
            title=f"{view.name} search",
            model=view.name,
            query=query or "",
            text=text or "",
            exact=exact,
            result=result,
            error=error,
        )


def _step(
    model: str, layers: list[int], d_mlp: int, layer: int, neuron: int, direction: int
) -> str | None:
    """The previous/next neuron, crossing into the neighbouring harvested layer at either end."""
    n = neuron + direction
    if 0 <= n < d_mlp:
        return f"/m/{model}/neuron/{layer}/{n}"
    if layer not in layers:
        return None
    i = layers.index(layer) + direction
    if not 0 <= i < len(layers):
        return None
    return f"/m/{model}/neuron/{layers[i]}/{0 if direction > 0 else d_mlp - 1}"
