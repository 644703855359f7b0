"""Calibration on known-answer features: how well can the pipeline do when the answer is known?

For every regex feature (:mod:`autointerp.eval.features`) the unchanged pipeline runs on its
activations over the corpus - harvest, N2G graph, LLM explanation, simulation, score - and the
feature's true description is simulated and scored on exactly the same held-out records. Per
feature:

* ``true_score``: the simulator given the right answer - the ceiling any explanation could reach
  with this simulator on these records;
* ``explanation_score``: the explainer's phrase - how much of the answer it recovered;
* ``baseline_score``, ``n2g_score``: the token-lookup baseline and the N2G graph on the same
  records.

Everything is stored like a model's neurons, under the feature set's own model name, and the summary
(with its config) as a ``calibrate`` run of the real model, which ``eval`` shows as its known-answer
control.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autointerp.config import identity_hash
from autointerp.errors import UserError
from autointerp.eval.features import KnownFeatureModel, RegexFeature, RegexSubject
from autointerp.explain.config import ExplainConfig
from autointerp.explain.plan import plan_explain
from autointerp.explain.prompts import Templates
from autointerp.explain.run import JobRunner, explain_layers
from autointerp.harvest import HarvestConfig, harvest
from autointerp.llm.client import LLMClient
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.run import graph_layers
from autointerp.store import Store

TRUE_METHOD = "true_description"


@dataclass
class CalibrateConfig:
    """The harvest of the known-answer features (the explain config is stored beside it)."""

    corpus: str = "default"
    tokens: int = 32768
    ctx_len: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 256:
            raise UserError("--tokens must be at least 256 (a few contexts of 64 tokens).")


def _median(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.median(ok)) if ok else None


def run_pipeline(
    store: Store,
    known: KnownFeatureModel,
    cfg: CalibrateConfig,
    explain_cfg: ExplainConfig,
    client: LLMClient,
    templates: Templates,
    progress: bool = True,
    log: Callable[[str], None] = print,
    runner: JobRunner | None = None,
) -> dict[str, Any]:
    """The unchanged pipeline on the features as one layer of neurons - harvest, N2G graphs,
    explanations and scores, with each true description simulated beside the explanation - and
    the harvest run it read."""
    harvest(
        known,
        store,
        HarvestConfig(
            model=known.name,
            corpus=cfg.corpus,
            layers=[0],
            ctx_len=cfg.ctx_len,
            n_tokens=cfg.tokens,
            seed=cfg.seed,
        ),
        progress=progress,
        log=log,
    )
    graph_layers(
        known,
        store,
        [0],
        None,
        N2GConfig(),
        progress=progress,
        subject_for=lambda _: RegexSubject(known),
    )
    extra = {(0, i): {TRUE_METHOD: f.description} for i, f in enumerate(known.features)}
    plan = plan_explain(store, known.name, [0], explain_cfg, "all")
    explain_layers(store, plan, client, templates, progress=progress, extra=extra, runner=runner)
    return plan.layers[0].run


def feature_row(
    store: Store, run_id: int, index: int, feature: RegexFeature, config_hash: str
) -> dict[str, Any]:
    """One feature's line of the result: its scores by method, the explanation, what the rule
    simulator compiled each description into, and why a score is missing."""
    expl, scores = store.config_results(run_id, 0, index, config_hash)
    stats = store.neuron(run_id, 0, index) or {}

    def score(method: str) -> float | None:
        row = scores.get(method)
        return row["score"] if row and row["status"] == "ok" else None

    llm = expl.get("llm") or {}
    return {
        "name": feature.name,
        "kind": feature.kind,
        "pattern": feature.pattern,
        "description": feature.description,
        "true_score": score(TRUE_METHOD),
        "explanation": llm.get("text"),
        "origin": llm.get("origin"),
        "explanation_score": score("explanation"),
        "explanation_first_score": score("explanation_first"),
        "baseline_score": score("baseline"),
        "n2g_score": score("n2g"),
        "frac_active": stats.get("frac_positive"),
        "status": {m: r["status"] for m, r in scores.items()},
        "errors": {m: r["error"] for m, r in scores.items() if r.get("error")},
        # what the rule simulator compiled each description into (``rule`` mode)
        "rules": {m: r["simulation"] for m, r in scores.items() if r.get("simulation")},
        "baseline": (expl.get("baseline") or {}).get("text"),
    }


#: An explanation "recovers" a known feature when it scores at least this share of the true
#: description's score on the same records.
RECOVERY_SHARE = 0.8


def recovered(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many features' explanations (and first LLM explanations alone) score at least
    :data:`RECOVERY_SHARE` of their true description, out of the features whose true description
    has a positive score."""
    scored = [r for r in rows if r["true_score"] is not None and r["true_score"] > 0]

    def count(key: str) -> int:
        return sum(
            r[key] is not None and r[key] >= RECOVERY_SHARE * r["true_score"] for r in scored
        )

    return {
        "share_of_true": RECOVERY_SHARE,
        "features": len(scored),
        "explanation": count("explanation_score"),
        "explanation_first": count("explanation_first_score"),
    }


def calibrate(
    store: Store,
    base_model: str,
    tokenizer: Any,
    features: list[RegexFeature],
    cfg: CalibrateConfig,
    explain_cfg: ExplainConfig,
    client: LLMClient,
    templates: Templates,
    progress: bool = True,
    log: Callable[[str], None] = print,
    runner: JobRunner | None = None,
) -> dict[str, Any]:
    """Run the pipeline on the features and return ``{"model", "features_model", "features": [...],
    "medians"}``; the result is stored as a ``calibrate`` run of ``base_model``."""
    known = KnownFeatureModel(base_model, tokenizer, features)
    run = run_pipeline(store, known, cfg, explain_cfg, client, templates, progress, log, runner)
    config_hash = explain_cfg.config_hash()
    rows = [feature_row(store, run["id"], i, f, config_hash) for i, f in enumerate(features)]
    medians = {
        key: _median([r[key] for r in rows])
        for key in (
            "true_score",
            "explanation_score",
            "explanation_first_score",
            "baseline_score",
            "n2g_score",
        )
    }
    result = {
        "model": base_model,
        "features_model": known.name,
        "features": rows,
        "medians": medians,
        "recovered": recovered(rows),
        "explainer_model": explain_cfg.explainer_model,
        "simulator_model": explain_cfg.simulator_model,
        "simulator_mode": explain_cfg.simulator_mode,
    }
    config = {
        "calibrate": asdict(cfg),
        "features": [[f.name, f.pattern, f.description] for f in features],
        "explain": explain_cfg.identity(),
        "explain_config_hash": config_hash,
    }
    result["run_id"] = store.save_evaluation(
        base_model, "calibrate", config, identity_hash(config), result, run_model=known.name
    )
    return result
