"""The JSON routes computed live by the subject model: per-token activations of a neuron or layer,
and Layerscope (a prompt run over every layer, kept among the recent prompts, then read as
threshold views and pictures).

They are the only routes that need the model (and so torch): :class:`autointerp.live.Live` loads it
on the first live request, which is why serving the stored results never imports torch. A prompt is
found by :func:`find_prompt`, which the Layerscope pictures (:mod:`autointerp.api.routes_images`)
share.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field, field_validator

from autointerp.api.catalog import BadRequest
from autointerp.api.data import ApiData
from autointerp.api.params import CLIENT_COOKIE, CLIENT_ID, MAX_INDEX, Index
from autointerp.api.responses import JSONBytes, json_of
from autointerp.errors import UserError
from autointerp.live import THRESHOLDS, VIEWS, Live, layer_scales, threshold_view, unit_activations
from autointerp.records import NotFound
from autointerp.untrusted import check_unicode


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


def live_routes(app: FastAPI, data: ApiData, live: Live) -> None:
    """``POST /api/{model}/activations``, ``POST``/``GET /api/{model}/layerscope``, and what is
    read off a prompt (:func:`layerscope_view_routes`)."""

    @app.post(
        "/api/{model}/activations",
        tags=["live"],
        summary="Per-token activations of one neuron (or a whole layer) on any text, computed live",
    )
    def api_activations(model: str, req: ActivationsRequest) -> JSONBytes:
        view = data.model(model)
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
        view = data.model(model)
        client = request.cookies.get(CLIENT_COOKIE, "")
        if not CLIENT_ID.fullmatch(client):  # only ids this server hands out are kept
            client = secrets.token_hex(12)
        prompt = live.layerscope(view.name, req.text, owner=client)
        response = json_of(
            {
                **prompt.summary(),
                **prompt_links(view.url, prompt.prompt_id),
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
        view = data.model(model)
        return json_of(
            {
                "model": view.name,
                "shared": live.share_recent,
                "prompts": [
                    {k: v for k, v in p.summary().items() if k != "tokens"}
                    | prompt_links(view.url, p.prompt_id)
                    for p in live.recent(view.name, request.cookies.get(CLIENT_COOKIE))
                ],
            }
        )

    layerscope_view_routes(app, data, live)


def layerscope_view_routes(app: FastAPI, data: ApiData, live: Live) -> None:
    """What is read off a recent Layerscope prompt: the threshold view ``GET
    /api/{model}/layerscope/{prompt_id}/{layer}`` (a page of it) and one unit's column
    ``GET .../{layer}/{unit}`` (the picture's hover)."""

    @app.get(
        "/api/{model}/layerscope/{prompt_id}/{layer}",
        tags=["live"],
        summary="Threshold view: units of a layer above hi or below lo on a recent prompt",
    )
    def api_layerscope_threshold(
        model: str,
        prompt_id: str,
        layer: Index,
        hi: float | None = Query(
            None, allow_inf_nan=False, description="above this (default 3, or 0.5 of the max)"
        ),
        lo: float | None = Query(
            None, allow_inf_nan=False, description="below this (default 0, or 0.5 of the min)"
        ),
        view: str = Query("mlp"),
        thresholds: str = Query(
            "absolute",
            description=(
                "absolute: hi and lo are activations; neuron: fractions of each neuron's own"
                " harvested max and min (MLP view of a harvested layer)"
            ),
        ),
        limit: int = Query(100, ge=1, le=5000),
        offset: int = Query(0, ge=0, le=MAX_INDEX, description="skip this many (pages)"),
    ) -> JSONBytes:
        prompt = find_prompt(data, live, model, prompt_id, layer, view)
        if thresholds not in THRESHOLDS:
            raise BadRequest(
                f"Unknown thresholds {thresholds!r}; choose one of {', '.join(THRESHOLDS)}."
            )
        hi_default, lo_default = THRESHOLDS[thresholds]
        extremes = None
        if thresholds == "neuron":
            extremes = neuron_extremes(data, model, layer, view, prompt.mlp.shape[2])
        hi = hi_default if hi is None else hi
        lo = lo_default if lo is None else lo
        return json_of(threshold_view(prompt, layer, view, hi, lo, limit, offset, extremes))

    @app.get(
        "/api/{model}/layerscope/{prompt_id}/{layer}/{unit}",
        tags=["live"],
        summary="One unit's activation on each token of a recent prompt (Layerscope's hover)",
    )
    def api_layerscope_unit(
        model: str, prompt_id: str, layer: Index, unit: Index, view: str = Query("mlp")
    ) -> JSONBytes:
        prompt = find_prompt(data, live, model, prompt_id, layer, view)
        n_units = prompt.acts(view).shape[2]
        if unit >= n_units:
            what = "neurons" if view == "mlp" else "residual dimensions"
            raise NotFound(
                f"Unit {unit} does not exist: layer {layer} has {what} 0-{n_units - 1}.",
                units=[0, n_units - 1],
            )
        return json_of(unit_activations(prompt, layer, view, unit))


def neuron_extremes(
    data: ApiData, model: str, layer: int, view: str, d_mlp: int
) -> tuple[list[float], list[float]]:
    """Each neuron's harvested max and min on ``layer`` (what thresholds relative to a neuron's
    own scale are fractions of); one sentence when there are none to read."""
    model_view = data.model(model)
    if view != "mlp":
        raise BadRequest(
            "Thresholds relative to a neuron's own scale need the MLP view: residual dimensions"
            " have no harvested max and min; use thresholds=absolute."
        )
    if layer not in model_view.layers:
        raise BadRequest(
            f"Layer {layer} of {model_view.name} has not been harvested, so its neurons have no"
            " max and min to scale by; use thresholds=absolute (harvested layers:"
            f" {list(model_view.layers)})."
        )
    rows = data.store().layer_stats(model_view.run_id(layer), layer, 0, d_mlp)
    top, bottom = [0.0] * d_mlp, [0.0] * d_mlp
    for r in rows:
        if r["neuron"] < d_mlp:
            top[r["neuron"]], bottom[r["neuron"]] = r["max"] or 0.0, r["min"] or 0.0
    return top, bottom


def prompt_links(model: str, prompt_id: str) -> dict[str, str]:
    """Where a Layerscope prompt's pictures and threshold views are (``{layer}`` and ``{view}``
    left for the page to fill in)."""
    return {
        "image_url": f"/img/{model}/layerscope/{prompt_id}/{{layer}}.png?view={{view}}",
        "gif_url": f"/img/{model}/layerscope/{prompt_id}.gif?view={{view}}",
        "threshold_url": f"/api/{model}/layerscope/{prompt_id}/{{layer}}?hi=3&lo=0&view={{view}}",
    }


def find_prompt(
    data: ApiData, live: Live, model: str, prompt_id: str, layer: int, view: str
) -> Any:
    """The recent Layerscope prompt ``prompt_id`` of ``model``; a 404 that lists what exists for
    an unknown model, view, prompt or layer."""
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
