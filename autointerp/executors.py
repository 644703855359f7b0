"""Where the work runs: in this process (``local``), or as tasks on a Ray cluster (``ray``,
``ray:local``, ``ray:ADDRESS``); and the machinery every stage's Ray driver shares.

Why Ray and this shape: the stages' work is already cut into independent, deterministic pieces (a
harvest into exact, mergeable shards, N2G graphs into chunks of neurons, explanations into a few
neurons at a time), so many workers need no new maths, only a scheduler that places tasks on the
cores and GPUs of one or many machines, retries a task whose worker died, and moves the results
back. Ray does all three; we do not write our own.

* **Only the driver writes the result database.** A task gets plain data and returns plain rows;
  the driver commits each finished task in one transaction, as it arrives (:func:`run_tasks` calls
  back in the order tasks finish, with at most ``window`` in flight).
* **Resumable by task.** A killed driver reruns the same command and skips what it committed. A
  worker that dies mid-task (SIGKILL, out of memory, a lost node) is Ray's to retry
  (``max_retries``); the work is deterministic, so the retry's result is the same.
* **Resources.** Each task asks for one CPU, and one GPU when the subject model runs on CUDA, so Ray
  packs as many at once as the cluster holds (:func:`task_options`). Workers load the subject model
  themselves, from their own ``autointerp setup`` cache (``$AUTOINTERP_CACHE``), once per worker
  process (:func:`worker_model`).

Each stage's driver sits beside its stage: :mod:`autointerp.harvest.ray` (shards merged exactly),
:mod:`autointerp.n2g.ray` (chunks of a layer's neurons).

Explanations (``autointerp explain``, and the explain stage of ``eval`` and ``calibrate``) follow
them too, with the tools here; their runner lives beside the stage, in
:mod:`autointerp.explain.ray`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autointerp.errors import UserError

if TYPE_CHECKING:
    from autointerp.models import SubjectModel


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


_worker_models: dict[tuple[str, str, str], SubjectModel] = {}


def worker_model(name: str, device: str, dtype: str) -> SubjectModel:
    """The subject model, loaded once per worker process: Ray reuses a worker for the next task
    (a harvest's next shard, a layer's next chunk). A random-init control (``eval --control``) is
    built from its name as the driver built it."""
    key = (name, device, dtype)
    if key not in _worker_models:
        from autointerp.random_init import load_subject

        _worker_models.clear()  # one model per worker
        _worker_models[key] = load_subject(name, progress=False, device=device, dtype=dtype)
    return _worker_models[key]
