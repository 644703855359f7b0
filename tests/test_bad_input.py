"""Bad input, table-driven: each case gets one clear sentence and a non-zero exit (CLI: ``error:
...``, status 2, no traceback; API: a 4xx JSON ``detail``), and the database is left exactly as it
was (or never created).

Cases already covered elsewhere are not repeated here: empty / non-UTF-8 / too-short corpora, layers
out of range for a harvest and over-long ``--ctx-len`` (test_cli.py, real model), misspelt model
names for harvest (test_cli.py), a 1 MB body to the activations endpoint (test_api.py), the query
language's error messages (test_search.py). The database is a real harvest of the tiny gated model
with graphs, explanations and scores."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apidb import build_api_db
from fastapi.testclient import TestClient
from helpers import PARAGRAPHS, REPO, set_schema_version

from autointerp.api import create_app
from autointerp.cli import main
from autointerp.models import SubjectModel
from autointerp.untrusted import ENVIRONMENT

M = "tiny-gated"
SQL = "'; drop table graphs; --"
OFFLINE = "http://127.0.0.1:9/v1"  # never contacted: every case fails before any LLM call
OFFLINE_TOO = "http://127.0.0.1:7/v1"  # with OFFLINE: a pool where no server answers
EXPLAIN = ["--base-url", OFFLINE, "--explainer-model", "m", "--no-progress"]
HUGE = 2**63  # one past SQLite's largest integer


@pytest.fixture(scope="module")
def db(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_api_db(tiny_gated, tmp_path_factory.mktemp("bad-input"))


def dump(path: Path) -> list[str]:
    """The database's whole logical content (schema and rows), to prove a command wrote nothing."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


# (argv with {db}, exit status, text the one error line must contain); status 0 = accepted as plain
# data
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
    (
        ["explain", M, "--layers", "1", "--neurons", "0-999", *EXPLAIN],
        2,
        "Neuron 24 is out of range",
    ),
    (["explain", M, "--layers", "1", "--neurons", "top:0", *EXPLAIN], 2, "K >= 1"),
    (["explain", M, "--layers", "1", "--neurons", "best:0", *EXPLAIN], 2, "K >= 1"),
    (["similar", M, "1/999"], 2, "No N2G graph for tiny-gated 1/999"),
    (["export", "graphml", M, "1/999", "-o", "out/x.graphml"], 2, "No N2G graph"),
    # texts too long for the live commands (refused before the model is loaded)
    (["activations", "smollm2-135m", "1/0", "--text", "x" * 1_000_000], 2, "the limit is 20000"),
    (["fire", "smollm2-135m", "--layer", "1", "--text", "x" * 1_000_000], 2, "the limit is 20000"),
    # malformed search queries
    (["search", M, 'any:"unclosed'], 2, "never closed"),
    (["search", M, "colour:red"], 2, "Unknown search kind 'colour'"),
    (["search", M, "any:a,"], 2, "token is missing"),
    (["search", M, "--explanations", '"unclosed', "--exact"], 2, "unmatched double quote"),
    (["search", M, "--explanations", "***"], 2, "no words to look for"),
    (["search", M], 2, "Give either a token query"),
    # SQL-like strings are plain data: searched for, found nowhere, nothing dropped
    (["search", M, SQL], 0, ""),
    (["search", M, f"important:\"{SQL}\" activating:\"x' or '1'='1\""], 0, ""),
    # FTS5 syntax and SQL in an exact search are data (a search by meaning sends no text to SQL at
    # all)
    (["search", M, "--explanations", SQL + " OR 1=1; select * from runs", "--exact"], 0, ""),
    (["search", M, "--explanations", "capital NEAR(x) AND -y", "--exact"], 0, ""),
    # paths that climb out of the working directory
    (["export", "graphml", M, "1/0", "-o", "../x.graphml"], 2, "contains '..'"),
    (["export", "graphml", M, "1/0", "-o", "graphs/../../x.graphml"], 2, "contains '..'"),
    (["export", "graphml", "..", "1/0"], 2, "contains '..'"),
    (["export", "graphml", M, "1/0", "-o", "x.svg"], 2, "must end in .graphml"),
    # -o may be anywhere, but no folder is made outside the working directory (not at the root)
    (
        ["export", "graphml", M, "1/0", "-o", "/nonexistent_dir/x.graphml"],
        2,
        "/nonexistent_dir does not exist; create it first",
    ),
    (
        ["export", "graphml", M, "--all", "-o", "/nonexistent_dir/sub/graphs"],
        2,
        "/nonexistent_dir does not exist; create it first",
    ),
    # text that is not valid Unicode: argv bytes that are not UTF-8 reach Python as lone surrogates
    (["search", M, "any:caf\udce9"], 2, "is not valid UTF-8: byte 0xe9"),
    (["search", M, "--explanations", "caf\udce9"], 2, "is not valid UTF-8: byte 0xe9"),
    (
        ["activations", "smollm2-135m", "1/0", "--text", "\udcff\udcfe bad"],
        2,
        "not valid UTF-8: byte 0xff",
    ),
    (
        ["fire", "smollm2-135m", "--layer", "1", "--text", "caf\udce9"],
        2,
        "not valid UTF-8: byte 0xe9",
    ),
    (["compare", M, "1/0", M, "--text", "caf\udce9"], 2, "not valid UTF-8: byte 0xe9"),
    (["neuron", "tiny\udcff", "1/0"], 2, "The argument model is not valid UTF-8"),
    # nonsense numbers: refused by the configs (or the option's type) before anything runs
    (
        ["graph", M, "--layers", "1", "--train-examples", "0"],
        2,
        "--train-examples must be at least 1, not 0",
    ),
    (
        ["graph", M, "--layers", "1", "--train-examples", "-5"],
        2,
        "--train-examples must be at least 1, not -5",
    ),
    (
        ["graph", M, "--layers", "1", "--importance-threshold", "-1"],
        2,
        "--importance-threshold must be at least 0",
    ),
    (
        ["graph", M, "--layers", "1", "--importance-threshold", "nan"],
        2,
        "--importance-threshold must be a finite",
    ),
    (
        ["graph", M, "--layers", "1", "--augmentations", "-1"],
        2,
        "--augmentations must be at least 0, not -1",
    ),
    (["harvest", "--model", M, "--top-k", "0"], 2, "--top-k must be at least 1, not 0"),
    # every size option is refused the same way, never read as "the default" (0 ran with 16)
    *[
        (["harvest", "--model", M, option, "0"], 2, f"{option} must be at least {low}, not 0")
        for option, low in (("--batch-size", 1), ("--ctx-len", 2), ("--tokens", 1))
    ],
    (["harvest", "--model", M, "--random-k", "-1"], 2, "--random-k must be at least 0, not -1"),
    (["harvest", "--model", M, "--bottom-k", "-1"], 2, "--bottom-k must be at least 0, not -1"),
    (
        ["harvest", "--model", M, "--checkpoint-seconds", "nan"],
        2,
        "--checkpoint-seconds must be a number",
    ),
    (
        ["harvest", "--model", M, "--checkpoint-seconds", "-1"],
        2,
        "--checkpoint-seconds must be at least 0",
    ),
    (
        ["fire", "smollm2-135m", "--layer", "1", "--hi", "nan", "--text", "x"],
        2,
        "--hi: must be a finite number",
    ),
    (
        ["fire", "smollm2-135m", "--layer", "1", "--lo=-inf", "--text", "x"],
        2,
        "--lo: must be a finite number",
    ),
    (["explain", M, "--sim-top", "0", "--sim-random", "0", *EXPLAIN], 2, "both 0"),
    (["explain", M, "--explain-records", "0", *EXPLAIN], 2, "--explain-records must be at least 1"),
    (["similar", M, "1/0", "--limit", "x"], 2, "--limit: must be a whole number"),
    # integers past 64 bits (or past any model): bounded as the API bounds them, never an
    # OverflowError, and a range is never spelt out number by number into memory
    *[
        ([*argv, option, str(HUGE)], 2, f"{option}: must be at most 2147483647")
        for argv, option in (
            (["rank", M], "--limit"),
            (["report", M], "--limit"),
            (["report", M], "--similar"),
            (["neuron", M, "1/0"], "--limit"),
            (["neuron", M, "1/0"], "--run"),
            (["similar", M, "1/0"], "--limit"),
            (["search", M, "any:the"], "--limit"),
            (["search", M, "--explanations", "capital", "--exact"], "--limit"),
            (["similarity", M], "--limit"),
            (["similarity", M], "--max-df"),
            (["graph", M, "--layers", "1"], "--train-examples"),
            (["explain", M, *EXPLAIN], "--concurrency"),
            (["explain", M, *EXPLAIN], "--sim-top"),
            (["explain", M, *EXPLAIN], "--candidates"),
            (["eval", M, *EXPLAIN], "--sample"),
        )
    ],
    (["eval", M, "--seed", str(2 * HUGE), *EXPLAIN], 2, "--seed: must be at most"),
    (["calibrate", M, "--tokens", str(2 * HUGE), *EXPLAIN], 2, "--tokens: must be at most"),
    (["explain", M, "--stop-after-failures", "-1", *EXPLAIN], 2, "must be at least 0, not -1"),
    (["neuron", M, "1/99999999999999999999"], 2, "Neuron must be at most 2147483647"),
    (["neuron", M, f"{HUGE}/0"], 2, "Layer must be at most 2147483647"),
    (["similar", M, f"1/{HUGE}"], 2, "Neuron must be at most 2147483647"),
    (["export", "graphml", M, f"1/{HUGE}", "-o", "x.graphml"], 2, "Neuron must be at most"),
    (["harvest", "--model", M, "--tokens", str(2 * HUGE)], 2, "--tokens: must be at most"),
    (["harvest", "--model", M, "--seed", str(2 * HUGE)], 2, "--seed: must be at most"),
    (["rank", M, "--layer", str(HUGE)], 2, "--layer: must be at most 2147483647"),
    (["harvest", "--model", M, "--layers", f"0-{HUGE}"], 2, "Layers must be at most"),
    (["export", "graphml", M, "--layers", "0-3000000000", "--all"], 2, "Layers must be at most"),
    (["explain", M, "--neurons", "0-99999999", *EXPLAIN], 2, "names more than 1,048,576"),
    (["explain", M, "--neurons", f"top:{HUGE}", *EXPLAIN], 2, "top:K must be at most"),
    # the LLM endpoint is checked once, up front: malformed or unreachable is one sentence, no
    # failed rows
    (
        [
            "explain",
            M,
            "--layers",
            "1",
            "--neurons",
            "0",
            "--base-url",
            "not a url",
            "--explainer-model",
            "m",
        ],
        2,
        "--base-url must be an http(s) URL",
    ),
    (
        [
            "explain",
            M,
            "--layers",
            "1",
            "--neurons",
            "0",
            "--base-url",
            "file:///etc/passwd",
            "--explainer-model",
            "m",
        ],
        2,
        "--base-url must be an http(s) URL",
    ),
    (["explain", M, "--layers", "1", "--neurons", "0", *EXPLAIN], 2, "does not answer"),
    # eval and calibrate take the same LLM options as explain, refuse the same nonsense and check
    # the endpoint up front too (they used to take one --base-url, a nan timeout, 0 attempts, and
    # record a failed row per neuron for an endpoint that is not there)
    *[
        ([command, model, option, value, *EXPLAIN], 2, f"{option}: {says}")
        for command, model in (("eval", M), ("calibrate", "smollm2-135m"))
        for option, value, says in (
            ("--llm-timeout", "nan", "must be a finite number, not 'nan'"),
            ("--max-attempts", "0", "must be at least 1, not 0"),
            ("--threads", "0", "must be at least 1, not 0"),
        )
    ],
    (["eval", M, "--layers", "1", "--sample", "2", *EXPLAIN], 2, "does not answer"),
    (
        ["eval", M, "--layers", "1", "--sample", "2", "--base-url", OFFLINE_TOO, *EXPLAIN],
        2,
        "No LLM server of the pool answers",
    ),
    (["calibrate", "smollm2-135m", "--tokens", "256", *EXPLAIN], 2, "does not answer"),
]


@pytest.mark.parametrize(
    ("argv", "status", "needle"), CLI_CASES, ids=[" ".join(c[0])[:60] for c in CLI_CASES]
)
def test_cli_bad_input_is_one_sentence_and_writes_nothing(
    db: Path,
    argv: list[str],
    status: int,
    needle: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    ["runs"],
    ["rank", M],
    ["neuron", M, "1/0"],
    ["search", M, "any:the"],
    ["similar", M, "1/0"],
    ["similarity", M],
    ["explain", M, *EXPLAIN],
    ["graph", M, "--layers", "1"],
    ["export", "graphml", M, "1/0", "-o", "x.graphml"],
    ["weights", M],
    ["compare", M, "1/0", M],
    ["serve", "--port", "0"],
]


@pytest.mark.parametrize("argv", NEWER_SCHEMA_COMMANDS, ids=[a[0] for a in NEWER_SCHEMA_COMMANDS])
def test_a_newer_schema_is_refused_by_every_command(
    db: Path,
    tmp_path: Path,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(db) as src, sqlite3.connect(newer) as dst:
        src.backup(dst)
    set_schema_version(newer, 99)
    monkeypatch.chdir(tmp_path)
    before = dump(newer)
    code = main([*argv, "--db", str(newer)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "schema version 99" in err and "upgrade autointerp" in err, err
    assert dump(newer) == before
    assert not (tmp_path / "x.graphml").exists()


def test_merge_refuses_a_newer_schema_and_creates_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = tmp_path / "newer.db"
    with sqlite3.connect(db) as src, sqlite3.connect(newer) as dst:
        src.backup(dst)
    set_schema_version(newer, 99)
    assert main(["merge", str(tmp_path / "out.db"), str(newer)]) == 2
    assert "upgrade autointerp" in capsys.readouterr().err
    assert not (tmp_path / "out.db").exists()


# (method, url, json body, status, text the detail must contain)
API_CASES = [
    ("GET", f"/api/{M}/search?query=any:%22{SQL}%22", None, 200, ""),
    ("GET", f"/api/{M}/search?text={SQL}%20OR%201=1", None, 200, ""),
    (
        "GET",
        f"/api/{M}/search?query={SQL}&text=capital%22%20NEAR",
        None,
        422,
        "unmatched double quote",
    ),
    ("GET", f"/api/{M}/search?query=any:a,", None, 422, "token is missing"),
    (
        "GET",
        f"/api/{M}/search?query=" + "a" * 501,
        None,
        422,
        "query: String should have at most 500",
    ),
    ("GET", f"/api/{M}/rank?by={SQL}", None, 422, "Cannot rank by"),
    # percent-encoded bytes that are not UTF-8 are refused, never searched for as "\ufffd\ufffd"
    (
        "GET",
        f"/api/{M}/search?query=%C0%AF",
        None,
        422,
        "The query string is not valid UTF-8: byte 0xc0",
    ),
    (
        "GET",
        f"/api/{M}/search?text=caf%E9",
        None,
        422,
        "query string is not valid UTF-8: byte 0xe9",
    ),
    ("GET", "/m/%C0%AF/search", None, 422, "The path is not valid UTF-8: byte 0xc0"),
    ("GET", f"/api/{SQL}/stats/1/0", None, 404, "No harvested model"),
    ("GET", f"/api/{M}/neuroscope/1/0?kinds={SQL}", None, 422, "Unknown example kind"),
    ("POST", f"/api/{M}/activations", {"text": "x" * 1_000_000, "layer": 1}, 413, "at most"),
    ("POST", f"/api/{M}/activations", {"text": "x" * 301, "layer": 1}, 413, "300"),
    ("POST", f"/api/{M}/activations", {"text": "hi", "layer": 1, "neuron": 24}, 404, "Neuron 24"),
    ("POST", f"/api/{M}/activations", {"text": "hi", "layer": 9}, 404, "Layer 9"),
    ("POST", f"/api/{M}/activations", {"text": "", "layer": 1}, 422, ""),
    ("POST", f"/api/{M}/layerscope", {"text": 5}, 422, ""),
    # within --max-chars but over the 256-token limit: refused with a sentence (as docs/api.md
    # says), never cut silently
    ("POST", f"/api/{M}/activations", {"text": "\U0001d518" * 150, "layer": 1}, 422, "tokens long"),
    ("POST", f"/api/{M}/layerscope", {"text": "\U0001d518" * 150}, 422, "451 tokens long"),
    # lone surrogates are valid JSON but not text
    (
        "POST",
        f"/api/{M}/activations",
        {"text": "a\ud800b", "layer": 1},
        422,
        "lone surrogate \\ud800",
    ),
    (
        "POST",
        f"/api/{M}/activations",
        {"text": "\udcff", "layer": 1, "neuron": 0},
        422,
        "lone surrogate",
    ),
    ("POST", f"/api/{M}/layerscope", {"text": "a\ud800b"}, 422, "lone surrogate \\ud800"),
    # integers beyond SQLite's range (and far beyond any model) are refused, not overflowed
    *[
        ("GET", f"/api/{M}/{service}/1?offset={HUGE}", None, 422, "offset")
        for service in ("neuroscope", "stats", "n2g", "explanation")
    ],
    ("GET", f"/api/{M}/n2g/1/{HUGE}", None, 422, "neuron"),
    ("GET", f"/api/{M}/explanation/{HUGE}/0", None, 422, "layer"),
    ("GET", f"/api/{M}/n2g/1/{HUGE}/graphml", None, 422, "neuron"),
    ("GET", f"/api/{M}/rank?layer={HUGE}", None, 422, "layer"),
    ("GET", f"/api/{M}/layerscope/abc/{HUGE}", None, 422, "layer"),
    ("POST", f"/api/{M}/activations", {"text": "hi", "layer": HUGE}, 422, "layer"),
    ("POST", f"/api/{M}/activations", {"text": "hi", "layer": 1, "neuron": -HUGE}, 422, "neuron"),
]


def test_api_bad_input_is_a_4xx_that_says_why_and_writes_nothing(
    db: Path, tiny_gated: SubjectModel
) -> None:
    client = TestClient(create_app(db, loader=lambda name: tiny_gated, max_chars=300))
    before = dump(db)
    for method, url, body, status, needle in API_CASES:
        # sent as JSON text with \uXXXX escapes, as a browser's JSON.stringify would send a lone
        # surrogate
        r = client.request(
            method,
            url,
            content=None if body is None else json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == status, (url, r.status_code, r.text[:300])
        if status != 200:
            detail = r.json().get("message") or r.json()["detail"]
            assert needle in str(detail), (url, detail)
    assert dump(db) == before


# ----------------------------------------------------------------------------------------
# environment
def _not_sqlite(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 200)
    return path


def _corrupted(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "corrupted.db"
    with sqlite3.connect(db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    with sqlite3.connect(path) as conn:
        conn.execute("pragma journal_mode=delete")
    data = bytearray(path.read_bytes())
    page = 4096
    data[page : page * 40] = b"\xde\xad\xbe\xef" * (
        page * 39 // 4
    )  # the header survives, the b-trees do not
    path.write_bytes(bytes(data))
    return path


def _folder(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "folder.db"
    path.mkdir()
    return path


def _other_program(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "contacts.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table people (name text, phone text)")
        conn.execute("insert into people values ('Ada', '555-0100')")
    return path


def _foreign_meta(tmp_path: Path, db: Path) -> Path:
    """Another program that versions its schema as autointerp does: ``meta(key, value)`` with a
    ``schema_version`` row."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table meta (key text primary key, value text)")
        conn.execute("insert into meta values ('schema_version', '1')")
        conn.execute("create table things (name text)")
    conn.close()
    return path


def _schema_version(value: object) -> Callable[[Path, Path], Path]:
    """An autointerp database whose ``schema_version`` is ``value`` (not a whole number)."""

    def make(tmp_path: Path, db: Path) -> Path:
        path = tmp_path / "odd-version.db"
        with sqlite3.connect(db) as src, sqlite3.connect(path) as dst:
            src.backup(dst)
            dst.execute("pragma journal_mode=delete")
            dst.execute("update meta set value = ? where key = 'schema_version'", [value])
        dst.close()
        return path

    return make


def _snapshot(path: Path) -> object:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_bytes()


ENVIRONMENTS = {
    "not-sqlite": _not_sqlite,
    "corrupted": _corrupted,
    "a-folder": _folder,
    "another-programs-sqlite": _other_program,
    "another-programs-meta-table": _foreign_meta,
    **{f"schema-version-{v!r}": _schema_version(v) for v in ("4.0", "abc", None, 4.5)},
}
ENV_COMMANDS = [
    ["rank", M],
    ["neuron", M, "1/0"],
    ["runs"],
    ["search", M, "any:the"],
    ["weights", "smollm2-135m", "--layers", "0"],
    ["serve", "--port", "0"],
    ["export", "graphml", M, "1/0", "-o", "x.graphml"],
]


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=list(ENVIRONMENTS))
@pytest.mark.parametrize("argv", ENV_COMMANDS, ids=[a[0] for a in ENV_COMMANDS])
def test_an_unusable_database_is_one_sentence_and_is_left_alone(
    db: Path,
    tmp_path: Path,
    env: str,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = ENVIRONMENTS[env](tmp_path, db)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(path)
    code = main([*argv, "--db", str(path)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(path) in lines[0], err
    assert _snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        path.name
    ]  # no -wal, -shm, .tmp or export left


def test_merge_with_a_shard_that_is_not_sqlite_creates_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _not_sqlite(tmp_path, db)
    code = main(["merge", str(tmp_path / "out.db"), str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"{bad} cannot be read" in err, err
    assert not (tmp_path / "out.db").exists()


def test_export_refuses_a_folder_for_a_file_and_makes_no_folder_outside_the_working_directory(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "taken.graphml").mkdir()
    (work / "out").symlink_to(outside)
    monkeypatch.chdir(work)
    for target, needle in (
        ("taken.graphml", "is a folder"),
        (str(outside / "missing" / "x.graphml"), "missing does not exist; create it first"),
    ):
        code = main(["export", "graphml", M, "1/0", "-o", target, "--db", str(db)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and needle in err, (target, err)
    assert list(outside.iterdir()) == [] and list((work / "taken.graphml").iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == ["out", "taken.graphml"]
    # -o is the user's choice: an existing folder anywhere, through a link too, and inside the
    # working directory (also by an absolute path) the folders it needs are created
    assert (
        main(["export", "graphml", M, "1/0", "-o", str(outside / "o.graphml"), "--db", str(db)])
        == 0
    )
    assert main(["export", "graphml", M, "1/0", "-o", "out/l.graphml", "--db", str(db)]) == 0
    assert sorted(p.name for p in outside.iterdir()) == ["l.graphml", "l.svg", "o.graphml", "o.svg"]
    assert (
        main(["export", "graphml", M, "1/0", "-o", str(work / "a" / "b.graphml"), "--db", str(db)])
        == 0
    )
    assert (work / "a" / "b.graphml").exists() and (work / "a" / "b.svg").exists()


def test_export_onto_a_link_follows_it_and_keeps_the_link(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/guarantees.md: links are followed as the system follows them. The file the link names
    gets the graph; the link stays a link (it used to be replaced by a regular file)."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (elsewhere / "real.graphml").write_text("old contents")
    (work / "g.graphml").symlink_to(elsewhere / "real.graphml")
    (work / "new.graphml").symlink_to(elsewhere / "new.graphml")  # dangling: made by the write
    monkeypatch.chdir(work)
    for name in ("g.graphml", "new.graphml"):
        assert main(["export", "graphml", M, "1/0", "-o", name, "--db", str(db)]) == 0
        assert (work / name).is_symlink()
    for name in ("real.graphml", "new.graphml"):
        assert (elsewhere / name).read_text().startswith("<?xml"), name
    assert sorted(p.name for p in elsewhere.iterdir()) == ["new.graphml", "real.graphml"]


def _full_disk_cli(argv: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess[str]:
    """The real CLI with files capped at ``limit`` bytes (RLIMIT_FSIZE): every write past it fails
    with EFBIG, as on a full disk (SIGXFSZ ignored, so the write fails instead of killing the
    process).
    """

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "autointerp", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=cap,
        timeout=300,
    )


def test_a_full_disk_is_one_sentence_and_changes_nothing(db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "full.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    before = dump(copy)
    # the database: similarity writes a transaction into the WAL, which cannot grow
    proc = _full_disk_cli(["similarity", M, "--db", str(copy), "--no-progress"], tmp_path, 2048)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr
    assert dump(copy) == before
    # an export: the GraphML cannot be written; no half file, no .tmp
    proc = _full_disk_cli(
        ["export", "graphml", M, "1/0", "--db", str(copy), "-o", "g.graphml"], tmp_path, 512
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: File too large" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("g.*")) and not list(tmp_path.rglob("*.tmp"))


def test_a_database_on_read_only_media_can_be_browsed(db: Path, tmp_path: Path) -> None:
    """A published database on a read-only mount: WAL readers cannot create their -shm file there,
    so the store opens it immutable. The mount is a bind mount in a user namespace (`unshare`), as a
    non-root user can make. It lacks the optional ``answers`` table, as one written before it
    existed: still current, so still readable."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    with sqlite3.connect(db) as a, sqlite3.connect(src / "pub.db") as b:
        a.backup(b)
        b.execute("drop table answers")  # published before that (optional) table existed
    a.close()
    # the last connection checkpoints and removes -wal and -shm: a published file, in WAL mode
    b.close()
    assert sorted(p.name for p in src.iterdir()) == ["pub.db"]
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f"mount --bind {src} {ro} && mount -o remount,bind,ro {ro} && touch {ro}/x",
        ],
        capture_output=True,
        text=True,
    )
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:200]}")
    python = f"PYTHONPATH={REPO} {sys.executable} -m autointerp"
    script = (
        f"mount --bind {src} {ro} && mount -o remount,bind,ro {ro} && {python} rank {M} --db"
        f" {ro}/pub.db --json && {python} neuron {M} 1/0 --db {ro}/pub.db --json && {python} runs"
        f" --db {ro}/pub.db"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert '"neuron": 0' in proc.stdout and "harvest" in proc.stdout
    assert sorted(p.name for p in src.iterdir()) == ["pub.db"]


def test_read_only_media_with_a_wal_file_is_read_whole_or_refused(db: Path, tmp_path: Path) -> None:
    """A database published on read-only media together with its -wal file (changes not yet
    checkpointed into it: here every score). With the -shm file beside them SQLite reads the WAL;
    without it an immutable read would miss those changes and answer "no scores yet", so that is
    one sentence saying what to do instead."""
    made, src, ro = tmp_path / "made", tmp_path / "src", tmp_path / "ro"
    for folder in (made, src, ro):
        folder.mkdir()
    with sqlite3.connect(db) as a, sqlite3.connect(made / "pub.db") as b:
        a.backup(b)
        scores = b.execute("select * from scores").fetchall()
        b.execute("delete from scores")
    a.close()
    b.close()  # checkpointed: the file itself has no scores
    writer = sqlite3.connect(made / "pub.db")
    writer.execute("pragma wal_autocheckpoint=0")
    marks = ",".join("?" * len(scores[0]))
    writer.executemany(f"insert into scores values ({marks})", scores)
    writer.commit()  # the scores are in pub.db-wal only
    for name in ("pub.db", "pub.db-wal"):
        (src / name).write_bytes((made / name).read_bytes())
    writer.close()
    python = f"PYTHONPATH={REPO} {sys.executable} -m autointerp"
    mount = f"mount --bind {src} {ro} && mount -o remount,bind,ro {ro}"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"{mount} && touch {ro}/x"], capture_output=True, text=True
    )
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:200]}")

    def rank() -> subprocess.CompletedProcess[str]:
        script = f"{mount} && {python} rank {M} --by explanation --json --db {ro}/pub.db"
        return subprocess.run(
            ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300
        )

    proc = rank()  # no -shm: refused in one sentence, nothing written
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "pub.db-wal" in proc.stderr and "copy both files" in proc.stderr, proc.stderr
    assert sorted(p.name for p in src.iterdir()) == ["pub.db", "pub.db-wal"]
    # with the -shm file beside them the WAL is read: every score is there
    writer = sqlite3.connect(made / "pub.db")
    writer.execute("pragma wal_autocheckpoint=0")
    writer.execute("select count(*) from scores").fetchone()
    (src / "pub.db-shm").write_bytes((made / "pub.db-shm").read_bytes())
    writer.close()
    proc = rank()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout) and '"score": 0.61' in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", ENVIRONMENT)
def test_an_environment_variable_that_is_not_utf8_is_one_sentence_up_front(
    db: Path, name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "caf\udce9")  # the bytes b"caf\xe9", as Python keeps them
    before = dump(db)
    code = main(["rank", M, "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"error: The environment variable {name} is not valid UTF-8: byte 0xe9" in err, err
    assert dump(db) == before


def test_a_non_utf8_model_name_in_the_environment_calls_no_llm_and_leaves_no_run(
    db: Path,
    tmp_path: Path,
    fault_server: Callable[[str], Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It used to call the LLM, then fail to store the model's name, leaving a `running` run."""
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    server = fault_server("ok")
    monkeypatch.setenv("AUTOINTERP_EXPLAINER_MODEL", "model-\udcff")
    before = dump(copy)
    argv = ["explain", M, "--layers", "1", "--neurons", "3", "--base-url", server.url]
    code = main([*argv, "--no-progress", "--db", str(copy)])
    err = capsys.readouterr().err
    assert code == 2 and "AUTOINTERP_EXPLAINER_MODEL is not valid UTF-8" in err, err
    assert server.requests == 0 and dump(copy) == before


def test_every_environment_variable_the_code_reads_is_checked() -> None:
    read = set()
    for path in (REPO / "autointerp").rglob("*.py"):
        read |= set(
            re.findall(r"environ(?:\.get|\.setdefault)?[(\[]\"([A-Z_]+)\"", path.read_text())
        )
    assert read and read <= set(ENVIRONMENT), sorted(read - set(ENVIRONMENT))


# --------------------------------------------------------------------------------- control
# characters
HOSTILE = (  # clear screen, NUL, SOH, bell, 8-bit CSI: from an untrusted corpus
    "\x1b[2J\x00\x01\x07\x9b"
)


@pytest.fixture
def hostile_db(db: Path, tmp_path: Path) -> Path:
    """The test database with corpus control characters in every stored token and in the graphs'
    tokens."""
    path = tmp_path / "hostile.db"
    with sqlite3.connect(db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    with sqlite3.connect(path) as conn:
        for context_id, tokens in conn.execute(
            "select context_id, str_tokens from contexts"
        ).fetchall():
            toks = json.loads(tokens)
            toks = [toks[0]] + [HOSTILE + t for t in toks[1:]]
            conn.execute(
                "update contexts set str_tokens = ? where context_id = ?",
                [json.dumps(toks), context_id],
            )
        for rowid, graph in conn.execute("select rowid, graph from graphs").fetchall():
            g = json.loads(graph)
            for node in g["nodes"]:
                node["token"] = HOSTILE + node["token"]
            conn.execute("update graphs set graph = ? where rowid = ?", [json.dumps(g), rowid])
    return path


def test_graphml_with_corpus_control_characters_is_well_formed_xml(
    hostile_db: Path, tmp_path: Path, tiny_gated: SubjectModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import networkx as nx

    monkeypatch.chdir(tmp_path)
    assert main(["export", "graphml", M, "1/0", "-o", "g.graphml", "--db", str(hostile_db)]) == 0
    client = TestClient(create_app(hostile_db, loader=lambda name: tiny_gated))
    r = client.get(f"/api/{M}/n2g/1/0/graphml")
    assert r.status_code == 200
    (tmp_path / "api.graphml").write_bytes(r.content)
    for name in ("g.graphml", "api.graphml"):
        g = nx.read_graphml(tmp_path / name)  # raises on XML that is not well-formed
        tokens = [a["token"] for _, a in g.nodes(data=True) if a["kind"] != "end"]
        assert tokens and all(t.startswith("␛[2J␀␁␇") for t in tokens), tokens[:3]
    svg = (tmp_path / "g.svg").read_text()
    assert "\x1b" not in svg and "\x00" not in svg
    # JSON stays exact: the characters are data there
    assert HOSTILE in client.get(f"/api/{M}/n2g/1/0").text.encode().decode("unicode_escape")


def test_the_terminal_never_gets_raw_escape_sequences_from_the_corpus(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["neuron", M, "1/0", "--db", str(hostile_db)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out and "\x07" not in out and "\x9b" not in out
    assert "␛[2J␀␁␇\\x9b" in out
    assert main(["neuron", M, "1/0", "--json", "--db", str(hostile_db)]) == 0
    record = json.loads(
        capsys.readouterr().out
    )  # JSON keeps the data exactly (escaped by JSON itself)
    assert all(t.startswith(HOSTILE) for ex in record["examples"] for t in ex["tokens"][1:])


#: what an LLM reply or a corpus may hold that must never reach a terminal raw: escape, carriage
#: return, bell, NEL (U+0085, a C1 control), and bidirectional-text controls that reorder the line
TERMINAL_HOSTILE = "\x1b[2J\r\x07\x85\u202e\u200f\u2066\u061c"
TERMINAL_BAD = ("\x1b", "\r", "\x07", "\x85", "\u202e", "\u200f", "\u2066", "\u061c")


@pytest.fixture
def terminal_hostile_db(db: Path, tmp_path: Path) -> Path:
    """The test database with those characters in every stored token, every explanation and its
    error, and the corpus spec of every run."""
    path = tmp_path / "terminal.db"
    with sqlite3.connect(db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    with sqlite3.connect(path) as conn:
        for context_id, tokens in conn.execute(
            "select context_id, str_tokens from contexts"
        ).fetchall():
            toks = json.loads(tokens)
            toks = [toks[0]] + [TERMINAL_HOSTILE + t for t in toks[1:]]
            conn.execute(
                "update contexts set str_tokens = ? where context_id = ?",
                [json.dumps(toks), context_id],
            )
        conn.execute(
            "update explanations set text = ? || text where text is not null", [TERMINAL_HOSTILE]
        )
        conn.execute(
            "update explanations set error = ? || error where error is not null",
            [TERMINAL_HOSTILE],
        )
        for run_id, config in conn.execute("select id, config from runs").fetchall():
            cfg = json.loads(config)
            if "corpus" in cfg:
                cfg["corpus"] = TERMINAL_HOSTILE + cfg["corpus"]
                conn.execute("update runs set config = ? where id = ?", [json.dumps(cfg), run_id])
    return path


TERMINAL_COMMANDS = [
    ["neuron", M, "1/0"],  # corpus tokens and the LLM explanation
    ["neuron", M, "1/1"],  # a failed explanation's stored error
    ["rank", M],
    ["report", M],
    ["search", M, "--explanations", "capital", "--exact"],
    ["runs"],
]


@pytest.mark.parametrize("argv", TERMINAL_COMMANDS, ids=[" ".join(a) for a in TERMINAL_COMMANDS])
def test_every_command_that_prints_stored_text_keeps_controls_and_bidi_off_the_terminal(
    terminal_hostile_db: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--db", str(terminal_hostile_db)]) == 0
    out = capsys.readouterr().out
    assert "␛[2J␍␇\\x85\\u202e\\u200f\\u2066\\u061c" in out, out  # shown, not obeyed
    assert not [c for c in TERMINAL_BAD if c in out], out


def test_calibrate_prints_its_explanations_and_errors_terminal_safe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """calibrate prints what the LLM wrote and why calls failed (the server's own words) as it
    runs: the same terminal-safe rendering as every stored text."""
    import argparse

    from autointerp.cli.evaluation import _print_calibration

    feature = {
        "name": "digits",
        "frac_active": 0.1,
        "true_score": 0.9,
        "explanation_score": 0.5,
        "baseline_score": 0.2,
        "n2g_score": None,
        "explanation": TERMINAL_HOSTILE + "digits",
        "errors": {"baseline": "HTTP 500: " + TERMINAL_HOSTILE},
    }
    result = {
        "features": [feature],
        "medians": {k: None for k in ("true_score", "explanation_score", "baseline_score")}
        | {"n2g_score": None},
        "explainer_model": "m",
        "simulator_model": "m",
        "simulator_mode": "rule",
        "run_id": 1,
    }
    args = argparse.Namespace(json=False, tokens=256, corpus="default")
    _print_calibration(args, "smollm2-135m", [], result)
    out = capsys.readouterr().out
    assert out.count("␛[2J␍␇\\x85\\u202e\\u200f\\u2066\\u061c") == 2, out
    assert not [c for c in TERMINAL_BAD if c in out], out


def test_malformed_few_shot_examples_are_one_sentence(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in (
        "explain_system.txt",
        "simulate_system.txt",
        "compile_system.txt",
        "compile_examples.json",
        "revise_system.txt",
        "restate_system.txt",
    ):
        (prompts / name).write_text((REPO / "prompts" / name).read_text())
    before = dump(db)
    for examples, needle in (
        ({"version": "v1"}, "'neurons' is a required property"),
        (
            {
                "neurons": [
                    {"explanation": "x", "records": [{"tokens": ["a"], "activations": [12]}]}
                ]
            },
            "neurons/0/records/0/activations/0",
        ),
        (
            {
                "neurons": [
                    {"explanation": "x", "records": [{"tokens": ["a", "b"], "activations": [1]}]}
                ]
            },
            "has 2 tokens but 1 activations",
        ),
        ([1, 2], "the top level"),
    ):
        (prompts / "examples.json").write_text(json.dumps(examples))
        code = main(
            ["explain", M, "--layers", "1", "--prompts", str(prompts), *EXPLAIN, "--db", str(db)]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and needle in err, err
    # the rule compiler's few-shot rules are checked as rules
    (prompts / "examples.json").write_text((REPO / "prompts" / "examples.json").read_text())
    for rules, needle in (
        ({"examples": [{"description": "x", "rule": {"regex": "(x"}}]}, "does not compile"),
        ({"examples": [{"description": "x"}]}, "examples/0"),
    ):
        (prompts / "compile_examples.json").write_text(json.dumps(rules))
        code = main(
            ["explain", M, "--layers", "1", "--prompts", str(prompts), *EXPLAIN, "--db", str(db)]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and needle in err, err
    assert dump(db) == before


def test_an_empty_held_out_set_is_refused_before_any_run_or_call(
    tiny_gated: SubjectModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autointerp.harvest import HarvestConfig, harvest

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS))
    small = tmp_path / "small.db"
    harvest(
        tiny_gated,
        small,
        HarvestConfig(
            model=M,
            corpus=str(corpus),
            layers=[1],
            ctx_len=24,
            top_k=3,
            random_k=3,
            checkpoint_seconds=1e9,
        ),
        progress=False,
        log=lambda m: None,
    )
    before = dump(small)
    code = main(["explain", M, "--layers", "1", "--neurons", "0", *EXPLAIN, "--db", str(small)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "has no held-out examples" in err, err
    assert dump(small) == before  # no run row left "running"


def test_rerunning_a_finished_harvest_does_not_even_load_the_model(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command again finds its complete run from the stored model facts and the corpus
    alone: the tiny test model cannot be loaded by name at all, so a load would fail here."""
    before = dump(db)
    argv = [
        "harvest",
        "--model",
        M,
        "--corpus",
        str(db.parent / "corpus.jsonl"),
        "--layers",
        "0,1",
        "--ctx-len",
        "24",
        "--top-k",
        "8",
        "--random-k",
        "4",
        "--db",
        str(db),
        "--json",
        "--no-progress",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "already complete" and out["model"] == M
    assert dump(db) == before
