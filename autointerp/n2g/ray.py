"""N2G graphs (``autointerp graph --executor ray``) as Ray tasks, one per chunk of neurons.

The neurons are already built in independent chunks of one layer (:mod:`autointerp.n2g.run`), so a
chunk is one task: the driver reads the chunk's examples from the database and sends them as plain
data, the worker builds and scores the graphs with the very function the in-process run uses
(:func:`autointerp.n2g.run.build_chunk`) and returns plain rows, and the driver stores each chunk in
one transaction with the store call the in-process run makes (graphs and their token-index rows
together). The chunks are the in-process run's chunks, so the graphs are the same; a killed driver
resumes by chunk (the neurons stored are skipped, as in-process); a lost worker's chunk is retried
by Ray. A worker keeps the model it loaded for its next chunk. The driver holds only a few chunks'
examples at a time (``window``), not a whole model's. The scheduling itself is
:mod:`autointerp.executors`'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

from tqdm import tqdm

from autointerp.executors import (
    Executor,
    cluster_slots,
    run_tasks,
    start_ray,
    task_options,
    worker_device,
    worker_model,
)
from autointerp.faults import kill_point, kill_worker_once
from autointerp.models import SubjectModel
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.readouts import ModelLayerSubject
from autointerp.n2g.run import (
    ChunkInputs,
    GraphChunk,
    GraphSummary,
    build_chunk,
    graph_chunks,
    graph_rows,
    load_chunk,
    plan_graphs,
)
from autointerp.store import Store


class ChunkResult(TypedDict):
    """A chunk task's answer: the chunk's graph rows (as :func:`build_chunk` makes them) and the
    worker's seconds on them."""

    rows: list[dict[str, Any]]
    seconds: float


def _graph_chunk(
    model_name: str,
    device: str,
    dtype: str,
    cfg: N2GConfig,
    inputs: ChunkInputs,
    kill_marker: str | None,
) -> ChunkResult:
    """One task (runs in a Ray worker): the graphs of one chunk, built and scored exactly as the
    in-process run does, as plain rows."""
    model = worker_model(model_name, device, dtype)
    started = time.time()
    rows = build_chunk(ModelLayerSubject(model, inputs.layer), inputs, cfg)
    kill_worker_once(
        kill_marker
    )  # tests: the work is done but never returned, as when a node is lost
    return {"rows": rows, "seconds": time.time() - started}


def ray_graph(
    model: SubjectModel,
    store: Store,
    layers: list[int],
    neurons_spec: str | None,
    cfg: N2GConfig,
    executor: Executor,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> list[GraphSummary]:
    """N2G graphs for the given neurons of each layer, one Ray task per chunk, stored in ``store``
    as :func:`autointerp.n2g.run.graph_layers` stores them.

    At most ``workers`` tasks are in flight (default: twice what the cluster runs at once, so no
    worker waits for the driver). Returns a :class:`GraphSummary` per layer; its ``seconds`` are the
    workers' time on the layer's chunks (model loading aside), added up."""
    plan = plan_graphs(model, store, layers, neurons_spec, cfg)  # refuses bad input before Ray
    chunks = graph_chunks(plan.layers)
    seconds = {p.layer: 0.0 for p in plan.layers}
    if chunks:
        total = sum(len(p.neurons) for p in plan.layers)
        stored = total - sum(len(p.todo) for p in plan.layers)
        if stored:
            log(f"Resuming: {stored} of {total} neurons already have graphs in {store.path}.")
        ray = start_ray(executor, workers)
        window = workers or 2 * cluster_slots(ray, model)
        task = ray.remote(_graph_chunk).options(**task_options(model))
        device = worker_device(model)
        kill_marker = os.environ.get("AUTOINTERP_KILL_RAY_WORKER_ONCE")
        jobs: Iterator[tuple[GraphChunk, tuple[Any, ...]]] = (
            (
                chunk,
                (
                    model.name,
                    device,
                    model.dtype_name,
                    plan.cfg,
                    load_chunk(store, chunk, plan.cfg),
                    kill_marker,
                ),
            )
            for chunk in chunks
        )
        bar = tqdm(
            total=total,
            initial=stored,
            unit="neuron",
            disable=not progress,
            desc=f"n2g {model.name} on Ray",
            dynamic_ncols=True,
        )

        def done(chunk: GraphChunk, result: ChunkResult) -> None:
            rows = graph_rows(plan, chunk, result["rows"])
            store.save_graphs(rows, model=model.name)  # graphs + token-index rows: one transaction
            kill_point("graph")  # crash tests: SIGKILL the driver right after a chunk's transaction
            seconds[chunk.layer] += result["seconds"]
            bar.update(len(chunk.neurons))

        try:
            run_tasks(ray, task, jobs, done, "graph", window)
        finally:
            bar.close()
    store.finish_stage(plan.n2g_run_id)  # the requested neurons are all stored
    return [
        GraphSummary(p.layer, len(p.todo), len(p.neurons) - len(p.todo), seconds[p.layer])
        for p in plan.layers
    ]
