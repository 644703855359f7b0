"""The records a neuron is explained and scored on, cut from its stored examples.

Three sets, from two splits of the harvest, so that nothing is judged on text it was chosen on:

* :func:`explain_records` - the top *training* examples the explainer is shown, each a window around
  its peak;
* :func:`validation_records` - training examples the explainer was not shown: where best-of-n picks
  among its candidates;
* :func:`heldout_records` - *test* examples (top and random): where every explanation, the baseline
  and the N2G graph are scored.

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
        "random" if row["kind"] == "random" else "top",
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
