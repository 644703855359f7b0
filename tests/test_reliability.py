"""Reliability: no lost or fake results under crashes, LLM faults and concurrent load.

* **SIGKILL** every long stage through the real CLI (graph, explain/score, similarity; harvest is in
  test_harvest.py) at a fixed point - right after a unit of work commits, or inside similarity's one
  transaction - with the ``AUTOINTERP_KILL_AFTER`` hook (:mod:`autointerp.faults`), rerun the same
  command, and compare the database with an uninterrupted run's: same rows, no duplicates, no
  partial units.
* **LLM faults** the explain tests do not cover (truncated, wrong number of values, prose instead of
  JSON, an explanation cut at max_tokens) through ``autointerp explain`` against the fault-injecting
  endpoint: retried, then recorded as failed with the reason, never a score, and ``--retry-failed``
  redoes exactly those neurons.
* **Concurrency**: ``autointerp serve`` answers a stream of requests while ``autointerp explain``
  and ``autointerp similarity`` write to the same database, and while another connection holds the
  write lock: no error, no "database is locked", and the server is bound to 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from apidb import build_api_db
from helpers import PARAGRAPHS, REPO, clear_tables, copy_db, free_port, run_cli, write_lock_held

from autointerp.errors import UserError
from autointerp.harvest import HarvestConfig, harvest
from autointerp.llm.client import LLMClient, LLMFailure, LLMSettings, check_endpoint
from autointerp.models import SubjectModel
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.run import graph_layers
from autointerp.store import Store

M = "tiny-gated"
VOLATILE = {
    "created",
    "finished",
    "seconds",
}  # wall-clock columns: legitimately differ between two runs


# ------------------------------------------------------------------------------------------------
# helpers
def rows(
    db: Path, table: str, drop: frozenset[str] | set[str] = frozenset(), where: str = ""
) -> list[tuple[Any, ...]]:
    """Every row of ``table`` without the ``drop`` columns, sorted: what two runs must agree on."""
    with sqlite3.connect(db) as conn:
        cols = [r[1] for r in conn.execute(f"pragma table_info({table})") if r[1] not in drop]
        names = ", ".join(f'"{c}"' for c in cols)
        out = conn.execute(f"select {names} from {table} {where} order by {names}").fetchall()
    assert len(out) == len(set(out)), f"duplicate rows in {table}"
    return out


def harvest_db(model: SubjectModel, folder: Path, layers: list[int]) -> Path:
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS * 4))
    db = folder / "base.db"
    cfg = HarvestConfig(
        model=model.name,
        corpus=str(corpus),
        layers=layers,
        ctx_len=24,
        top_k=8,
        random_k=8,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    harvest(model, db, cfg, progress=False, log=lambda m: None)
    return db


@pytest.fixture(scope="module")
def explain_base(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real harvest of layer 1 of the tiny gated model (24 neurons) to explain."""
    return harvest_db(tiny_gated, tmp_path_factory.mktemp("explain-base"), [1])


def explain_cli(
    db: Path,
    url: str,
    neurons: str,
    *extra: str,
    mode: str = "echo",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    return run_cli(
        "explain",
        M,
        "--layers",
        "1",
        "--neurons",
        neurons,
        "--base-url",
        url,
        "--explainer-model",
        "fault-model",
        "--simulator-mode",
        mode,
        "--sim-top",
        "2",
        "--sim-random",
        "2",
        "--explain-records",
        "3",
        "--max-attempts",
        "2",
        "--no-progress",
        "--json",
        "--db",
        str(db),
        *extra,
        env=env,
        timeout=300,
    )


def per_neuron(db: Path, table: str, neuron: int) -> list[tuple[Any, ...]]:
    return rows(db, table, where=f"where neuron = {neuron}")


# ------------------------------------------------------------------------------------------------
# SIGKILL
def test_explain_killed_after_a_neuron_resumes_to_the_uninterrupted_result(
    explain_base: Path, fault_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server = fault_server("ok")
    whole, killed = (
        copy_db(explain_base, tmp_path / "whole.db"),
        copy_db(explain_base, tmp_path / "killed.db"),
    )
    assert explain_cli(whole, server.url, "0-5").returncode == 0

    proc = explain_cli(killed, server.url, "0-5", env={"AUTOINTERP_KILL_AFTER": "explain:2"})
    assert proc.returncode == -9, proc.stderr
    # exactly the two committed neurons, each one whole: both explanations and both scores
    units = len(rows(killed, "explanations")), len(rows(killed, "scores"))
    with sqlite3.connect(killed) as conn:
        done = conn.execute("select neuron, count(*) from explanations group by neuron").fetchall()
        scored = conn.execute(
            "select neuron, group_concat(method) from scores group by neuron"
        ).fetchall()
        status = conn.execute("select status from runs where stage = 'explain'").fetchall()
    assert len(done) == 2 and all(n == 2 for _, n in done) and units == (4, 4)
    assert all(sorted(m.split(",")) == ["baseline", "explanation"] for _, m in scored)
    assert status == [("running",)]

    again = explain_cli(killed, server.url, "0-5")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["explained"] == 4 and summary["already_done"] == 2 and summary["failed"] == 0
    # token counts differ legitimately: calls answered before the kill come from the cache on the
    # rerun, and the ledger counts only tokens actually spent
    spent = VOLATILE | {"prompt_tokens", "completion_tokens", "cost_usd"}
    for table in ("explanations", "scores"):
        assert rows(killed, table, spent) == rows(whole, table, spent), table
    assert rows(killed, "runs", VOLATILE) == rows(whole, "runs", VOLATILE)
    assert rows(killed, "llm_cache", VOLATILE | {"prompt_tokens", "completion_tokens"}) == rows(
        whole, "llm_cache", VOLATILE | {"prompt_tokens", "completion_tokens"}
    )


@pytest.fixture(scope="module")
def graph_bases(
    tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(graphs of layer 0 with their similarities computed, the same plus graphs of layer 1):
    real N2G graphs."""
    folder = tmp_path_factory.mktemp("graph-base")
    db = harvest_db(tiny_gated, folder, [0, 1])
    store = Store(db)
    graph_layers(tiny_gated, store, [0], "0-11", N2GConfig(), progress=False)
    assert run_cli("similarity", M, "--db", str(db), "--no-progress").returncode == 0
    old = copy_db(db, folder / "old.db")
    graph_layers(tiny_gated, store, [1], "0-11", N2GConfig(), progress=False)
    store.db.conn.close()
    return old, copy_db(db, folder / "new.db")


def test_similarity_killed_before_commit_keeps_the_old_result_then_rerun_equals_a_clean_run(
    graph_bases: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = graph_bases
    whole, killed = copy_db(new, tmp_path / "whole.db"), copy_db(new, tmp_path / "killed.db")
    proc = run_cli("similarity", M, "--db", str(whole), "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["graphs"] == 24

    proc = run_cli(
        "similarity",
        M,
        "--db",
        str(killed),
        "--no-progress",
        env={"AUTOINTERP_KILL_AFTER": "similarity:1"},
    )
    assert proc.returncode == -9, proc.stderr
    # killed inside the transaction that replaces the result: the old result is there, whole and
    # unchanged
    assert rows(killed, "similarities") == rows(old, "similarities") != []
    assert rows(killed, "runs", where="where stage = 'similarity'") == rows(
        old, "runs", where="where stage = 'similarity'"
    )
    assert Store(killed).similarity_stale(M)

    assert run_cli("similarity", M, "--db", str(killed), "--no-progress").returncode == 0
    assert rows(killed, "similarities", {"run_id"}) == rows(whole, "similarities", {"run_id"})
    assert rows(killed, "runs", VOLATILE | {"id"}) == rows(whole, "runs", VOLATILE | {"id"})
    assert rows(killed, "token_index") == rows(whole, "token_index")


@pytest.mark.slow
def test_graph_killed_after_a_chunk_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """The real CLI on the real model: 20 neurons are two chunks (16 + 4); killed after the first
    commits."""
    base = tmp_path / "base.db"
    proc = run_cli(
        "harvest",
        "--model",
        "smollm2-135m",
        "--layers",
        "0",
        "--tokens",
        "2048",
        "--ctx-len",
        "32",
        "--top-k",
        "6",
        "--random-k",
        "4",
        "--no-progress",
        "--db",
        str(base),
    )
    assert proc.returncode == 0, proc.stderr
    whole, killed = copy_db(base, tmp_path / "whole.db"), copy_db(base, tmp_path / "killed.db")
    args = [
        "graph",
        "smollm2-135m",
        "--layers",
        "0",
        "--neurons",
        "0-19",
        "--train-examples",
        "3",
        "--augmentations",
        "2",
        "--no-progress",
    ]
    assert run_cli(*args, "--db", str(whole)).returncode == 0
    proc = run_cli(*args, "--db", str(killed), env={"AUTOINTERP_KILL_AFTER": "graph:1"})
    assert proc.returncode == -9, proc.stderr
    with sqlite3.connect(killed) as conn:
        assert conn.execute("select count(*) from graphs").fetchone() == (16,)
        # the token index was written in the same transaction as the graphs
        assert conn.execute("select count(*) from indexed_graphs").fetchone() == (16,)
    proc = run_cli(*args, "--db", str(killed), "--json")
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads(proc.stdout)[0]["built"] == 4
        and json.loads(proc.stdout)[0]["already_done"] == 16
    )
    assert rows(killed, "graphs", VOLATILE) == rows(whole, "graphs", VOLATILE)
    assert rows(killed, "runs", VOLATILE) == rows(whole, "runs", VOLATILE)
    assert rows(killed, "token_index") == rows(whole, "token_index")
    assert rows(killed, "indexed_graphs", {"created"}) == rows(whole, "indexed_graphs", {"created"})


# ------------------------------------------------------------------------------------------------
# LLM faults
FAULTS = {  # mode -> (neurons it breaks, what the recorded reason says, which rows fail)
    "truncated": ("2-3", "truncated at max_tokens: not JSON", "scores"),
    "wrong-count": ("4-5", "JSON does not match the schema", "scores"),
    "not-json": ("6-7", "not JSON: 'Sure!", "scores"),
    "truncated-explanation": ("8-9", "truncated at max_tokens", "explanations"),
}


def test_llm_faults_are_retried_recorded_never_scored_and_retry_failed_redoes_only_them(
    explain_base: Path, fault_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    db = copy_db(explain_base, tmp_path / "run.db")
    server = fault_server("ok")
    proc = explain_cli(db, server.url, "0-1", mode="json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["explained"] == 2, proc.stderr
    good = {n: (per_neuron(db, "explanations", n), per_neuron(db, "scores", n)) for n in (0, 1)}

    for mode, (neurons, reason, failing) in FAULTS.items():
        server.mode = mode
        before = server.requests
        proc = explain_cli(
            db, server.url, neurons, "--concurrency", "2", mode="json"
        )  # backoffs overlap
        # every neuron of this run failed: recorded, and the command says so with its exit status
        # when nothing was explained at all (explanations whose scores failed are output, failures
        # counted)
        if failing == "explanations":
            assert (
                proc.returncode == 1 and "no explanation for any of the 2 neurons" in proc.stderr
            ), proc.stderr
        else:
            assert proc.returncode == 0 and "error:" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["failed"] == 2 and summary["explained"] == 0, (mode, summary)
        first, last = (int(x) for x in neurons.split("-"))
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            failed = [
                dict(r)
                for r in conn.execute(
                    f"select * from {failing} where neuron between ? and ? and status = 'failed'",
                    [first, last],
                )
            ]
            scores = [
                dict(r)
                for r in conn.execute(
                    "select * from scores where neuron between ? and ? and method = 'explanation'",
                    [first, last],
                )
            ]
        assert len(failed) >= 2, mode
        for row in failed:
            assert reason in row["error"] and "(after 2 attempts)" in row["error"], (
                mode,
                row["error"],
            )
        # a failed call never becomes a score: the explanation's score row is failed with no number
        assert len(scores) == 2 and all(
            s["status"] == "failed" and s["score"] is None for s in scores
        ), mode
        assert server.requests - before >= 2 * 2  # every failing call was tried twice
    ranked = json.loads(run_cli("rank", M, "--by", "explanation", "--json", "--db", str(db)).stdout)
    assert sorted(r["neuron"] for r in ranked) == [0, 1]

    server.mode = "ok"
    proc = explain_cli(db, server.url, "0-9", "--retry-failed", mode="json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["explained"] == 8 and summary["failed"] == 0 and summary["already_done"] == 2
    for n in (0, 1):  # untouched, down to their timestamps
        assert (per_neuron(db, "explanations", n), per_neuron(db, "scores", n)) == good[n]
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from scores where status = 'failed'").fetchone() == (
            0,
        )
        assert conn.execute(
            "select count(*) from explanations where status = 'failed'"
        ).fetchone() == (0,)
        assert conn.execute(
            "select count(distinct neuron) from scores where method = 'explanation' and "
            "score is not null"
        ).fetchone() == (10,)


def test_an_html_reply_is_invalid_output_retried_and_recorded_with_its_reason(
    explain_base: Path, fault_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A proxy's HTML error page with status 200 is a wrong answer like any other: retried, then
    recorded as invalid output saying what came back (it used to be an internal AttributeError,
    recorded on the first try)."""
    db = copy_db(explain_base, tmp_path / "run.db")
    server = fault_server("html")
    proc = explain_cli(db, server.url, "0", mode="json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    with sqlite3.connect(db) as conn:
        errors = [
            r[0] for r in conn.execute("select error from explanations where status = 'failed'")
        ]
    assert errors, "the failure was not recorded"
    for error in errors:
        assert "invalid output: malformed response: not the API's JSON but '<html>" in error, error
        assert "(after 2 attempts)" in error and "AttributeError" not in error, error
    assert server.requests >= 2


# ------------------------------------------------------------------------------------------------
# hostile endpoints: a reply that trickles, never ends or expands without bound; a server that is up
# and answers 500 forever
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _client(url: str, seconds: float, attempts: int = 1) -> LLMClient:
    settings = LLMSettings(base_url=url, timeout=seconds, max_attempts=attempts, backoff=0.05)
    return LLMClient(settings, None, url)


def _content(response: dict[str, Any]) -> str:
    return str(response["choices"][0]["message"]["content"])


def test_a_trickled_reply_is_a_timeout_at_the_request_deadline(fault_server) -> None:  # type: ignore[no-untyped-def]
    """Headers at once, then a byte every 0.5 s: each read is quick, so a timeout per read never
    fires; the deadline is for the whole request (--llm-timeout 1 here), and a timeout is retried,
    then a failure with its reason."""
    server = fault_server("trickle")
    server.trickle_for = 15  # bounds the old behaviour: a reply that never ends, read to the end
    started = time.monotonic()
    with pytest.raises(LLMFailure) as failed:
        _client(server.url, 1.0, attempts=2).call("chat", "m", CHAT, _content)
    assert time.monotonic() - started < 4
    assert failed.value.reason.startswith("timeout:") and failed.value.transient
    assert "(after 2 attempts)" in failed.value.reason and server.requests == 2


def test_the_endpoint_check_obeys_the_deadline(fault_server) -> None:  # type: ignore[no-untyped-def]
    server = fault_server("ok")
    server.models_mode = "trickle"
    server.trickle_for = 15
    started = time.monotonic()
    with pytest.raises(UserError, match=r"does not answer \(timeout"):
        check_endpoint(server.url, None, 1.0)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("mode", "says"),
    [("endless", "the response is over 64 MiB"), ("gzip-bomb", "decodes to over 64 MiB")],
)
def test_a_reply_too_large_to_read_is_invalid_output_read_in_bounded_memory(
    fault_server,  # type: ignore[no-untyped-def]
    mode: str,
    says: str,
) -> None:
    """A body that never ends, and 200 KB of gzip that expands to 200 MB (a 306 KB one took explain
    to a 2.1 GB peak): read and decoded a piece at a time up to the cap, then invalid output."""
    import tracemalloc

    from llmfaults import gzip_bomb

    from autointerp.llm.transport import MAX_RESPONSE_BYTES

    server = fault_server(mode)
    gzip_bomb()  # made before measuring: the server is in this process
    tracemalloc.start()
    try:
        with pytest.raises(LLMFailure) as failed:
            _client(server.url, 30.0).call("chat", "m", CHAT, _content)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert says in failed.value.reason and not failed.value.transient, failed.value.reason
    assert peak < 3 * MAX_RESPONSE_BYTES, peak


def test_explain_against_a_trickling_endpoint_records_timeouts_and_finishes(
    explain_base: Path,
    fault_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """It used to hang past 90 s with its run `running`: each request now ends at --llm-timeout,
    the failure is recorded with its reason, and the run finishes."""
    db = copy_db(explain_base, tmp_path / "run.db")
    server = fault_server("trickle")
    server.trickle_for = 30
    started = time.monotonic()
    proc = explain_cli(db, server.url, "0", "--llm-timeout", "1", "--max-attempts", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - started < 25  # a model-free CLI start, and two 1 s requests
    with sqlite3.connect(db) as conn:
        errors = [r[0] for r in conn.execute("select error from explanations where error <> ''")]
        statuses = [r[0] for r in conn.execute("select status from runs where stage = 'explain'")]
    assert errors and all(e.startswith("timeout:") for e in errors), errors
    assert statuses == ["complete"]


def test_a_dead_endpoint_stops_explain_and_retry_failed_resumes(
    explain_base: Path,
    fault_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A server that is up and answers 500 to everything (the endpoint check passes: it answers)
    kept a run going for hours. After --stop-after-failures neurons in a row whose every call failed
    at the endpoint, explain stops with one sentence; the failures stay recorded, the run is
    `stopped`, and --retry-failed once the server works does the rest."""
    db = copy_db(explain_base, tmp_path / "run.db")
    server = fault_server("dead")
    proc = explain_cli(db, server.url, "0-9", "--stop-after-failures", "2", "--max-attempts", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped after 2 neurons in a row" in errors[0], proc.stderr
    assert "--retry-failed" in errors[0] and "HTTP 500" in errors[0]
    with sqlite3.connect(db) as conn:
        failed = {r[0] for r in conn.execute("select neuron from explanations where text is null")}
        statuses = [r[0] for r in conn.execute("select status from runs where stage = 'explain'")]
    assert 2 <= len(failed) <= 4 and statuses == ["stopped"], (failed, statuses)  # 2 in flight
    server.mode = "ok"
    proc = explain_cli(db, server.url, "0-9", "--retry-failed")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["explained"] == 10 and summary["failed"] == 0, summary
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from explanations where text is null").fetchone() == (
            0,
        )
        statuses = [r[0] for r in conn.execute("select status from runs where stage = 'explain'")]
    assert statuses == ["complete"]


# ------------------------------------------------------------------------------------------------
# concurrency
def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port``, from /proc/net/tcp{,6} (no `ss` needed)."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


def test_default_host_is_loopback() -> None:
    from autointerp.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def test_server_answers_while_pipelines_write_and_a_writer_holds_the_lock(
    tiny_gated: SubjectModel, fault_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    db = build_api_db(tiny_gated, tmp_path)
    with sqlite3.connect(
        db
    ) as conn:  # a database whose token index is behind its graphs (older version)
        tokens = [r[0] for r in conn.execute("select token from token_index order by weight desc")]
        token = next(t for t in tokens if t.isalnum())
        clear_tables(conn, "indexed_graphs", "token_index")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autointerp", "serve", "--db", str(db), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    bad: list[str] = []
    answered = [0]
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(f"{base}/api/models", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(0.3)
        assert _listening_addresses(port) == {"127.0.0.1"}

        search = f"{base}/api/{M}/search?query=any:{token}&limit=5"
        # 1. another connection holds the write lock: reads (and the search that would index) answer
        # at once
        with write_lock_held(db, "lock-test"):
            started = time.time()
            for url in (search, f"{base}/api/{M}/all/1/0", f"{base}/api/{M}/rank?by=explanation"):
                r = httpx.get(url, timeout=10)
                assert r.status_code == 200, (url, r.text[:300])
            assert time.time() - started < 3
        indexed = httpx.get(
            search, timeout=10
        ).json()  # lock free: the index catches up, results appear
        assert indexed["available"] and indexed["items"]

        # 2. a stream of requests while explain and similarity write to the same database
        urls = [
            f"{base}/api/models",
            f"{base}/api/{M}",
            f"{base}/api/{M}/all/1/0",
            f"{base}/api/{M}/all/1/5",
            f"{base}/api/{M}/explanation/1?limit=50",
            f"{base}/api/{M}/rank?by=explanation&limit=50",
            search,
            f"{base}/api/{M}/search?text=tokens",
            f"{base}/api/{M}/similar/1/1",
            f"{base}/m/{M}/neuron/1/3",
            f"{base}/api/{M}/n2g/1",
        ]
        stop = threading.Event()

        def hammer(offset: int) -> None:
            with httpx.Client(timeout=30) as client:
                i = offset
                while not stop.is_set():
                    url = urls[i % len(urls)]
                    i += 1
                    try:
                        r = client.get(url)
                    except httpx.HTTPError as exc:
                        bad.append(f"{url}: {exc!r}")
                        continue
                    answered[0] += 1
                    if r.status_code != 200 or "locked" in r.text:
                        bad.append(f"{url}: {r.status_code} {r.text[:200]}")

        llm = fault_server("ok")
        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        try:
            explain = run_cli(
                "explain",
                M,
                "--layers",
                "1",
                "--neurons",
                "all",
                "--base-url",
                llm.url,
                "--explainer-model",
                "fault-model",
                "--simulator-mode",
                "echo",
                "--sim-top",
                "2",
                "--sim-random",
                "2",
                "--explain-records",
                "3",
                "--no-progress",
                "--json",
                "--db",
                str(db),
                timeout=300,
            )
            # similarity rewrites its table on every run: keep writing until the readers have been
            # answered often enough to mean something (the CLIs start faster than readers warm up)
            deadline = time.time() + 120
            while True:
                similarity = run_cli("similarity", M, "--db", str(db), "--no-progress")
                if similarity.returncode or answered[0] > 50 or time.time() > deadline:
                    break
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert explain.returncode == 0 and "locked" not in explain.stderr, explain.stderr
        assert json.loads(explain.stdout)["explained"] == 24
        assert similarity.returncode == 0 and "locked" not in similarity.stderr, similarity.stderr
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert not bad, bad[:10]
    assert answered[0] > 50
    assert "Traceback" not in err and "locked" not in err, err[-2000:]
