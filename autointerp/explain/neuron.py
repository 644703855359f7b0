"""One neuron: its job (plain data read from the store on the main thread), the explainer's prompt
and call, best-of-n, and :func:`process_neuron`, which turns a job into the rows to store.

Per neuron (in a worker thread or a Ray task; the LLM calls are the slow part):

1. **Explain** the top training examples (windows around the peak, discretised to 0-9; the N2G
   graph's strongest paths as extra evidence when a graph exists; with ``output_tokens`` > 0 also
   the tokens the neuron's output promotes and suppresses, from ``autointerp weights``) -> kind
   ``llm``; optionally the negative side of a gated neuron from its bottom examples ->
   ``llm_negative``. With ``candidates`` > 1 (best-of-n), n explanations are sampled (the first at
   temperature 0, the others hotter, each with the examples in another order), each is simulated
   on the *validation* records - training-split examples the explainer did not see - and the best
   is kept; the score reported is on the test split only, so the choice never sees the data it is
   judged on. Every candidate is stored with its validation score.
2. **Baseline** with no LLM: the tokens that most activate the neuron -> kind ``baseline``.
3. **Simulate** each explanation on the held-out records (test-split top examples + random examples)
   and **score** by pooled correlation -> ``scores`` rows ``explanation`` / ``baseline`` /
   ``explanation_negative``; the N2G graph's predictions on exactly the same records -> ``n2g``.

A failed LLM call becomes a row with ``status='failed'`` and the reason - never a score. The worker
touches no database: the job carries everything it reads and the result everything to write, so
threads in this process and Ray tasks on other machines run the very same function.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from autointerp.errors import UserError
from autointerp.explain.baseline import baseline_explanation, n2g_evidence
from autointerp.explain.compete import LLM_ORIGINS, compete
from autointerp.explain.config import ExplainConfig
from autointerp.explain.explainer import (
    ask_explainer,
    explain_messages,
    prompt_hash,
    sample_messages,
)
from autointerp.explain.job import NeuronJob
from autointerp.explain.prompts import SCALE_MAX, OutputTokens, Record, Templates
from autointerp.explain.records import (
    candidate_records,
    explain_records,
    heldout_records,
    validation_records,
)
from autointerp.explain.rules import Rule, RuleTimeout
from autointerp.explain.simulate import Simulator, score_predictions, simulate_score
from autointerp.llm.client import LLMClient, LLMFailure, Usage
from autointerp.n2g.graph import NeuronGraph
from autointerp.store import Store

Prices = dict[str, dict[str, float]]
"""Dollars per 1M tokens by model: ``{"model": {"prompt": ..., "completion": ...}}``."""


# --------------------------------------------------------------------------------------------------
# jobs and results
@dataclass
class NeuronResult:
    job: NeuronJob
    explanations: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    usage: Usage
    #: the LLM was asked for the positive side's explanation and wrote none (a written candidate
    #: may still have been kept): what tells a broken endpoint apart from a poor explanation
    llm_failed: bool = False
    #: the reason, when every LLM call of this neuron failed at the endpoint (unreachable, timeout,
    #: 429, 5xx: not a wrong answer); None when any call was answered or none was made
    endpoint_failure: str | None = None

    @property
    def cost_usd(self) -> float | None:
        """Dollars of this neuron's rows (explainer and simulator each at their own price); None
        without prices."""
        costs = [
            r["cost_usd"] for r in self.explanations + self.scores if r.get("cost_usd") is not None
        ]
        return sum(costs) if costs else None


def no_weights(model: str, layers: list[int]) -> str:
    """The sentence for ``--output-tokens`` on layers whose weight facts are not stored."""
    listed = ",".join(map(str, layers))
    return (
        f"--output-tokens shows what a neuron's output promotes, from its weights, but layer(s)"
        f" {listed} of {model} have none stored; run `autointerp weights {model} --layers"
        f" {listed}` on the same database first."
    )


def output_tokens(store: Store, model: str, layer: int, neuron: int, n: int) -> OutputTokens:
    """The ``n`` tokens the neuron's output promotes most and the ``n`` it suppresses most, from the
    stored weight facts (fewer when ``autointerp weights`` kept fewer)."""
    facts = store.weight_facts(model, layer, neuron)
    if facts is None:
        raise UserError(no_weights(model, [layer]))
    return OutputTokens(
        [t["token"] for t in facts["top_tokens"][:n]],
        [t["token"] for t in facts["bottom_tokens"][:n]],
    )


def make_job(
    store: Store, run: dict[str, Any], layer: int, neuron: int, cfg: ExplainConfig, gated: bool
) -> NeuronJob:
    """Everything the worker needs of one neuron, read from the store (on the main thread: the
    store is not shared with the workers)."""
    stats = store.neuron(run["id"], layer, neuron)
    graph_row = store.graph_for_run(run["id"], layer, neuron)
    graph = NeuronGraph.from_json(graph_row["graph"]) if graph_row else None
    job = NeuronJob(
        run["id"],
        layer,
        neuron,
        float(stats["max"]),
        float(stats["min"]),
        explain_records(store, run["id"], layer, neuron, cfg),
        heldout_records(store, run["id"], layer, neuron, cfg),
        graph,
        valid=validation_records(store, run["id"], layer, neuron, cfg)
        if cfg.candidates > 1 or cfg.rule_mode
        else [],
    )
    if cfg.rule_mode and cfg.written_candidates:
        job.train_all = candidate_records(store, run["id"], layer, neuron, cfg)
    if cfg.output_tokens:
        job.output = output_tokens(store, run["model"], layer, neuron, cfg.output_tokens)
    if cfg.negative and gated:
        job.train_negative = explain_records(store, run["id"], layer, neuron, cfg, "bottom", -1.0)
        job.heldout_negative = heldout_records(store, run["id"], layer, neuron, cfg, "bottom", -1.0)
    return job


def best_of_n(
    job: NeuronJob,
    client: LLMClient,
    sim: Simulator,
    cfg: ExplainConfig,
    templates: Templates,
    evidence: list[str] | None,
) -> tuple[str, Usage, str, list[dict[str, Any]]]:
    """Sample ``cfg.candidates`` explanations and keep the one that scores best on the validation
    records: (text, usage, the chosen prompt's hash, every candidate with its validation score or
    its failure). Candidate 0 is the ordinary temperature-0 explanation; the others see the
    examples in a seeded shuffled order at temperature 0.7 (as Transluce permutes them). Raises
    LLMFailure with the first reason when no candidate could be explained."""
    usage = Usage()
    candidates: list[dict[str, Any]] = []
    chosen: tuple[float, int, str, str] | None = None  # (valid score, -k, text, hash)
    first_failure: LLMFailure | None = None
    scored: dict[str, float | None] = {}
    for k in range(cfg.candidates):
        messages = sample_messages(
            cfg, templates, job.train, job.max_activation, evidence, job.output, k
        )
        hashed = prompt_hash(messages)
        try:
            text, used = ask_explainer(client, cfg, messages, templates, sample=k)
            usage.add(used)
        except LLMFailure as exc:
            first_failure = first_failure or exc
            candidates.append({"text": None, "valid_score": None, "error": exc.reason})
            continue
        error = None
        if text not in scored:
            try:
                result, used = simulate_score(sim, text, job.valid, job.max_activation, 1.0)
                usage.add(used)
                scored[text] = result["score"]
                error = result.get("undefined")
            except LLMFailure as exc:
                scored[text] = None
                error = f"not simulated: {exc.reason}"
        valid = scored[text]
        candidates.append({"text": text, "valid_score": valid, "error": error})
        rank = (valid if valid is not None else float("-inf"), -k, text, hashed)
        if chosen is None or rank[:2] > chosen[:2]:
            chosen = rank
    if chosen is None:
        assert first_failure is not None
        raise first_failure
    return chosen[2], usage, chosen[3], candidates


# --------------------------------------------------------------------------------------------------
# one neuron's rows
class NeuronRows:
    """The explanation and score rows of one neuron, as the main thread will store them, and the
    tokens they cost. Every row of a neuron carries the same ``created`` time."""

    def __init__(self, cfg: ExplainConfig, prices: Prices | None) -> None:
        self.cfg = cfg
        self.prices = prices
        self.now = time.time()
        self.usage = Usage()
        self.explanations: list[dict[str, Any]] = []
        self.scores: list[dict[str, Any]] = []
        self.llm_failed = False
        self.calls: list[LLMFailure | None] = []  # each LLM call's failure, None when answered

    def explanation(
        self,
        kind: str,
        text: str | None,
        error: str | None,
        used: Usage,
        model: str,
        seconds: float,
        hashed: str | None = None,
        candidates: list[dict[str, Any]] | None = None,
        origin: str | None = None,
    ) -> None:
        """An explanation row: ``text``, or the ``error`` that left it failed; ``origin`` says who
        wrote the kept one when candidates competed (:mod:`autointerp.explain.compete`)."""
        self.explanations.append(
            {
                "kind": kind,
                "status": "ok" if error is None else "failed",
                "text": text,
                "error": error,
                "prompt_version": self.cfg.prompt_version,
                "prompt_hash": hashed,
                "model": model,
                "candidates": json.dumps(candidates, ensure_ascii=False) if candidates else None,
                "origin": origin,
                "prompt_tokens": used.prompt_tokens,
                "completion_tokens": used.completion_tokens,
                "cost_usd": used.cost(model, self.prices),
                "seconds": seconds,
                "created": self.now,
            }
        )

    def score(
        self,
        method: str,
        result: dict[str, Any] | None,
        error: str | None,
        used: Usage,
        mode: str | None,
    ) -> None:
        """A score row: the simulation's ``result``, ``undefined`` with the reason when it has no
        score, or the ``error`` that left it failed."""
        result = result or {}
        status = (
            "failed"
            if error is not None
            else ("ok" if result.get("score") is not None else "undefined")
        )
        if status == "undefined":
            # why: constant or non-finite held-out activations
            error = result.get("undefined") or "no score"
        self.scores.append(
            {
                "method": method,
                "status": status,
                "score": result.get("score"),
                "score_raw": result.get("score_raw"),
                "score_top": result.get("score_top"),
                "score_random": result.get("score_random"),
                "auprc": result.get("auprc"),
                "r2": result.get("r2"),
                "n_tokens": result.get("n_tokens"),
                "simulator_model": self.cfg.simulator_model if mode else None,
                "simulator_mode": mode,
                "simulation": result.get("simulation"),
                "error": error,
                "prompt_tokens": used.prompt_tokens,
                "completion_tokens": used.completion_tokens,
                "cost_usd": used.cost(self.cfg.simulator_model, self.prices),
                "created": self.now,
            }
        )

    def simulated(
        self,
        sim: Simulator,
        method: str,
        text: str,
        records: list[Record],
        max_act: float,
        sign: float,
    ) -> None:
        """Simulate ``text`` on ``records`` and add its score row (failed with the reason when the
        simulator fails)."""
        try:
            result, used = simulate_score(sim, text, records, max_act, sign)
            self.usage.add(used)
            self.score(method, result, None, used, sim.mode)
            self.calls.append(None)
        except LLMFailure as exc:
            self.score(method, None, exc.reason, Usage(), sim.mode)
            self.calls.append(exc)

    def ruled(
        self, method: str, rule: Rule, records: list[Record], max_act: float, mode: str
    ) -> None:
        """Score a rule already compiled on ``records`` and add its score row (no LLM call)."""
        try:
            preds = [[SCALE_MAX * v for v in rule.apply(r.tokens)] for r in records]
        except RuleTimeout as exc:
            self.score(method, None, str(exc), Usage(), mode)
            return
        result = score_predictions(preds, records, max_act, SCALE_MAX, 1.0)
        result["simulation"] = rule.to_json()
        self.score(method, result, None, Usage(), mode)

    def result(self, job: NeuronJob) -> NeuronResult:
        down = bool(self.calls) and all(c is not None and c.transient for c in self.calls)
        last = self.calls[-1] if down else None
        return NeuronResult(
            job,
            self.explanations,
            self.scores,
            self.usage,
            self.llm_failed,
            last.reason if last else None,
        )


@dataclass(frozen=True)
class Side:
    """One side of a neuron to explain: its positive firing, or a gated neuron's negative side."""

    kind: str  # the explanation's kind
    method: str  # its score's method
    train: list[Record]
    heldout: list[Record]
    max_activation: float
    sign: float
    evidence: list[str] | None
    output: OutputTokens | None


def sides(job: NeuronJob, cfg: ExplainConfig, evidence: list[str] | None) -> list[Side]:
    """The positive side, and the negative one when ``cfg.negative`` asks and the neuron has one."""
    out = [
        Side(
            "llm",
            "explanation",
            job.train,
            job.heldout,
            job.max_activation,
            1.0,
            evidence,
            job.output,
        )
    ]
    if cfg.negative and job.train_negative and job.heldout_negative and job.min_activation < 0:
        out.append(
            Side(
                "llm_negative",
                "explanation_negative",
                job.train_negative,
                job.heldout_negative,
                -job.min_activation,
                -1.0,
                None,
                None,  # the output side is stated for positive firing; negated, it would mislead
            )
        )
    return out


def explain_side(
    rows: NeuronRows,
    side: Side,
    job: NeuronJob,
    client: LLMClient,
    sim: Simulator,
    templates: Templates,
) -> None:
    """Explain one side (best-of-n when asked) and score the explanation on its held-out records;
    a failed explanation is recorded with a failed score that says why nothing was simulated.
    Under the rule simulator the positive side's candidates compete
    (:func:`explain_by_competition`)."""
    cfg = rows.cfg
    if side.kind == "llm" and cfg.rule_mode and job.valid:
        explain_by_competition(rows, side, job, client, sim, templates)
        return
    t0 = time.time()
    messages = explain_messages(
        cfg, templates, side.train, side.max_activation, side.evidence, side.output
    )
    hashed = prompt_hash(messages)
    candidates = None
    try:
        if side.kind == "llm" and cfg.candidates > 1 and job.valid:
            text, used, hashed, candidates = best_of_n(
                job, client, sim, cfg, templates, side.evidence
            )
        else:
            text, used = ask_explainer(client, cfg, messages, templates)
        rows.usage.add(used)
        rows.calls.append(None)
        rows.explanation(
            side.kind,
            text,
            None,
            used,
            cfg.explainer_model,
            time.time() - t0,
            hashed,
            candidates,
        )
    except LLMFailure as exc:
        rows.llm_failed = rows.llm_failed or side.kind == "llm"
        rows.calls.append(exc)
        rows.explanation(
            side.kind, None, exc.reason, Usage(), cfg.explainer_model, time.time() - t0, hashed
        )
        rows.score(side.method, None, f"no explanation to simulate: {exc.reason}", Usage(), None)
        return
    rows.simulated(sim, side.method, text, side.heldout, side.max_activation, side.sign)


def explain_by_competition(
    rows: NeuronRows,
    side: Side,
    job: NeuronJob,
    client: LLMClient,
    sim: Simulator,
    templates: Templates,
) -> None:
    """The positive side under the rule simulator: every candidate competes on validation
    (:func:`autointerp.explain.compete.compete`); the kept one is scored on the held-out records as
    ``explanation`` and the first LLM explanation alone as ``explanation_first``, so the LLM's own
    contribution stays visible. Every candidate is stored with its origin and validation score."""
    cfg = rows.cfg
    t0 = time.time()
    try:
        choice = compete(job, client, sim, cfg, templates, side.evidence)
    except LLMFailure as exc:
        rows.llm_failed = True
        rows.calls.append(exc)
        rows.explanation(side.kind, None, exc.reason, Usage(), cfg.explainer_model, 0.0)
        rows.score(side.method, None, f"no explanation to simulate: {exc.reason}", Usage(), None)
        return
    rows.usage.add(choice.usage)
    kept = choice.chosen
    rows.explanation(
        side.kind,
        kept.text,
        None,
        choice.usage,
        cfg.explainer_model if kept.origin in LLM_ORIGINS else "no LLM",
        time.time() - t0,
        kept.prompt_hash,
        [e.row() for e in choice.entries],
        origin=kept.origin,
    )
    if kept.rule is None:  # nothing could be compiled: the reason, never a score
        rows.score(side.method, None, kept.error, Usage(), sim.mode)
    else:
        rows.ruled(side.method, kept.rule, side.heldout, side.max_activation, sim.mode)
    first = choice.first
    rows.llm_failed = first is not None and first.text is None
    if first is not None:  # the LLM's first answer (or its failure) decides whether it is down
        rows.calls.append(first.failure)
    if first is not None:
        if first.rule is not None:
            rows.ruled("explanation_first", first.rule, side.heldout, side.max_activation, sim.mode)
        else:
            rows.score("explanation_first", None, first.error, Usage(), sim.mode)


def process_neuron(
    job: NeuronJob,
    client: LLMClient,
    sim: Simulator,
    cfg: ExplainConfig,
    templates: Templates,
    prices: Prices | None,
) -> NeuronResult:
    """Everything LLM-related for one neuron; returns rows for the main thread to write. Never
    raises LLMFailure: a failure becomes a failed row carrying the reason."""
    rows = NeuronRows(cfg, prices)
    if not job.heldout:
        # nothing to score on (tiny corpus, small top_k): say so for this neuron instead of paying
        # for an explanation that can never be scored
        reason = (
            "not explained: no held-out records to score on (the harvest kept no "
            "test-split examples for this neuron; harvest more tokens or a larger top_k)"
        )
        rows.explanation("llm", None, reason, Usage(), cfg.explainer_model, 0.0)
        rows.score("explanation", None, reason, Usage(), None)
        return rows.result(job)
    evidence = (
        n2g_evidence(job.graph, cfg.n2g_paths) if (job.graph is not None and cfg.use_n2g) else None
    )
    for side in sides(job, cfg, evidence):
        explain_side(rows, side, job, client, sim, templates)
    if cfg.baseline:
        text = baseline_explanation(job.train, job.max_activation)
        rows.explanation("baseline", text, None, Usage(), "token-lookup", 0.0)
        rows.simulated(sim, "baseline", text, job.heldout, job.max_activation, 1.0)
    for method, text in job.extra.items():
        rows.explanation(method, text, None, Usage(), "given", 0.0)
        rows.simulated(sim, method, text, job.heldout, job.max_activation, 1.0)
    if job.graph is not None:
        preds = [job.graph.predict(r.tokens) for r in job.heldout]
        rows.score(
            "n2g",
            score_predictions(preds, job.heldout, job.max_activation, 1.0),
            None,
            Usage(),
            None,
        )
    return rows.result(job)
