"""Where the work runs: in this process (``local``), or as tasks on a Ray cluster (``ray``,
``ray:local``, ``ray:ADDRESS``).

Why Ray and this shape: a harvest is already cut into exact, mergeable shards (``--shard i/n``,
every accumulator a mergeable reduction), so many workers need no new maths, only a scheduler that
places tasks on the cores and GPUs of one or many machines, retries a task whose worker died, and
moves the results back. Ray does all three; we do not write our own.

* **Tasks.** Shard ``i/n`` of a harvest is one task. It runs the ordinary in-process harvest of that
  shard into a scratch SQLite file private to the worker (never the result database), then returns
  the shard's final accumulator states and the contexts and documents its examples point at: plain
  bytes and rows.
* **Only the driver writes the result database.** Each finished task is committed as a complete
  shard run in one transaction, as it arrives. When every shard is there, the driver merges them
  with :func:`harvest.merge` (the same exact merge ``autointerp merge`` uses, so the result equals
  an in-process harvest row for row) and removes the shard runs.
* **Resumable by task.** A killed driver reruns the same command: the shards already committed are
  not run again. A worker that dies mid-task (SIGKILL, out of memory, a lost node) is Ray's to retry
  (``max_retries``); shards are deterministic, so the retry's result is the same.
* **Resources.** Each task asks for one CPU, and one GPU when the subject model runs on CUDA, so Ray
  packs as many at once as the cluster holds. Workers load the subject model themselves, from their
  own ``autointerp setup`` cache (``$AUTOINTERP_CACHE``).
* **The driver never loads the subject model.** What a harvest needs from it before the shards can
  be cut (the layers ``auto`` means, the batch size that fits the device, the checks of the config
  against the model and the corpus) is worked out by a planning task on every worker slot at once
  (:func:`_plan_harvest`): each worker loads the model it will keep for its shards, the driver takes
  the first answer. Loading it in the driver too cost a quarter of Ray's fixed overhead on a short
  harvest (10 of ~45 s) and the memory of one more copy of the model.

N2G graphs (``autointerp graph``) follow the same rules with a different task. The neurons are
already built in independent chunks of one layer (:mod:`autointerp.n2g.run`), so a chunk is one
task: the driver reads the chunk's examples from the database and sends them as plain data, the
worker builds and scores the graphs with the very function the in-process run uses
(:func:`n2g.run.build_chunk`) and returns plain rows, and the driver stores each chunk in one
transaction with the store call the in-process run makes (graphs and their token-index rows
together). The chunks are the in-process run's chunks, so the graphs are the same; a killed driver
resumes by chunk (the neurons stored are skipped, as in-process); a lost worker's chunk is retried
by Ray. A worker keeps the model it loaded for its next chunk. The driver holds only a few chunks'
examples at a time (``window``), not a whole model's.

Explanations (``autointerp explain``, and the explain stage of ``eval`` and ``calibrate``) follow
them too, with the tools here; their runner lives beside the stage, in
:mod:`autointerp.explain.ray`.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from autointerp.errors import UserError
from autointerp.faults import kill_point


@dataclass(frozen=True)
class Executor:
    """How to run a stage's work."""

    kind: str
    """``local`` (this process) or ``ray``."""
    address: str | None = None
    """Ray only: ``local`` starts a cluster on this machine, ``auto`` joins ``$RAY_ADDRESS`` or
    starts one, any other value is the address of a running cluster (``10.0.0.5:6379``,
    ``ray://head:10001``)."""

    @classmethod
    def parse(cls, spec: str | None) -> Executor:
        text = (spec or "local").strip()
        if text == "local":
            return cls("local")
        kind, _, address = text.partition(":")
        if kind != "ray":
            raise UserError(
                f"--executor must be local, ray, ray:local or ray:ADDRESS, not {text!r}."
            )
        return cls("ray", address or "auto")


def start_ray(executor: Executor, workers: int | None) -> Any:
    """The ``ray`` module, connected to the executor's cluster (``ray:local`` with ``workers``: a
    local cluster of that many CPUs); one sentence if Ray is missing or the cluster unreachable."""
    try:
        import ray
    except ImportError as exc:
        raise UserError("--executor ray needs Ray: pip install 'autointerp[ray]'.") from exc
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if executor.address == "local":
            options["address"] = "local"
            if workers:
                options["num_cpus"] = workers
        elif executor.address != "auto":
            options["address"] = executor.address
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"Cannot reach the Ray cluster at {executor.address}: {exc}") from exc
    return ray


@dataclass(frozen=True)
class ModelRef:
    """A subject model as a Ray driver knows it without loading it: workers load it by these."""

    name: str
    #: where workers run it (a CUDA device means one GPU per task)
    device: Any
    #: ``float32``, ``bfloat16`` or ``float16``
    dtype_name: str


def _on_gpu(model: Any | None) -> bool:
    """Whether a task runs the subject model on CUDA (``None``: a task without one: LLM calls)."""
    return model is not None and model.device.type == "cuda"


def task_options(model: Any | None) -> dict[str, Any]:
    """A task's Ray options: one CPU, and one GPU when it runs the subject model on CUDA; retried
    when its worker dies (not when the task itself raises: that is a bug or bad input and would fail
    again)."""
    return {
        "num_cpus": 1,
        "num_gpus": 1 if _on_gpu(model) else 0,
        "max_retries": 3,
        "retry_exceptions": False,
    }


def worker_device(model: Any) -> str:
    """The device a worker loads the model on: Ray gives a GPU task its GPU as ``cuda``."""
    return "cuda" if _on_gpu(model) else "cpu"


def cluster_slots(ray: Any, model: Any | None) -> int:
    """How many such tasks the cluster runs at once: its GPUs for subject-model tasks on CUDA, else
    its CPUs."""
    key = "GPU" if _on_gpu(model) else "CPU"
    return max(1, int(ray.cluster_resources().get(key, 1)))


def run_tasks(
    ray: Any,
    task: Any,
    jobs: Iterator[tuple[Any, tuple[Any, ...]]],
    done: Callable[[Any, Any], None],
    what: str,
    window: int | None = None,
) -> None:
    """Run ``task.remote(*args)`` for each ``(key, args)`` of ``jobs``, at most ``window`` at once
    (all at once if None; ``jobs`` is read lazily, so the driver only holds what is in flight), and
    call ``done(key, result)`` on the driver as each finishes, in the order they finish. A task that
    raised ends the run with its error (a :class:`UserError` as it was, anything else as one
    sentence naming ``what``); tasks still running then are cancelled."""
    pending: dict[Any, Any] = {}

    def submit() -> None:
        while window is None or len(pending) < window:
            job = next(jobs, None)
            if job is None:
                return
            key, args = job
            pending[task.remote(*args)] = key

    try:
        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                # the task itself failed (a lost worker is retried by Ray and never lands here)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, UserError) else None
                    raise cause or UserError(
                        f"A {what} task failed on the Ray cluster: {exc}"
                    ) from exc
                done(key, result)
            submit()
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _harvest_shard(
    model_name: str,
    device: str,
    dtype: str,
    config: dict[str, Any],
    shard: tuple[int, int],
    kill_marker: str | None,
) -> dict[str, Any]:
    """One task (runs in a Ray worker): the in-process harvest of one shard into a scratch database;
    returns what the driver needs to commit and merge the shard."""
    from autointerp.harvest import HarvestConfig, harvest
    from autointerp.store import Store

    # tests: die once, mid-task, as an OOM kill would
    if kill_marker and not os.path.exists(kill_marker):
        Path(kill_marker).touch()
        config = {**config, "checkpoint_seconds": 0.0}
        os.environ["AUTOINTERP_KILL_AFTER_CHECKPOINTS"] = "1"
    model = _worker_model(model_name, device, dtype)  # a worker running two shards loads it once
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
        from autointerp.harvest import LayerState

        needed = set().union(*(LayerState.from_bytes(b).context_ids() for b in states.values()))
        contexts = store.context_rows(result.run_id, needed)
        doc_ids = {i for r in contexts.values() for i in _doc_indices(r)}
        documents = store.document_rows(result.run_id, doc_ids)
        run = store.runs(model.name)[-1]
        out = {
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
) -> dict[str, Any]:
    """A planning task (runs in a Ray worker, which keeps the model for its shards): the config
    resolved against the model and the corpus exactly as the in-process harvest resolves it, and
    the model's facts. A user mistake raises :class:`UserError` here, which the driver re-raises."""
    from autointerp.harvest import HarvestConfig, plan_harvest
    from autointerp.ranges import resolve_layers

    model = _worker_model(model_name, device, dtype)
    cfg = HarvestConfig(**config)
    if auto_layers:
        cfg.layers = resolve_layers("auto", model.n_layers)
    if fit_batch:  # the CPU default, or what the worker's free device memory holds
        cfg.batch_size = model.suggest_batch_size(cfg.ctx_len, cfg.layers or range(model.n_layers))
    resolved, _docs = plan_harvest(model, cfg)
    plain = {k: v for k, v in asdict(resolved).items() if k != "shard"}
    return {"config": plain, "model_info": model.info()}


def _doc_indices(context_row: dict[str, Any]) -> list[int]:
    import json

    return [int(i) for i in json.loads(context_row["doc_index"]) if int(i) >= 0]


def _strip(rows: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "run_id"} for r in rows.values()]


def ray_harvest(
    model: ModelRef,
    store: Any,
    config: Any,
    executor: Executor,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
    auto_layers: bool = False,
    fit_batch: bool = False,
) -> Any:
    """Harvest ``config`` as ``workers`` shard tasks on a Ray cluster and merge them exactly into
    ``store``.

    The driver does not load the model: planning tasks resolve ``config`` against it on the workers
    (``auto_layers``: ``--layers auto``; ``fit_batch``: no ``--batch-size`` given), and the workers
    keep it for their shards. Returns a :class:`harvest.HarvestResult`."""
    from autointerp.harvest import HarvestConfig, HarvestResult, merge
    from autointerp.store import Store

    started = time.time()
    ray = start_ray(executor, workers)
    n = workers or cluster_slots(ray, model)
    if n < 2:
        # one shard would be the in-process harvest with extra steps; two keep the merge path honest
        n = 2
    device = worker_device(model)
    plan = ray.remote(_plan_harvest).options(**task_options(model))
    asked = {k: v for k, v in asdict(config).items() if k != "shard"}
    # every worker slot plans at once, so every worker loads the model it keeps for its shards;
    # the answers are the same (a bad input is one sentence, as in-process)
    answers: list[dict[str, Any]] = []
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
    planned = answers[0]
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
    committed = {
        run["shard_index"]
        for run in store.runs(model.name)
        if run["stage"] == "harvest"
        and run["config_hash"] == config_hash
        and run["shard_count"] == n
        and run["status"] == "complete"
    }
    todo = [i for i in range(n) if i not in committed]
    if committed:
        log(f"Resuming: {len(committed)} of {n} shards are already in {store.path}.")
    task = ray.remote(_harvest_shard).options(**task_options(model))
    plain = {k: v for k, v in asdict(cfg).items() if k != "shard"}
    kill_marker = os.environ.get("AUTOINTERP_KILL_RAY_WORKER_ONCE")
    jobs = ((i, (model.name, device, model.dtype_name, plain, (i, n), kill_marker)) for i in todo)
    bar = tqdm(
        total=n,
        initial=len(committed),
        unit="shard",
        disable=not progress,
        desc=f"harvest {model.name} on Ray",
        dynamic_ncols=True,
    )

    def done(_index: int, shard: dict[str, Any]) -> None:
        _commit_shard(store, model.name, shard, n)
        kill_point(
            "ray-harvest"
        )  # crash tests: SIGKILL the driver right after a shard's transaction
        bar.update(1)

    try:
        run_tasks(ray, task, jobs, done, "harvest")
    finally:
        bar.close()
    shard_runs = [
        run["id"]
        for run in store.runs(model.name)
        if run["stage"] == "harvest"
        and run["config_hash"] == config_hash
        and run["shard_count"] == n
    ]
    (run_id,) = merge(store, [store], log=log, only=(model.name, config_hash, n))
    store.delete_runs(shard_runs)
    run = next(r for r in store.runs(model.name) if r["id"] == run_id)
    return HarvestResult(
        run_id, "complete", run["contexts_done"], run["tokens_done"], time.time() - started
    )


def _commit_shard(store: Any, model_name: str, shard: dict[str, Any], count: int) -> None:
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


_worker_models: dict[tuple[str, str, str], Any] = {}


def _worker_model(name: str, device: str, dtype: str) -> Any:
    """The subject model, loaded once per worker process: Ray reuses a worker for the next task,
    and a layer has many chunks."""
    key = (name, device, dtype)
    if key not in _worker_models:
        from autointerp.models import load_model

        _worker_models.clear()  # one model per worker
        _worker_models[key] = load_model(name, progress=False, device=device, dtype=dtype)
    return _worker_models[key]


def _graph_chunk(
    model_name: str, device: str, dtype: str, cfg: Any, inputs: Any, kill_marker: str | None
) -> dict[str, Any]:
    """One task (runs in a Ray worker): the graphs of one chunk, built and scored exactly as the
    in-process run does, as plain rows."""
    from autointerp.n2g.build import ModelLayerSubject
    from autointerp.n2g.run import build_chunk

    model = _worker_model(model_name, device, dtype)
    started = time.time()
    rows = build_chunk(ModelLayerSubject(model, inputs.layer), inputs, cfg)
    _die_once(kill_marker)  # tests: the work is done but never returned, as when a node is lost
    return {"rows": rows, "seconds": time.time() - started}


def _die_once(marker: str | None) -> None:
    """Tests (``AUTOINTERP_KILL_RAY_WORKER_ONCE``): SIGKILL this worker the first time any task
    gets here, as an out-of-memory kill or a lost node would; the marker file says it happened."""
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def ray_graph(
    model: Any,
    store: Any,
    layers: list[int],
    neurons_spec: str | None,
    cfg: Any,
    executor: Executor,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> list[Any]:
    """N2G graphs for the given neurons of each layer, one Ray task per chunk, stored in ``store``
    as :func:`n2g.run.graph_layers` stores them.

    At most ``workers`` tasks are in flight (default: twice what the cluster runs at once, so no
    worker waits for the driver). Returns a :class:`n2g.run.GraphSummary` per layer; its
    ``seconds`` are the workers' time on the layer's chunks (model loading aside), added up."""
    from autointerp.n2g.run import (
        GraphSummary,
        graph_chunks,
        graph_rows,
        load_chunk,
        plan_graphs,
    )

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
        jobs = (
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

        def done(chunk: Any, result: dict[str, Any]) -> None:
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
