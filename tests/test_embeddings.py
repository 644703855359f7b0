"""Explanations searched by meaning with the packaged sentence-embedding model (real model,
offline): the right explanation ranks first when the query shares no word with it, vectors are
stored once and reused, exact-word search stays available, and the API and the search page answer
both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import copy_db, run_cli

from autointerp.embeddings import EMBEDDER, embed, embedder_ready, prepare_embedder, text_key
from autointerp.store import Store

pytestmark = pytest.mark.slow  # loads the 420 MB embedding model

EXPLANATIONS = {
    0: "days of the week such as Monday and Friday",
    1: "import statements at the top of Python files",
    2: "hyphens joining two words into a compound",
    3: "capital cities of European countries",
}


@pytest.fixture(scope="module")
def explained_db(small_db, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """The tiny harvest with four hand-written explanations stored through the store's own writer
    (what is being tested is the search over them, not how they were written)."""
    db = copy_db(small_db, tmp_path_factory.mktemp("embed") / "explained.db")
    store = Store(db)
    run = store.latest_complete_run("tiny-gated", 1)
    explain_run = store.create_run("tiny-gated", "explain", {"test": True}, "h", (0, 1), {})
    for neuron, text in EXPLANATIONS.items():
        store.save_explanation_results(
            run["id"],
            1,
            neuron,
            "h",
            explain_run,
            [{"kind": "llm", "status": "ok", "text": text, "created": 0.0}],
            [],
        )
    store.save_explanation_results(
        run["id"],
        1,
        4,
        "h",
        explain_run,
        [{"kind": "llm", "status": "failed", "text": None, "error": "HTTP 500", "created": 0.0}],
        [],
    )
    return db


def test_the_packaged_model_embeds_offline() -> None:
    path = prepare_embedder()
    assert embedder_ready() and (path / "model.safetensors").stat().st_size > 400e6
    v = embed(["days of the week", "weekday names", "Python imports"])
    assert v.shape == (3, 768) and abs(float((v[0] ** 2).sum()) - 1) < 1e-4
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # meaning, not spelling


@pytest.mark.parametrize(
    "query, expected",
    [
        ("weekday names", 0),
        ("module imports in source code", 1),
        ("dash between words", 2),
        ("Paris, Berlin and Rome", 3),
    ],
)
def test_search_by_meaning_ranks_the_right_explanation_first(
    explained_db, tmp_path, query: str, expected: int
) -> None:  # type: ignore[no-untyped-def]
    db = copy_db(explained_db, tmp_path / "q.db")
    proc = run_cli("search", "tiny-gated", "--explanations", query, "--json", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["neuron"] for r in rows][0] == expected
    assert (
        len(rows) == 4 and rows[0]["score"] > rows[1]["score"]
    )  # the failed explanation is never a result
    exact = json.loads(
        run_cli(
            "search", "tiny-gated", "--explanations", query, "--exact", "--json", "--db", str(db)
        ).stdout
    )
    assert all(
        r["neuron"] == expected for r in exact
    )  # FTS finds only shared words (often nothing)


def test_vectors_are_stored_once_and_reused(explained_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from autointerp.search import search_explanations_by_meaning

    store = Store(copy_db(explained_db, tmp_path / "v.db"))
    assert store.text_embeddings([text_key(t) for t in EXPLANATIONS.values()]) == {}
    first = search_explanations_by_meaning(store, "tiny-gated", "weekday names")
    stored = store.text_embeddings([text_key(t) for t in EXPLANATIONS.values()])
    assert len(stored) == 4
    rows = list(store.db.query("select embedder from text_embeddings"))
    assert len(rows) == 4 and {r["embedder"] for r in rows} == {EMBEDDER}
    again = search_explanations_by_meaning(store, "tiny-gated", "weekday names")
    assert again == first
    assert list(store.db.query("select count(*) n from text_embeddings"))[0]["n"] == 4


def test_api_and_page_search_by_meaning_or_exact_words(explained_db) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from autointerp.api import create_app

    client = TestClient(create_app(explained_db))
    meaning = client.get("/api/tiny-gated/search", params={"text": "weekday names"}).json()
    assert meaning["explanation_search"] == "meaning"
    assert (
        meaning["items"][0]["neuron"] == 0
        and meaning["items"][0]["matched"] == "explanation-meaning"
    )
    exact = client.get(
        "/api/tiny-gated/search", params={"text": "weekday names", "exact": "true"}
    ).json()
    assert exact["explanation_search"] == "exact" and exact["items"] == []
    page = client.get("/m/tiny-gated/search", params={"text": "weekday names"})
    assert page.status_code == 200 and "/m/tiny-gated/neuron/1/0" in page.text
