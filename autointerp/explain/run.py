"""Explain and score whole layers, resumably: one transaction per neuron, failures recorded with
their reason.

Per neuron (in a worker thread; the LLM calls are the slow part and may run concurrently):

1. **Explain** the top training examples (windows around the peak, discretised to 0-9; the N2G
   graph's strongest paths as extra evidence when a graph exists; with ``output_tokens`` > 0 also
   the tokens the neuron's output promotes and suppresses, from ``autointerp weights``) -> kind
   ``llm``; optionally the
   negative side of a gated neuron from its bottom examples -> ``llm_negative``. With
   ``candidates`` > 1 (best-of-n), n explanations are sampled (the first at temperature 0, the
   others hotter, each with the examples in another order), each is simulated on the *validation*
   records - training-split examples the explainer did not see - and the best is kept; the score
   reported is on the test split only, so the choice never sees the data it is judged on. Every
   candidate is stored with its validation score.
2. **Baseline** with no LLM: the tokens that most activate the neuron -> kind ``baseline``.
3. **Simulate** each explanation on the held-out records (test-split top examples + random examples)
   and **score** by pooled correlation -> ``scores`` rows ``explanation`` / ``baseline`` /
   ``explanation_negative``; the N2G graph's predictions on exactly the same records -> ``n2g``.

The main thread writes each neuron's rows in one transaction, so a killed run resumes by neuron. A
failed LLM call becomes a row with ``status='failed'`` and the reason - never a score;
``retry_failed`` redoes just those neurons.

Who processes the neurons is a ``runner``: threads in this process by default
(:func:`run_in_threads`), or Ray tasks (:func:`autointerp.executors.explain_runner`, which runs
:func:`run_in_threads` in each worker). Jobs are plain data made on the main thread, results plain
rows written on it, so both runners produce the same database.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from autointerp.config import check_int, config_identity, identity_hash
from autointerp.errors import UserError
from autointerp.explain.prompts import (
    SCALE_MAX,
    OutputTokens,
    Record,
    Templates,
    explanation_messages,
    parse_explanation,
)
from autointerp.explain.simulate import Simulator, score_predictions, simulate_score
from autointerp.faults import kill_point
from autointerp.llm.client import InvalidOutput, LLMClient, LLMFailure, Usage
from autointerp.n2g.graph import NeuronGraph, normalize_token
from autointerp.selection import select_neurons
from autointerp.store import Store
from autointerp.untrusted import escape_token

#: 2: the rule simulator asks for JSON mode; an explanation copying a few-shot answer is refused.
#: 3: best-of-n falls back on the shown examples when the unseen ones cannot tell candidates apart.
EXPLAIN_VERSION = 3


@dataclass
class ExplainConfig:
    """Everything that determines explanations and scores; its hash keys the stored rows."""

    explainer_model: str = ""
    simulator_model: str = ""
    prompt_version: str = ""
    explain_records: int = 8  # top training examples shown to the explainer
    explain_before: int = 12  # tokens shown before each example's peak ...
    explain_after: int = 4  # ... and after it
    sim_top: int = 5  # held-out top examples simulated
    sim_random: int = 5  # held-out random examples simulated
    sim_window: int = (
        32  # tokens per simulated record (top: ending 4 after the peak; random: from the start)
    )
    sim_logprobs: int = 15
    simulator_mode: str = "rule"
    use_n2g: bool = True
    n2g_paths: int = 8
    negative: bool = False
    baseline: bool = True
    #: best-of-n: explanations sampled per neuron, the best on the validation records kept
    candidates: int = 1
    #: output-side evidence: the N tokens the neuron's output promotes most and the N it suppresses
    #: (direct logit effect, stored by ``autointerp weights``) are shown to the explainer; 0: none
    output_tokens: int = 0
    explainer_max_tokens: int = 60
    max_prompt_chars: int = (
        7000  # ~2.5k tokens: fits a 4k-token local context with room for the answer
    )
    # not part of the identity
    concurrency: int = field(default=1, metadata={"hashed": False})

    def __post_init__(self) -> None:
        lowest = {
            "--explain-records": (self.explain_records, 1),
            "--sim-top": (self.sim_top, 0),
            "--sim-random": (self.sim_random, 0),
            "--concurrency": (self.concurrency, 1),
            "--candidates": (self.candidates, 1),
            "--output-tokens": (self.output_tokens, 0),
            "explain_before": (self.explain_before, 0),
            "explain_after": (self.explain_after, 0),
            "sim_window": (self.sim_window, 1),
            "sim_logprobs": (self.sim_logprobs, 1),
            "n2g_paths": (self.n2g_paths, 0),
            "explainer_max_tokens": (self.explainer_max_tokens, 1),
            "max_prompt_chars": (self.max_prompt_chars, 1),
        }
        for option, (value, low) in lowest.items():
            check_int(value, option, low)
        if self.sim_top + self.sim_random < 1:
            raise UserError(
                "--sim-top and --sim-random are both 0, so there would be no held-out "
                "text to score explanations on; give at least one of them."
            )

    def identity(self) -> dict[str, Any]:
        """The hashed settings. Options added later are left out while at their "off" default, so
        results stored before the option existed keep their hash (they were made without it)."""
        out = config_identity(self, explain_version=EXPLAIN_VERSION, scale_max=SCALE_MAX)
        if not self.output_tokens:
            del out["output_tokens"]
        return out

    def config_hash(self) -> str:
        return identity_hash(self.identity())


# --------------------------------------------------------------------------------------------------
# records
def _window(row: dict[str, Any], start: int, stop: int, sign: float = 1.0) -> Record:
    start, stop = (
        max(1, start),
        min(len(row["str_tokens"]), stop),
    )  # index 0 is BOS: never shown or scored
    return Record(
        list(row["str_tokens"][start:stop]),
        [sign * a for a in row["activations"][start:stop]],
        "random" if row["kind"] == "random" else "top",
        row.get("context_id"),
    )


def peak_window(row: dict[str, Any], before: int, after: int, sign: float = 1.0) -> Record:
    acts = row["activations"]
    peak = max(range(1, len(acts)), key=lambda i: sign * acts[i]) if len(acts) > 1 else 0
    return _window(row, peak - before, peak + after + 1, sign)


def explain_records(
    store: Store,
    run_id: int,
    layer: int,
    neuron: int,
    cfg: ExplainConfig,
    kind: str = "top",
    sign: float = 1.0,
) -> list[Record]:
    rows = list(store.examples(run_id, layer, neuron, kinds=[kind], split="train"))[
        : cfg.explain_records
    ]
    return [peak_window(r, cfg.explain_before, cfg.explain_after, sign) for r in rows]


def heldout_records(
    store: Store,
    run_id: int,
    layer: int,
    neuron: int,
    cfg: ExplainConfig,
    kind: str = "top",
    sign: float = 1.0,
) -> list[Record]:
    """The scoring set: test-split top (or bottom) examples around their peak, plus test-split
    random examples."""
    tops = list(store.examples(run_id, layer, neuron, kinds=[kind], split="test"))[: cfg.sim_top]
    randoms = list(store.examples(run_id, layer, neuron, kinds=["random"], split="test"))[
        : cfg.sim_random
    ]
    out = [peak_window(r, cfg.sim_window - 5, 4, sign) for r in tops]
    out += [_window(r, 1, 1 + cfg.sim_window, sign) for r in randoms]
    return out


def validation_records(
    store: Store, run_id: int, layer: int, neuron: int, cfg: ExplainConfig
) -> list[Record]:
    """Where best-of-n chooses among candidates: training-split top examples the explainer is not
    shown (those after the first ``explain_records``) and training-split random examples, cut as
    the test records are. Never the test split, which the final score is reported on.

    When the neuron is the same everywhere on those (a rare feature: the unseen top examples do not
    fire, or there are none), every candidate would score "undefined" there and the first would be
    kept by default; the shown examples, cut the same way, are added then - still training text, and
    the only training text on which the candidates can be told apart."""
    train = list(store.examples(run_id, layer, neuron, kinds=["top"], split="train"))
    tops = train[cfg.explain_records : cfg.explain_records + cfg.sim_top]
    randoms = list(store.examples(run_id, layer, neuron, kinds=["random"], split="train"))[
        : cfg.sim_random
    ]
    out = [peak_window(r, cfg.sim_window - 5, 4) for r in tops]
    out += [_window(r, 1, 1 + cfg.sim_window) for r in randoms]
    if len({a for r in out for a in r.activations}) < 2:
        out = [peak_window(r, cfg.sim_window - 5, 4) for r in train[: cfg.explain_records]] + out
    return out


# --------------------------------------------------------------------------------------------------
# baseline
def baseline_explanation(records: list[Record], max_activation: float, k: int = 3) -> str:
    """Token lookup: the (normalised) tokens at which the neuron fires most, summed over the
    training examples."""
    weight: dict[str, float] = defaultdict(float)
    shown: dict[str, str] = {}
    for r in records:
        for tok, act in zip(r.tokens, r.activations, strict=True):
            if act > 0.3 * max_activation:
                key = normalize_token(tok)
                weight[key] += act
                shown.setdefault(key, tok.strip() or tok)
    if not weight:
        return "nothing in particular"
    best = sorted(weight, key=lambda t: -weight[t])[:k]
    quoted = [f'"{escape_token(shown[t])}"' for t in best]
    return (
        "the token " + quoted[0]
        if len(quoted) == 1
        else "the tokens " + ", ".join(quoted[:-1]) + " and " + quoted[-1]
    )


def n2g_evidence(graph: NeuronGraph, limit: int) -> list[str]:
    """The graph's strongest end paths as lines ``earlier ... activating: strength`` (strength on
    0-9)."""
    paths: list[tuple[float, str]] = []

    def visit(node: Any, trail: list[str]) -> None:
        trail = trail + [node.token]
        if node.is_end:
            context = [("*" if t == "\u0000*" else escape_token(t)) for t in reversed(trail[1:])]
            line = (" ".join(context) + " ... " if context else "") + escape_token(trail[0])
            paths.append((node.activation, f"{line}: {round(node.activation * SCALE_MAX)}"))
        for child in node.children.values():
            visit(child, trail)

    for root in graph.roots.values():
        visit(root, [])
    paths.sort(key=lambda p: -p[0])
    return [p[1] for p in paths[:limit]]


# --------------------------------------------------------------------------------------------------
# one neuron
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

    @property
    def cost_usd(self) -> float | None:
        """Dollars of this neuron's rows (explainer and simulator each at their own price); None
        without prices."""
        costs = [
            r["cost_usd"] for r in self.explanations + self.scores if r.get("cost_usd") is not None
        ]
        return sum(costs) if costs else None


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


def process_neuron(
    job: NeuronJob,
    client: LLMClient,
    sim: Simulator,
    cfg: ExplainConfig,
    templates: Templates,
    prices: dict[str, dict[str, float]] | None,
) -> NeuronResult:
    """Everything LLM-related for one neuron; returns rows for the main thread to write. Never
    raises LLMFailure: a failure becomes a failed row carrying the reason."""
    now = time.time()
    usage = Usage()
    explanations: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    evidence = (
        n2g_evidence(job.graph, cfg.n2g_paths) if (job.graph is not None and cfg.use_n2g) else None
    )

    def add_explanation(
        kind: str,
        text: str | None,
        error: str | None,
        used: Usage,
        model: str,
        seconds: float,
        hashed: str | None = None,
        candidates: list[dict[str, Any]] | None = None,
    ) -> None:
        explanations.append(
            {
                "kind": kind,
                "status": "ok" if error is None else "failed",
                "text": text,
                "error": error,
                "prompt_version": cfg.prompt_version,
                "prompt_hash": hashed,
                "model": model,
                "candidates": json.dumps(candidates, ensure_ascii=False) if candidates else None,
                "prompt_tokens": used.prompt_tokens,
                "completion_tokens": used.completion_tokens,
                "cost_usd": used.cost(model, prices),
                "seconds": seconds,
                "created": now,
            }
        )

    def add_score(
        method: str, result: dict[str, Any] | None, error: str | None, used: Usage, mode: str | None
    ) -> None:
        result = result or {}
        status = (
            "failed"
            if error is not None
            else ("ok" if result.get("score") is not None else "undefined")
        )
        if status == "undefined":
            # why: constant or non-finite held-out activations
            error = result.get("undefined") or "no score"
        scores.append(
            {
                "method": method,
                "status": status,
                "score": result.get("score"),
                "score_raw": result.get("score_raw"),
                "score_top": result.get("score_top"),
                "score_random": result.get("score_random"),
                "r2": result.get("r2"),
                "n_tokens": result.get("n_tokens"),
                "simulator_model": cfg.simulator_model if mode else None,
                "simulator_mode": mode,
                "simulation": result.get("simulation"),
                "error": error,
                "prompt_tokens": used.prompt_tokens,
                "completion_tokens": used.completion_tokens,
                "cost_usd": used.cost(cfg.simulator_model, prices),
                "created": now,
            }
        )

    if not job.heldout:
        # nothing to score on (tiny corpus, small top_k): say so for this neuron instead of paying
        # for an explanation that can never be scored
        reason = (
            "not explained: no held-out records to score on (the harvest kept no "
            "test-split examples for this neuron; harvest more tokens or a larger top_k)"
        )
        add_explanation("llm", None, reason, Usage(), cfg.explainer_model, 0.0)
        add_score("explanation", None, reason, Usage(), None)
        return NeuronResult(job, explanations, scores, usage)
    sides = [
        (
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
        sides.append(
            (
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
    for kind, method, train, heldout, max_act, sign, ev, output in sides:
        t0 = time.time()
        messages = explain_messages(cfg, templates, train, max_act, ev, output)
        hashed = prompt_hash(messages)
        candidates = None
        try:
            if kind == "llm" and cfg.candidates > 1 and job.valid:
                text, used, hashed, candidates = best_of_n(job, client, sim, cfg, templates, ev)
            else:
                text, used = _explain(client, cfg, messages, templates)
            usage.add(used)
            add_explanation(
                kind,
                text,
                None,
                used,
                cfg.explainer_model,
                time.time() - t0,
                hashed,
                candidates,
            )
        except LLMFailure as exc:
            add_explanation(
                kind, None, exc.reason, Usage(), cfg.explainer_model, time.time() - t0, hashed
            )
            add_score(method, None, f"no explanation to simulate: {exc.reason}", Usage(), None)
            continue
        try:
            result, used = simulate_score(sim, text, heldout, max_act, sign)
            usage.add(used)
            add_score(method, result, None, used, sim.mode)
        except LLMFailure as exc:
            add_score(method, None, exc.reason, Usage(), sim.mode)
    if cfg.baseline:
        text = baseline_explanation(job.train, job.max_activation)
        add_explanation("baseline", text, None, Usage(), "token-lookup", 0.0)
        try:
            result, used = simulate_score(sim, text, job.heldout, job.max_activation, 1.0)
            usage.add(used)
            add_score("baseline", result, None, used, sim.mode)
        except LLMFailure as exc:
            add_score("baseline", None, exc.reason, Usage(), sim.mode)
    for method, text in job.extra.items():
        add_explanation(method, text, None, Usage(), "given", 0.0)
        try:
            result, used = simulate_score(sim, text, job.heldout, job.max_activation, 1.0)
            usage.add(used)
            add_score(method, result, None, used, sim.mode)
        except LLMFailure as exc:
            add_score(method, None, exc.reason, Usage(), sim.mode)
    if job.graph is not None:
        preds = [job.graph.predict(r.tokens) for r in job.heldout]
        add_score(
            "n2g",
            score_predictions(preds, job.heldout, job.max_activation, 1.0),
            None,
            Usage(),
            None,
        )
    return NeuronResult(job, explanations, scores, usage)


Commit = Callable[[list[NeuronResult]], None]
"""Writes finished neurons to the database, in one transaction (the driver's side of a runner)."""

JobRunner = Callable[
    [
        Iterator[NeuronJob],
        LLMClient,
        Simulator,
        ExplainConfig,
        Templates,
        dict[str, dict[str, float]] | None,
        Commit,
    ],
    None,
]
"""Processes every job (:func:`process_neuron`) and hands the results to ``Commit`` on the calling
thread: :func:`run_in_threads` here, Ray tasks in :mod:`autointerp.executors`."""


def run_in_threads(
    jobs: Iterator[NeuronJob],
    client: LLMClient,
    sim: Simulator,
    cfg: ExplainConfig,
    templates: Templates,
    prices: dict[str, dict[str, float]] | None,
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


# --------------------------------------------------------------------------------------------------
# layers
@dataclass
class ExplainSummary:
    explained: int = 0
    skipped: int = 0
    failed: int = 0  # neurons with any failed row (explanation or score)
    unexplained: int = 0  # of those, neurons whose LLM explanation itself failed
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None  # None when no price table was given
    seconds: float = 0.0
    run_id: int | None = None
    neurons: list[tuple[int, int]] = field(default_factory=list)


def check_config(cfg: ExplainConfig) -> None:
    """Refuse settings that leave nothing to score, before any LLM call is paid for (the numbers
    the user gives are checked when the config is made; see ``ExplainConfig.__post_init__``)."""
    if cfg.sim_window < 2:
        raise UserError("The simulation window must be at least 2 tokens.")


def plan_neurons(
    store: Store, model: str, layers: list[int], spec: str | None, d_mlp: int
) -> list[tuple[int, dict[str, Any], list[int]]]:
    plan = []
    for layer in layers:
        run = store.latest_complete_run(model, layer)
        if run is None:
            raise UserError(
                f"Layer {layer} of {model} has not been harvested yet; run `autointerp harvest "
                f"--model {model} --layers {layer}` first."
            )
        plan.append((layer, run, select_neurons(store, model, layer, spec, d_mlp)))
    return plan


def check_heldout(
    store: Store, plan: list[tuple[int, dict[str, Any], list[int]]], cfg: ExplainConfig
) -> None:
    """Refuse, before any run row or LLM call, a harvest too small to score on: with no held-out
    records every simulation would fail. Every neuron of a run keeps the same number of examples, so
    one neuron per layer tells."""
    for layer, run, neurons in plan:
        if neurons and not heldout_records(store, run["id"], layer, neurons[0], cfg):
            config = run.get("config") or {}
            raise UserError(
                f"Harvest run {run['id']} (layer {layer}) has no held-out examples to "
                f"score on (top_k={config.get('top_k')}, random_k="
                f"{config.get('random_k')}: the test split is every 4th example); "
                "harvest with --top-k 4 or more."
            )


def output_tokens(store: Store, model: str, layer: int, neuron: int, n: int) -> OutputTokens:
    """The ``n`` tokens the neuron's output promotes most and the ``n`` it suppresses most, from the
    stored weight facts (fewer when ``autointerp weights`` kept fewer)."""
    facts = store.weight_facts(model, layer, neuron)
    if facts is None:
        raise UserError(_no_weights(model, [layer]))
    return OutputTokens(
        [t["token"] for t in facts["top_tokens"][:n]],
        [t["token"] for t in facts["bottom_tokens"][:n]],
    )


def _no_weights(model: str, layers: list[int]) -> str:
    listed = ",".join(map(str, layers))
    return (
        f"--output-tokens shows what a neuron's output promotes, from its weights, but layer(s)"
        f" {listed} of {model} have none stored; run `autointerp weights {model} --layers"
        f" {listed}` on the same database first."
    )


def check_output_evidence(
    store: Store, model: str, plan: list[tuple[int, dict[str, Any], list[int]]], cfg: ExplainConfig
) -> None:
    """With ``output_tokens`` > 0, refuse (before any LLM call) layers whose weight facts are not
    stored."""
    if not cfg.output_tokens:
        return
    missing = sorted({layer for layer, _, neurons in plan if neurons} - store.weight_layers(model))
    if missing:
        raise UserError(_no_weights(model, missing))


def _job(
    store: Store, run: dict[str, Any], layer: int, neuron: int, cfg: ExplainConfig, gated: bool
) -> NeuronJob:
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


def explain_layers(
    store: Store,
    model: str,
    layers: list[int],
    neurons_spec: str | None,
    cfg: ExplainConfig,
    client: LLMClient,
    templates: Templates,
    prices: dict[str, dict[str, float]] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    extra: dict[tuple[int, int], dict[str, str]] | None = None,
    neurons: dict[int, list[int]] | None = None,
    runner: JobRunner | None = None,
) -> ExplainSummary:
    """Explain and score the chosen neurons of each layer; returns counts and the tokens spent.

    ``extra`` adds explanations to simulate beside the LLM's, per (layer, neuron) and score method
    (calibration's true descriptions); ``neurons`` (layer -> neuron list) replaces ``neurons_spec``
    (eval's seeded sample). ``runner`` processes the neurons (default :func:`run_in_threads`; Ray
    tasks: :func:`autointerp.executors.explain_runner`); the rows and the database writes are the
    same whichever runs them."""
    check_config(cfg)
    info = store.model_info(model)
    if info is None:
        raise UserError(
            f"{model} has not been harvested in {store.path}; run `autointerp harvest` first."
        )
    plan = plan_neurons(store, model, layers, neurons_spec, int(info["d_mlp"]))
    if neurons is not None:
        plan = [(layer, run, neurons.get(layer, [])) for layer, run, _ in plan]
    check_heldout(store, plan, cfg)
    check_output_evidence(store, model, plan, cfg)
    config_hash = cfg.config_hash()
    run = store.find_run(model, "explain", config_hash, (0, 1))
    run_id = (
        run["id"]
        if run
        else store.create_run(model, "explain", cfg.identity(), config_hash, (0, 1), {})
    )
    summary = ExplainSummary(run_id=run_id)
    todo: list[tuple[dict[str, Any], int, int]] = []
    for layer, harvest_run, neurons in plan:
        state = store.explain_state(harvest_run["id"], layer, config_hash)
        for n in neurons:
            if n in state and not (retry_failed and state[n] == "failed"):
                summary.skipped += 1
            else:
                todo.append((harvest_run, layer, n))
    started = time.time()
    sim = (
        Simulator(client, cfg.simulator_model, templates, cfg.simulator_mode, cfg.sim_logprobs)
        if todo
        else None
    )
    bar = tqdm(
        total=len(todo),
        unit="neuron",
        disable=not progress,
        desc=f"explain {model}",
        dynamic_ncols=True,
    )
    gated = bool(info.get("gated_mlp"))

    def jobs() -> Iterator[NeuronJob]:
        """Each neuron's job, made when it is about to be sent (store reads stay on this thread)."""
        for harvest_run, layer, n in todo:
            job = _job(store, harvest_run, layer, n, cfg, gated)
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
            summary.usage.add(result.usage)
            if result.cost_usd is not None:
                summary.cost_usd = (summary.cost_usd or 0.0) + result.cost_usd
            failed = any(r["status"] == "failed" for r in result.explanations + result.scores)
            summary.failed += failed
            summary.explained += not failed
            summary.unexplained += not any(
                r["kind"] == "llm" and r["status"] == "ok" for r in result.explanations
            )
            summary.neurons.append((result.job.layer, result.job.neuron))
            bar.update(1)
        minutes = max(time.time() - started, 1e-9) / 60
        bar.set_postfix(
            neurons_per_min=f"{bar.n / minutes:.1f}",
            tokens=summary.usage.prompt_tokens + summary.usage.completion_tokens,
            failed=summary.failed,
        )

    try:
        if sim is not None:
            (runner or run_in_threads)(jobs(), client, sim, cfg, templates, prices, commit)
    finally:
        bar.close()
    summary.seconds = time.time() - started
    store.finish_stage(run_id)
    return summary
