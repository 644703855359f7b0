"""The explain stage's Ray runner: neurons as Ray tasks of a few at a time, the results written by
the driver as they come back (``autointerp explain --executor ray``, and the explain step of
``eval`` and ``calibrate``).

A task is ``EXPLAIN_CHUNK`` neurons. The driver makes each neuron's job from the database as for the
in-process run (:func:`autointerp.explain.run.explain_layers`) and sends the jobs as plain data; the
worker makes its own LLM client for the same endpoints, runs the in-process code on them
(:func:`autointerp.explain.run.run_in_threads`, ``--concurrency`` threads) and returns the rows.
The driver writes a task's neurons in one transaction. The LLM response cache is read by the worker
when the result file is on its machine (read-only) and written by the driver: a worker's new
responses come back with its rows. Workers talk to the LLM servers directly, so the ``--base-url``
endpoints must be reachable from every worker (the embedded local server listens on 127.0.0.1: fine
for ``ray:local``).

It lives beside the stage, not with the harvest's and the graphs' Ray drivers in
:mod:`autointerp.executors`, because it is a :data:`autointerp.explain.run.JobRunner` like the
threads: the layer runner does not know which one it is given. The cluster plumbing (starting Ray,
task options, the window of tasks in flight) is :mod:`autointerp.executors`'.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TypedDict

from autointerp.executors import Executor, cluster_slots, run_tasks, start_ray, task_options
from autointerp.explain.config import ExplainConfig
from autointerp.explain.job import NeuronJob
from autointerp.explain.neuron import NeuronResult, Prices
from autointerp.explain.prompts import Templates
from autointerp.explain.run import Commit, JobRunner, run_in_threads
from autointerp.explain.simulate import Simulator
from autointerp.faults import kill_worker_once
from autointerp.llm.cache import CacheEntry, DeferredCache
from autointerp.llm.client import LLMClient, LLMSettings

#: neurons per explain task: small enough that a lost worker costs little LLM time and the progress
#: bar moves, large enough that Ray's per-task overhead (milliseconds) is nothing beside the LLM's
EXPLAIN_CHUNK = 4


class ChunkOutput(TypedDict):
    """What one task sends back: its neurons' rows, the LLM responses it got that the cache did not
    have, and its ledger per endpoint."""

    results: list[NeuronResult]
    cache: list[CacheEntry]
    endpoints: list[dict[str, Any]]


def explain_chunk(
    settings: LLMSettings,
    urls: list[str],
    cache_path: str,
    cfg: ExplainConfig,
    mode: str,
    templates: Templates,
    prices: Prices | None,
    jobs: list[NeuronJob],
    kill_marker: str | None,
) -> ChunkOutput:
    """One task (runs in a Ray worker): explain and score a few neurons exactly as the in-process
    run does, with a client of the worker's own; returns the results, the new LLM responses and the
    worker's ledger per endpoint."""
    cache = DeferredCache(cache_path)
    try:
        client = LLMClient(settings, cache, urls)
        sim = Simulator(client, cfg.simulator_model, templates, mode, cfg.sim_logprobs)
        results: list[NeuronResult] = []

        def keep(finished: list[NeuronResult]) -> None:
            results.extend(finished)
            kill_worker_once(kill_marker)  # tests: mid-task, after the first neuron's LLM calls

        run_in_threads(iter(jobs), client, sim, cfg, templates, prices, keep)
        return {
            "results": results,
            "cache": cache.new_entries(),
            "endpoints": client.endpoint_usage(),
        }
    finally:
        cache.close()


def explain_runner(executor: Executor, workers: int | None = None) -> JobRunner | None:
    """What runs the explain stage's neurons (``runner`` of
    :func:`autointerp.explain.run.explain_layers`): None (the default, threads in this process) for
    ``local``, Ray tasks otherwise."""
    if executor.kind != "ray":
        return None

    def run(
        jobs: Iterator[NeuronJob],
        client: LLMClient,
        sim: Simulator,
        cfg: ExplainConfig,
        templates: Templates,
        prices: Prices | None,
        commit: Commit,
    ) -> None:
        ray_explain(jobs, client, sim.mode, cfg, templates, prices, executor, workers, commit)

    return run


def ray_explain(
    jobs: Iterator[NeuronJob],
    client: LLMClient,
    mode: str,
    cfg: ExplainConfig,
    templates: Templates,
    prices: Prices | None,
    executor: Executor,
    workers: int | None,
    commit: Commit,
) -> None:
    """Explain ``jobs`` (read lazily) as Ray tasks of ``EXPLAIN_CHUNK`` neurons, at most
    ``workers`` in flight (default: twice the cluster's CPUs), and ``commit`` each task's results on
    the driver as it finishes. ``client`` is the driver's: its endpoints and settings are the
    workers', its cache receives their new responses and its ledger their tokens; ``mode`` is the
    simulator mode the driver settled on (``auto`` probed once)."""
    ray = start_ray(executor, workers)
    window = workers or 2 * cluster_slots(ray, None)
    # an LLM task is one CPU (prompt building, rule matching); it is retried when its worker dies
    task = ray.remote(explain_chunk).options(**task_options(None))
    urls = [e.url for e in client.endpoints]
    cache_path = getattr(client.cache, "path", "") or ""
    kill_marker = os.environ.get("AUTOINTERP_KILL_RAY_WORKER_ONCE")

    def chunks() -> Iterator[tuple[int, tuple[Any, ...]]]:
        index = 0
        while True:
            chunk = [job for _, job in zip(range(EXPLAIN_CHUNK), jobs, strict=False)]
            if not chunk:
                return
            yield (
                index,
                (
                    client.settings,
                    urls,
                    cache_path,
                    cfg,
                    mode,
                    templates,
                    prices,
                    chunk,
                    kill_marker,
                ),
            )
            index += 1

    def done(_index: int, out: ChunkOutput) -> None:
        if client.cache is not None:  # before the results: the cache has its own connection
            client.cache.save_entries(out["cache"])
        client.absorb(out["endpoints"])
        commit(out["results"])

    run_tasks(ray, task, chunks(), done, "explain", window)
