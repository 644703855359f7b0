"""The catalog: which models and harvested layers the server can answer for, and the listings of
them.

The layer -> harvest run map is needed by every request, but it only changes when a run is added or
finishes, which one tiny query on ``runs`` detects (:meth:`Store.runs_fingerprint`);
:class:`~autointerp.api.data.ApiData` keeps the last :class:`Catalog` and rebuilds it only then. A
model is found by its stored name, any alias (:func:`autointerp.models.canonical_model_name`) or its
URL form (``org--name``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from autointerp.errors import UserError
from autointerp.records import NotFound, rounded, url_name


class BadRequest(Exception):
    """A parameter has the right type but a value we cannot use (sent as 422 with one message)."""


@dataclass
class ModelView:
    """One model as the server sees it: its facts (from the ``models`` table) and the run each
    layer is read from."""

    name: str
    info: dict[str, Any]
    layers: dict[int, dict[str, Any]]  # layer -> harvest run row

    @property
    def d_mlp(self) -> int | None:
        return self.info.get("d_mlp")

    @property
    def url(self) -> str:
        """The name as one URL path segment: ``org/name`` -> ``org--name``."""
        return url_name(self.name)

    def run_id(self, layer: int) -> int:
        return int(self.layers[layer]["id"])


@dataclass
class Catalog:
    fingerprint: tuple[Any, ...]
    models: dict[str, ModelView] = field(default_factory=dict)


def read_catalog(store: Any, fingerprint: tuple[Any, ...]) -> Catalog:
    """Every model with at least one complete harvest, and the run each of its layers is read
    from."""
    models: dict[str, ModelView] = {}
    names = sorted({r["model"] for r in store.runs()})
    for name in names:
        layers = store.harvested_layers(name)
        if not layers:
            continue
        models[name] = ModelView(
            name, store.model_info(name) or {"name": name}, dict(sorted(layers.items()))
        )
    return Catalog(fingerprint, models)


def find_model(models: dict[str, ModelView], name: str) -> ModelView:
    """The model ``name`` stands for: its stored name, an alias (``smollm2``, ``gpt2``) or the URL
    form of a Hugging Face id (``EleutherAI--pythia-70m``)."""
    if name in models:
        return models[name]
    from autointerp.model_names import canonical_model_name

    canonical = canonical_model_name(name)
    if canonical in models:
        return models[canonical]
    unslashed = name.replace("--", "/")
    if unslashed in models:
        return models[unslashed]
    raise NotFound(
        f"No harvested model {name!r} in this database."
        + (f" It has: {', '.join(models)}." if models else " It has no complete harvest yet."),
        models=list(models),
    )


def random_neuron(view: ModelView, rng: random.Random | None = None) -> tuple[int, int]:
    rng = rng or random.Random()
    layer = rng.choice(list(view.layers))
    return layer, rng.randrange(view.d_mlp or 1)


def model_summary(view: ModelView) -> dict[str, Any]:
    info = view.info
    return {
        "name": view.name,
        "n_layers": info.get("n_layers"),
        "d_mlp": info.get("d_mlp"),
        "act_fn": info.get("act_fn"),
        "gated_mlp": info.get("gated_mlp"),
        "harvested_layers": list(view.layers),
        "url": f"/api/{view.url}",
        "page": f"/m/{view.url}",
    }


def model_record(store: Any, view: ModelView) -> dict[str, Any]:
    layers = []
    totals = {"neurons": 0, "graphs": 0, "explanations": 0, "scores": 0}
    for layer, run in view.layers.items():
        counts = store.layer_counts(run["id"], layer)
        for k in totals:
            totals[k] += counts[k]
        layers.append(
            {
                "layer": layer,
                "run_id": run["id"],
                **counts,
                "tokens": run.get("tokens_done"),
                "corpus": run.get("corpus", {}).get("spec"),
                "url": f"/api/{view.url}/all/{layer}",
            }
        )
    runs = {r["id"]: r for r in view.layers.values()}
    corpora = [
        {
            "run_id": rid,
            "spec": r["corpus"].get("spec"),
            "documents": r["corpus"].get("documents"),
            "fingerprint": r["corpus"].get("fingerprint"),
            "tokens": r.get("tokens_done"),
            "ctx_len": r["config"].get("ctx_len"),
        }
        for rid, r in runs.items()
    ]
    return {
        **model_summary(view),
        "d_model": view.info.get("d_model"),
        "n_ctx": view.info.get("n_ctx"),
        "provenance": view.info.get("provenance"),
        "corpus": corpora,
        "layers": layers,
        "totals": totals,
        "services": available_services(totals),
    }


def available_services(totals: dict[str, int]) -> dict[str, bool]:
    """Which services have any data for this model (the others answer "not computed" per neuron)."""
    return {
        "neuroscope": totals["neurons"] > 0,
        "stats": totals["neurons"] > 0,
        "n2g": totals["graphs"] > 0,
        "explanation": totals["explanations"] > 0 or totals["scores"] > 0,
        "similar": True,
        "weights": True,
        "all": True,
    }


def layer_record(
    store: Any, view: ModelView, service: str, layer: int, run_id: int, offset: int, limit: int
) -> dict[str, Any]:
    """One page of a layer's neurons for a service: graphs, explanations, or statistics (the
    rest)."""
    base = {
        "model": view.name,
        "service": service,
        "layer": layer,
        "run_id": run_id,
        "offset": offset,
        "limit": limit,
    }
    if service == "n2g":
        total, rows = store.layer_graphs(run_id, layer, offset, limit)
        items = [
            {
                **{k: rounded(v) if isinstance(v, float) else v for k, v in r.items()},
                "url": f"/api/{view.url}/n2g/{layer}/{r['neuron']}",
            }
            for r in rows
        ]
    elif service == "explanation":
        total, rows = store.layer_explanations(run_id, layer, offset, limit)
        items = [
            {
                **r,
                "score": rounded(r["score"]),
                "url": f"/api/{view.url}/explanation/{layer}/{r['neuron']}",
            }
            for r in rows
        ]
    else:
        total = store.layer_neuron_count(run_id, layer)
        rows = store.layer_stats(run_id, layer, offset, limit)
        items = [
            {
                **{k: rounded(v, 6) if isinstance(v, float) else v for k, v in r.items()},
                "url": f"/api/{view.url}/{service}/{layer}/{r['neuron']}",
            }
            for r in rows
        ]
    return {**base, "total": total, "items": items}


def rank_record(
    store: Any, view: ModelView, by: str, layer: int | None, limit: int
) -> dict[str, Any]:
    """The strongest neurons by ``by`` (statistics or scores), each with its page and API links."""
    try:
        rows = store.rank_neurons(view.name, by, layer, limit)
    except UserError as exc:
        raise BadRequest(str(exc)) from exc
    items = [
        {
            **{k: rounded(v, 6) if isinstance(v, float) else v for k, v in r.items()},
            "page": f"/m/{view.url}/neuron/{r['layer']}/{r['neuron']}",
            "url": f"/api/{view.url}/all/{r['layer']}/{r['neuron']}",
        }
        for r in rows
    ]
    return {"model": view.name, "by": by, "layer": layer, "limit": limit, "items": items}
