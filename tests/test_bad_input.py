"""Bad input, table-driven: each case gets one clear sentence and a non-zero exit (CLI: ``error: ...``, status 2,
no traceback; API: a 4xx JSON ``detail``), and the database is left exactly as it was (or never created).

Cases already covered elsewhere are not repeated here: empty / non-UTF-8 / too-short corpora, layers out of range
for a harvest and over-long ``--ctx-len`` (test_cli.py, real model), misspelt model names for harvest
(test_cli.py), a 1 MB body to the activations endpoint (test_api.py), the query language's error messages
(test_search.py). The database is a real harvest of the tiny gated model with graphs, explanations and scores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from apidb import build_api_db
from fastapi.testclient import TestClient

from autointerp.api import create_app
from autointerp.cli import main
from autointerp.models import SubjectModel

M = "tiny-gated"
SQL = "'; drop table graphs; --"
OFFLINE = "http://127.0.0.1:9/v1"  # never contacted: every case fails before any LLM call
EXPLAIN = ["--base-url", OFFLINE, "--explainer-model", "m", "--no-progress"]


@pytest.fixture(scope="module")
def db(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_api_db(tiny_gated, tmp_path_factory.mktemp("bad-input"))


def dump(path: Path) -> list[str]:
    """The database's whole logical content (schema and rows), to prove a command wrote nothing."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


# (argv with {db}, exit status, text the one error line must contain); status 0 = accepted as plain data
CLI_CASES = [
    # unknown or misspelt model
    (["neuron", "smolm2-135m", "1/0"], 2, "Did you mean 'smollm2-135m'"),
    (["rank", "tiny-gatd"], 2, "No complete harvest of tiny-gatd"),
    (["explain", "tiny-gatd", "--layers", "1", *EXPLAIN], 2, "tiny-gatd has not been harvested"),
    (["search", "nosuch", "any:the"], 2, "No results for nosuch"),
    (["similarity", "nosuch"], 2, "No results for nosuch"),
    # layer / neuron out of range
    (["neuron", M, "9/0"], 2, "Layer 9 of tiny-gated has not been harvested"),
    (["rank", M, "--layer", "9"], 2, "Layer 9 of tiny-gated has not been harvested"),
    (["neuron", M, "1/999"], 2, "Neuron 1/999 is not in run"),
    (["neuron", M, "1/-1"], 2, "must not be negative"),
    (["explain", M, "--layers", "1", "--neurons", "0-999", *EXPLAIN], 2, "Neuron 24 is out of range"),
    (["explain", M, "--layers", "1", "--neurons", "top:0", *EXPLAIN], 2, "K >= 1"),
    (["similar", M, "1/999"], 2, "No N2G graph for tiny-gated 1/999"),
    (["export", "graphml", M, "1/999", "-o", "out/x.graphml"], 2, "No N2G graph"),
    # texts too long for the live commands (refused before the model is loaded)
    (["activations", "smollm2-135m", "1/0", "--text", "x" * 1_000_000], 2, "the limit is 20000"),
    (["fire", "smollm2-135m", "--layer", "1", "--text", "x" * 1_000_000], 2, "the limit is 20000"),
    # malformed search queries
    (["search", M, 'any:"unclosed'], 2, "never closed"),
    (["search", M, "colour:red"], 2, "Unknown search kind 'colour'"),
    (["search", M, "any:a,"], 2, "token is missing"),
    (["search", M, "--explanations", '"unclosed'], 2, "unmatched double quote"),
    (["search", M, "--explanations", "***"], 2, "no words to look for"),
    (["search", M], 2, "Give either a token query"),
    # SQL-like strings are plain data: searched for, found nowhere, nothing dropped
    (["search", M, SQL], 0, ""),
    (["search", M, f'important:"{SQL}" activating:"x\' or \'1\'=\'1"'], 0, ""),
    (["search", M, "--explanations", SQL + " OR 1=1; select * from runs"], 0, ""),
    (["search", M, "--explanations", "capital NEAR(x) AND -y"], 0, ""),
    # paths that climb out of the working directory
    (["export", "graphml", M, "1/0", "-o", "../x.graphml"], 2, "contains '..'"),
    (["export", "graphml", M, "1/0", "-o", "graphs/../../x.graphml"], 2, "contains '..'"),
    (["export", "graphml", "..", "1/0"], 2, "contains '..'"),
    (["export", "graphml", M, "1/0", "-o", "x.svg"], 2, "must end in .graphml"),
]


@pytest.mark.parametrize(("argv", "status", "needle"), CLI_CASES, ids=[" ".join(c[0])[:60] for c in CLI_CASES])
def test_cli_bad_input_is_one_sentence_and_writes_nothing(db: Path, argv: list[str], status: int, needle: str,
                                                          capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # export paths are relative to the working directory
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    before = dump(db)
    code = main([*argv, "--db", str(db)] if argv[0] not in ("activations", "fire") else argv)
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    if status:
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], err
    assert dump(db) == before
    assert list(tmp_path.rglob("*.graphml")) == [] and list(tmp_path.rglob("*.svg")) == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from graphs").fetchone()[0] > 0  # never dropped


NEWER_SCHEMA_COMMANDS = [
    ["runs"], ["rank", M], ["neuron", M, "1/0"], ["search", M, "any:the"], ["similar", M, "1/0"],
    ["similarity", M], ["explain", M, *EXPLAIN], ["graph", M, "--layers", "1"],
    ["export", "graphml", M, "1/0", "-o", "x.graphml"], ["weights", M], ["compare", M, "1/0", M],
    ["serve", "--port", "0"],
]


@pytest.mark.parametrize("argv", NEWER_SCHEMA_COMMANDS, ids=[a[0] for a in NEWER_SCHEMA_COMMANDS])
def test_a_newer_schema_is_refused_by_every_command(db: Path, tmp_path: Path, argv: list[str],
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(db) as src, sqlite3.connect(newer) as dst:
        src.backup(dst)
    with sqlite3.connect(newer) as conn:
        conn.execute("update meta set value = '99' where key = 'schema_version'")
    monkeypatch.chdir(tmp_path)
    before = dump(newer)
    code = main([*argv, "--db", str(newer)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "schema version 99" in err and "upgrade autointerp" in err, err
    assert dump(newer) == before
    assert not (tmp_path / "x.graphml").exists()


def test_merge_refuses_a_newer_schema_and_creates_nothing(db: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(db) as src, sqlite3.connect(newer) as dst:
        src.backup(dst)
    with sqlite3.connect(newer) as conn:
        conn.execute("update meta set value = '99' where key = 'schema_version'")
    assert main(["merge", str(tmp_path / "out.db"), str(newer)]) == 2
    assert "upgrade autointerp" in capsys.readouterr().err
    assert not (tmp_path / "out.db").exists()


# (method, url, json body, status, text the detail must contain)
API_CASES = [
    ("GET", f"/api/{M}/search?query=any:%22{SQL}%22", None, 200, ""),
    ("GET", f"/api/{M}/search?text={SQL}%20OR%201=1", None, 200, ""),
    ("GET", f"/api/{M}/search?query={SQL}&text=capital%22%20NEAR", None, 422, "unmatched double quote"),
    ("GET", f"/api/{M}/search?query=any:a,", None, 422, "token is missing"),
    ("GET", f"/api/{M}/search?query=" + "a" * 501, None, 422, "query: String should have at most 500"),
    ("GET", f"/api/{M}/rank?by={SQL}", None, 422, "Cannot rank by"),
    ("GET", f"/api/{SQL}/stats/1/0", None, 404, "No harvested model"),
    ("GET", f"/api/{M}/neuroscope/1/0?kinds={SQL}", None, 422, "Unknown example kind"),
    ("POST", f"/api/{M}/activations", {"text": "x" * 1_000_000, "layer": 1}, 413, "at most"),
    ("POST", f"/api/{M}/activations", {"text": "x" * 301, "layer": 1}, 413, "300"),
    ("POST", f"/api/{M}/activations", {"text": "hi", "layer": 1, "neuron": 24}, 404, "Neuron 24"),
    ("POST", f"/api/{M}/activations", {"text": "hi", "layer": 9}, 404, "Layer 9"),
    ("POST", f"/api/{M}/activations", {"text": "", "layer": 1}, 422, ""),
    ("POST", f"/api/{M}/layerscope", {"text": 5}, 422, ""),
]


def test_api_bad_input_is_a_4xx_that_says_why_and_writes_nothing(db: Path, tiny_gated: SubjectModel) -> None:
    client = TestClient(create_app(db, loader=lambda name: tiny_gated, max_chars=300))
    before = dump(db)
    for method, url, body, status, needle in API_CASES:
        r = client.request(method, url, json=body)
        assert r.status_code == status, (url, r.status_code, r.text[:300])
        if status != 200:
            detail = r.json().get("message") or r.json()["detail"]
            assert needle in str(detail), (url, detail)
    assert dump(db) == before
