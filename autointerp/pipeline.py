"""A whole layer end to end (``autointerp run``): harvest, N2G graphs, explanations scored by
simulation, and the search index, for the chosen neurons of some layers, at a cost said up front.

Why a module of its own that runs nothing itself: each stage already plans, skips what is stored
and runs its work (:func:`autointerp.harvest.harvest`, :func:`autointerp.n2g.run.graph_layers`,
:func:`autointerp.explain.run.explain_layers`, :func:`autointerp.token_index.build_search_indexes`),
as ``make explain`` chains them. This module only decides which of them have work left, says what
that will cost (:mod:`autointerp.costs`, from this database's own measurements), and calls them in
order. So a rerun is resumable exactly as each stage is, and does no new work when everything is
stored: a stage with nothing to do is not even started (no model load, no LLM server).

:func:`plan_run` reads the database and writes nothing (``--dry-run`` stops there); it loads the
subject model only when the database has never harvested it (its depth and width are needed). Every
mistake the database can tell (a layer the model lacks, a harvest too small to score on, a bad
``--neurons``) is one sentence before anything is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autointerp.costs import StageCost, explain_cost, graph_costs, harvest_cost
from autointerp.errors import UserError
from autointerp.explain.config import ExplainConfig
from autointerp.explain.neuron import Prices
from autointerp.explain.plan import ExplainPlan, plan_explain
from autointerp.explain.prompts import Templates
from autointerp.explain.run import (
    STOP_AFTER_FAILURES,
    ExplainSummary,
    JobRunner,
    explain_layers,
    neurons_to_do,
)
from autointerp.harvest import HarvestConfig, HarvestResult, harvest
from autointerp.llm.session import LLMSession
from autointerp.models import SubjectModel
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.run import GraphSummary, graph_layers
from autointerp.ranges import is_auto_layers, parse_layers, resolve_layers
from autointerp.selection import select_neurons, spec_size
from autointerp.store import Store
from autointerp.token_index import build_search_indexes


@dataclass(frozen=True)
class RunRequest:
    """What ``autointerp run`` was asked for: the model, ``layers`` as typed (``3``, ``0-5``,
    ``auto``), the ``neurons`` spec of each (``all``, ``best:K``, ``top:K``, ranges), and each
    stage's config. ``harvest``'s layers are set by the run (the requested layers not harvested
    yet); ``explain`` does not name its LLMs (the session does)."""

    model: str
    layers: str
    neurons: str | None
    harvest: HarvestConfig
    graph: N2GConfig = field(default_factory=N2GConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    #: the subject model's dtype name (part of the graphs' identity)
    dtype: str = "float32"
    #: choose the harvest's batch size from the model and device (the harvest command's default)
    fit_batch: bool = True
    retry_failed: bool = False
    stop_after: int | None = STOP_AFTER_FAILURES


@dataclass(frozen=True)
class LayerStatus:
    """One layer before the run: the harvest run it reads (None: to be harvested), how many
    neurons the spec chooses in it (None: not known before its harvest, for ``best:K`` the most),
    and how many of them already have a graph and an explanation under this run's configs."""

    layer: int
    harvest_run: int | None
    neurons: int | None
    graphed: int = 0
    explained: int = 0

    @property
    def graphs_todo(self) -> int | None:
        return None if self.neurons is None else self.neurons - self.graphed

    @property
    def explain_todo(self) -> int | None:
        return None if self.neurons is None else self.neurons - self.explained


@dataclass
class RunPlan:
    """What a run will do and what it will cost (:func:`plan_run`)."""

    model: str
    neurons_spec: str
    db: str
    explainer: str
    tokens: int | None
    layers: list[LayerStatus]
    costs: list[StageCost]

    @property
    def to_harvest(self) -> list[int]:
        return [s.layer for s in self.layers if s.harvest_run is None]

    @property
    def layer_numbers(self) -> list[int]:
        return [s.layer for s in self.layers]

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layers": self.layer_numbers,
            "neurons": self.neurons_spec,
            "db": self.db,
            "explainer_model": self.explainer,
            "to_harvest": self.to_harvest,
            "tokens": self.tokens,
            "per_layer": [
                {
                    **dataclasses.asdict(s),
                    "graphs_todo": s.graphs_todo,
                    "explain_todo": s.explain_todo,
                }
                for s in self.layers
            ],
            "estimate": [c.as_json() for c in self.costs],
        }


@dataclass
class RunSummary:
    """What a run did, stage by stage (None where the stage had nothing to do)."""

    plan: RunPlan
    harvest: HarvestResult | None = None
    graphs: list[GraphSummary] = field(default_factory=list)
    explain: ExplainSummary = field(default_factory=ExplainSummary)
    index: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def templates(self) -> int:
        """Neurons this run explained with the single-token template (no LLM call)."""
        return self.explain.origins.get("template", 0)


class _Subject:
    """The subject model, loaded on first use only: a rerun with nothing left to graph or harvest
    never loads it."""

    def __init__(self, load: Callable[[], SubjectModel]) -> None:
        self.load = load
        self.model: SubjectModel | None = None

    def __call__(self) -> SubjectModel:
        if self.model is None:
            self.model = self.load()
        return self.model


def _model_shape(store: Store | None, model: str, subject: _Subject) -> tuple[str, int, int]:
    """``(name, n_layers, d_mlp)`` from the facts a harvest stored, or from the model itself when
    this database has never harvested it."""
    info = store.model_info(model) if store is not None else None
    if info and info.get("n_layers") and info.get("d_mlp"):
        return model, int(info["n_layers"]), int(info["d_mlp"])
    m = subject()
    return m.name, m.n_layers, m.d_mlp


def _resolve_layers(text: str, n_layers: int) -> list[int]:
    layers = resolve_layers(text, n_layers) if is_auto_layers(text) else parse_layers(text)
    if not layers:
        raise UserError("Give the layers to run with --layers, e.g. --layers 3 or 0-5.")
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise UserError(f"Layer {bad[0]} does not exist: the model has layers 0-{n_layers - 1}.")
    return sorted(set(layers))


def graph_hash(cfg: N2GConfig, dtype: str) -> str:
    """The hash the graph stage files this run's graphs under (the config with the model's dtype,
    as :func:`autointerp.n2g.run.plan_graphs` makes it)."""
    return replace(cfg, dtype=dtype).config_hash()


def _expected_plan(plan: ExplainPlan, llm: LLMSession) -> ExplainPlan:
    """The explain plan with the names the session will give its models: an endpoint's are known
    now, the local server's are its packaged model's name."""
    explainer = llm.explainer_model or llm.local or ""
    return plan.with_models(explainer, llm.simulator_model or explainer)


def _harvested_status(
    store: Store, model: str, layers: list[int], request: RunRequest, llm: LLMSession
) -> dict[int, LayerStatus]:
    """The status of the harvested ``layers``: their chosen neurons and what of them is stored.
    plan_explain's checks (held-out text, weight facts) refuse a hopeless run here, up front."""
    if not layers:
        return {}
    plan = _expected_plan(plan_explain(store, model, layers, request.explain, request.neurons), llm)
    config_hash = plan.cfg.config_hash()
    ghash = graph_hash(request.graph, request.dtype)
    out = {}
    for lp in plan.layers:
        run_id = int(lp.run["id"])
        graphed = store.graph_done(run_id, lp.layer, ghash)
        state = store.explain_state(run_id, lp.layer, config_hash)
        explained = [
            n
            for n in lp.neurons
            if n in state and not (request.retry_failed and state[n] == "failed")
        ]
        out[lp.layer] = LayerStatus(
            lp.layer,
            run_id,
            len(lp.neurons),
            sum(n in graphed for n in lp.neurons),
            len(explained),
        )
    return out


def plan_run(
    db: str | Path,
    request: RunRequest,
    load_model: Callable[[], SubjectModel],
    llm: LLMSession,
    *,
    subject: _Subject | None = None,
) -> RunPlan:
    """What the run will do and cost, from the database at ``db`` (which may not exist yet),
    writing nothing. ``llm`` is the (not yet entered) session the explanations will use: its
    explainer names the measurements the estimate reads."""
    subject = subject or _Subject(load_model)
    spec_size(request.neurons, None)  # a bad --neurons is one sentence before anything else
    path = Path(db)
    store = Store(path, create=False) if path.is_file() else None
    name, n_layers, d_mlp = _model_shape(store, request.model, subject)
    layers = _resolve_layers(request.layers, n_layers)
    harvested = set(store.harvested_layers(name)) if store is not None else set()
    status = (
        _harvested_status(store, name, [x for x in layers if x in harvested], request, llm)
        if store is not None
        else {}
    )
    states = [
        status.get(layer) or LayerStatus(layer, None, spec_size(request.neurons, d_mlp))
        for layer in layers
    ]
    explainer = llm.explainer_model or llm.local or ""
    to_harvest = [s.layer for s in states if s.harvest_run is None]
    costs = []
    if to_harvest:
        costs.append(harvest_cost(store, name, to_harvest, request.harvest.n_tokens))
    costs += graph_costs(
        store, name, {s.layer: s.graphs_todo for s in states if s.graphs_todo != 0}
    )
    explain_todo = [s.explain_todo for s in states]
    if any(n != 0 for n in explain_todo):
        todo = None if None in explain_todo else sum(n or 0 for n in explain_todo)
        costs.append(explain_cost(store, name, explainer, todo))
    return RunPlan(
        name,
        request.neurons or "all",
        str(path),
        explainer,
        request.harvest.n_tokens,
        states,
        costs,
    )


def _harvest_missing(
    subject: _Subject,
    db: Path,
    request: RunRequest,
    layers: list[int],
    progress: bool,
    log: Callable[[str], None],
) -> HarvestResult:
    """Harvest ``layers`` with the request's harvest config (a rerun of the same request resumes
    an interrupted harvest: the config is the same)."""
    model = subject()
    cfg = replace(request.harvest, model=model.name, layers=layers)
    if request.fit_batch:  # the harvest command's default: what the device holds
        cfg.batch_size = model.suggest_batch_size(cfg.ctx_len, layers)
    return harvest(model, db, cfg, progress=progress, log=log)


def _graph(
    subject: _Subject, store: Store, plan: RunPlan, request: RunRequest, progress: bool
) -> list[GraphSummary]:
    """The graphs still missing for the chosen neurons (the stage skips the stored ones); no model
    load when none is missing."""
    ghash = graph_hash(request.graph, request.dtype)
    d_mlp = int((store.model_info(plan.model) or {})["d_mlp"])
    todo = 0
    chosen: dict[int, int] = {}
    for layer in plan.layer_numbers:
        run = store.harvest_run(plan.model, layer)
        neurons = select_neurons(store, plan.model, layer, request.neurons, d_mlp)
        chosen[layer] = len(neurons)
        todo += len(set(neurons) - store.graph_done(int(run["id"]), layer, ghash))
    if not todo:
        return [GraphSummary(layer, 0, n, 0.0) for layer, n in chosen.items()]
    return graph_layers(
        subject(), store, plan.layer_numbers, request.neurons, request.graph, progress=progress
    )


def _explain(
    store: Store,
    plan: RunPlan,
    request: RunRequest,
    llm: LLMSession,
    templates: Templates,
    prices: Prices | None,
    runner: JobRunner | None,
    progress: bool,
) -> ExplainSummary:
    """Explain and score the chosen neurons not yet done under this config; the LLM session (a
    local server's start) only when some are left."""
    eplan = plan_explain(store, plan.model, plan.layer_numbers, request.explain, request.neurons)
    counted = ExplainSummary()
    if not neurons_to_do(store, _expected_plan(eplan, llm), request.retry_failed, counted):
        return counted
    with llm:
        return explain_layers(
            store,
            eplan.with_models(llm.explainer_model, llm.simulator_model),
            llm.client,
            templates,
            prices,
            retry_failed=request.retry_failed,
            progress=progress,
            runner=runner,
            stop_after=request.stop_after,
        )


def run_layers(
    db: str | Path,
    request: RunRequest,
    load_model: Callable[[], SubjectModel],
    llm: LLMSession,
    templates: Templates,
    *,
    prices: Prices | None = None,
    runner: JobRunner | None = None,
    dry_run: bool = False,
    progress: bool = True,
    on_plan: Callable[[RunPlan], None] = lambda plan: None,
    log: Callable[[str], None] = lambda message: None,
) -> RunSummary:
    """Plan the run (:func:`plan_run`), hand the plan to ``on_plan`` (the estimate, said before any
    work), and unless ``dry_run`` run each stage that has work left: harvest the layers not
    harvested, graph, explain and score the chosen neurons, and bring the search index up to date.
    ``load_model`` gives the subject model (called at most once, and only when a stage needs it);
    ``llm`` is entered only when some neuron is left to explain."""
    started = time.time()
    subject = _Subject(load_model)
    plan = plan_run(db, request, load_model, llm, subject=subject)
    on_plan(plan)
    summary = RunSummary(plan)
    if dry_run:
        return summary
    path = Path(db)
    if plan.to_harvest:
        log(f"1/4 harvest: layers {','.join(map(str, plan.to_harvest))} of {plan.model}")
        summary.harvest = _harvest_missing(subject, path, request, plan.to_harvest, progress, log)
    store = Store(path)
    log("2/4 N2G graphs of the chosen neurons (stored ones are skipped)")
    summary.graphs = _graph(subject, store, plan, request, progress)
    log("3/4 explanations and scores (stored ones are skipped)")
    summary.explain = _explain(store, plan, request, llm, templates, prices, runner, progress)
    log("4/4 search index")
    summary.index = build_search_indexes(store, plan.model, progress=progress)
    summary.seconds = time.time() - started
    return summary
