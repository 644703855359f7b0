"""Graph similarity: the formula's properties, the inverted index against brute force, and the
stored results."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from helpers import run_cli

from autointerp.n2g.graph import NeuronGraph, PathExample
from autointerp.similarity import (
    brute_force_top,
    compute_similarities,
    graph_similarity,
    overlap,
    similar,
    stop_tokens,
    top_similar,
)
from autointerp.store import Store
from autointerp.store.search_index import graph_token_weights
from autointerp.token_index import TokenSets, graph_token_sets

MODEL = "synthetic-model"


def ts(act: str, ctx: str = "") -> TokenSets:
    return TokenSets(frozenset(act.split()), frozenset(ctx.split()))


def make_graph(paths: list[tuple[list[str | None], list[float], float]]) -> dict:
    g = NeuronGraph()
    for tokens, imps, act in paths:
        g.add_path(PathExample(tuple(tokens), tuple(imps), act))
    return g.to_json()


def add_graphs(store: Store, graphs: dict[tuple[int, int], dict], model: str = MODEL) -> None:
    """Store graphs as the N2G stage would (a harvest run and an n2g run to hang them on)."""
    store.upsert_model({"name": model})
    run = store.find_run(model, "harvest", "h", (0, 1)) or {
        "id": store.create_run(model, "harvest", {"layers": []}, "h", (0, 1), {})
    }
    n2g = store.find_run(model, "n2g", "c", (0, 1)) or {
        "id": store.create_run(model, "n2g", {}, "c", (0, 1), {})
    }
    store.save_graphs(
        {
            "run_id": run["id"],
            "layer": layer,
            "neuron": neuron,
            "config_hash": "c",
            "graph": json.dumps(g),
            "n_nodes": len(g["nodes"]),
            "n2g_run_id": n2g["id"],
            "created": time.time(),
        }
        for (layer, neuron), g in graphs.items()
    )


def random_sets(n: int, seed: int, vocab: int = 40) -> list[TokenSets]:
    rng = random.Random(seed)
    weights = [
        1 / (r + 1) for r in range(vocab)
    ]  # Zipf: token 0 is in most graphs (a stop token at small max_df)
    out = []
    for _ in range(n):
        act = set(rng.choices(range(vocab), weights, k=rng.randint(1, 6)))
        ctx = set(rng.choices(range(vocab), weights, k=rng.randint(0, 5)))
        out.append(TokenSets(frozenset(f"t{t}" for t in act), frozenset(f"t{t}" for t in ctx)))
    return out


# --------------------------------------------------------------------------------------------------
# the formula
def test_identical_graphs_score_one_and_disjoint_zero() -> None:
    a = ts("paris berlin rome", "capital of")
    assert graph_similarity(a, a) == 1.0
    assert (
        graph_similarity(ts("paris"), ts("paris")) == 1.0
    )  # no context tokens on either side: activating only
    assert graph_similarity(a, ts("dog cat", "the lazy")) == 0.0
    assert graph_similarity(ts("x"), ts("y", "z")) == 0.0


def test_similarity_is_symmetric_and_is_the_mean_of_two_dice_terms() -> None:
    a, b = ts("paris berlin rome madrid", "capital of"), ts("paris london", "capital city")
    # activating: 1 shared of 4 and 2 -> Dice 2/6; context: 1 shared of 2 and 2 -> Dice 1/2
    assert graph_similarity(a, b) == pytest.approx(0.5 * 2 / 6 + 0.5 * 0.5)
    assert graph_similarity(a, b) == graph_similarity(b, a)
    for x, y in zip(random_sets(200, 1), random_sets(200, 2), strict=True):
        assert graph_similarity(x, y) == graph_similarity(y, x)
        assert 0.0 <= graph_similarity(x, y) <= 1.0


def test_dice_is_the_harmonic_mean_of_the_two_proportions() -> None:
    x, y = {"a", "b", "c", "d"}, {"a", "e"}
    p, q = 1 / 4, 1 / 2
    assert overlap(x, y) == pytest.approx(2 * p * q / (p + q))
    # a one-token graph is not "similar" to every big graph that contains its token
    assert overlap({"a"}, {chr(c) for c in range(97, 117)}) < 0.1


def test_token_sets_and_weights_come_from_the_graph() -> None:
    g = make_graph(
        [
            (["fox", "quick", None], [1.0, 0.9, 0.1], 1.0),
            (["Fox", "brown"], [1.0, 0.6], 0.7),
            (["dog"], [1.0], 0.4),
            (
                ["cat"],
                [1.0],
                0.02,
            ),  # an augmentation variant that stopped the neuron: not a token it fires on
        ]
    )
    weights = graph_token_weights(g)
    assert weights["activating"] == {"fox": 1.0, "dog": 0.4}  # normalised, best end below each root
    assert weights["context"] == {"quick": 0.9, "brown": 0.6}  # wildcards are not tokens
    assert graph_token_sets(g) == TokenSets(
        frozenset({"fox", "dog"}), frozenset({"quick", "brown"})
    )


# --------------------------------------------------------------------------------------------------
# index vs brute
@pytest.mark.parametrize("max_df", [5, 12, 1000])
def test_inverted_index_equals_brute_force(max_df: int) -> None:
    sets = random_sets(120, seed=max_df)
    stop = stop_tokens(sets, max_df)
    if max_df == 5:
        assert stop[0] and stop[1]  # the case with stop tokens really has some
    assert top_similar(sets, limit=7, max_df=max_df) == brute_force_top(
        sets, limit=7, max_df=max_df
    )
    # small blocks (many passes) give the same answer as one block
    assert top_similar(sets, limit=7, max_df=max_df, block_pairs=50) == brute_force_top(
        sets, 7, max_df
    )


def test_index_never_lists_a_neuron_as_similar_to_itself_and_sorts_best_first() -> None:
    sets = random_sets(60, seed=3)
    for i, top in enumerate(top_similar(sets, limit=10, max_df=100)):
        assert all(j != i for j, _ in top)
        sims = [s for _, s in top]
        assert sims == sorted(sims, reverse=True)
        assert all(s > 0 for s in sims)


# --------------------------------------------------------------------------------------------------
# the store
@pytest.fixture
def graph_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "g.db")
    add_graphs(
        store,
        {
            (0, 1): make_graph(
                [(["paris", "capital"], [1, 0.9], 1.0), (["berlin", "capital"], [1, 0.8], 0.9)]
            ),
            (0, 2): make_graph(
                [(["paris", "capital"], [1, 0.7], 0.8), (["berlin", "capital"], [1, 0.8], 0.9)]
            ),
            (1, 5): make_graph([(["paris", "in"], [1, 0.6], 0.5), (["rome"], [1], 0.6)]),
            (1, 6): make_graph(
                [(["battery", "lithium"], [1, 0.9], 1.0), (["cell", "legal"], [1, 0.5], 0.3)]
            ),
            (2, 0): make_graph([(["legal", "the"], [1, 0.7], 0.9), (["court"], [1], 0.5)]),
        },
    )
    return store


def test_compute_and_read_similar_neurons(graph_store: Store) -> None:
    summary = compute_similarities(graph_store, MODEL, limit=3, progress=False)
    assert summary["graphs"] == 5
    rows = graph_store.similar(MODEL, 0, 1, 10)
    assert rows[0] == {"layer": 0, "neuron": 2, "similarity": 1.0}  # same tokens, other weights
    assert [(r["layer"], r["neuron"]) for r in rows] == [(0, 2), (1, 5)]
    assert all(set(r) == {"layer", "neuron", "similarity"} for r in rows)
    assert graph_store.similar(MODEL, 1, 6, 10) == []  # shares no token kind-for-kind with anyone
    # symmetric in storage too
    back = {
        (r["layer"], r["neuron"]): r["similarity"] for r in graph_store.similar(MODEL, 1, 5, 10)
    }
    assert back[(0, 1)] == rows[1]["similarity"]


def test_similar_recomputes_when_graphs_change(graph_store: Store) -> None:
    assert graph_store.similarity_stale(MODEL)
    similar(graph_store, MODEL, 0, 1)
    assert not graph_store.similarity_stale(MODEL)
    add_graphs(
        graph_store,
        {
            (3, 3): make_graph(
                [(["paris", "capital"], [1, 0.9], 1.0), (["berlin", "capital"], [1, 0.8], 0.9)]
            )
        },
    )
    assert graph_store.similarity_stale(MODEL)
    rows = similar(graph_store, MODEL, 0, 1)
    assert (3, 3) in {(r["layer"], r["neuron"]) for r in rows}
    assert graph_store.similarity_run(MODEL)["config"]["graph_state"]["graphs"] == 6
    assert not graph_store.similarity_stale(MODEL, limit=20) and graph_store.similarity_stale(
        MODEL, limit=21
    )
    # the old result is gone: one similarity run per model
    assert (
        graph_store.db.execute("select count(distinct run_id) from similarities").fetchone()[0] == 1
    )


def test_cli_similar_json_and_errors(graph_store: Store) -> None:
    db = str(graph_store.path)
    res = run_cli("similar", MODEL, "0/1", "--json", "--db", db, "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows[0] == {"layer": 0, "neuron": 2, "similarity": 1.0}
    res = run_cli("similar", MODEL, "7/7", "--db", db)
    assert (
        res.returncode == 2
        and res.stderr.startswith("error: No N2G graph")
        and "Traceback" not in res.stderr
    )
    res = run_cli("similarity", MODEL, "--json", "--db", db, "--limit", "0")
    assert res.returncode == 2 and "--limit" in res.stderr
