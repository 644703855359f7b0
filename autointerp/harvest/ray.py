"""The harvest as shard tasks on a Ray cluster (``--executor ray``), merged exactly.

A harvest is already cut into exact, mergeable shards (``--shard i/n``, every accumulator a
mergeable reduction), so many workers need no new maths, only the scheduler of
:mod:`autointerp.executors`.

* **Tasks.** Shard ``i/n`` of a harvest is one task (:func:`_harvest_shard`). It runs the ordinary
  in-process harvest of that shard into a scratch SQLite file private to the worker (never the
  result database), then returns the shard's final accumulator states and the contexts and
  documents its examples point at: plain bytes and rows.
* **Only the driver writes the result database.** Each finished task is committed as a complete
  shard run in one transaction, as it arrives (:func:`_commit_shard`). When every shard is there,
  the driver merges them with :func:`autointerp.harvest.merging.merge` (the same exact merge
  ``autointerp merge`` uses, so the result equals an in-process harvest row for row) and removes the
  shard runs.
* **Resumable by task.** A killed driver reruns the same command: the shards already committed are
  not run again. A worker that dies mid-task (SIGKILL, out of memory, a lost node) is Ray's to retry
  (``max_retries``); shards are deterministic, so the retry's result is the same.
* **The driver never loads the subject model.** What a harvest needs from it before the shards can
  be cut (the layers ``auto`` means, the batch size that fits the device, the checks of the config
  against the model and the corpus) is worked out by a planning task on every worker slot at once
  (:func:`_plan_harvest`): each worker loads the model it will keep for its shards, the driver takes
  the first answer. Loading it in the driver too cost a quarter of Ray's fixed overhead on a short
  harvest (10 of ~45 s) and the memory of one more copy of the model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

from tqdm import tqdm

from autointerp.executors import (
    Executor,
    ModelRef,
    cluster_slots,
    run_tasks,
    start_ray,
    task_options,
    worker_device,
    worker_model,
)
from autointerp.faults import kill_point
from autointerp.harvest.config import HarvestConfig
from autointerp.harvest.merging import merge
from autointerp.harvest.run import HarvestResult, harvest, plan_harvest
from autointerp.harvest.state import LayerState
from autointerp.ranges import resolve_layers
from autointerp.store import Store


class HarvestPlan(TypedDict):
    """A planning task's answer: the config resolved against the model (less its shard) and the
    model's facts."""

    config: dict[str, Any]
    model_info: dict[str, Any]


class ShardResult(TypedDict):
    """A shard task's answer: everything the driver needs to commit the shard as a complete shard
    run and merge it (plain data, so Ray moves it as is)."""

    shard: list[int]
    states: dict[int, bytes]
    config: dict[str, Any]
    corpus: dict[str, Any]
    config_hash: str
    model_info: dict[str, Any] | None
    contexts: list[dict[str, Any]]
    documents: list[dict[str, Any]]
    contexts_done: int
    tokens_done: int


def _harvest_shard(
    model_name: str,
    device: str,
    dtype: str,
    config: dict[str, Any],
    shard: tuple[int, int],
    kill_marker: str | None,
) -> ShardResult:
    """One task (runs in a Ray worker): the in-process harvest of one shard into a scratch database;
    returns what the driver needs to commit and merge the shard."""
    # tests: die once, mid-task, as an OOM kill would
    if kill_marker and not os.path.exists(kill_marker):
        Path(kill_marker).touch()
        config = {**config, "checkpoint_seconds": 0.0}
        os.environ["AUTOINTERP_KILL_AFTER_CHECKPOINTS"] = "1"
    model = worker_model(model_name, device, dtype)  # a worker running two shards loads it once
    cfg = HarvestConfig(**{**config, "shard": tuple(shard)})
    with tempfile.TemporaryDirectory(prefix="autointerp-shard-") as scratch:
        # the driver merges final states: the shard's own example rows would be written for nothing
        result = harvest(
            model,
            Path(scratch) / "shard.db",
            cfg,
            progress=False,
            log=lambda m: None,
            write_examples=False,
        )
        store = Store(Path(scratch) / "shard.db")
        states = store.final_states(result.run_id)
        needed = set().union(*(LayerState.from_bytes(b).context_ids() for b in states.values()))
        contexts = store.context_rows(result.run_id, needed)
        doc_ids = {i for r in contexts.values() for i in _doc_indices(r)}
        documents = store.document_rows(result.run_id, doc_ids)
        run = store.runs(model.name)[-1]
        out: ShardResult = {
            "shard": list(shard),
            "states": states,
            "config": run["config"],
            "corpus": run["corpus"],
            "config_hash": run["config_hash"],
            "model_info": store.model_info(model.name),
            "contexts": _strip(contexts),
            "documents": _strip(documents),
            "contexts_done": result.contexts,
            "tokens_done": result.tokens,
        }
        store.db.close()
    return out


def _plan_harvest(
    model_name: str,
    device: str,
    dtype: str,
    config: dict[str, Any],
    auto_layers: bool,
    fit_batch: bool,
) -> HarvestPlan:
    """A planning task (runs in a Ray worker, which keeps the model for its shards): the config
    resolved against the model and the corpus exactly as the in-process harvest resolves it, and
    the model's facts. A user mistake raises :class:`UserError` here, which the driver re-raises."""
    model = worker_model(model_name, device, dtype)
    cfg = HarvestConfig(**config)
    if auto_layers:
        cfg.layers = resolve_layers("auto", model.n_layers)
    if fit_batch:  # the CPU default, or what the worker's free device memory holds
        cfg.batch_size = model.suggest_batch_size(cfg.ctx_len, cfg.layers or range(model.n_layers))
    resolved, _docs = plan_harvest(model, cfg)
    plain = {k: v for k, v in asdict(resolved).items() if k != "shard"}
    return {"config": plain, "model_info": model.info()}


def _doc_indices(context_row: dict[str, Any]) -> list[int]:
    return [int(i) for i in json.loads(context_row["doc_index"]) if int(i) >= 0]


def _strip(rows: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "run_id"} for r in rows.values()]


def ray_harvest(
    model: ModelRef,
    store: Store | str | os.PathLike[str],
    config: HarvestConfig,
    executor: Executor,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
    auto_layers: bool = False,
    fit_batch: bool = False,
) -> HarvestResult:
    """Harvest ``config`` as ``workers`` shard tasks on a Ray cluster and merge them exactly into
    ``store``.

    The driver does not load the model: planning tasks resolve ``config`` against it on the workers
    (``auto_layers``: ``--layers auto``; ``fit_batch``: no ``--batch-size`` given), and the workers
    keep it for their shards."""
    started = time.time()
    ray = start_ray(executor, workers)
    n = workers or cluster_slots(ray, model)
    if n < 2:
        # one shard would be the in-process harvest with extra steps; two keep the merge path honest
        n = 2
    planned = _plan_on_workers(ray, model, config, n, auto_layers, fit_batch)
    cfg = HarvestConfig(**planned["config"])
    if not isinstance(store, Store):
        store = Store(store)
    config_hash = cfg.config_hash()
    done = store.find_run(model.name, "harvest", config_hash, (0, 1))
    if done is not None and done["status"] == "complete":
        log(f"Harvest run {done['id']} with this config is already complete; nothing to do.")
        return HarvestResult(
            done["id"], "already complete", done["contexts_done"], done["tokens_done"], 0.0
        )
    store.upsert_model(planned["model_info"])
    committed = {run["shard_index"] for run in _shard_runs(store, model.name, config_hash, n)}
    if committed:
        log(f"Resuming: {len(committed)} of {n} shards are already in {store.path}.")
    _run_shards(ray, store, model, cfg, n, committed, progress)
    shard_runs = [
        run["id"] for run in _shard_runs(store, model.name, config_hash, n, complete=False)
    ]
    (run_id,) = merge(store, [store], log=log, only=(model.name, config_hash, n))
    store.delete_runs(shard_runs)
    run = next(r for r in store.runs(model.name) if r["id"] == run_id)
    return HarvestResult(
        run_id, "complete", run["contexts_done"], run["tokens_done"], time.time() - started
    )


def _plan_on_workers(
    ray: Any,
    model: ModelRef,
    config: HarvestConfig,
    n: int,
    auto_layers: bool,
    fit_batch: bool,
) -> HarvestPlan:
    """The config resolved by a planning task on each of ``n`` worker slots at once, so every worker
    loads the model it keeps for its shards; the answers are the same (a bad input is one sentence,
    as in-process), and the first is taken."""
    plan = ray.remote(_plan_harvest).options(**task_options(model))
    device = worker_device(model)
    asked = {k: v for k, v in asdict(config).items() if k != "shard"}
    answers: list[HarvestPlan] = []
    run_tasks(
        ray,
        plan,
        (
            (i, (model.name, device, model.dtype_name, asked, auto_layers, fit_batch))
            for i in range(n)
        ),
        lambda _i, answer: answers.append(answer),
        "harvest planning",
    )
    return answers[0]


def _shard_runs(
    store: Store, model_name: str, config_hash: str, count: int, complete: bool = True
) -> list[dict[str, Any]]:
    """The harvest runs of ``store`` that are shards of ``count`` of this config (only the complete
    ones if ``complete``)."""
    return [
        run
        for run in store.runs(model_name)
        if run["stage"] == "harvest"
        and run["config_hash"] == config_hash
        and run["shard_count"] == count
        and (not complete or run["status"] == "complete")
    ]


def _run_shards(
    ray: Any,
    store: Store,
    model: ModelRef,
    cfg: HarvestConfig,
    n: int,
    committed: set[int],
    progress: bool,
) -> None:
    """Run every shard of ``n`` not in ``committed`` as a task and commit each as it finishes."""
    task = ray.remote(_harvest_shard).options(**task_options(model))
    device = worker_device(model)
    plain = {k: v for k, v in asdict(cfg).items() if k != "shard"}
    kill_marker = os.environ.get("AUTOINTERP_KILL_RAY_WORKER_ONCE")
    todo = [i for i in range(n) if i not in committed]
    jobs = ((i, (model.name, device, model.dtype_name, plain, (i, n), kill_marker)) for i in todo)
    bar = tqdm(
        total=n,
        initial=len(committed),
        unit="shard",
        disable=not progress,
        desc=f"harvest {model.name} on Ray",
        dynamic_ncols=True,
    )

    def done(_index: int, shard: ShardResult) -> None:
        _commit_shard(store, model.name, shard, n)
        kill_point(
            "ray-harvest"
        )  # crash tests: SIGKILL the driver right after a shard's transaction
        bar.update(1)

    try:
        run_tasks(ray, task, jobs, done, "harvest")
    finally:
        bar.close()


def _commit_shard(store: Store, model_name: str, shard: ShardResult, count: int) -> None:
    """A finished task's shard as a complete shard run of the result database (the driver's only
    write)."""
    index = int(shard["shard"][0])
    if shard["model_info"]:
        store.upsert_model(shard["model_info"])
    existing = store.find_run(model_name, "harvest", shard["config_hash"], (index, count))
    run_id = (
        existing["id"]
        if existing
        else store.create_run(
            model_name,
            "harvest",
            shard["config"],
            shard["config_hash"],
            (index, count),
            shard["corpus"],
        )
    )
    store.finish_run(
        run_id,
        documents=shard["documents"],
        contexts=shard["contexts"],
        neurons=[],
        examples=[],
        states=shard["states"],
        contexts_done=shard["contexts_done"],
        tokens_done=shard["tokens_done"],
    )
