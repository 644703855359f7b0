"""Build, score and store N2G graphs for whole layers, resumably (neurons already stored are
skipped)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tqdm import tqdm

from autointerp.errors import UserError
from autointerp.faults import kill_point
from autointerp.models import SubjectModel
from autointerp.n2g.build import (
    Example,
    GraphSubject,
    ModelLayerSubject,
    N2GConfig,
    build_graphs,
    evaluate,
)
from autointerp.n2g.graph import NeuronGraph
from autointerp.selection import select_neurons
from autointerp.store import Store


def _example(row: dict[str, Any]) -> Example:
    return Example(row["tokens"], row["str_tokens"], row["activations"])


def load_examples(
    store: Store, run_id: int, layer: int, neuron: int, split: str, kinds: tuple[str, ...]
) -> list[Example]:
    return [_example(r) for r in store.examples(run_id, layer, neuron, kinds=kinds, split=split)]


def held_out_metrics(
    store: Store,
    run_id: int,
    layer: int,
    neuron: int,
    graph: NeuronGraph,
    max_activation: float,
    cfg: N2GConfig,
) -> dict[str, Any]:
    """The graph's scores on the test split: top and random examples pooled (the headline numbers),
    and each kind alone (``f1_top``, ``correlation_random``, ...): pooled scores hide a graph that
    fires all over random text."""
    if max_activation <= 0:
        return {}
    top = load_examples(store, run_id, layer, neuron, "test", ("top",))
    random = load_examples(store, run_id, layer, neuron, "test", ("random",))
    pooled = evaluate(graph, top + random, max_activation, cfg.fire_threshold)
    keys = ("precision", "recall", "f1", "correlation", "n_tokens", "n_true_firing")
    out = {k: pooled[k] for k in keys}
    for kind, records in (("top", top), ("random", random)):
        alone = evaluate(graph, records, max_activation, cfg.fire_threshold)
        out[f"f1_{kind}"] = alone["f1"]
        out[f"correlation_{kind}"] = alone["correlation"]
    return out


@dataclass
class GraphSummary:
    layer: int
    built: int
    skipped: int
    seconds: float


def graph_layers(
    model: SubjectModel,
    store: Store,
    layers: list[int],
    neurons_spec: str | None,
    cfg: N2GConfig,
    progress: bool = True,
    chunk: int = 16,
    subject_for: Callable[[int], GraphSubject] | None = None,
) -> list[GraphSummary]:
    """Graphs for the given neurons of each layer, from the latest complete harvest of that layer.

    Neurons are processed ``chunk`` at a time (their forward passes batched together); each chunk's
    rows are written in one transaction (with their token-index rows), so an interrupted run loses
    at most one chunk and never leaves a partial graph; rerunning the same command skips the stored
    neurons.

    ``subject_for(layer)`` gives the ``feature_activation`` seam for features that are not MLP
    neurons (known-answer regex features compute it from the tokenizer); by default the model's
    layer is run.
    """
    cfg = replace(
        cfg, dtype=model.dtype_name
    )  # the graphs of a half-precision model are their own result
    config_hash = cfg.config_hash()
    summaries = []
    plan = []
    for layer in layers:
        run = store.latest_complete_run(model.name, layer)
        if run is None:
            raise UserError(
                f"Layer {layer} of {model.name} has not been harvested yet; run `autointerp harvest"
                f" --model {model.name} --layers {layer}` first."
            )
        plan.append(
            (layer, run, select_neurons(store, model.name, layer, neurons_spec, model.d_mlp))
        )
    n2g_run = store.find_run(model.name, "n2g", config_hash, (0, 1))
    n2g_run_id = (
        n2g_run["id"]
        if n2g_run
        else store.create_run(model.name, "n2g", cfg.identity(), config_hash, (0, 1), {})
    )
    for layer, run, neurons in plan:
        done = store.graph_done(run["id"], layer, config_hash)
        todo = [n for n in neurons if n not in done]
        started = time.time()
        subject = subject_for(layer) if subject_for is not None else ModelLayerSubject(model, layer)
        bar = tqdm(
            total=len(todo),
            unit="neuron",
            disable=not progress,
            desc=f"n2g {model.name} L{layer}",
            dynamic_ncols=True,
        )
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            t0 = time.time()
            maxima = {n: float(store.neuron(run["id"], layer, n)["max"]) for n in part}
            train = {n: load_examples(store, run["id"], layer, n, "train", ("top",)) for n in part}
            extra = {
                n: (
                    load_examples(store, run["id"], layer, n, "train", cfg.extra_kinds)
                    if cfg.extra_kinds
                    else []
                )
                for n in part
            }
            graphs = build_graphs(subject, train, maxima, cfg, extra)
            per_neuron = (time.time() - t0) / len(part)
            rows = []
            for n in part:
                data = graphs[n].to_json()
                rows.append(
                    {
                        "run_id": run["id"],
                        "layer": layer,
                        "neuron": n,
                        "config_hash": config_hash,
                        "graph": _dumps(data),
                        "n_nodes": len(data["nodes"]),
                        **held_out_metrics(store, run["id"], layer, n, graphs[n], maxima[n], cfg),
                        "n2g_run_id": n2g_run_id,
                        "seconds": per_neuron,
                        "created": time.time(),
                    }
                )
            store.save_graphs(
                rows, model=model.name
            )  # graphs + their token-index rows: one transaction
            kill_point("graph")
            bar.update(len(part))
        bar.close()
        summaries.append(
            GraphSummary(layer, len(todo), len(neurons) - len(todo), time.time() - started)
        )
    store.finish_stage(
        n2g_run_id
    )  # the requested neurons are all stored; a later call may add more
    return summaries


def _dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, separators=(",", ":"))
