"""The JSON routes for models: which models this database has, and what is known about one.

Registered first: :func:`autointerp.api.app.create_app` registers the route modules in a fixed
order, which is the order of the paths in /openapi.json and the order in which FastAPI tries them.
"""

from __future__ import annotations

from fastapi import FastAPI

from autointerp.api.data import ApiData
from autointerp.api.responses import JSONBytes, json_of


def model_routes(app: FastAPI, data: ApiData) -> None:
    """``GET /api/models`` and ``GET /api/{model}``."""

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
        return json_of(data.model_record(data.model(model)))
