"""``autointerp eval``: how good are the explanations of a model, on neurons nobody picked, against
controls.

* **Sample.** A seeded random sample of N neurons per layer among those that fire at all (max
  activation > 0) - never the top ones by activation, which flatter every method. The seed and layer
  fix the sample.
* **Missing stages** (N2G graphs, explanations and scores) run for the sampled neurons only; what is
  stored under the same configs is reused, so a rerun costs nothing.
* **Methods**: the LLM explanation, the token-lookup baseline and the N2G graph, each scored by
  correlation on the same held-out records (:mod:`autointerp.explain.simulate`).
* **Controls**: ``shuffled`` - each neuron scored with the explanation of another sampled neuron of
  the same layer (a fixed-point-free seeded permutation): what an explanation carrying no
  information about *this* neuron scores on these records; ``known_true_description`` /
  ``known_explanation`` - the newest ``calibrate`` result of the model (the simulator's ceiling and
  the explainer's recovery when the answer is known).
* **Summaries**: n, mean, median, bootstrap 95% interval, fraction >= 0.5, failed and undefined
  counts (never averaged in), and paired differences per neuron (explanation - baseline,
  explanation - shuffled, explanation - n2g) with bootstrap intervals: the paired view removes the
  neuron-to-neuron spread.
* **The random-init control** (optional, :mod:`autointerp.eval.control`): the same evaluation of
  the model's architecture with seeded random weights, its summaries and how far the trained
  model's scores stand above them, as the result's ``control`` section.
* **Cheap scorers** (optional, :mod:`autointerp.eval.scorers`): embedding and detection scores of
  each explanation on the same held-out windows, with their Spearman correlation with simulation
  and their cost per neuron - whether a cheaper number could stand in for simulation.

Every evaluation is stored (config + hash + result) as an ``eval`` run, so a later explainer can be
compared.

As the explain stage, it runs in two steps: :func:`plan_eval` draws the sample and checks what the
database can tell (an :class:`autointerp.explain.plan.ExplainPlan` of the sampled neurons), before
any LLM is contacted; :func:`evaluate` runs the plan.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from autointerp.config import check_int, identity_hash
from autointerp.errors import UserError
from autointerp.eval.control import ControlRun, control_section
from autointerp.eval.scorers import detection_score, embedding_score
from autointerp.eval.stats import paired, spearman, summarize
from autointerp.explain.config import ExplainConfig
from autointerp.explain.plan import ExplainPlan, LayerPlan, plan_explain
from autointerp.explain.prompts import Templates
from autointerp.explain.records import heldout_records
from autointerp.explain.run import JobRunner, explain_layers
from autointerp.explain.simulate import Simulator, simulate_score
from autointerp.llm.client import LLMClient, LLMFailure, Usage
from autointerp.store import Store

METHODS = ("explanation", "explanation_first", "baseline", "n2g")
#: The other numbers stored beside each method's score, summarised the same way: the correlation
#: on the random records alone, and the average precision against "the neuron fires".
SIDE_METRICS = ("score_random", "auprc")
#: What each cheap scorer's number is (stored with its agreement with simulation).
SCORER_SCORES = {
    "embedding": "AUROC of cosine(explanation, window) against 'the neuron fires here'",
    "detection": (
        "AUROC of the LLM's yes/no 'does this window contain what the explanation names?' against"
        " 'the neuron fires here' (= balanced accuracy)"
    ),
}

GraphBuilder = Callable[[int, list[int]], None]
"""(layer, neurons) -> builds and stores their N2G graphs (the caller owns the subject model)."""


@dataclass
class EvalConfig:
    layers: list[int]
    sample: int = 16
    seed: int = 0
    #: also score each explanation with the embedding scorer (:mod:`autointerp.eval.scorers`) and
    #: report how well it agrees with simulation
    embedding: bool = False
    #: also score each explanation with the detection scorer (one LLM call per held-out window,
    #: the simulator's model) and report how well it agrees with simulation
    detection: bool = False

    def __post_init__(self) -> None:
        """Nonsense is refused in one sentence when the config is made, before anything runs."""
        if not self.layers:
            raise UserError("--layers names no layer to evaluate.")
        for layer in self.layers:
            check_int(layer, "--layers", 0)
        for option, value in (("--sample", self.sample), ("--seed", self.seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{option} must be a whole number, not {value!r}.")
        if self.sample < 2:
            raise UserError(
                "--sample must be at least 2 (the shuffled control needs another neuron of the "
                "layer)."
            )


@dataclass(frozen=True)
class EvalPlan:
    """An evaluation checked against the database: its config and the explain plan of the sampled
    neurons (their harvest runs, the explain config)."""

    cfg: EvalConfig
    explain: ExplainPlan

    @property
    def model(self) -> str:
        return self.explain.model

    def with_models(self, explainer: str, simulator: str) -> EvalPlan:
        """The same plan with the LLMs' names (known once the LLM session is up)."""
        return dataclasses.replace(self, explain=self.explain.with_models(explainer, simulator))


def _draw(firing: list[int], layer: int, n: int, seed: int) -> list[int]:
    """``n`` of the ``firing`` neurons of ``layer``, drawn uniformly, seeded by seed and layer."""
    rng = random.Random(f"autointerp-eval:{seed}:{layer}")
    return sorted(rng.sample(firing, min(n, len(firing))))


def sample_neurons(store: Store, model: str, layer: int, n: int, seed: int) -> list[int]:
    """``n`` neurons of ``layer`` drawn uniformly (seeded by seed and layer) among those that
    fire."""
    run = store.harvest_run(model, layer)
    return _draw(store.firing_neurons(run["id"], layer), layer, n, seed)


def plan_eval(
    store: Store,
    model: str,
    cfg: EvalConfig,
    explain_cfg: ExplainConfig,
    *,
    weights_to_come: bool = False,
) -> EvalPlan:
    """Draw the sample of every layer and check it as ``explain`` checks its neurons
    (:func:`autointerp.explain.plan.plan_explain`; ``weights_to_come``: the caller computes the
    weight facts ``--output-tokens`` needs, listed in ``plan.explain.missing_weights``)."""

    def sample(layer: int, run: dict[str, Any]) -> list[int]:
        return _draw(store.firing_neurons(run["id"], layer), layer, cfg.sample, cfg.seed)

    explain = plan_explain(
        store, model, cfg.layers, explain_cfg, sample, weights_to_come=weights_to_come
    )
    return EvalPlan(cfg, explain)


def derangement(items: list[int], seed: int) -> dict[int, int]:
    """item -> another item (never itself): a seeded shuffle, each taking the next one's
    explanation."""
    order = list(items)
    random.Random(f"autointerp-shuffle:{seed}").shuffle(order)
    return (
        {order[i]: order[(i + 1) % len(order)] for i in range(len(order))} if len(order) > 1 else {}
    )


def shuffled_scores(
    store: Store,
    run_id: int,
    layer: int,
    explanations: dict[int, str],
    cfg: ExplainConfig,
    sim: Simulator,
    seed: int,
    max_activation: dict[int, float],
) -> dict[int, dict[str, Any]]:
    """Neuron -> ``{"score", "status", "from", "error"}``: scored with another sampled neuron's
    explanation."""
    partner = derangement(sorted(explanations), seed)
    out: dict[int, dict[str, Any]] = {}
    for n, other in partner.items():
        records = heldout_records(store, run_id, layer, n, cfg)
        row: dict[str, Any] = {"from": other, "score": None, "error": None}
        if not records:
            row.update(status="failed", error="no held-out records")
        else:
            try:
                result, _ = simulate_score(
                    sim, explanations[other], records, max_activation[n], 1.0
                )
                row["score"] = result["score"]
                row["status"] = "ok" if result["score"] is not None else "undefined"
                row["error"] = result.get("undefined")
            except LLMFailure as exc:
                row.update(status="failed", error=exc.reason)
        out[n] = row
    return out


@dataclass
class Tally:
    """What the summaries are made of, per method, control and cheap scorer: the score of every
    neuron where it is ``ok`` and the failed and undefined counts (never averaged in); per cheap
    scorer its seconds, LLM usage and failure reasons."""

    scorers: list[str]
    scores: dict[str, dict[tuple[int, int], float | None]] = field(init=False)
    #: per side metric (:data:`SIDE_METRICS`) and method, each neuron's value where it has one
    side: dict[str, dict[str, dict[tuple[int, int], float]]] = field(init=False)
    #: who wrote each kept explanation (``explanations.origin``), counted
    origins: dict[str, int] = field(init=False)
    counts: dict[str, dict[str, int]] = field(init=False)
    seconds: dict[str, float] = field(init=False)
    usage: dict[str, Usage] = field(init=False)
    reasons: dict[str, dict[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = {m: {} for m in (*METHODS, "shuffled", *self.scorers)}
        self.side = {k: {m: {} for m in METHODS} for k in SIDE_METRICS}
        self.origins = {}
        self.counts = {m: {"failed": 0, "undefined": 0} for m in self.scores}
        self.seconds = dict.fromkeys(self.scorers, 0.0)
        self.usage = {name: Usage() for name in self.scorers}
        self.reasons = {name: {} for name in self.scorers}

    def add(self, entry: dict[str, Any]) -> None:
        """Count one neuron's entry under each method."""
        key = (entry["layer"], entry["neuron"])
        for method in self.scores:
            status = entry["status"][method]
            if status == "ok":
                self.scores[method][key] = entry["scores"][method]
            elif status in ("failed", "undefined"):
                self.counts[method][status] += 1
        for metric in SIDE_METRICS:
            for method, value in entry.get(metric, {}).items():
                if value is not None:
                    self.side[metric][method][key] = value
        if entry.get("origin"):
            self.origins[entry["origin"]] = self.origins.get(entry["origin"], 0) + 1


def method_entry(
    layer: int,
    neuron: int,
    stored: tuple[dict[str, Any], dict[str, Any]],
    text: str | None,
    shuffled: dict[str, Any] | None,
) -> dict[str, Any]:
    """One neuron's entry of the result: the status and score of each method (from its ``stored``
    explanations and scores) and of the shuffled control."""
    expl, scores = stored
    entry: dict[str, Any] = {
        "layer": layer,
        "neuron": neuron,
        "scores": {},
        "status": {},
        "explanation": text,
        "origin": (expl.get("llm") or {}).get("origin"),
        "baseline": (expl.get("baseline") or {}).get("text"),
        **{metric: {} for metric in SIDE_METRICS},
    }
    for method in METHODS:
        row = scores.get(method)
        status = row["status"] if row else "missing"
        if method == "explanation" and row is None and "llm" in expl:
            status = expl["llm"]["status"]
        entry["status"][method] = status
        entry["scores"][method] = row["score"] if row and status == "ok" else None
        for metric in SIDE_METRICS:
            entry[metric][method] = row.get(metric) if row and status == "ok" else None
        if row and method == "explanation":
            entry["scores"]["explanation_raw"] = row.get("score_raw")
    entry["status"]["shuffled"] = shuffled["status"] if shuffled else "missing"
    entry["scores"]["shuffled"] = (
        shuffled["score"] if shuffled and shuffled["status"] == "ok" else None
    )
    if shuffled:
        entry["shuffled_from"] = shuffled["from"]
    return entry


class Scoring:
    """The scoring half of an evaluation, after the explain step: each sampled neuron's stored
    scores, the shuffled control and the cheap scorers, tallied for the summaries."""

    def __init__(
        self, store: Store, plan: EvalPlan, client: LLMClient, templates: Templates
    ) -> None:
        self.store, self.plan, self.client = store, plan, client
        self.cfg = plan.explain.cfg
        self.sim = Simulator(
            client,
            self.cfg.simulator_model,
            templates,
            self.cfg.simulator_mode,
            self.cfg.sim_logprobs,
        )
        self.tally = Tally([name for name in SCORER_SCORES if getattr(plan.cfg, name)])

    def layer(self, lp: LayerPlan) -> list[dict[str, Any]]:
        """The entries of one layer's sampled neurons."""
        run_id, layer = lp.run["id"], lp.layer
        config_hash = self.cfg.config_hash()
        rows = {n: self.store.config_results(run_id, layer, n, config_hash) for n in lp.neurons}
        texts = {
            n: e["llm"]["text"]
            for n, (e, _) in rows.items()
            if e.get("llm", {}).get("status") == "ok"
        }
        maxima = {
            n: float((self.store.neuron(run_id, layer, n) or {"max": 0.0})["max"])
            for n in lp.neurons
        }
        seed = self.plan.cfg.seed + layer
        shuffled = shuffled_scores(
            self.store, run_id, layer, texts, self.cfg, self.sim, seed, maxima
        )
        out = []
        for n in lp.neurons:
            entry = method_entry(layer, n, rows[n], texts.get(n), shuffled.get(n))
            for name in self.tally.scorers:
                self.cheap_score(entry, lp, name, texts.get(n), maxima[n])
            self.tally.add(entry)
            out.append(entry)
        return out

    def cheap_score(
        self, entry: dict[str, Any], lp: LayerPlan, name: str, text: str | None, top: float
    ) -> None:
        """Score the neuron's explanation ``text`` with the cheap scorer ``name`` on its held-out
        windows, timed; a failure is recorded with its reason, never a number."""
        t0 = time.perf_counter()
        value, status = None, "missing"
        if text is not None:
            held = heldout_records(self.store, lp.run["id"], lp.layer, entry["neuron"], self.cfg)
            try:
                if name == "embedding":
                    value = embedding_score(text, held, top)
                else:
                    value, spent = detection_score(
                        self.client, self.cfg.simulator_model, text, held, top
                    )
                    self.tally.usage[name].add(spent)
                status = "ok" if value is not None else "undefined"
            except LLMFailure as exc:
                status = "failed"
                entry.setdefault("reasons", {})[name] = exc.reason
                reasons = self.tally.reasons[name]
                reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        self.tally.seconds[name] += time.perf_counter() - t0
        entry["scores"][name] = value
        entry["status"][name] = status


def build_missing_graphs(store: Store, plan: ExplainPlan, build_graphs: GraphBuilder) -> None:
    """Have ``build_graphs`` make the N2G graphs the sampled neurons lack."""
    for lp in plan.layers:
        have = {
            r["neuron"]
            for r in store.db.query(
                "select distinct neuron from graphs where run_id = ? and layer = ?",
                [lp.run["id"], lp.layer],
            )
        }
        missing = [n for n in lp.neurons if n not in have]
        if missing:
            build_graphs(lp.layer, missing)


def evaluate(
    store: Store,
    plan: EvalPlan,
    client: LLMClient,
    templates: Templates,
    build_graphs: GraphBuilder | None = None,
    progress: bool = True,
    runner: JobRunner | None = None,
    control: ControlRun | None = None,
) -> dict[str, Any]:
    """Run the evaluation ``plan`` (:func:`plan_eval`; see the module docstring):
    ``build_graphs(layer, neurons)`` makes missing N2G graphs (the caller owns the subject model);
    ``runner`` runs the explain step (Ray tasks: :func:`autointerp.explain.ray.explain_runner`;
    default: this process); ``control``, the random-init control's evaluation, is compared in the
    result's ``control`` section (and named in the stored config). Returns and stores the
    result."""
    if build_graphs is not None:
        build_missing_graphs(store, plan.explain, build_graphs)
    explain_layers(store, plan.explain, client, templates, progress=progress, runner=runner)
    scoring = Scoring(store, plan, client, templates)
    bar = tqdm(
        total=sum(len(lp.neurons) for lp in plan.explain.layers),
        unit="neuron",
        disable=not progress,
        desc=f"shuffled control {plan.model}",
        dynamic_ncols=True,
    )
    neurons_out: list[dict[str, Any]] = []
    for lp in plan.explain.layers:
        neurons_out += scoring.layer(lp)
        bar.update(len(lp.neurons))
    bar.close()
    result = eval_result(store, plan, neurons_out, scoring.tally)
    explain_cfg = plan.explain.cfg
    config = {
        "eval": asdict(plan.cfg),
        "explain": explain_cfg.identity(),
        "explain_config_hash": explain_cfg.config_hash(),
    }
    if control is not None:
        result["control"] = control_section(result, control, plan.cfg.seed)
        config["control"] = asdict(control.spec)
    result["run_id"] = store.save_evaluation(
        plan.model, "eval", config, identity_hash(config), result
    )
    return result


def method_summaries(
    store: Store, model: str, tally: Tally, seed: int
) -> dict[str, dict[str, Any]]:
    """Per method and control: n, mean, median, interval, ...; the known-answer controls from the
    model's newest ``calibrate`` result when there is one."""
    methods = {
        m: summarize(list(tally.scores[m].values()), **tally.counts[m], seed=seed)
        for m in tally.scores
    }
    known = store.latest_evaluation(model, "calibrate")
    if known is not None:
        feats = known["result"]["features"]
        for key, name in (
            ("true_score", "known_true_description"),
            ("explanation_score", "known_explanation"),
        ):
            values = [f[key] for f in feats if f[key] is not None]
            methods[name] = summarize(values, failed=sum(f[key] is None for f in feats), seed=seed)
            methods[name]["calibrate_run_id"] = known["run_id"]
    return methods


def eval_result(
    store: Store, plan: EvalPlan, neurons: list[dict[str, Any]], tally: Tally
) -> dict[str, Any]:
    """The result as reported and stored (without its run id)."""
    cfg, explain_cfg = plan.cfg, plan.explain.cfg
    expl = tally.scores["explanation"]
    result: dict[str, Any] = {
        "model": plan.model,
        "layers": cfg.layers,
        "sample": cfg.sample,
        "seed": cfg.seed,
        "explainer_model": explain_cfg.explainer_model,
        "simulator_model": explain_cfg.simulator_model,
        "simulator_mode": explain_cfg.simulator_mode,
        "prompt_version": explain_cfg.prompt_version,
        "explain_config_hash": explain_cfg.config_hash(),
        "score": (
            "correlation with the activation's positive part (docs/explanations.md: "
            "Explanations and simulation scores)"
        ),
        "methods": method_summaries(store, plan.model, tally, cfg.seed),
        "paired": {
            f"explanation-{other}": paired(expl, tally.scores[other], cfg.seed)
            for other in ("baseline", "shuffled", "n2g", "explanation_first")
        },
        "side_metrics": {
            metric: {
                m: summarize(list(tally.side[metric][m].values()), seed=cfg.seed) for m in METHODS
            }
            for metric in SIDE_METRICS
        },
        "origins": dict(sorted(tally.origins.items(), key=lambda kv: -kv[1])),
        "neurons": neurons,
    }
    result["paired"]["explanation_first-baseline"] = paired(
        tally.scores["explanation_first"], tally.scores["baseline"], cfg.seed
    )
    if tally.scorers:
        result["scorer_agreement"] = {
            name: _agreement(
                tally.scores[name],
                expl,
                tally.seconds[name],
                tally.usage[name],
                tally.reasons[name],
                SCORER_SCORES[name],
            )
            for name in tally.scorers
        }
    return result


def _agreement(
    scores: dict[tuple[int, int], float | None],
    simulation: dict[tuple[int, int], float | None],
    seconds: float,
    usage: Usage,
    reasons: dict[str, int],
    what: str,
) -> dict[str, Any]:
    """A cheap scorer beside simulation: Spearman over the neurons both scored, its cost per
    neuron scored (seconds; LLM calls and tokens, cached answers counted apart), why it failed."""
    both = [k for k, v in scores.items() if v is not None and simulation.get(k) is not None]
    per = max(1, len(scores))
    return {
        "n": len(both),
        "spearman_with_simulation": spearman(
            [scores[k] for k in both], [simulation[k] for k in both]
        ),
        "seconds_per_neuron": seconds / per,
        "llm_calls_per_neuron": (usage.calls + usage.cached_calls) / per,
        "prompt_tokens_per_call": usage.prompt_tokens / usage.calls if usage.calls else None,
        "cached_calls": usage.cached_calls,
        "failure_reasons": reasons,
        "score": what,
    }
