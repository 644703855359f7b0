"""Candidate explanations compete on the validation split; the one that predicts the neuron best
there is kept, and every candidate is stored with its origin and its validation score.

Why: the packaged 1.5B writes phrases that lose to a list of tokens (BENCHMARKS.md), while the
token statistics and the N2G graph it is shown predict the neuron well. So the pipeline writes
candidates of its own (:mod:`autointerp.explain.candidates`), the LLM is asked only for what it can
be checked on - a first explanation, revisions after feedback (:mod:`autointerp.explain.feedback`),
and a plain-words restatement of the best graph-written candidate - and every one is judged the
same way: its rule (written sentences compile with no LLM call, the others through the LLM
compiler) is scored on validation records the candidates were not made from, with the correlation
the test split is reported with. Who wins, and by how much, is measured, not assumed: ``eval``
reports each origin's share and the first LLM explanation's own score beside the kept one.

Origins: ``llm`` (the first explanation; with best-of-n, every sample), ``revision`` (a feedback
round), ``graph-summary`` (the restatement), and, written with no LLM, ``template`` (a
single-token neuron: then no LLM is asked at all), ``tokens`` and ``graph``. Ties keep the
earlier origin in :data:`ORIGIN_ORDER`: a reader prefers a phrase to a list that predicts as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autointerp.explain.candidates import (
    Candidate,
    graph_candidates,
    rule_score,
    single_token,
    token_candidates,
)
from autointerp.explain.config import ExplainConfig
from autointerp.explain.explainer import (
    ask_explainer,
    prompt_hash,
    sample_messages,
)
from autointerp.explain.feedback import mistakes, restate_messages, revision_messages
from autointerp.explain.job import NeuronJob
from autointerp.explain.prompts import Templates
from autointerp.explain.rules import Rule
from autointerp.explain.simulate import Simulator
from autointerp.explain.templates import Clause, clauses_rule, explanation_text
from autointerp.llm.client import LLMClient, LLMFailure, Usage

#: Tie-break order of origins (earlier wins a tie on validation).
ORIGIN_ORDER = ("llm", "revision", "graph-summary", "template", "graph", "tokens")
#: Origins whose text an LLM wrote.
LLM_ORIGINS = ("llm", "revision", "graph-summary")


@dataclass
class Entry:
    """One candidate in the competition: its text and rule, or why it has none."""

    #: the sentence (None when the LLM failed to write one)
    text: str | None
    origin: str
    #: the compiled rule (None when it could not be compiled, or there is no text)
    rule: Rule | None = None
    #: the score on the validation records (None: undefined there, or no rule)
    valid: float | None = None
    #: why the candidate has no text or no rule
    error: str | None = None
    #: the feedback round that wrote it
    round: int | None = None
    #: the hash of the prompt that produced it (LLM origins)
    prompt_hash: str | None = None
    #: the LLM failure behind ``error`` (writing or compiling it), kept to tell an endpoint that
    #: is down from a wrong answer
    failure: LLMFailure | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        """As stored in ``explanations.candidates``."""
        out: dict[str, Any] = {
            "text": self.text,
            "origin": self.origin,
            "valid_score": self.valid,
            "error": self.error,
        }
        if self.round is not None:
            out["round"] = self.round
        return out


@dataclass
class Choice:
    """What the competition kept, everything that competed, and what the LLM calls used."""

    chosen: Entry
    entries: list[Entry]
    #: the first LLM explanation (None when the LLM was not asked: a single-token neuron)
    first: Entry | None
    usage: Usage = field(default_factory=Usage)


class Competition:
    """The candidates of one neuron, each compiled and scored on its validation records."""

    def __init__(self, job: NeuronJob, sim: Simulator) -> None:
        self.job = job
        self.sim = sim
        self.entries: list[Entry] = []
        self.usage = Usage()

    def add(
        self,
        text: str,
        origin: str,
        rule: Rule | None = None,
        round: int | None = None,
        hashed: str | None = None,
    ) -> Entry:
        """Compile ``text`` (unless its ``rule`` is known) and score it on validation; a rule the
        compiler cannot make is a candidate with the reason, never a score."""
        entry = Entry(text, origin, round=round, prompt_hash=hashed)
        try:
            if rule is None:
                rule, used = self.sim.compile_rule(text)
                self.usage.add(used)
            entry.rule = rule
            entry.valid = rule_score(rule, self.job.valid, self.job.max_activation)
        except LLMFailure as exc:
            entry.error = f"not compiled: {exc.reason}"
            entry.failure = exc
        self.entries.append(entry)
        return entry

    def failed(self, origin: str, failure: LLMFailure, round: int | None = None) -> Entry:
        entry = Entry(None, origin, error=failure.reason, round=round, failure=failure)
        self.entries.append(entry)
        return entry

    def best(self, origins: tuple[str, ...] = ORIGIN_ORDER) -> Entry | None:
        """The entry with the best validation score among ``origins`` (ties: :data:`ORIGIN_ORDER`,
        then the earlier entry); None when none has a rule."""
        ranked = [
            (e.valid if e.valid is not None else float("-inf"), -ORIGIN_ORDER.index(e.origin), -i)
            for i, e in enumerate(self.entries)
            if e.origin in origins and e.rule is not None
        ]
        return self.entries[-max(ranked)[2]] if ranked else None

    def has(self, text: str) -> bool:
        return any(e.text == text for e in self.entries)


def compete(
    job: NeuronJob,
    client: LLMClient,
    sim: Simulator,
    cfg: ExplainConfig,
    templates: Templates,
    evidence: list[str] | None,
) -> Choice:
    """Every candidate of one neuron (module docstring), scored on validation; the best is kept.
    When none could be compiled, the first one written is kept without a rule (its score is then a
    failure with the reason); raises LLMFailure with the first reason when none was written."""
    comp = Competition(job, sim)
    single = False
    if cfg.written_candidates:
        written, single = written_candidates(job)
        for c in written:
            comp.add(c.text, c.origin, c.rule)
    first = None
    if not single:
        first = first_explanations(comp, client, cfg, templates, evidence)
        feedback_rounds(comp, client, cfg, templates)
        if cfg.restate:
            restated(comp, client, cfg, templates)
    chosen = comp.best() or next((e for e in comp.entries if e.text is not None), None)
    if chosen is None:
        failure = next((e.failure for e in comp.entries if e.failure), None)
        raise failure or LLMFailure("no candidate", attempts=1, transient=False)
    return Choice(chosen, comp.entries, first, comp.usage)


def written_candidates(job: NeuronJob) -> tuple[list[Candidate], bool]:
    """The candidates written with no LLM, and whether the neuron is a single-token one (every top
    training example peaks on the same token: then ``the token "X"`` is written as a template and
    the LLM is not asked)."""
    tops = [r for r in job.train_all if r.kind == "top"]
    token = single_token(tops) if len(tops) >= 3 else None
    out = token_candidates(job.train_all, job.max_activation)
    if job.graph is not None:
        out += graph_candidates(job.graph, job.train_all, job.max_activation)
    if token is not None:
        clauses = [Clause((token,))]
        text = explanation_text(clauses)
        out = [Candidate(text, "template", clauses_rule(clauses))] + [
            c for c in out if c.text != text
        ]
    return out, token is not None


def first_explanations(
    comp: Competition,
    client: LLMClient,
    cfg: ExplainConfig,
    templates: Templates,
    evidence: list[str] | None,
) -> Entry:
    """The LLM's explanation (origin ``llm``); with best-of-n, ``cfg.candidates`` of them, the
    others hotter with the examples in a seeded shuffled order. Returns the first."""
    job = comp.job
    first: Entry | None = None
    for k in range(cfg.candidates):
        messages = sample_messages(
            cfg, templates, job.train, job.max_activation, evidence, job.output, k
        )
        hashed = prompt_hash(messages)
        try:
            text, used = ask_explainer(client, cfg, messages, templates, sample=k)
            comp.usage.add(used)
            entry = comp.add(text, "llm", hashed=hashed)
        except LLMFailure as exc:
            entry = comp.failed("llm", exc)
            entry.prompt_hash = hashed
        first = first or entry
    assert first is not None  # cfg.candidates >= 1
    return first


def feedback_rounds(
    comp: Competition, client: LLMClient, cfg: ExplainConfig, templates: Templates
) -> None:
    """Up to ``cfg.rounds`` revisions of the best LLM-written candidate so far, each shown that
    candidate's misses and false alarms on validation. The rounds stop early when there is nothing
    to fix, when a revision repeats a candidate, or when it does not beat the one it revised (the
    next round would get the same question)."""
    job = comp.job
    for k in range(1, cfg.rounds + 1):
        base = comp.best(("llm", "revision"))
        if base is None or base.rule is None or base.text is None:
            return
        misses, false_alarms = mistakes(base.rule, job.valid, job.max_activation)
        if not misses and not false_alarms:
            return
        messages = revision_messages(base.text, misses, false_alarms, templates)
        try:
            text, used = ask_explainer(client, cfg, messages, templates)
            comp.usage.add(used)
        except LLMFailure as exc:
            comp.failed("revision", exc, round=k)
            return
        if comp.has(text):
            return
        entry = comp.add(text, "revision", round=k, hashed=prompt_hash(messages))
        if entry.valid is None or (base.valid is not None and entry.valid <= base.valid):
            return


def restated(
    comp: Competition, client: LLMClient, cfg: ExplainConfig, templates: Templates
) -> None:
    """The best graph-written candidate restated in plain words by the LLM (``graph-summary``)."""
    graph = comp.best(("graph",))
    if graph is None or graph.text is None:
        return
    messages = restate_messages(graph.text, templates)
    try:
        text, used = ask_explainer(client, cfg, messages, templates)
        comp.usage.add(used)
    except LLMFailure as exc:
        comp.failed("graph-summary", exc)
        return
    if not comp.has(text):
        comp.add(text, "graph-summary", hashed=prompt_hash(messages))
