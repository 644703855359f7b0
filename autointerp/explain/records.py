"""The records a neuron is explained and scored on, cut from its stored examples.

Four sets, from the three splits of the harvest, so that nothing is judged on text it was chosen
on:

* :func:`explain_records` - the top *training* examples the explainer is shown, each a window around
  its peak;
* :func:`candidate_records` - every *training* example (top, random and quantile): what the
  candidates written without an LLM are built from (:mod:`autointerp.explain.candidates`);
* :func:`validation_records` - the *validation* split (top, random and quantile), which nothing is
  built from: where the candidates compete and the feedback rounds find mistakes;
* :func:`heldout_records` - *test* examples (top and random; quantile too under the rule
  simulator, for AUPRC): where the kept explanation, the baseline and the N2G graph are scored.

They are plain functions of the store and the config, apart from the neuron worker
(:mod:`autointerp.explain.neuron`), because the jobs, the held-out check of the plan and ``eval``'s
controls and cheap scorers all cut the same records.
"""

from __future__ import annotations

from typing import Any

from autointerp.explain.config import ExplainConfig
from autointerp.explain.prompts import Record
from autointerp.store import Store


def _window(row: dict[str, Any], start: int, stop: int, sign: float = 1.0) -> Record:
    """Tokens ``start:stop`` of an example row with their activations times ``sign``."""
    start, stop = (
        max(1, start),
        min(len(row["str_tokens"]), stop),
    )  # index 0 is BOS: never shown or scored
    return Record(
        list(row["str_tokens"][start:stop]),
        [sign * a for a in row["activations"][start:stop]],
        row["kind"] if row["kind"] in ("random", "quantile") else "top",
        row.get("context_id"),
    )


def peak_window(row: dict[str, Any], before: int, after: int, sign: float = 1.0) -> Record:
    """``before`` tokens before the example's peak (of ``sign`` times the activation), the peak, and
    ``after`` tokens after it."""
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
    """What the explainer is shown: the first ``explain_records`` training-split examples of
    ``kind`` (top, or bottom for the negative side), each cut around its peak."""
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
    """The scoring set: test-split top (or bottom) examples around their peak, test-split random
    examples, and (under the rule simulator, positive side) the test-split quantile examples -
    as many as :meth:`ExplainConfig.heldout_counts` says."""
    tops, randoms, quantiles = cfg.heldout_counts()
    return split_records(
        store, run_id, layer, neuron, cfg, "test", kind, sign, tops, randoms, quantiles
    )


def split_records(
    store: Store,
    run_id: int,
    layer: int,
    neuron: int,
    cfg: ExplainConfig,
    split: str,
    kind: str = "top",
    sign: float = 1.0,
    tops: int | None = None,
    randoms: int | None = None,
    quantiles: bool = True,
) -> list[Record]:
    """One split's examples cut as the scoring set is: ``kind`` (top or bottom) and quantile ones
    as windows ending 4 tokens after the peak, random ones from their start; ``tops`` / ``randoms``
    cap how many (None: all)."""

    def rows(k: str, limit: int | None) -> list[dict[str, Any]]:
        return list(store.examples(run_id, layer, neuron, kinds=[k], split=split))[:limit]

    out = [peak_window(r, cfg.sim_window - 5, 4, sign) for r in rows(kind, tops)]
    out += [_window(r, 1, 1 + cfg.sim_window, sign) for r in rows("random", randoms)]
    if quantiles and sign > 0:
        out += [peak_window(r, cfg.sim_window - 5, 4) for r in rows("quantile", None)]
    return out


def candidate_records(
    store: Store, run_id: int, layer: int, neuron: int, cfg: ExplainConfig
) -> list[Record]:
    """Every training-split example (top, random, quantile), cut as the scoring set is: what the
    written candidates are built from."""
    return split_records(store, run_id, layer, neuron, cfg, "train")


def validation_records(
    store: Store, run_id: int, layer: int, neuron: int, cfg: ExplainConfig
) -> list[Record]:
    """Where candidates compete: the validation split (top, random and quantile examples), cut as
    the test records are. Nothing is built from it - the written candidates come from the training
    split, the LLM sees training examples - and the final score is reported on the test split.

    When the neuron is the same everywhere on those (a rare feature whose validation examples do
    not fire), every candidate would score "undefined" there and the first would be kept by
    default; the training examples, cut the same way, are added then - the only other text on
    which candidates can be told apart (the written ones were built on it, so they are favoured
    there, which is said with the choice)."""
    out = split_records(store, run_id, layer, neuron, cfg, "valid")
    if len({a for r in out for a in r.activations}) < 2:
        out = candidate_records(store, run_id, layer, neuron, cfg) + out
    return out
