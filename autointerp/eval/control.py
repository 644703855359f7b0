"""``eval --control random-init``: the same evaluation of a randomly initialised copy of the model,
and how far the trained model's scores stand above it.

Why: explanations of randomly initialised transformers score about as well as trained ones under
common scorers (Heap et al. 2025). A score is worth what it adds over a model that has learnt
nothing, so the control runs through exactly the trained model's pipeline:

* **The model** is the subject's architecture and tokenizer with seeded random weights, stored
  under its own name (``gemma-3-270m+random-init-0``; :mod:`autointerp.random_init`).
* **The harvest** is the trained model's harvest of the evaluated layers, config for config (corpus
  and its fingerprint, tokens, context length, top-k, seeds ...: read from the trained run as
  stored), only the model and the layers differ (:func:`control_harvests`). A corpus whose text has
  changed since is refused: the control must read what the trained model read.
* **The sample** is drawn as ``eval`` draws every sample (:func:`autointerp.eval.evaluate.
  sample_neurons`, the same seed) among the *control's* firing neurons: its neuron indices are its
  own and differ from the trained model's sample - the two are independent samples of neurons,
  not pairs.
* **Graphs, explanations and scores** come from the same ``eval`` code under the same explain
  config; the control's evaluation is stored as an ``eval`` run of the control model.
* **The comparison** (:func:`control_section`): the control's method summaries, and per method the
  difference of the means, trained - control, with a seeded bootstrap 95% interval of two
  independent samples (:func:`autointerp.eval.stats.difference_of_means`). It is the ``control``
  section of the trained model's result, whose other sections are unchanged.

Like the rest of ``eval``, stored rows are reused: a rerun finds the control's harvest, graphs and
scores and builds nothing (the control model is built only when a missing stage needs it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autointerp.config import check_int
from autointerp.errors import UserError
from autointerp.eval.stats import difference_of_means
from autointerp.model_names import RANDOM_INIT, random_init_name
from autointerp.store import Store

if TYPE_CHECKING:
    from autointerp.harvest import HarvestConfig
    from autointerp.models import SubjectModel

CONTROL_KINDS = (RANDOM_INIT,)
#: the rows of the trained model's result that the control is compared on (with the cheap scorers
#: when they ran)
COMPARED = (
    "explanation",
    "explanation_first",
    "baseline",
    "n2g",
    "shuffled",
    "embedding",
    "detection",
)
#: the fields of a stored harvest config that are not results' identity, or are the control's own
_NOT_COMPARED = ("model", "layers", "batch_size", "shard", "device")


@dataclass(frozen=True)
class ControlSpec:
    """Which control: its kind (``random-init``) and the seed its weights are drawn with."""

    kind: str = RANDOM_INIT
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CONTROL_KINDS:
            raise UserError(f"--control must be {' or '.join(CONTROL_KINDS)}, not {self.kind!r}.")
        check_int(self.seed, "--control-seed", 0)

    def model_name(self, model: str) -> str:
        """The stored name of ``model``'s control."""
        return random_init_name(model, self.seed)


@dataclass(frozen=True)
class ControlRun:
    """The control's evaluation, to be compared with the trained model's: its spec, its stored
    ``eval`` result and the control model's provenance."""

    spec: ControlSpec
    result: dict[str, Any]
    provenance: dict[str, Any]


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_COMPARED}


def control_harvests(
    store: Store, model: str, control: str, layers: list[int]
) -> list[HarvestConfig]:
    """The harvests the control model ``control`` lacks for ``layers``: per trained harvest run
    they come from, that run's config (as stored) with the control's name and those of its layers
    the control has no complete harvest of under the same config. Empty when all are stored."""
    from autointerp.harvest import HarvestConfig

    fields = {f.name for f in dataclasses.fields(HarvestConfig)}
    todo: dict[int, tuple[dict[str, Any], list[int]]] = {}
    for layer in layers:
        run = store.harvest_run(model, layer)
        have = store.latest_complete_run(control, layer)
        if have is not None and _identity(have["config"]) == _identity(run["config"]):
            continue
        todo.setdefault(run["id"], (run["config"], []))[1].append(layer)
    out = []
    for config, wanted in todo.values():
        kept = {k: v for k, v in config.items() if k in fields and k not in _NOT_COMPARED}
        out.append(HarvestConfig(**kept, model=control, layers=sorted(wanted)))
        out[-1].batch_size = int(config.get("batch_size", out[-1].batch_size))
    return out


def harvest_control(
    store: Store,
    configs: list[HarvestConfig],
    load: Callable[[str], SubjectModel],
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Run the control's missing harvests (:func:`control_harvests`) with the model ``load(dtype)``
    builds (in the dtype the trained harvest ran in), after checking that each corpus still has the
    text the trained model read."""
    from autointerp.corpus import corpus_fingerprint, load_documents
    from autointerp.harvest import harvest

    for cfg in configs:
        if corpus_fingerprint(load_documents(cfg.corpus, cfg.seed)) != cfg.corpus_fingerprint:
            raise UserError(
                f"The corpus {cfg.corpus!r} is not the text the trained model's harvest of layers"
                f" {cfg.layers} read (its fingerprint has changed), so the random-init control"
                " cannot be harvested on the same text; harvest the trained model again first."
            )
    for cfg in configs:
        model = load(cfg.dtype)
        log(f"Harvesting the random-init control {model.name}, layers {cfg.layers} ...")
        harvest(model, store, cfg, progress=progress, log=log)


def _ok_scores(result: dict[str, Any], method: str) -> list[float]:
    return [
        n["scores"][method]
        for n in result["neurons"]
        if n["status"].get(method) == "ok" and n["scores"].get(method) is not None
    ]


def control_section(trained: dict[str, Any], control: ControlRun, seed: int) -> dict[str, Any]:
    """The ``control`` section of the trained model's result: what the control is, its sample,
    its method summaries, and per method ``trained - control`` (difference of means, seeded
    bootstrap 95% interval; unpaired: the two samples are different neurons)."""
    theirs = control.result
    compared = [m for m in COMPARED if m in theirs["methods"] and m in trained["methods"]]
    return {
        "kind": control.spec.kind,
        "seed": control.spec.seed,
        "model": theirs["model"],
        "provenance": control.provenance,
        "eval_run_id": theirs.get("run_id"),
        "sample": (
            "the control's own firing neurons, drawn with the same seed: its neuron indices are"
            " not the trained model's, and the difference is of two independent samples"
        ),
        "neurons": [[n["layer"], n["neuron"]] for n in theirs["neurons"]],
        "methods": {m: theirs["methods"][m] for m in compared},
        "trained_minus_control": {
            m: difference_of_means(_ok_scores(trained, m), _ok_scores(theirs, m), seed)
            for m in compared
        },
    }
