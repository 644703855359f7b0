"""Running ``eval``'s random-init control (:mod:`autointerp.eval.control` says what it is and why).

In two steps, as ``eval`` itself: :func:`plan_control` harvests what the control model lacks (the
only step that needs the model, built on demand) and plans its evaluation, before any LLM is
contacted; :func:`evaluate_control` runs that plan with the ``eval`` code and returns what the
trained model's evaluation compares itself with. Kept apart from :mod:`autointerp.eval.control`,
which :mod:`autointerp.eval.evaluate` imports for the comparison, because this module imports
``evaluate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autointerp.errors import UserError
from autointerp.eval.control import ControlRun, ControlSpec, control_harvests, harvest_control
from autointerp.eval.evaluate import EvalConfig, EvalPlan, GraphBuilder, evaluate, plan_eval
from autointerp.explain.config import ExplainConfig
from autointerp.explain.prompts import Templates
from autointerp.explain.run import JobRunner
from autointerp.llm.client import LLMClient
from autointerp.model_names import parse_random_init_name
from autointerp.store import Store

if TYPE_CHECKING:
    from autointerp.models import SubjectModel


@dataclass(frozen=True)
class ControlPlan:
    """The control and its evaluation's plan (its sample drawn among its own firing neurons)."""

    spec: ControlSpec
    plan: EvalPlan

    def with_models(self, explainer: str, simulator: str) -> ControlPlan:
        return dataclasses.replace(self, plan=self.plan.with_models(explainer, simulator))


def plan_control(
    store: Store,
    model: str,
    spec: ControlSpec,
    cfg: EvalConfig,
    explain_cfg: ExplainConfig,
    load: Callable[[str], SubjectModel],
    *,
    weights_to_come: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> ControlPlan:
    """Harvest the layers of ``cfg`` that ``model``'s control lacks, as the trained model's
    harvest of them ran (``load(dtype)`` builds the control model, only when one is missing), then
    plan its evaluation under the same eval and explain configs (:func:`plan_eval`)."""
    if parse_random_init_name(model) is not None:
        raise UserError(
            f"{model} is itself a random-init control; give the trained model with --control."
        )
    name = spec.model_name(model)
    missing = control_harvests(store, model, name, cfg.layers)
    if missing:
        harvest_control(store, missing, load, progress, log)
    return ControlPlan(
        spec, plan_eval(store, name, cfg, explain_cfg, weights_to_come=weights_to_come)
    )


def evaluate_control(
    store: Store,
    control: ControlPlan,
    client: LLMClient,
    templates: Templates,
    build_graphs: GraphBuilder | None = None,
    progress: bool = True,
    runner: JobRunner | None = None,
) -> ControlRun:
    """Run the control's evaluation (stored as an ``eval`` run of the control model) and return
    it with the control model's provenance, for :func:`autointerp.eval.evaluate.evaluate`'s
    ``control``."""
    result = evaluate(
        store, control.plan, client, templates, build_graphs, progress=progress, runner=runner
    )
    info = store.model_info(control.plan.model) or {}
    return ControlRun(control.spec, result, info.get("provenance") or {})
