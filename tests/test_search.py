"""Search: the query language, token search semantics over stored graphs, explanation FTS, text
-> neurons."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import torch
from helpers import drop_explanation_index, run_cli
from test_similarity import MODEL, add_graphs, make_graph

from autointerp.errors import UserError
from autointerp.live import text_neurons
from autointerp.search import fts_query, parse_query, search_explanations, search_tokens
from autointerp.store import Store


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
