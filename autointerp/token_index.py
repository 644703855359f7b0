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
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from autointerp.store.search_index import graph_token_weights


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
