"""The JSON routes that find neurons across a model: search (token query over the N2G graphs, and
explanation text by meaning or exact words) and rank (by a statistic or a score).

Both take the model as the only path parameter, so they are registered before the neuron routes'
``/api/{model}/{service}/{layer}``, which would otherwise read ``search`` as a service name.
"""

from __future__ import annotations

from fastapi import FastAPI, Query

from autointerp.api.data import ApiData
from autointerp.api.params import MAX_INDEX
from autointerp.api.responses import JSONBytes, json_of

RANK_BY = (
    "max",
    "min",
    "frac_positive",
    "variance",
    "n2g",
    "explanation",
    "explanation_random",
    "explanation_auprc",
    "baseline",
    "cos_in_out",
    "cos_in_out_negative",
)


def query_routes(app: FastAPI, data: ApiData) -> None:
    """``GET /api/{model}/search`` and ``GET /api/{model}/rank``."""

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
        return json_of(data.search(data.model(model), query, text, limit, exact))

    @app.get(
        "/api/{model}/rank", tags=["queries"], summary="Neurons ranked by a statistic or score"
    )
    def api_rank(
        model: str,
        layer: int | None = Query(None, ge=0, le=MAX_INDEX),
        by: str = Query("max", description=", ".join(RANK_BY)),
        limit: int = Query(20, ge=1, le=1000),
    ) -> JSONBytes:
        return json_of(data.rank(data.model(model), by, layer, limit))
