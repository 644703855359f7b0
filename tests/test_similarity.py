"""Graph similarity: the formula's properties, the inverted index against brute force, and the
stored results."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest
from helpers import PARAGRAPHS, copy_db, run_cli

from autointerp.n2g.graph import NeuronGraph, PathExample
from autointerp.records import similar_record
from autointerp.report import build_report, format_report
from autointerp.similarity import (
    FORMULA,
    UNIFORM,
    TokenWeights,
    brute_force_top,
    compute_similarities,
    corpus_idf,
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


# --------------------------------------------------------------------------------------------------
# token weights from the corpus, and the minimum score
def test_idf_weights_follow_the_contexts() -> None:
    contexts = [["<bos>", " the", " cat", ","], ["<bos>", "The", " dog", ","], ["<bos>", ",", "x"]]
    weights, n = corpus_idf(contexts)
    assert n == 3  # IDF log((N + 1) / (df + 1)) over that of a token never seen, log(N + 1)
    assert weights(",") == 0.0  # in every context
    assert weights("the") == pytest.approx(math.log(4 / 3) / math.log(4))  # normalised: 2 of 3
    assert weights("cat") == pytest.approx(math.log(4 / 2) / math.log(4))
    assert weights("never-seen") == 1.0
    assert weights("<bos>") == 1.0  # BOS is not text the corpus holds
    assert corpus_idf([]) == (UNIFORM, 0)


def test_a_shared_token_counts_by_its_weight() -> None:
    weights = TokenWeights({"a": 0.5, "b": 0.25, "c": 0.125})
    # shared: a (0.5) of 2 and 3 tokens; the unshared ones count as tokens, whatever they weigh
    assert overlap({"a", "b"}, {"a", "c", "d"}, weights) == pytest.approx(2 * 0.5 / 5)
    assert overlap({"a", "b"}, {"a", "c", "d"}) == overlap({"a", "b"}, {"a", "c", "d"}, UNIFORM)
    assert overlap({"a", "d"}, {"a", "d"}, weights) == 0.75  # identical: their mean weight
    # a graph whose only context token is a common one shares little, even with its twin
    assert graph_similarity(ts("x", "b"), ts("y", "b"), weights=weights) == 0.5 * 0.25


@pytest.mark.parametrize(("max_df", "min_score"), [(5, 0.0), (1000, 0.0), (12, 0.1), (1000, 0.3)])
def test_weighted_index_equals_brute_force(max_df: int, min_score: float) -> None:
    sets = random_sets(120, seed=max_df)
    # IDF-like weights; rounded to multiples of 2^-20 they add up exactly in any order, so index
    # and brute force agree to the last bit
    weights = TokenWeights({f"t{i}": math.log(2 + i) / math.log(60) for i in range(0, 40, 2)})
    expected = brute_force_top(sets, 7, max_df, weights=weights, min_score=min_score)
    for block in (2_000_000, 50):
        found = top_similar(
            sets, 7, max_df, block_pairs=block, weights=weights, min_score=min_score
        )
        assert found == expected
    assert all(s >= min_score for top in expected for _, s in top)
    if min_score >= 0.3:  # the minimum really removes pairs here
        assert sum(map(len, expected)) < sum(
            map(len, brute_force_top(sets, 7, max_df, weights=weights))
        )


@pytest.fixture(scope="module")
def filler_harvest(tiny_gated, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A real harvest (tiny-gated, layer 1) of the test paragraphs among many sentences that all
    hold ``,``, ``.`` and ``the``: the common tokens are in most contexts, "mitochondria" in few."""
    from autointerp.harvest import HarvestConfig, harvest

    folder = tmp_path_factory.mktemp("idf")
    filler = [
        f"Record {i} was filed in the archive, and copy {i} went to the office." for i in range(80)
    ]
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*filler, *PARAGRAPHS]))
    cfg = HarvestConfig(
        model=tiny_gated.name,
        corpus=str(corpus),
        layers=[1],
        ctx_len=32,
        top_k=8,
        random_k=8,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    harvest(tiny_gated, folder / "h.db", cfg, progress=False, log=lambda m: None)
    return folder / "h.db"


@pytest.fixture
def harvest_graph_store(filler_harvest: Path, tmp_path: Path) -> Store:
    """The real harvest above with graphs hung on its run: two that share only punctuation and "the"
    (in most of its contexts), two that share "mitochondria" and "ATP"."""
    store = Store(copy_db(filler_harvest, tmp_path / "h.db"))
    run_id = store.latest_complete_run("tiny-gated", 1)["id"]
    n2g = store.create_run("tiny-gated", "n2g", {}, "c", (0, 1), {})
    graphs = {
        0: make_graph([([",", "the"], [1, 0.9], 1.0), (["."], [1], 0.9), (["paris"], [1], 0.8)]),
        1: make_graph([([",", "the"], [1, 0.8], 0.9), (["."], [1], 0.7), (["monday"], [1], 0.6)]),
        2: make_graph([(["mitochondria", "the"], [1, 0.9], 1.0), (["atp"], [1], 0.8)]),
        3: make_graph([(["mitochondria", "cell"], [1, 0.7], 0.9), (["atp"], [1], 0.9)]),
    }
    store.save_graphs(
        {
            "run_id": run_id,
            "layer": 1,
            "neuron": neuron,
            "config_hash": "c",
            "graph": json.dumps(g),
            "n_nodes": len(g["nodes"]),
            "n2g_run_id": n2g,
            "created": time.time(),
        }
        for neuron, g in graphs.items()
    )
    return store


def test_pairs_that_share_only_common_tokens_are_not_listed(harvest_graph_store: Store) -> None:
    store = harvest_graph_store
    summary = compute_similarities(store, "tiny-gated", progress=False)
    assert summary["idf_contexts"] > 10 and summary["min_score"] == 0.1
    neurons, token_sets = store.graph_token_sets("tiny-gated")
    sets = dict(zip(neurons, (TokenSets(a, c) for a, c in token_sets), strict=True))
    # with every token weighing 1 the punctuation pair would be listed; by IDF it is not
    assert graph_similarity(sets[(1, 0)], sets[(1, 1)]) >= 0.4
    weights, _ = corpus_idf(store.context_str_tokens(store.graph_harvest_runs("tiny-gated")))
    assert graph_similarity(sets[(1, 0)], sets[(1, 1)], weights=weights) < 0.1
    assert max(weights(t) for t in (",", ".", "the")) < 0.1 < weights("mitochondria")
    assert store.similar("tiny-gated", 1, 0) == []
    rows = store.similar("tiny-gated", 1, 2)
    assert [(r["layer"], r["neuron"]) for r in rows] == [(1, 3)] and rows[0]["similarity"] >= 0.3
    # the CLI, the report and the API say so
    db = str(store.path)
    res = run_cli("similar", "tiny-gated", "1/0", "--db", db)
    assert res.returncode == 0 and "is similar to 1/0 above 0.1" in res.stdout, res.stderr
    assert json.loads(run_cli("similar", "tiny-gated", "1/0", "--json", "--db", db).stdout) == []
    report = build_report(store, "tiny-gated", similar=3)
    text = format_report(report, db)
    quiet = [n for n in report["neurons"] if (n["layer"], n["neuron"]) == (1, 0)]
    if quiet:  # the report ranks by max activation here: 1/0 is listed when it is strong enough
        assert "similar: no similar neuron above 0.1" in text
    assert similar_record(store, "tiny-gated", 1, 0)["message"] == "No similar neuron above 0.1."
    assert similar_record(store, "tiny-gated", 1, 2)["items"][0]["neuron"] == 3


def test_a_stored_result_of_the_older_formula_is_recomputed(harvest_graph_store: Store) -> None:
    store = harvest_graph_store
    compute_similarities(store, "tiny-gated", progress=False)
    run = store.similarity_run("tiny-gated")
    store.db.execute(
        "update runs set config = json_set(config, '$.formula', 'dice-v1') where id = ?",
        [run["id"]],
    )
    store.db.conn.commit()
    assert store.similarity_stale("tiny-gated", formula=FORMULA)
    assert not store.similarity_stale("tiny-gated")
    similar(store, "tiny-gated", 1, 2)
    assert store.similarity_run("tiny-gated")["config"]["formula"] == FORMULA
