"""What is known about one neuron, as plain dicts: statistics, examples, its N2G graph, explanations
and scores, similar neurons and weight facts.

These are the records the JSON API sends (``/api/{model}/{service}/{layer}/{neuron}``) and the pages
render; they are a library function of the store, not of the server, so that any reader (the CLI's
``neuron`` command, a notebook) gets the same record. Each one carries the links the API answers
with (``url``, ``graphml_url``, ...): ``url`` is the model name as one URL path segment
(:func:`url_name`).

Every record says plainly when its data has not been computed (``available: false`` and a
``message`` naming the command that computes it) rather than failing: a neuron with examples but no
graph is normal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from autointerp.errors import UserError
from autointerp.histogram import HIST_EDGES
from autointerp.store.explanations import USER_KIND

EXAMPLE_KINDS = ("top", "bottom", "quantile", "random")
SERVICES = ("neuroscope", "n2g", "explanation", "similar", "stats", "weights", "all")


class NotFound(Exception):
    """Something the request names does not exist; ``available`` says what does (sent as the 404
    body)."""

    def __init__(self, message: str, **available: Any):
        super().__init__(message)
        self.message = message
        self.available = available


def url_name(name: str) -> str:
    """Model names may hold ``/`` (Hugging Face ids), which a path segment cannot: links use ``--``
    instead (the Hugging Face cache's own convention), and the API maps it back."""
    return name.replace("/", "--")


def rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def head(model: str, layer: int, neuron: int, run_id: int | None = None) -> dict[str, Any]:
    """The fields every neuron record starts with."""
    out: dict[str, Any] = {"model": model, "layer": layer, "neuron": neuron}
    if run_id is not None:
        out["run_id"] = run_id
    return out


def stats_record(store: Any, model: str, layer: int, neuron: int, run_id: int) -> dict[str, Any]:
    row = store.neuron(run_id, layer, neuron)
    if row is None:
        raise NotFound(f"Neuron {layer}/{neuron} has no statistics in run {run_id}.")
    keep = ("count", "mean", "variance", "max", "min", "frac_positive")
    stats = {k: row[k] for k in keep}
    stats["std"] = math.sqrt(max(row["variance"] or 0.0, 0.0))
    return {
        **head(model, layer, neuron, run_id),
        "hook": f"blocks.{layer}.mlp.hook_post",
        "stats": stats,
        "hist": row["hist"],
        "hist_edges": HIST_EDGES,
        "ctx_max_hist": row["ctx_max_hist"],
        "hist_note": (
            "token histogram over a fixed 1-in-hist_sample sample of contexts; ctx_max_hist counts "
            "each context's maximum, over all contexts"
        ),
    }


def example_fields(ex: dict[str, Any], digits: int | None = None) -> dict[str, Any]:
    """One stored example as a record: its tokens, per-token activations (rounded to ``digits`` for
    the API's compact answers, exact for the terminal) and the documents its context came from."""
    acts = ex["activations"] if digits is None else [round(a, digits) for a in ex["activations"]]
    peak_values = (ex["max_activation"], ex["min_activation"])
    if digits is not None:
        peak_values = (rounded(peak_values[0], digits), rounded(peak_values[1], digits))
    return {
        "kind": ex["kind"],
        "rank": ex["rank"],
        "split": ex["split"],
        "context_id": ex["context_id"],
        "tokens": ex["str_tokens"],
        "token_ids": ex["tokens"],
        "activations": acts,
        "max_activation": peak_values[0],
        "min_activation": peak_values[1],
        "peak_index": ex["peak_index"],
        "interval": ex["interval"],
        "documents": sorted({i for i in ex["doc_index"] if i >= 0}),
    }


def neuron_summary(
    store: Any, model: str, layer: int, neuron: int, run_id: int, limit: int | None = None
) -> dict[str, Any] | None:
    """Everything about one neuron in one record, as the CLI's ``neuron`` command prints it:
    statistics with histograms, up to ``limit`` examples of each kind (exact activations), weight
    facts (None until ``autointerp weights`` ran), and the newest explanation of each kind and score
    of each method, failed ones included. None when the harvest ``run_id`` has no such neuron."""
    stats = store.neuron(run_id, layer, neuron)
    if stats is None:
        return None
    examples = []
    per_kind: dict[str, int] = {}
    for ex in store.examples(run_id, layer, neuron):
        per_kind[ex["kind"]] = per_kind.get(ex["kind"], 0) + 1
        if limit and per_kind[ex["kind"]] > limit:
            continue
        examples.append(example_fields(ex))
    keep = ("count", "mean", "variance", "max", "min", "frac_positive")
    return {
        **head(model, layer, neuron, run_id),
        "hook": f"blocks.{layer}.mlp.hook_post",
        "stats": {
            **{k: stats[k] for k in keep},
            "hist": stats["hist"],
            "hist_edges": HIST_EDGES,
            "ctx_max_hist": stats["ctx_max_hist"],
        },
        "examples": examples,
        "weights": store.weight_facts(model, layer, neuron),
        # {"explanations": {kind: row}, "scores": {method: row}}
        **store.explanation_summary(model, layer, neuron),
        "user_explanations": user_explanations(store, layer, neuron, run_id),
    }


def neuroscope_record(
    store: Any,
    model: str,
    layer: int,
    neuron: int,
    run_id: int,
    kinds: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    examples = []
    per_kind: dict[str, int] = {}
    for ex in store.examples(run_id, layer, neuron, kinds=kinds):
        per_kind[ex["kind"]] = per_kind.get(ex["kind"], 0) + 1
        if limit is not None and per_kind[ex["kind"]] > limit:
            continue
        examples.append(example_fields(ex, digits=4))
    return {
        **head(model, layer, neuron, run_id),
        "hook": f"blocks.{layer}.mlp.hook_post",
        "kinds": list(kinds or EXAMPLE_KINDS),
        "counts": per_kind,
        "limit": limit,
        "examples": examples,
        "note": "token 0 of every example is BOS and never counts in statistics",
    }


def n2g_record(store: Any, model: str, layer: int, neuron: int) -> dict[str, Any]:
    row = store.graph(model, layer, neuron)
    if row is None:
        return {
            **head(model, layer, neuron),
            "available": False,
            "message": (
                f"No N2G graph computed for this neuron; run `autointerp graph {model} --layers "
                f"{layer} --neurons {neuron}`."
            ),
        }
    return {**n2g_fields(model, layer, neuron, row), "graph": row["graph"]}


def n2g_fields(model: str, layer: int, neuron: int, row: dict[str, Any]) -> dict[str, Any]:
    """A stored graph's record without the graph itself (the byte fast path splices the stored
    JSON in)."""
    url = url_name(model)
    return {
        **head(model, layer, neuron),
        "available": True,
        "config_hash": row["config_hash"],
        "n_nodes": row["n_nodes"],
        "precision": row["precision"],
        "recall": row["recall"],
        "f1": row["f1"],
        "correlation": row["correlation"],
        "n_tokens": row["n_tokens"],
        "graphml_url": f"/api/{url}/n2g/{layer}/{neuron}/graphml",
        "svg_url": f"/img/{url}/n2g/{layer}/{neuron}.svg",
    }


def user_explanations(store: Any, layer: int, neuron: int, run_id: int) -> list[dict[str, Any]]:
    """The descriptions people scored and saved with ``autointerp score --save``, newest first:
    each text with its score (or the reason it has none) and the rule it was compiled into."""
    out = []
    for row in store.user_explanations(run_id, layer, neuron):
        item = {
            k: row.get(k)
            for k in (
                "text",
                "status",
                "score",
                "score_raw",
                "score_top",
                "score_random",
                "auprc",
                "n_tokens",
                "simulator_model",
                "simulator_mode",
                "error",
                "config_hash",
                "created",
            )
        }
        item["simulation"] = json.loads(row["simulation"]) if row.get("simulation") else None
        out.append(item)
    return out


def explanation_record(
    store: Any, model: str, layer: int, neuron: int, run_id: int
) -> dict[str, Any]:
    """The neuron's newest explanation of each kind and score of each method, the recorded
    failures, and the descriptions users scored (``user_explanations``, apart: they are
    hypotheses, not the pipeline's results)."""
    explanations: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    # newest first: the first ok row wins
    for row in store.neuron_explanations(run_id, layer, neuron):
        if row["kind"] == USER_KIND:
            continue
        if row["status"] == "ok" and row["kind"] not in explanations:
            explanations[row["kind"]] = {
                k: row.get(k)
                for k in (
                    "text",
                    "model",
                    "prompt_version",
                    "prompt_hash",
                    "config_hash",
                    "origin",
                    "created",
                )
            }
            if row.get("candidates"):
                # every candidate that competed, with its origin and validation score
                explanations[row["kind"]]["candidates"] = json.loads(row["candidates"])
        elif row["status"] != "ok":
            failures.append(
                {
                    "what": f"explanation:{row['kind']}",
                    "error": row.get("error"),
                    "created": row.get("created"),
                }
            )
    scores: dict[str, dict[str, Any]] = {}
    for row in store.neuron_scores(run_id, layer, neuron):
        if row["method"] == USER_KIND:
            continue
        if row["status"] == "ok" and row["method"] not in scores:
            scores[row["method"]] = {
                k: row.get(k)
                for k in (
                    "score",
                    "score_raw",
                    "score_top",
                    "score_random",
                    "auprc",
                    "r2",
                    "n_tokens",
                    "simulator_model",
                    "simulator_mode",
                    "config_hash",
                    "created",
                )
            }
            if row.get("simulation"):
                # the matching rule the explanation was compiled into (``rule`` simulator)
                scores[row["method"]]["simulation"] = json.loads(row["simulation"])
        elif row["status"] != "ok":
            failures.append(
                {
                    "what": f"score:{row['method']}",
                    "error": row.get("error"),
                    "created": row.get("created"),
                }
            )
    first = head(model, layer, neuron, run_id)
    users = user_explanations(store, layer, neuron, run_id)
    if not explanations and not scores:
        return {
            **first,
            "available": False,
            "explanations": {},
            "scores": {},
            "failures": failures,
            "user_explanations": users,
            "message": "No explanation computed for this neuron; run `autointerp explain`.",
        }
    return {
        **first,
        "available": True,
        "explanations": explanations,
        "scores": scores,
        "failures": failures,
        "user_explanations": users,
    }


def similar_record(
    store: Any, model: str, layer: int, neuron: int, limit: int = 10
) -> dict[str, Any]:
    first = head(model, layer, neuron)
    try:
        items = store.similar(model, layer, neuron, limit)
    except UserError as exc:
        return {**first, "available": False, "items": [], "message": str(exc)}
    url = url_name(model)
    items = [{**it, "url": f"/m/{url}/neuron/{it['layer']}/{it['neuron']}"} for it in items or []]
    if not items:
        message = "No similar neurons computed for this neuron."
        if store.similarity_run(model) is not None and store.graph(model, layer, neuron):
            message = f"No similar neuron above {store.similarity_min_score(model):g}."
        return {**first, "available": False, "items": [], "message": message}
    return {**first, "available": True, "items": items}


def weights_record(store: Any, model: str, layer: int, neuron: int) -> dict[str, Any]:
    first = head(model, layer, neuron)
    try:
        facts = store.weight_facts(model, layer, neuron)
    except UserError as exc:
        return {**first, "available": False, "facts": None, "message": str(exc)}
    if not facts:
        return {
            **first,
            "available": False,
            "facts": None,
            "message": "No weight facts computed for this neuron.",
        }
    return {**first, "available": True, "facts": facts}


def neuron_record(
    store: Any,
    model: str,
    service: str,
    layer: int,
    neuron: int,
    run_id: int,
    kinds: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The record of one service (:data:`SERVICES`) for a neuron whose harvest is ``run_id``;
    ``all`` nests every service's record under its name."""
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "stats": lambda: stats_record(store, model, layer, neuron, run_id),
        "neuroscope": lambda: neuroscope_record(store, model, layer, neuron, run_id, kinds, limit),
        "n2g": lambda: n2g_record(store, model, layer, neuron),
        "explanation": lambda: explanation_record(store, model, layer, neuron, run_id),
        "similar": lambda: similar_record(store, model, layer, neuron),
        "weights": lambda: weights_record(store, model, layer, neuron),
    }
    if service != "all":
        return makers[service]()
    out = {"model": model, "layer": layer, "neuron": neuron, "run_id": run_id}
    for name, make in makers.items():
        record = make()
        out[name] = {
            k: v for k, v in record.items() if k not in ("model", "layer", "neuron", "run_id")
        }
    return out
