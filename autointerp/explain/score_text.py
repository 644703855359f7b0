"""Score any description of a neuron - a researcher's own hypothesis - the way the pipeline scores
its explanations, and set the score beside the stored ones.

``autointerp score``, the API's ``POST /api/{model}/score/{layer}/{neuron}`` and the neuron page's
"test your own explanation" box all call :func:`score_description`, so they give the same numbers.
Why it is built this way:

* **The same held-out records.** A score only compares with the stored explanation's, baseline's and
  N2G graph's when it is computed on the same text: the records are cut with the explain config of
  the neuron's newest stored scores (the ``runs`` row of that explain run), and only when the neuron
  was never explained with the default config. Whatever config that is, the description is
  simulated by the default ``rule`` simulator: compiled once into a matching rule, applied to every
  held-out token.
* **No LLM when none is needed.** A description in the template grammar
  (:mod:`autointerp.explain.templates`: ``the token "Paris"``, ``the tokens "a", "b" and "c"``)
  compiles with no LLM. The LLM is therefore passed in as a *source* - a function that opens it -
  and opened only for other texts: the command line does not start the local LLM server (about 20 s
  and 2.7 GB) for a template text, and a server without an LLM still scores them.
* **A failure is a reason, never a number.** A text the LLM cannot compile into a usable rule, or a
  rule whose regular expression runs too long, gives ``status: "failed"`` with the reason; with
  ``save`` that failure is stored as it is.
* **Saved hypotheses stand apart.** ``save`` stores the text as an explanation of kind ``user``
  (:data:`autointerp.store.explanations.USER_KIND`) with its score (method ``user``), keyed by a
  hash of the text and of the records' config: several hypotheses of one neuron are kept side by
  side, saving the same text again replaces its rows, and an explain run never touches them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autointerp.config import identity_hash
from autointerp.errors import UserError
from autointerp.explain.config import ExplainConfig
from autointerp.explain.neuron import NeuronRows
from autointerp.explain.prompts import SCALE_MAX, Record
from autointerp.explain.records import heldout_records
from autointerp.explain.rules import Rule, RuleTimeout
from autointerp.explain.simulate import Simulator, score_predictions
from autointerp.explain.templates import template_rule
from autointerp.llm.client import LLMFailure, Usage
from autointerp.store import Store
from autointerp.store.explanations import USER_KIND
from autointerp.untrusted import check_unicode

#: The longest description scored: an explanation is a phrase or a sentence, and the LLM compiler's
#: prompt has room for a short one (the API's body limit is far above this).
MAX_TEXT_CHARS = 500
#: The stored scores set beside a description's: score method -> the key of the result.
BESIDE = {"explanation": "explanation_score", "baseline": "baseline_score", "n2g": "n2g_score"}
#: ``compiled_by`` of a text in the template grammar.
TEMPLATE = "template grammar, no LLM"

SimulatorSource = Callable[[], contextlib.AbstractContextManager[Simulator]]
"""Opens the LLM that compiles a description into a rule (``with source() as sim:``); called only
for texts outside the template grammar."""


def check_text(text: str) -> str:
    """The description, stripped, refused in one sentence when it is empty, too long or not valid
    Unicode."""
    check_unicode(text, "The description")
    text = text.strip()
    if not text:
        raise UserError("The description is empty; write what the neuron fires on.")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(
            f"The description is {len(text)} characters; at most {MAX_TEXT_CHARS} are scored."
        )
    return text


@dataclass(frozen=True)
class HeldOut:
    """One neuron's held-out records and the stored scores that were computed on them."""

    model: str
    layer: int
    neuron: int
    run_id: int
    max_activation: float
    #: the explain config the records are cut with (the stored scores', else the default)
    cfg: ExplainConfig
    #: the explain run of that config, when one is stored
    explain_run_id: int | None
    records: list[Record]
    #: score method (:data:`BESIDE`) -> its newest ok score under the stored config, else None
    stored: dict[str, float | None]
    #: the stored explanation's text, when there is one
    explanation: str | None
    #: whether the stored scores were computed on these records: False when their explain config
    #: is not on record (then the default config's records are scored); None when there are none
    same_records: bool | None


def neuron_heldout(store: Store, model: str, layer: int, neuron: int) -> HeldOut:
    """The held-out records of ``model``'s neuron ``layer/neuron`` and the stored scores beside
    them; one sentence when the layer is not harvested, the neuron does not exist or the harvest
    kept no held-out text."""
    run = store.harvest_run(model, layer)
    stats = store.neuron(run["id"], layer, neuron)
    if stats is None:
        d_mlp = (store.model_info(model) or {}).get("d_mlp", "?")
        raise UserError(
            f"Neuron {layer}/{neuron} does not exist: {model} has {d_mlp} neurons per layer."
        )
    stored_hash = store.newest_explained_config(run["id"], layer, neuron)
    cfg, explain_run = ExplainConfig(), None
    if stored_hash is not None:
        explain_run = store.find_run(model, "explain", stored_hash, (0, 1))
        if explain_run is not None:
            cfg = config_of(explain_run["config"])
    records = heldout_records(store, run["id"], layer, neuron, cfg)
    if not records:
        raise UserError(
            f"Neuron {layer}/{neuron} of {model} has no held-out examples to score on (the harvest"
            " kept too few: the test split is every 4th example); harvest with --top-k 4 or more."
        )
    stored: dict[str, float | None] = dict.fromkeys(BESIDE)
    explanation = None
    if stored_hash is not None:
        explanations, scores = store.config_results(run["id"], layer, neuron, stored_hash)
        for method in BESIDE:
            row = scores.get(method)
            stored[method] = row["score"] if row and row["status"] == "ok" else None
        llm = explanations.get("llm")
        explanation = llm["text"] if llm and llm["status"] == "ok" else None
    return HeldOut(
        model,
        layer,
        neuron,
        int(run["id"]),
        float(stats["max"]),
        cfg,
        int(explain_run["id"]) if explain_run else None,
        records,
        stored,
        explanation,
        None if stored_hash is None else explain_run is not None,
    )


def config_of(identity: dict[str, Any]) -> ExplainConfig:
    """The explain config a ``runs`` row stored (its identity: the fields, plus facts such as the
    stage's version that are not fields)."""
    names = {f.name for f in dataclasses.fields(ExplainConfig)}
    return ExplainConfig(**{k: v for k, v in identity.items() if k in names})


def user_key(text: str, cfg: ExplainConfig) -> str:
    """The ``config_hash`` of a saved description: one pair of rows per text and set of records."""
    return identity_hash({"user_text": text, "explain_config": cfg.config_hash()})


def score_rule(target: HeldOut, rule: Rule) -> dict[str, Any]:
    """The rule's scores on the held-out records (:func:`score_predictions`) and ``fire_rate``, the
    share of held-out tokens it fires on; ``status`` says whether there is a score."""
    try:
        preds = [[SCALE_MAX * v for v in rule.apply(r.tokens)] for r in target.records]
    except RuleTimeout as exc:
        return {"status": "failed", "error": str(exc)}
    result = score_predictions(preds, target.records, target.max_activation, SCALE_MAX, 1.0)
    fired = sum(v > 0 for p in preds for v in p)
    total = sum(len(p) for p in preds)
    undefined = result.pop("undefined")
    return {
        **result,
        "status": "ok" if result["score"] is not None else "undefined",
        "error": undefined,
        "fire_rate": fired / total if total else None,
    }


def score_description(
    store: Store,
    model: str,
    layer: int,
    neuron: int,
    text: str,
    llm: SimulatorSource | None,
    save: bool = False,
) -> dict[str, Any]:
    """Score ``text`` as an explanation of neuron ``layer/neuron`` on its held-out records, beside
    the stored scores (the dict ``autointerp score --json`` prints; see the module docstring).
    ``llm`` is opened only when the text is not in the template grammar; None then raises
    :class:`UserError`. With ``save`` the text and its score (or failure) are stored."""
    text = check_text(text)
    target = neuron_heldout(store, model, layer, neuron)
    rule = template_rule(text)
    compiled_by, usage, error = TEMPLATE, Usage(), None
    if rule is None:
        if llm is None:
            raise UserError(
                'This description is not in the template grammar (such as `the token "X"`), so'
                " an LLM must compile it into a rule, and none is configured."
            )
        with llm() as sim:
            compiled_by = sim.model
            try:
                rule, usage = sim.compile_rule(text)
            except LLMFailure as exc:
                error = f"the LLM could not compile the description into a rule: {exc.reason}"
    result = score_rule(target, rule) if rule is not None else {"status": "failed", "error": error}
    out: dict[str, Any] = {
        "model": model,
        "neuron": f"{layer}/{neuron}",
        "text": text,
        "status": result["status"],
        "score": result.get("score"),
        "score_top": result.get("score_top"),
        "score_random": result.get("score_random"),
        "auprc": result.get("auprc"),
        "n_tokens": result.get("n_tokens"),
        "fire_rate": result.get("fire_rate"),
        "error": result.get("error"),
        "rule": json.loads(rule.to_json()) if rule is not None else None,
        "compiled_by": compiled_by,
        "explanation": target.explanation,
        **{key: target.stored[method] for method, key in BESIDE.items()},
        "same_records": target.same_records,
        "config_hash": target.cfg.config_hash(),
        "saved": save,
    }
    if save:
        save_description(store, target, text, result, rule, usage, compiled_by)
    return out


def save_description(
    store: Store,
    target: HeldOut,
    text: str,
    result: dict[str, Any],
    rule: Rule | None,
    usage: Usage,
    compiled_by: str,
) -> None:
    """Store ``text`` as a ``user`` explanation with its score row (failed with the reason when it
    has no rule), replacing an earlier save of the same text on the same records."""
    rows = NeuronRows(target.cfg, None)
    rows.explanation(USER_KIND, text, None, Usage(), USER_KIND, 0.0, origin=USER_KIND)
    rows.explanations[-1]["prompt_version"] = None  # a person wrote it, not a prompt
    if result["status"] == "failed" or rule is None:
        rows.score(USER_KIND, None, result.get("error") or "no rule", usage, "rule")
    else:
        scored = {**result, "undefined": result.get("error"), "simulation": rule.to_json()}
        rows.score(USER_KIND, scored, None, usage, "rule")
    # the LLM that compiled the text (None: the template grammar needs none)
    rows.scores[-1]["simulator_model"] = None if compiled_by == TEMPLATE else compiled_by
    store.save_explanation_results(
        target.run_id,
        target.layer,
        target.neuron,
        user_key(text, target.cfg),
        target.explain_run_id,
        rows.explanations,
        rows.scores,
    )
