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

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from autointerp.errors import UserError
from autointerp.explain.baseline import baseline_explanation, n2g_evidence
from autointerp.explain.config import ExplainConfig
from autointerp.explain.prompts import (
    OutputTokens,
    Record,
    Templates,
    explanation_messages,
    parse_explanation,
)
from autointerp.explain.records import explain_records, heldout_records, validation_records
from autointerp.explain.simulate import Simulator, score_predictions, simulate_score
from autointerp.llm.client import InvalidOutput, LLMClient, LLMFailure, Usage
from autointerp.n2g.graph import NeuronGraph
from autointerp.store import Store

Prices = dict[str, dict[str, float]]
"""Dollars per 1M tokens by model: ``{"model": {"prompt": ..., "completion": ...}}``."""


# --------------------------------------------------------------------------------------------------
# jobs and results
@dataclass
class NeuronJob:
    run_id: int
    layer: int
    neuron: int
    max_activation: float
    min_activation: float
    train: list[Record]
    heldout: list[Record]
    graph: NeuronGraph | None
    #: training-split records the explainer does not see: where best-of-n chooses
    valid: list[Record] = field(default_factory=list)
    train_negative: list[Record] = field(default_factory=list)
    heldout_negative: list[Record] = field(default_factory=list)
    #: other explanations to simulate and score on the same records, by score method (e.g. a
    #: known-answer feature's true description as ``true_description``)
    extra: dict[str, str] = field(default_factory=dict)
    #: what the neuron's output promotes and suppresses (only with ``output_tokens`` > 0)
    output: OutputTokens | None = None


@dataclass
class NeuronResult:
    job: NeuronJob
    explanations: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    usage: Usage
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
        if cfg.candidates > 1
        else [],
    )
    if cfg.output_tokens:
        job.output = output_tokens(store, run["model"], layer, neuron, cfg.output_tokens)
    if cfg.negative and gated:
        job.train_negative = explain_records(store, run["id"], layer, neuron, cfg, "bottom", -1.0)
        job.heldout_negative = heldout_records(store, run["id"], layer, neuron, cfg, "bottom", -1.0)
    return job


# --------------------------------------------------------------------------------------------------
# the explainer
def explain_messages(
    cfg: ExplainConfig,
    templates: Templates,
    records: list[Record],
    max_act: float,
    evidence: list[str] | None,
    output: OutputTokens | None = None,
) -> list[dict[str, str]]:
    """The explainer's chat messages for one neuron as ``explain`` sends them: the records, the
    tokens it fires on most, the N2G ``evidence``, the ``output`` side; the weakest records are
    dropped while the prompt is longer than ``cfg.max_prompt_chars`` (small local context
    windows)."""
    top_tokens = (
        baseline_explanation(records, max_act, 5)
        .removeprefix("the tokens ")
        .removeprefix("the token ")
    )
    messages = explanation_messages(records, max_act, templates, evidence, top_tokens, output)
    while len(records) > 1 and sum(len(m["content"]) for m in messages) > cfg.max_prompt_chars:
        records = records[:-1]
        messages = explanation_messages(records, max_act, templates, evidence, top_tokens, output)
    return messages


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """The hash stored beside an explanation: exactly which prompt produced it (failed or not)."""
    return hashlib.sha256(
        json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    ).hexdigest()


def _explain(
    client: LLMClient,
    cfg: ExplainConfig,
    messages: list[dict[str, str]],
    templates: Templates,
    sample: int = 0,
) -> tuple[str, Usage]:
    """One explanation; ``sample`` > 0 draws candidate ``sample`` of best-of-n at temperature 0.7
    (seeded, so a rerun asks the same questions and the response cache answers them).

    A reply that repeats a few-shot answer word for word is refused and asked again at a higher
    temperature: small models fall back on copying an example's answer when unsure (the 1.5B
    explained a year neuron and a hyphen neuron as 'the word "of"', the third example's answer),
    and a copied phrase is about another neuron."""
    copies = {ex["explanation"].strip().lower() for ex in templates.examples}
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": cfg.explainer_max_tokens,
        "temperature": 0,
    }
    if sample:
        body.update({"temperature": 0.7, "seed": sample})

    def parse(response: dict[str, Any]) -> str:
        try:
            content = response["choices"][0]["message"]["content"] or ""
            if (
                response["choices"][0].get("finish_reason") == "length"
                and "\n" not in content.strip()
            ):
                # cut at max_tokens inside the first line: the phrase itself is incomplete, never
                # store it
                raise InvalidOutput(f"truncated at max_tokens: {content[:60]!r}")
            text = parse_explanation(content)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidOutput(str(exc)) from exc
        if text.lower() in copies:
            raise InvalidOutput(f"the reply copies a few-shot answer: {text[:60]!r}")
        return text

    return client.call(
        "chat", cfg.explainer_model, body, parse, lambda a: {"temperature": 0.7, "seed": a}
    )


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
        records = list(job.train)
        if k:
            random.Random(k).shuffle(records)
        messages = explain_messages(
            cfg, templates, records, job.max_activation, evidence, job.output
        )
        hashed = prompt_hash(messages)
        try:
            text, used = _explain(client, cfg, messages, templates, sample=k)
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
    ) -> None:
        """An explanation row: ``text``, or the ``error`` that left it failed."""
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

    def result(self, job: NeuronJob) -> NeuronResult:
        down = bool(self.calls) and all(c is not None and c.transient for c in self.calls)
        last = self.calls[-1] if down else None
        return NeuronResult(
            job, self.explanations, self.scores, self.usage, last.reason if last else None
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
    a failed explanation is recorded with a failed score that says why nothing was simulated."""
    cfg = rows.cfg
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
            text, used = _explain(client, cfg, messages, templates)
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
        rows.calls.append(exc)
        rows.explanation(
            side.kind, None, exc.reason, Usage(), cfg.explainer_model, time.time() - t0, hashed
        )
        rows.score(side.method, None, f"no explanation to simulate: {exc.reason}", Usage(), None)
        return
    rows.simulated(sim, side.method, text, side.heldout, side.max_activation, side.sign)


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
