"""The explain stage's plan: which model, layers and neurons, read from which harvest runs, under
which config - and every check the database can answer, done once, before any LLM is contacted.

``autointerp explain``, ``eval`` and ``calibrate`` and the library all make an
:class:`ExplainPlan` with :func:`plan_explain` and hand it to
:func:`autointerp.explain.run.explain_layers`, which runs it without checking again. A mistake the
database can tell (a layer not harvested, a neuron out of range, a harvest with no held-out text,
missing weight facts for ``--output-tokens``) is one sentence before a local LLM server starts or an
endpoint is asked anything.

The config in a plan may not name its models yet: with the embedded local server they are known only
once it runs, and :meth:`ExplainPlan.with_models` fills them in then. Nothing the checks read
depends on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autointerp.errors import UserError
from autointerp.explain.config import ExplainConfig, check_config
from autointerp.explain.neuron import no_weights
from autointerp.explain.records import heldout_records
from autointerp.selection import select_neurons
from autointerp.store import Store

NeuronChooser = Callable[[int, dict[str, Any]], list[int]]
"""(layer, its harvest run) -> the neurons to explain (``eval``'s seeded sample of firing ones)."""


@dataclass(frozen=True)
class LayerPlan:
    """One layer: the harvest run its records are read from and the neurons chosen."""

    layer: int
    run: dict[str, Any]
    neurons: list[int]


@dataclass(frozen=True)
class ExplainPlan:
    """What an explain run does, checked against the database (see the module docstring)."""

    model: str
    #: the model's facts as its harvest stored them (``d_mlp``, ``gated_mlp``, ``act_fn``, ...)
    info: dict[str, Any]
    cfg: ExplainConfig
    layers: list[LayerPlan]
    #: layers with chosen neurons whose weight facts ``--output-tokens`` needs and the database
    #: lacks (empty unless the caller said it will compute them: ``plan_explain``'s
    #: ``weights_to_come``)
    missing_weights: list[int]

    @property
    def gated(self) -> bool:
        """Whether the model's MLP is gated (its neurons have a negative side worth explaining)."""
        return bool(self.info.get("gated_mlp"))

    @property
    def layer_numbers(self) -> list[int]:
        return [lp.layer for lp in self.layers]

    @property
    def neurons(self) -> dict[int, list[int]]:
        """Layer -> the chosen neurons."""
        return {lp.layer: lp.neurons for lp in self.layers}

    def with_models(self, explainer: str, simulator: str) -> ExplainPlan:
        """The same plan with the LLMs' names in its config (known once the LLM session is up)."""
        return dataclasses.replace(self, cfg=self.cfg.with_models(explainer, simulator))


def plan_explain(
    store: Store,
    model: str,
    layers: list[int] | None,
    cfg: ExplainConfig,
    neurons: str | NeuronChooser | None = None,
    *,
    weights_to_come: bool = False,
) -> ExplainPlan:
    """Plan an explain run of ``model``: ``layers`` (None: every harvested layer), the ``neurons``
    of each (a ``--neurons`` spec such as ``top:4``, ``0-15`` or ``all``/None, or a chooser), and
    ``cfg``. Refuses in one sentence whatever the database says cannot work; with
    ``weights_to_come`` the layers lacking weight facts for ``cfg.output_tokens`` are listed in
    ``missing_weights`` for the caller to compute instead of refused."""
    check_config(cfg)
    if layers is None:
        layers = store.harvested_layer_list(model)
    info = store.model_info(model)
    chosen = []
    for layer in layers:
        run = store.harvest_run(model, layer)
        if info is None:  # a complete harvest stores its model's facts first; never expected
            raise store.not_harvested(model)
        if callable(neurons):
            picked = neurons(layer, run)
        else:
            picked = select_neurons(store, model, layer, neurons, int(info["d_mlp"]))
        chosen.append(LayerPlan(layer, run, picked))
    check_heldout(store, chosen, cfg)
    missing = missing_weight_layers(store, model, chosen, cfg)
    if missing and not weights_to_come:
        raise UserError(no_weights(model, missing))
    return ExplainPlan(model, info or {}, cfg, chosen, missing)


def check_heldout(store: Store, layers: list[LayerPlan], cfg: ExplainConfig) -> None:
    """Refuse, before any run row or LLM call, a harvest too small to score on: with no held-out
    records every simulation would fail. Every neuron of a run keeps the same number of examples, so
    one neuron per layer tells."""
    for lp in layers:
        if lp.neurons and not heldout_records(store, lp.run["id"], lp.layer, lp.neurons[0], cfg):
            config = lp.run.get("config") or {}
            raise UserError(
                f"Harvest run {lp.run['id']} (layer {lp.layer}) has no held-out examples to "
                f"score on (top_k={config.get('top_k')}, random_k="
                f"{config.get('random_k')}: the test split is every 4th example); "
                "harvest with --top-k 4 or more."
            )


def missing_weight_layers(
    store: Store, model: str, layers: list[LayerPlan], cfg: ExplainConfig
) -> list[int]:
    """With ``output_tokens`` > 0, the layers with chosen neurons whose weight facts are not
    stored (empty otherwise)."""
    if not cfg.output_tokens:
        return []
    return sorted({lp.layer for lp in layers if lp.neurons} - store.weight_layers(model))
