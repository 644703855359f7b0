"""Search: the query language, token search semantics over stored graphs, explanation FTS, text
-> neurons."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import torch
from helpers import copy_db, drop_explanation_index, run_cli
from test_similarity import MODEL, add_graphs, make_graph

from autointerp.errors import UserError
from autointerp.live import text_neurons
from autointerp.search import fts_query, parse_query, search_explanations, search_tokens
from autointerp.store import Store
from autointerp.token_index import build_search_indexes, stale_harvest_layers


# --------------------------------------------------------------------------------------------------
# query language
def test_parse_query_terms_kinds_union_and_normalisation() -> None:
    assert parse_query("any:the activating:Battery,CELLS important:legal") == [
        {"kind": "any", "tokens": ["the"]},
        {"kind": "activating", "tokens": ["battery", "cells"]},
        {"kind": "important", "tokens": ["legal"]},
    ]
    assert parse_query("  Paris  ") == [{"kind": "any", "tokens": ["paris"]}]  # bare token = any
    assert parse_query('important:"\\n",","  any:"a:b"') == [
        {"kind": "important", "tokens": ["\n", ","]},  # whitespace-only tokens stay as they are
        {"kind": "any", "tokens": ["a:b"]},
    ]
    assert parse_query('activating:"  "') == [{"kind": "activating", "tokens": ["  "]}]


@pytest.mark.parametrize(
    "query, says",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("foo:bar", "Unknown search kind 'foo'"),
        ("any:", "token is missing"),
        ("any:a,", "token is missing"),
        ("activating:,a", "token is missing"),
        ('any:"unclosed', "never closed"),
        ('any:""', "Empty quoted token"),
        ('any:"a"b', "Unexpected 'b'"),
        ('any:"\\q"', "Unknown escape"),
    ],
)
def test_malformed_queries_raise_one_clear_sentence(query: str, says: str) -> None:
    with pytest.raises(UserError) as info:
        parse_query(query)
    message = str(info.value)
    assert says in message
    assert message.endswith(".") and "\n" not in message


# --------------------------------------------------------------------------------------------------
# token search
@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "search.db")
    add_graphs(
        s,
        {
            # fires on "battery" (strongly), context "lithium"
            (0, 1): make_graph([(["battery", "lithium"], [1, 0.9], 1.0), (["cell"], [1], 0.4)]),
            # fires on "battery" weakly; "legal" is an important context token
            (0, 2): make_graph([(["Battery", "legal"], [1, 0.8], 0.3)]),
            # fires on "legal"; "the" in context
            (1, 3): make_graph([(["legal", "the"], [1, 0.6], 0.9)]),
            # fires on "the"
            (2, 4): make_graph([([" the"], [1], 0.7), (["court", "legal"], [1, 0.2], 0.5)]),
        },
    )
    return s


def hits(rows: list[dict]) -> list[tuple[int, int]]:
    return [(r["layer"], r["neuron"]) for r in rows]


def test_kinds_select_activating_important_or_any(store: Store) -> None:
    assert hits(search_tokens(store, MODEL, "activating:legal")) == [(1, 3)]
    assert hits(search_tokens(store, MODEL, "important:legal")) == [
        (0, 2),
        (2, 4),
    ]  # importance 0.8 before 0.2
    assert set(hits(search_tokens(store, MODEL, "any:legal"))) == {(1, 3), (0, 2), (2, 4)}
    assert hits(search_tokens(store, MODEL, "any:legal"))[0] == (
        1,
        3,
    )  # activation 0.9 is the best weight


def test_union_within_a_term_and_intersection_across_terms(store: Store) -> None:
    assert set(hits(search_tokens(store, MODEL, "activating:cell,court"))) == {(0, 1), (2, 4)}
    assert hits(search_tokens(store, MODEL, "activating:battery important:legal")) == [(0, 2)]
    assert hits(search_tokens(store, MODEL, "activating:battery important:nothing")) == []
    assert hits(search_tokens(store, MODEL, "any:the any:legal")) == [(1, 3), (2, 4)]


def test_results_sorted_by_relevance_with_matches(store: Store) -> None:
    rows = search_tokens(store, MODEL, "activating:BATTERY")  # normalised like the graphs
    assert hits(rows) == [(0, 1), (0, 2)]
    assert [r["score"] for r in rows] == [1.0, 0.3]
    assert rows[0]["matches"] == [{"kind": "activating", "token": "battery", "weight": 1.0}]
    both = search_tokens(store, MODEL, "any:the any:legal")
    assert both[0]["score"] == pytest.approx(0.6 + 0.9)  # sum over terms of the best weight
    assert {(m["kind"], m["token"]) for m in both[0]["matches"]} == {
        ("important", "the"),
        ("activating", "legal"),
    }


def test_sql_in_a_query_is_just_a_token(store: Store) -> None:
    evil = "any:\"'; drop table graphs; --\" activating:\"x' or '1'='1\""
    assert search_tokens(store, MODEL, evil) == []
    assert store.db.execute("select count(*) from graphs").fetchone()[0] == 4


def test_index_follows_newer_graphs(store: Store) -> None:
    assert hits(search_tokens(store, MODEL, "activating:volt")) == []
    time.sleep(0.01)
    add_graphs(
        store, {(0, 1): make_graph([(["volt"], [1], 1.0)])}
    )  # a rebuilt graph replaces the old one
    assert hits(search_tokens(store, MODEL, "activating:volt")) == [(0, 1)]
    assert (0, 1) not in hits(search_tokens(store, MODEL, "activating:battery"))


def test_cli_search_json_and_bad_query(store: Store) -> None:
    db = str(store.path)
    res = run_cli("search", MODEL, "activating:battery important:legal", "--json", "--db", db)
    assert res.returncode == 0, res.stderr
    assert [(r["layer"], r["neuron"]) for r in json.loads(res.stdout)] == [(0, 2)]
    res = run_cli("search", MODEL, "color:red", "--db", db)
    assert res.returncode == 2 and res.stderr.startswith("error: Unknown search kind 'color'")
    assert len(res.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# every harvested neuron: the harvest's peak tokens
GRAPHED_HERE = (0, 1)  # neurons of the real small harvest given real N2G graphs


@pytest.fixture(scope="module")
def harvest_store(small_db: Path, tiny_gated, tmp_path_factory: pytest.TempPathFactory) -> Store:  # type: ignore[no-untyped-def]
    """The real small harvest (tiny-gated, layer 1, 24 neurons) with real graphs for two neurons
    and both token indexes built."""
    from autointerp.n2g.build import N2GConfig
    from autointerp.n2g.run import graph_layers

    store = Store(copy_db(small_db, tmp_path_factory.mktemp("hsearch") / "h.db"))
    spec = ",".join(map(str, GRAPHED_HERE))
    graph_layers(tiny_gated, store, [1], spec, N2GConfig(), progress=False)
    build_search_indexes(store, "tiny-gated")
    return store


def _peaks(store: Store) -> dict[int, dict[str, float]]:
    """Neuron -> {normalised peak token of a top example: best activation / max}, from the stored
    examples (read independently of the index)."""
    run_id = store.latest_complete_run("tiny-gated", 1)["id"]
    out: dict[int, dict[str, float]] = {}
    for row in store.db.query("select neuron, max from neurons where run_id = ?", [run_id]):
        if row["max"] <= 0:
            continue
        tokens = out.setdefault(row["neuron"], {})
        for ex in store.examples(run_id, 1, row["neuron"], kinds=["top"]):
            token = ex["str_tokens"][ex["peak_index"]]
            token = token.strip().lower() if token.strip() else token
            weight = ex["max_activation"] / row["max"]
            tokens[token] = max(tokens.get(token, weight), weight)
    return {n: {t: w for t, w in ts.items() if w >= 0.1} for n, ts in out.items()}


def test_the_harvest_index_holds_every_neurons_peak_tokens(harvest_store: Store) -> None:
    expected = _peaks(harvest_store)
    stored: dict[int, dict[str, float]] = {}
    for r in harvest_store.db.query("select neuron, token, weight from harvest_token_index"):
        stored.setdefault(r["neuron"], {})[r["token"]] = r["weight"]
    assert set(stored) == set(expected) and len(stored) > 20
    for neuron, tokens in expected.items():
        assert stored[neuron] == pytest.approx(tokens, abs=1e-5)


def test_search_finds_neurons_without_a_graph_and_says_where_from(harvest_store: Store) -> None:
    peaks = _peaks(harvest_store)
    # a token that some ungraphed neurons peak on
    token = next(
        t
        for n, ts in sorted(peaks.items())
        if n not in GRAPHED_HERE
        for t in sorted(ts, key=lambda t: -ts[t])
        if t.isalpha()
    )
    rows = search_tokens(harvest_store, "tiny-gated", f"activating:{token}", limit=100)
    from_harvest = {r["neuron"] for r in rows if r["source"] == "harvest"}
    assert from_harvest == {n for n, ts in peaks.items() if token in ts} - set(GRAPHED_HERE)
    for r in rows:
        if r["source"] == "harvest":
            assert r["matches"] == [
                {
                    "kind": "activating",
                    "token": token,
                    "weight": pytest.approx(peaks[r["neuron"]][token], abs=1e-5),
                }
            ]
            assert r["score"] == pytest.approx(peaks[r["neuron"]][token], abs=1e-5)
        else:  # a graphed neuron answers from its graph, whatever its top examples peak on
            assert r["neuron"] in GRAPHED_HERE
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {
        r["neuron"] for r in search_tokens(harvest_store, "tiny-gated", f"any:{token}", 100)
    } >= from_harvest
    # a harvest has no context tokens: important: terms reach graphs only
    for r in search_tokens(harvest_store, "tiny-gated", f"important:{token}", limit=100):
        assert r["source"] == "graph"
    assert all(
        r["source"] == "graph"
        for r in search_tokens(harvest_store, "tiny-gated", f"any:{token} important:the", 100)
    )


def test_a_newer_harvest_of_the_layer_rebuilds_its_index(
    harvest_store: Store,
    tiny_gated,
    text_corpus: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from autointerp.harvest import HarvestConfig, harvest

    store = Store(copy_db(harvest_store.path, tmp_path / "again.db"))
    assert not stale_harvest_layers(store, "tiny-gated")
    cfg = HarvestConfig(
        model="tiny-gated",
        corpus=str(text_corpus),
        layers=[1],
        ctx_len=16,
        top_k=4,
        random_k=4,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    harvest(tiny_gated, store.path, cfg, progress=False, log=lambda m: None)
    newest = store.latest_complete_run("tiny-gated", 1)["id"]
    assert stale_harvest_layers(store, "tiny-gated") == {1: newest}
    res = run_cli("index", "tiny-gated", "--json", "--no-progress", "--db", str(store.path))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["layers"] == [1] and summary["layers_indexed"] == 1
    assert {r[0] for r in store.db.execute("select distinct run_id from harvest_token_index")} == {
        newest
    }


def test_cli_search_prints_the_source(harvest_store: Store) -> None:
    token = next(iter(_peaks(harvest_store)[5]))
    db = str(harvest_store.path)
    res = run_cli("search", "tiny-gated", f"activating:{token!s}", "--json", "--db", db)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert 5 in {r["neuron"] for r in rows} and {r["source"] for r in rows} <= {"graph", "harvest"}
    text = run_cli("search", "tiny-gated", f"activating:{token!s}", "--db", db).stdout
    line = next(x for x in text.splitlines() if x.split()[0] == "1/5")
    assert " harvest " in line


# --------------------------------------------------------------------------------------------------
# explanations
def add_explanations(store: Store, rows: list[tuple[int, int, str, str, str | None]]) -> None:
    run = store.find_run(MODEL, "harvest", "h", (0, 1))
    store.db["explanations"].insert_all(
        {
            "run_id": run["id"],
            "layer": layer,
            "neuron": neuron,
            "kind": kind,
            "config_hash": "e",
            "status": "ok" if text else "failed",
            "text": text,
            "error": None if text else "timeout",
            "created": time.time(),
        }
        for layer, neuron, kind, status, text in rows
    )


def test_explanation_fts_search(store: Store) -> None:
    add_explanations(
        store,
        [
            (0, 1, "llm", "ok", "Days of the week, especially Monday and Tuesday"),
            (0, 2, "llm", "ok", "The word 'week' in dates and schedules"),
            (1, 3, "baseline", "ok", "legal documents and court rulings"),
            (2, 4, "llm", "failed", None),
        ],
    )
    rows = search_explanations(store, MODEL, "days of the week")
    assert [(r["layer"], r["neuron"]) for r in rows] == [(0, 1)]  # words are ANDed
    weeks = search_explanations(store, MODEL, "weeks")  # porter stemming
    assert {(r["layer"], r["neuron"]) for r in weeks} == {(0, 1), (0, 2)}
    assert weeks[0]["score"] >= weeks[1]["score"]
    assert search_explanations(store, MODEL, '"court rulings"')[0]["kind"] == "baseline"
    assert search_explanations(store, MODEL, '"rulings court"') == []  # a phrase keeps its order
    assert {r["neuron"] for r in search_explanations(store, MODEL, "sched*")} == {2}
    # FTS5 syntax typed by the user is just words, never a syntax error
    for text in ("NEAR(week", "week AND OR", "-week", "text:week", "week (((", "week*)"):
        search_explanations(store, MODEL, text)
    with pytest.raises(UserError, match="unmatched double quote"):
        search_explanations(store, MODEL, '"days of')
    with pytest.raises(UserError, match="no words"):
        search_explanations(store, MODEL, "!!! ...")
    # updates and deletes reach the index through the triggers
    store.db.execute("update explanations set text = 'fruit names' where layer = 0 and neuron = 2")
    store.db.execute("delete from explanations where layer = 0 and neuron = 1")
    assert search_explanations(store, MODEL, "week") == []
    assert fts_query('days "of the" week*') == '"days" "of the" "week" *'


def test_fts_index_is_built_for_explanations_written_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(path)
    add_graphs(store, {(0, 1): make_graph([(["a"], [1], 1.0)])})
    add_explanations(store, [(0, 1, "llm", "ok", "capital cities of Europe")])
    drop_explanation_index(store)
    reopened = Store(path)
    assert [r["neuron"] for r in search_explanations(reopened, MODEL, "europe")] == [1]


def test_cli_explanation_search(store: Store) -> None:
    add_explanations(store, [(1, 3, "llm", "ok", "legal documents")])
    store.db.conn.commit()
    res = run_cli("search", MODEL, "--explanations", "documents", "--json", "--db", str(store.path))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["text"] == "legal documents"
    res = run_cli("search", MODEL, "--db", str(store.path))
    assert res.returncode == 2 and "--explanations" in res.stderr
    with sqlite3.connect(store.path) as conn:
        assert conn.execute(
            "select count(*) from explanations_fts where explanations_fts match 'legal'"
        ).fetchone()


# --------------------------------------------------------------------------------------------------
# text -> neurons
def test_text_neurons_thresholds_and_values(tiny) -> None:  # type: ignore[no-untyped-def]
    text = "The quick brown fox jumps over the lazy dog."
    ids, _ = tiny.encode(text)
    acts = tiny.mlp_activations(torch.tensor([ids]), [1])[1][0, 1:]
    hi = float(acts.max(dim=0).values.median())  # about half the neurons go above it
    out = text_neurons(tiny, text, 1, hi=hi, lo=None)
    expected = {n for n in range(tiny.d_mlp) if float(acts[:, n].max()) > hi}
    assert {n["neuron"] for n in out["neurons"]} == expected and expected
    maxima = [n["max"] for n in out["neurons"]]
    assert maxima == sorted(maxima, reverse=True)
    first = out["neurons"][0]
    assert len(first["values"]) == len(out["tokens"]) == len(ids) - 1
    assert first["values"] == pytest.approx(acts[:, first["neuron"]].tolist(), abs=1e-4)
    assert out["tokens"][first["peak_index"]] == first["peak_token"]
    lo_only = text_neurons(tiny, text, 1, hi=None, lo=float(acts.min()) + 1e-6)
    assert [n["neuron"] for n in lo_only["neurons"]] == [int(acts.min(dim=0).values.argmin())]
    with pytest.raises(UserError, match="--lo"):
        text_neurons(tiny, text, 1, hi=0.0, lo=1.0)
    with pytest.raises(UserError, match="out of range"):
        text_neurons(tiny, text, 5)
