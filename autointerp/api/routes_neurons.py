"""The JSON routes for one neuron or one layer of a service (neuroscope, stats, explanation, n2g,
similar, weights, or all of them), and the N2G graph as a GraphML download.

The neuron route is the hot one, so it is ``async``: an answer already encoded
(:mod:`autointerp.api.fastpath`) is sent straight from the event loop, and only a miss goes to the
thread pool to read the database.
"""

from __future__ import annotations

from fastapi import FastAPI, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from autointerp.api.catalog import BadRequest
from autointerp.api.data import NEUROSCOPE_LIMIT, ApiData
from autointerp.api.params import MAX_INDEX, Index
from autointerp.api.responses import JSONBytes, json_of
from autointerp.records import EXAMPLE_KINDS, NotFound


def neuron_routes(app: FastAPI, data: ApiData) -> None:
    """``GET /api/{model}/n2g/{layer}/{neuron}/graphml``, ``GET /api/{model}/{service}/{layer}``
    and ``GET /api/{model}/{service}/{layer}/{neuron}``."""

    @app.get(
        "/api/{model}/n2g/{layer}/{neuron}/graphml",
        tags=["neurons"],
        summary="The neuron's N2G graph as GraphML (download)",
    )
    def api_graphml(model: str, layer: Index, neuron: Index) -> Response:
        from autointerp.api.plots import graphml_bytes

        view = data.model(model)
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
        view = data.model(model)
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
        view = data.model(model)
        data.check_service(service)
        wanted = _kinds(kinds)
        hit = data.cached_neuron(view, service, layer, neuron, wanted, limit)
        if hit is None:
            hit = await run_in_threadpool(
                data.neuron_bytes, view, service, layer, neuron, wanted, limit
            )
        return JSONBytes(hit)


def _kinds(text: str | None) -> tuple[str, ...] | None:
    if text is None or not text.strip():
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in EXAMPLE_KINDS]
    if bad:
        raise BadRequest(f"Unknown example kind {bad[0]!r}; kinds: {', '.join(EXAMPLE_KINDS)}.")
    return kinds
