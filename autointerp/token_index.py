"""The token index: each neuron's N2G graph reduced to the tokens it fires on and the context tokens
that mattered.

Two stages read it: token search (:mod:`autointerp.search`) ranks neurons by these tokens' weights,
and similarity (:mod:`autointerp.similarity`) compares their sets. The store keeps the rows
(``token_index``) and writes them in the same transaction as the graphs, so what a graph's tokens
are (:func:`autointerp.store.search_index.graph_token_weights`) lives in the store; the token sets
similarity compares and how the index is brought up to date (:func:`ensure_token_index`) live here,
below both stages, so that neither imports the other.

**Activating tokens** are the trie roots of a graph, the tokens it fires on: those whose best
normalised activation in the graph is at least :data:`autointerp.store.search_index.MIN_ACTIVATION`.
**Context tokens** are its concrete, non-wildcard context nodes. Tokens are normalised as the graphs
store them (:func:`autointerp.n2g.graph.normalize_token`).

**The harvest's index** (:func:`ensure_harvest_index`) covers every harvested neuron, graphed or
not: the tokens its top examples peak on, each weighted by the highest activation there over the
neuron's max (so 0-1, like a graph's activating tokens, and cut at the same
:data:`~autointerp.store.search_index.MIN_ACTIVATION`). Graphs are only built for a few neurons of a
layer (12 of 6,144 after `make explain`); this index lets an ``activating:`` search find the rest.
It is rebuilt for a layer when a newer harvest of it completes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from autointerp.n2g.graph import normalize_token
from autointerp.store.search_index import MIN_ACTIVATION, graph_token_weights


@dataclass(frozen=True)
class TokenSets:
    """The two token sets of one graph that similarity compares."""

    activating: frozenset[str]
    context: frozenset[str]


def graph_token_sets(graph: dict[str, Any]) -> TokenSets:
    weights = graph_token_weights(graph)
    return TokenSets(frozenset(weights["activating"]), frozenset(weights["context"]))


# --------------------------------------------------------------------------------------------------
# the index
def ensure_token_index(store: Any, model: str, progress: bool = False, chunk: int = 500) -> int:
    """Bring ``token_index`` up to date with the model's newest graphs (only neurons whose graph
    changed are read); one transaction per ``chunk`` neurons, so an interrupted run keeps whole
    neurons. Returns how many were indexed."""
    todo = store.graphs_to_index(model)
    bar = tqdm(
        total=len(todo),
        unit="graph",
        desc="index graphs",
        disable=not progress or not todo,
        dynamic_ncols=True,
    )
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        items = [
            (
                key,
                graph_token_weights(
                    store.graph_json(key["run_id"], key["layer"], key["neuron"], key["config_hash"])
                ),
            )
            for key in part
        ]
        store.save_token_index(model, items)
        bar.update(len(part))
    bar.close()
    return len(todo)


def peak_token_weights(peaks: Iterable[tuple[int, str, float]]) -> list[tuple[int, str, float]]:
    """``(neuron, token, weight)`` rows of the harvest's index from top-example peaks ``(neuron,
    token, normalised activation)``: tokens normalised, each token's best weight, weights below
    :data:`~autointerp.store.search_index.MIN_ACTIVATION` left out."""
    best: dict[tuple[int, str], float] = {}
    for neuron, token, weight in peaks:
        key = (neuron, normalize_token(token))
        best[key] = max(best.get(key, weight), weight)
    return [(n, t, round(w, 6)) for (n, t), w in best.items() if w >= MIN_ACTIVATION]


def stale_harvest_layers(store: Any, model: str) -> dict[int, int]:
    """Harvested layers (-> their newest harvest run) that the harvest's index lacks or holds from
    an older run."""
    harvested = store.harvested_layers(model)
    indexed = store.harvest_indexed_layers(model, harvested)
    return {
        layer: int(run["id"])
        for layer, run in sorted(harvested.items())
        if indexed.get(layer) != int(run["id"])
    }


def ensure_harvest_index(store: Any, model: str, progress: bool = False) -> int:
    """Bring ``harvest_token_index`` up to date with the model's newest harvest of each layer (one
    transaction per layer); returns how many layers were indexed."""
    todo = stale_harvest_layers(store, model)
    bar = tqdm(
        total=len(todo),
        unit="layer",
        desc="index harvest",
        disable=not progress or not todo,
        dynamic_ncols=True,
    )
    for layer, run_id in todo.items():
        rows = peak_token_weights(store.layer_top_peaks(run_id, layer))
        store.save_harvest_tokens(model, layer, run_id, rows)
        bar.update(1)
    bar.close()
    return len(todo)


def build_search_indexes(store: Any, model: str, progress: bool = False) -> dict[str, Any]:
    """Both token indexes of ``model`` brought up to date (``autointerp index``): ``{"graphs",
    "graphs_indexed", "layers", "layers_indexed", "harvest_neurons", "seconds"}``."""
    started = time.time()
    graphs_indexed = ensure_token_index(store, model, progress=progress)
    layers_indexed = ensure_harvest_index(store, model, progress=progress)
    layers = sorted(store.harvest_indexed_layers(model, store.harvested_layers(model)))
    return {
        "model": model,
        "graphs": store.graph_state(model)["graphs"],
        "graphs_indexed": graphs_indexed,
        "layers": layers,
        "layers_indexed": layers_indexed,
        "harvest_neurons": store.harvest_index_neurons(model),
        "seconds": round(time.time() - started, 3),
    }


def refresh_token_index(store: Any, model: str, wait_ms: int = 200) -> bool:
    """Bring the token index up to date if that can be done without waiting: for read paths (the API
    server).

    The graph stage writes each chunk's token rows in the same transaction as its graphs, so the
    index is normally current and this writes nothing. It is behind only for graphs written some
    other way (an older version, a direct insert); then indexing them here is a write, and a GET
    request must never fail with "database is locked" or stall behind a pipeline's long transaction.
    So the write waits at most ``wait_ms`` for the lock and is skipped when the database is busy:
    the answer then comes from the index as it is. Returns True when the index is current."""
    db = store.db
    try:
        if not store.graphs_to_index(model):
            return True
        db.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
        try:
            ensure_token_index(store, model)
        finally:
            db.execute("PRAGMA busy_timeout=30000")
        return True
    # locked/busy: another process is writing; serve what is indexed
    except sqlite3.OperationalError:
        if db.conn.in_transaction:
            db.conn.rollback()
        return False
