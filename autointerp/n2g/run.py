"""Build, score and store N2G graphs for whole layers, resumably (neurons already stored are
skipped).

The work is cut into chunks of neurons of one layer (:func:`plan_graphs`, :func:`graph_chunks`).
A chunk is read from the database as plain data (:func:`load_chunk`), built and scored by
:func:`build_chunk`, which needs the subject model but never the database, and its rows are written
in one transaction. :func:`graph_layers` does all three in this process; the Ray driver
(:mod:`autointerp.n2g.ray`) runs :func:`build_chunk` on its workers and writes on the driver, so
both build the same graphs from the same chunks with the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tqdm import tqdm

from autointerp.faults import kill_point
from autointerp.models import SubjectModel
from autointerp.n2g.build import Example, N2GConfig, build_graphs, evaluate
from autointerp.n2g.graph import NeuronGraph
from autointerp.n2g.readouts import GraphSubject, ModelLayerSubject
from autointerp.selection import select_neurons
from autointerp.store import Store

CHUNK = 16
"""Neurons per chunk: their forward passes are batched together, and a chunk is the unit that is
written (and lost by an interruption) at once."""


def _example(row: dict[str, Any]) -> Example:
    return Example(row["tokens"], row["str_tokens"], row["activations"])


def load_examples(
    store: Store, run_id: int, layer: int, neuron: int, split: str, kinds: tuple[str, ...]
) -> list[Example]:
    return [_example(r) for r in store.examples(run_id, layer, neuron, kinds=kinds, split=split)]


def held_out_metrics(
    graph: NeuronGraph,
    max_activation: float,
    top: list[Example],
    random: list[Example],
    cfg: N2GConfig,
) -> dict[str, Any]:
    """The graph's scores on the test split (``top`` and ``random``, the neuron's test top and
    random examples): both pooled (the headline numbers), and each kind alone (``f1_top``,
    ``correlation_random``, ...): pooled scores hide a graph that fires all over random text."""
    if max_activation <= 0:
        return {}
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


@dataclass(frozen=True)
class LayerPlan:
    """The graphs one layer needs: from harvest run ``run_id``, the chosen ``neurons`` and those of
    them not stored yet (``todo``)."""

    layer: int
    run_id: int
    neurons: list[int]
    todo: list[int]


@dataclass(frozen=True)
class GraphPlan:
    """What a graph run will do: the config (with the model's dtype), its hash, the n2g run the
    graphs are recorded under, and each layer's plan."""

    cfg: N2GConfig
    config_hash: str
    n2g_run_id: int
    layers: list[LayerPlan]


@dataclass(frozen=True)
class GraphChunk:
    """One unit of work: up to :data:`CHUNK` neurons of one layer, from harvest run ``run_id``."""

    layer: int
    run_id: int
    neurons: tuple[int, ...]


@dataclass
class ChunkInputs:
    """Everything a chunk's graphs are built and scored from, read from the database as plain
    data: a worker on another machine needs no database."""

    layer: int
    neurons: list[int]
    maxima: dict[int, float]
    train: dict[int, list[Example]]
    extra: dict[int, list[Example]]
    test_top: dict[int, list[Example]]
    test_random: dict[int, list[Example]]


def plan_graphs(
    model: SubjectModel,
    store: Store,
    layers: list[int],
    neurons_spec: str | None,
    cfg: N2GConfig,
) -> GraphPlan:
    """Check that every layer was harvested (one sentence if not), choose the neurons, find those
    already stored, and create (or find) the n2g run."""
    cfg = replace(
        cfg, dtype=model.dtype_name
    )  # the graphs of a half-precision model are their own result
    config_hash = cfg.config_hash()
    chosen = []
    for layer in layers:
        run = store.harvest_run(model.name, layer)
        chosen.append(
            (layer, run, select_neurons(store, model.name, layer, neurons_spec, model.d_mlp))
        )
    n2g_run = store.find_run(model.name, "n2g", config_hash, (0, 1))
    n2g_run_id = (
        n2g_run["id"]
        if n2g_run
        else store.create_run(model.name, "n2g", cfg.identity(), config_hash, (0, 1), {})
    )
    plans = []
    for layer, run, neurons in chosen:
        done = store.graph_done(run["id"], layer, config_hash)
        todo = [n for n in neurons if n not in done]
        plans.append(LayerPlan(layer, int(run["id"]), neurons, todo))
    return GraphPlan(cfg, config_hash, int(n2g_run_id), plans)


def graph_chunks(layers: list[LayerPlan], chunk: int = CHUNK) -> list[GraphChunk]:
    """The neurons still to do, in ``chunk``-sized pieces of one layer each, in order."""
    return [
        GraphChunk(p.layer, p.run_id, tuple(p.todo[start : start + chunk]))
        for p in layers
        for start in range(0, len(p.todo), chunk)
    ]


def load_chunk(store: Store, chunk: GraphChunk, cfg: N2GConfig) -> ChunkInputs:
    """The chunk's maxima and its neurons' training and test examples."""
    run_id, layer, part = chunk.run_id, chunk.layer, list(chunk.neurons)

    def examples(split: str, kinds: tuple[str, ...]) -> dict[int, list[Example]]:
        return {n: load_examples(store, run_id, layer, n, split, kinds) for n in part}

    row = {n: store.neuron(run_id, layer, n) for n in part}
    return ChunkInputs(
        layer=layer,
        neurons=part,
        maxima={n: float(row[n]["max"]) for n in part},  # type: ignore[index]
        train=examples("train", ("top",)),
        extra=examples("train", cfg.extra_kinds) if cfg.extra_kinds else {n: [] for n in part},
        test_top=examples("test", ("top",)),
        test_random=examples("test", ("random",)),
    )


def build_chunk(subject: GraphSubject, inputs: ChunkInputs, cfg: N2GConfig) -> list[dict[str, Any]]:
    """The graphs of one chunk and their held-out scores, as graph rows without the database's
    bookkeeping (run ids, config hash, creation time: :func:`graph_rows` adds them)."""
    t0 = time.time()
    graphs = build_graphs(subject, inputs.train, inputs.maxima, cfg, inputs.extra)
    per_neuron = (time.time() - t0) / len(inputs.neurons)
    rows = []
    for n in inputs.neurons:
        data = graphs[n].to_json()
        rows.append(
            {
                "layer": inputs.layer,
                "neuron": n,
                "graph": _dumps(data),
                "n_nodes": len(data["nodes"]),
                **held_out_metrics(
                    graphs[n], inputs.maxima[n], inputs.test_top[n], inputs.test_random[n], cfg
                ),
                "seconds": per_neuron,
            }
        )
    return rows


def graph_rows(
    plan: GraphPlan, chunk: GraphChunk, built: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """:func:`build_chunk`'s rows as the database stores them."""
    return [
        {
            "run_id": chunk.run_id,
            "layer": row["layer"],
            "neuron": row["neuron"],
            "config_hash": plan.config_hash,
            **{k: v for k, v in row.items() if k not in ("layer", "neuron")},
            "n2g_run_id": plan.n2g_run_id,
            "created": time.time(),
        }
        for row in built
    ]


def graph_layers(
    model: SubjectModel,
    store: Store,
    layers: list[int],
    neurons_spec: str | None,
    cfg: N2GConfig,
    progress: bool = True,
    chunk: int = CHUNK,
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
    plan = plan_graphs(model, store, layers, neurons_spec, cfg)
    summaries = []
    for layer_plan in plan.layers:
        layer = layer_plan.layer
        started = time.time()
        subject = subject_for(layer) if subject_for is not None else ModelLayerSubject(model, layer)
        bar = tqdm(
            total=len(layer_plan.todo),
            unit="neuron",
            disable=not progress,
            desc=f"n2g {model.name} L{layer}",
            dynamic_ncols=True,
        )
        for part in graph_chunks([layer_plan], chunk):
            inputs = load_chunk(store, part, plan.cfg)
            rows = graph_rows(plan, part, build_chunk(subject, inputs, plan.cfg))
            store.save_graphs(
                rows, model=model.name
            )  # graphs + their token-index rows: one transaction
            kill_point("graph")
            bar.update(len(part.neurons))
        bar.close()
        summaries.append(
            GraphSummary(
                layer,
                len(layer_plan.todo),
                len(layer_plan.neurons) - len(layer_plan.todo),
                time.time() - started,
            )
        )
    store.finish_stage(
        plan.n2g_run_id
    )  # the requested neurons are all stored; a later call may add more
    return summaries


def _dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, separators=(",", ":"))
