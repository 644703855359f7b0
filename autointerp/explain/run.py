"""Explain and score whole layers, resumably: one transaction per neuron, failures recorded with
their reason.

The stage in four parts, one module each: the config (:mod:`~autointerp.explain.config`), the
records cut from the harvest (:mod:`~autointerp.explain.records`), the plan checked against the
database (:mod:`~autointerp.explain.plan`), and one neuron's LLM work
(:mod:`~autointerp.explain.neuron`). This module runs a plan: it skips the neurons already done
under the same config, makes each remaining neuron's job on the main thread, hands the jobs to a
``runner`` and writes each finished neuron's rows in one transaction, so a killed run resumes by
neuron. A failed LLM call becomes a row with ``status='failed'`` and the reason - never a score;
``retry_failed`` redoes just those neurons.

Who processes the neurons is a ``runner``: threads in this process by default
(:func:`run_in_threads`), or Ray tasks (:func:`autointerp.explain.ray.explain_runner`, which runs
:func:`run_in_threads` in each worker). Jobs are plain data made on the main thread, results plain
rows written on it, so both runners produce the same database.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from autointerp.explain.config import ExplainConfig
from autointerp.explain.job import NeuronJob
from autointerp.explain.neuron import NeuronResult, Prices, make_job, process_neuron
from autointerp.explain.plan import ExplainPlan
from autointerp.explain.prompts import Templates
from autointerp.explain.simulate import Simulator
from autointerp.faults import kill_point
from autointerp.llm.client import LLMClient, Usage
from autointerp.store import Store

Commit = Callable[[list[NeuronResult]], None]
"""Writes finished neurons to the database, in one transaction (the driver's side of a runner)."""

JobRunner = Callable[
    [
        Iterator[NeuronJob],
        LLMClient,
        Simulator,
        ExplainConfig,
        Templates,
        Prices | None,
        Commit,
    ],
    None,
]
"""Processes every job (:func:`process_neuron`) and hands the results to ``Commit`` on the calling
thread: :func:`run_in_threads` here, Ray tasks in :mod:`autointerp.explain.ray`."""


def run_in_threads(
    jobs: Iterator[NeuronJob],
    client: LLMClient,
    sim: Simulator,
    cfg: ExplainConfig,
    templates: Templates,
    prices: Prices | None,
    commit: Commit,
) -> None:
    """The in-process runner (and, inside each task, the Ray one): ``jobs`` on ``cfg.concurrency``
    threads, each neuron committed on its own on this thread as it finishes. Jobs are taken from the
    iterator only when a thread is about to be free (two per thread in flight), so a whole layer's
    records are never in memory at once."""
    threads = max(1, cfg.concurrency)
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        pending: set[cf.Future[NeuronResult]] = set()

        def submit_next() -> None:
            job = next(jobs, None)
            if job is not None:
                pending.add(pool.submit(process_neuron, job, client, sim, cfg, templates, prices))

        for _ in range(threads * 2):
            submit_next()
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                pending.discard(fut)
                commit([fut.result()])
                submit_next()


#: ``explain`` stops after this many neurons in a row whose LLM calls all failed at the endpoint
#: (``--stop-after-failures``): a server that is down or answers 500 forever fails every neuron, at
#: ``--max-attempts`` calls and their backoff each, for as long as the run is.
STOP_AFTER_FAILURES = 5


@dataclass
class ExplainSummary:
    explained: int = 0
    skipped: int = 0
    failed: int = 0  # neurons with any failed row (explanation or score)
    unexplained: int = 0  # of those, neurons the LLM wrote no explanation for
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None  # None when no price table was given
    seconds: float = 0.0
    run_id: int | None = None
    neurons: list[tuple[int, int]] = field(default_factory=list)
    #: who wrote each kept explanation (``explanations.origin``), counted
    origins: dict[str, int] = field(default_factory=dict)
    #: why the run stopped before its last neuron (the endpoint kept failing), else None
    stopped: str | None = None
    #: neurons in a row, up to the last one finished, whose LLM calls all failed at the endpoint
    endpoint_failures: int = 0

    def count(self, result: NeuronResult) -> None:
        """Add one finished neuron: its tokens, dollars and whether anything of it failed."""
        self.usage.add(result.usage)
        if result.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + result.cost_usd
        failed = any(r["status"] == "failed" for r in result.explanations + result.scores)
        self.failed += failed
        self.explained += not failed
        self.unexplained += result.llm_failed or not any(
            r["kind"] == "llm" and r["status"] == "ok" for r in result.explanations
        )
        for r in result.explanations:
            if r["kind"] == "llm" and r.get("origin"):
                self.origins[r["origin"]] = self.origins.get(r["origin"], 0) + 1
        self.neurons.append((result.job.layer, result.job.neuron))
        self.endpoint_failures = self.endpoint_failures + 1 if result.endpoint_failure else 0

    def stop_if_down(self, result: NeuronResult, stop_after: int | None, model: str) -> None:
        """Stop the run (:attr:`stopped`, one sentence) once ``stop_after`` neurons in a row had
        every LLM call fail at the endpoint; ``result`` is the last of them."""
        if stop_after and self.endpoint_failures >= stop_after and self.stopped is None:
            self.stopped = (
                f"stopped after {self.endpoint_failures} neurons in a row whose every LLM call"
                f" failed at the endpoint (last: {result.endpoint_failure}); their failures are"
                f" recorded. Once the endpoint works, resume with `autointerp explain {model}"
                " --retry-failed` (same options)."
            )


def explain_run_id(store: Store, plan: ExplainPlan) -> int:
    """The explain run of this model and config: the one stored before (a rerun resumes it), or a
    new one."""
    config_hash = plan.cfg.config_hash()
    run = store.find_run(plan.model, "explain", config_hash, (0, 1))
    if run:
        return int(run["id"])
    return store.create_run(plan.model, "explain", plan.cfg.identity(), config_hash, (0, 1), {})


def neurons_to_do(
    store: Store, plan: ExplainPlan, retry_failed: bool, summary: ExplainSummary
) -> list[tuple[dict[str, Any], int, int]]:
    """(harvest run, layer, neuron) of every planned neuron not yet done under this config (those
    with a recorded failure too, with ``retry_failed``); the others are counted as skipped."""
    config_hash = plan.cfg.config_hash()
    todo: list[tuple[dict[str, Any], int, int]] = []
    for lp in plan.layers:
        state = store.explain_state(lp.run["id"], lp.layer, config_hash)
        for n in lp.neurons:
            if n in state and not (retry_failed and state[n] == "failed"):
                summary.skipped += 1
            else:
                todo.append((lp.run, lp.layer, n))
    return todo


def explain_layers(
    store: Store,
    plan: ExplainPlan,
    client: LLMClient,
    templates: Templates,
    prices: Prices | None = None,
    *,
    retry_failed: bool = False,
    progress: bool = True,
    extra: dict[tuple[int, int], dict[str, str]] | None = None,
    runner: JobRunner | None = None,
    stop_after: int | None = None,
) -> ExplainSummary:
    """Explain and score the planned neurons (:func:`autointerp.explain.plan.plan_explain`, whose
    checks are not repeated); returns counts and the tokens spent.

    ``extra`` adds explanations to simulate beside the LLM's, per (layer, neuron) and score method
    (calibration's true descriptions). ``runner`` processes the neurons (default
    :func:`run_in_threads`; Ray tasks: :func:`autointerp.explain.ray.explain_runner`); the rows and
    the database writes are the same whichever runs them. ``stop_after``: stop sending neurons once
    that many in a row had every LLM call fail at the endpoint (those in flight are finished and
    recorded); the summary says why (:attr:`ExplainSummary.stopped`) and the run's status is
    ``stopped``."""
    cfg = plan.cfg
    config_hash = cfg.config_hash()
    run_id = explain_run_id(store, plan)
    summary = ExplainSummary(run_id=run_id)
    todo = neurons_to_do(store, plan, retry_failed, summary)
    started = time.time()
    bar = tqdm(
        total=len(todo),
        unit="neuron",
        disable=not progress,
        desc=f"explain {plan.model}",
        dynamic_ncols=True,
    )

    def jobs() -> Iterator[NeuronJob]:
        """Each neuron's job, made when it is about to be sent (store reads stay on this thread)."""
        for harvest_run, layer, n in todo:
            if summary.stopped:
                return
            job = make_job(store, harvest_run, layer, n, cfg, plan.gated)
            job.extra = dict((extra or {}).get((layer, n), {}))
            yield job

    def commit(results: list[NeuronResult]) -> None:
        """Finished neurons into the database in one transaction (one neuron in this process, one
        task's neurons on Ray)."""
        with store.atomic():
            for result in results:
                job = result.job
                store.save_explanation_results(
                    job.run_id,
                    job.layer,
                    job.neuron,
                    config_hash,
                    run_id,
                    result.explanations,
                    result.scores,
                )
        kill_point("explain")  # crash tests: SIGKILL right after a commit
        for result in results:
            summary.count(result)
            summary.stop_if_down(result, stop_after, plan.model)
        bar.update(len(results))
        minutes = max(time.time() - started, 1e-9) / 60
        bar.set_postfix(
            neurons_per_min=f"{bar.n / minutes:.1f}",
            tokens=summary.usage.prompt_tokens + summary.usage.completion_tokens,
            failed=summary.failed,
        )

    try:
        if todo:
            sim = Simulator(
                client, cfg.simulator_model, templates, cfg.simulator_mode, cfg.sim_logprobs
            )
            (runner or run_in_threads)(jobs(), client, sim, cfg, templates, prices, commit)
    finally:
        bar.close()
    summary.seconds = time.time() - started
    if summary.stopped:
        store.stop_stage(run_id)
    else:
        store.finish_stage(run_id)
    return summary
