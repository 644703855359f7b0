"""Merging complete shard runs (``--shard i/n``) into the unsharded runs they add up to.

Every part of a :class:`~autointerp.harvest.state.LayerState` is a mergeable reduction, so the
merged states are exactly what one unsharded run would have accumulated; the result rows are then
made from them by the same code a run uses (:mod:`autointerp.harvest.rows`). The shards' contexts
and documents are copied for the examples that point at them. ``autointerp merge`` and the Ray
driver (:mod:`autointerp.harvest.ray`) both merge here.

Everything that can be wrong with the inputs (a shard twice, a shard missing, nothing to merge) is
checked before the output is opened, so a failed merge creates no file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from autointerp.errors import UserError
from autointerp.harvest.rows import example_rows, neuron_rows
from autointerp.harvest.state import LayerState
from autointerp.store import Store

#: One group's shards: shard index -> (the database it is in, its run row).
Shards = dict[int, tuple[Store, dict[str, Any]]]
#: What shards merge by: (model, config hash - which covers the corpus fingerprint -, shard count).
GroupKey = tuple[str, str, int]


def merge(
    out: Store | str | os.PathLike[str],
    inputs: list[Store],
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    only: tuple[str, str, int] | None = None,
) -> list[int]:
    """Combine complete shard runs found in ``inputs`` into unsharded runs in ``out``; return the
    new run ids.

    Runs are grouped by (model, config hash - which covers the corpus fingerprint -, shard count);
    every shard 0..n-1 must be present exactly once. ``out`` is opened only once the shards check
    out, so a failed merge creates no file.
    """
    groups = _shard_groups(inputs, only)
    if not isinstance(out, Store):
        out = Store(out)
    made = []
    for (model_name, config_hash, count), shards in sorted(groups.items()):
        run_id = _merge_group(out, model_name, config_hash, count, shards)
        log(f"Merged {count} shards of {model_name} into run {run_id}.")
        made.append(run_id)
    return made


def _shard_groups(inputs: list[Store], only: GroupKey | None) -> dict[GroupKey, Shards]:
    """The complete shard runs of ``inputs`` (only the group ``only`` if given), grouped; one
    sentence if a shard appears twice, one is missing, or there are none."""
    groups: dict[GroupKey, Shards] = {}
    for store in inputs:
        for run in store.runs():
            if run["stage"] != "harvest" or run["status"] != "complete" or run["shard_count"] < 2:
                continue
            if only is not None and (run["model"], run["config_hash"], run["shard_count"]) != only:
                continue  # the Ray driver merges its own shards, whatever else the database holds
            group = groups.setdefault((run["model"], run["config_hash"], run["shard_count"]), {})
            if run["shard_index"] in group:
                raise UserError(
                    f"Shard {run['shard_index']}/{run['shard_count']} of {run['model']} appears"
                    f" twice ({group[run['shard_index']][0].path} and {store.path})."
                )
            group[run["shard_index"]] = (store, run)
    if not groups:
        raise UserError(
            "No complete sharded harvest runs in the given databases (harvest with --shard i/n"
            " first)."
        )
    for (model_name, _, count), shards in sorted(groups.items()):
        missing = sorted(set(range(count)) - set(shards))
        if missing:
            raise UserError(
                f"Cannot merge {model_name}: shard(s) {', '.join(f'{m}/{count}' for m in missing)} "
                "are missing."
            )
    return groups


def _merge_group(out: Store, model_name: str, config_hash: str, count: int, shards: Shards) -> int:
    """One group's shards as one complete unsharded run of ``out`` (found again if it exists, e.g.
    after an interrupted merge); returns its id."""
    first_store, first_run = shards[0]
    config = dict(first_run["config"])
    layers = config["layers"]
    states = _merged_states(shards, count, layers)
    contexts, documents = _needed_rows(shards, count, states)
    info = first_store.model_info(model_name)
    if info:
        out.upsert_model(info)
    config["shard"] = [0, 1]
    config["merged_from"] = [str(shards[i][0].path) for i in range(count)]
    corpus = first_run["corpus"]
    existing = out.find_run(model_name, "harvest", config_hash, (0, 1))
    run_id: int = (
        existing["id"]
        if existing
        else out.create_run(model_name, "harvest", config, config_hash, (0, 1), corpus)
    )
    strip = ("run_id",)
    out.finish_run(
        run_id,
        documents=({k: v for k, v in r.items() if k not in strip} for r in documents.values()),
        contexts=({k: v for k, v in r.items() if k not in strip} for r in contexts.values()),
        neurons=(row for layer in layers for row in neuron_rows(states[layer], layer)),
        examples=(
            row
            for layer in layers
            for row in example_rows(
                states[layer], layer, config["quantile_intervals"], config["quantile_per_interval"]
            )
        ),
        states=None,
        contexts_done=max(shards[i][1]["contexts_done"] for i in range(count)),
        tokens_done=sum(shards[i][1]["tokens_done"] for i in range(count)),
    )
    return run_id


def _merged_states(shards: Shards, count: int, layers: list[int]) -> dict[int, LayerState]:
    """Each layer's final states of shards 0..count-1, merged in shard order."""
    states: dict[int, LayerState] = {}
    for index in range(count):
        store, run = shards[index]
        blobs = store.final_states(run["id"])
        for layer in layers:
            st = LayerState.from_bytes(blobs[layer])
            if layer in states:
                states[layer].merge(st)
            else:
                states[layer] = st
    return states


def _needed_rows(
    shards: Shards, count: int, states: dict[int, LayerState]
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """The context rows the merged states point at and the document rows those point at, each
    taken from the first shard that has it; one sentence if a context is in none."""
    needed: set[int] = set().union(*(st.context_ids() for st in states.values()))
    contexts: dict[int, dict[str, Any]] = {}
    documents: dict[int, dict[str, Any]] = {}
    for index in range(count):
        store, run = shards[index]
        rows = store.context_rows(run["id"], needed - set(contexts))
        contexts.update(rows)
        doc_ids = {i for r in rows.values() for i in json.loads(r["doc_index"]) if i >= 0}
        documents.update(store.document_rows(run["id"], doc_ids - set(documents)))
    lost = needed - set(contexts)
    if lost:
        raise UserError(
            f"The shard databases lack {len(lost)} context(s) the merge needs (e.g. {min(lost)})."
        )
    return contexts, documents
