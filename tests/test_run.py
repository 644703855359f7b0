"""``autointerp run``: a whole layer end to end (harvest, graphs, explanations and scores, search
index) with a cost estimate up front. The tiny random-init model and a fault-injection LLM server
(rule simulation) for the plan, the dry run and resuming; the real SmolLM2-135M with the real
packaged local LLM for the command as a user runs it (slow)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import PARAGRAPHS, copy_db, fault_config, run_cli

from autointerp.explain.prompts import load_templates
from autointerp.harvest import HarvestConfig
from autointerp.llm.client import LLMSettings
from autointerp.llm.session import LLMSession
from autointerp.models import SubjectModel
from autointerp.pipeline import RunRequest, RunSummary, plan_run, run_layers
from autointerp.store import Store


def table_counts(db: Path) -> dict[str, int]:
    """Rows in every table: what "nothing was written" and "no new work" are checked against."""
    with sqlite3.connect(db) as conn:
        names = [
            r[0]
            for r in conn.execute("select name from sqlite_master where type = 'table'")
            if not r[0].startswith("explanations_fts")
        ]
        return {n: conn.execute(f'select count(*) from "{n}"').fetchone()[0] for n in names}


def _request(corpus: Path, layers: str = "0", neurons: str | None = "all") -> RunRequest:
    """A run of the tiny gated model with small harvest settings (those of conftest's small_db)
    and the rule simulator."""
    harvest = HarvestConfig(
        model="tiny-gated",
        corpus=str(corpus),
        ctx_len=24,
        top_k=8,
        random_k=8,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    return RunRequest(
        "tiny-gated",
        layers,
        neurons,
        harvest,
        explain=fault_config(simulator_mode="rule"),
        fit_batch=False,
    )


def _session(url: str, db: Path) -> LLMSession:
    settings = LLMSettings(
        base_url=url, explainer_model="fault-model", max_attempts=2, backoff=0.01, timeout=10
    )
    return LLMSession(settings, db)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS * 4))
    return path


def _run(
    db: Path, request: RunRequest, model: SubjectModel, url: str, **kw: Any
) -> tuple[RunSummary, int]:
    """Run; returns the summary and how many times the model was loaded."""
    loads = []

    def load() -> SubjectModel:
        loads.append(1)
        return model

    summary = run_layers(
        db, request, load, _session(url, db), load_templates(), progress=False, **kw
    )
    return summary, len(loads)


def test_a_whole_layer_is_stored_and_a_rerun_does_no_new_work(  # type: ignore[no-untyped-def]
    tiny_gated, fault_server, corpus, tmp_path
) -> None:
    server = fault_server("keyword")
    db = tmp_path / "run.db"
    request = _request(corpus)
    first, loads = _run(db, request, tiny_gated, server.url)
    assert loads == 1
    plan = first.plan
    assert plan.to_harvest == [0] and [s.neurons for s in plan.layers] == [tiny_gated.d_mlp]
    assert not any(c.measured for c in plan.costs)  # a new database has measured nothing
    store = Store(db, create=False)
    assert sorted(store.harvested_layers("tiny-gated")) == [0]
    run_id = int(store.harvest_run("tiny-gated", 0)["id"])
    every = set(range(tiny_gated.d_mlp))
    assert first.harvest is not None and first.harvest.status == "complete"
    assert [(g.layer, g.built, g.skipped) for g in first.graphs] == [(0, tiny_gated.d_mlp, 0)]
    assert {r["neuron"] for r in store.db.query("select neuron from graphs")} == every
    rows = list(store.db.query("select * from explanations where kind = 'llm'"))
    assert {r["neuron"] for r in rows} == every and all(r["run_id"] == run_id for r in rows)
    assert first.explain.explained + first.explain.failed == tiny_gated.d_mlp
    assert first.explain.explained > 0
    scored = {r["neuron"] for r in store.db.query("select neuron from scores where method = 'n2g'")}
    assert scored == every
    # the template count the run reports is what it stored
    templates = sum(r["origin"] == "template" for r in rows)
    assert first.templates == templates
    # the search index: every graph and the harvested layer
    assert first.index["graphs"] == tiny_gated.d_mlp and first.index["layers"] == [0]
    indexed = {r["neuron"] for r in store.db.query("select neuron from indexed_graphs")}
    assert indexed == every
    assert store.harvest_index_neurons("tiny-gated") > 0

    before, requests = table_counts(db), server.requests
    again, loads = _run(db, request, tiny_gated, server.url)
    assert loads == 0  # nothing to harvest or graph: the model is not even loaded
    assert server.requests == requests  # nor the LLM asked
    assert table_counts(db) == before
    assert again.harvest is None and again.plan.to_harvest == []
    assert [(g.built, g.skipped) for g in again.graphs] == [(0, tiny_gated.d_mlp)]
    assert (again.explain.explained, again.explain.skipped) == (0, tiny_gated.d_mlp)
    assert (again.index["graphs_indexed"], again.index["layers_indexed"]) == (0, 0)
    assert again.plan.costs == []  # the plan said so before the run


def test_the_estimate_reads_what_earlier_runs_measured(  # type: ignore[no-untyped-def]
    tiny_gated, fault_server, corpus, tmp_path
) -> None:
    server = fault_server("keyword")
    db = tmp_path / "run.db"
    _run(db, _request(corpus, neurons="0-3"), tiny_gated, server.url)
    # layer 1 of the same model, nothing of it stored: every stage at the rates layer 0 measured
    plan = plan_run(db, _request(corpus, "1", "4-7"), lambda: tiny_gated, _session(server.url, db))
    by_stage = {c.stage: c for c in plan.costs}
    assert set(by_stage) == {"harvest layers 1", "graph layer 1", "explain + score"}
    assert all(c.measured and c.source.startswith("measured: ") for c in plan.costs)
    store = Store(db, create=False)
    timing = store.harvest_timings("tiny-gated")[-1]
    assert by_stage["harvest layers 1"].units is None  # the whole corpus: not counted up front
    assert by_stage["harvest layers 1"].seconds_per_unit == pytest.approx(
        timing["seconds"] / timing["tokens"]
    )
    seconds = [r["seconds"] for r in store.db.query("select seconds from graphs")]
    assert by_stage["graph layer 1"].seconds_per_unit == pytest.approx(sum(seconds) / 4)
    assert "other layers" in by_stage["graph layer 1"].source
    assert by_stage["graph layer 1"].units == 4 and by_stage["explain + score"].units == 4
    assert "by fault-model" in by_stage["explain + score"].source
    # another explainer has measured nothing: said so, and the assumption is labelled
    other = LLMSession(LLMSettings(base_url=server.url, explainer_model="other-model"), db)
    plan = plan_run(db, _request(corpus, "0", "0-3"), lambda: tiny_gated, other)
    (cost,) = plan.costs
    assert not cost.measured and cost.source.startswith("no measurement yet for other-model")
    assert [(s.graphed, s.explained) for s in plan.layers] == [(4, 0)]


def _cli(db: Path, url: str, *args: str) -> Any:
    return run_cli(
        "run",
        "tiny-gated",
        *args,
        "--base-url",
        url,
        "--explainer-model",
        "fault-model",
        "--simulator-mode",
        "rule",
        "--db",
        str(db),
    )


def test_the_dry_run_prints_the_estimate_and_writes_nothing(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path
) -> None:
    server = fault_server("keyword")
    db = copy_db(small_db, tmp_path / "copy.db")
    before = table_counts(db)
    proc = _cli(db, server.url, "--layers", "1", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["to_harvest"] == [] and plan["explainer_model"] == "fault-model"
    (layer,) = plan["per_layer"]
    assert (layer["neurons"], layer["graphs_todo"], layer["explain_todo"]) == (24, 24, 24)
    assert [c["stage"] for c in plan["estimate"]] == ["graph layer 1", "explain + score"]
    assert all(c["source"].startswith("no measurement yet") for c in plan["estimate"])
    assert plan["estimate"][1]["seconds"] == 24 * 25.0  # the labelled assumption
    assert table_counts(db) == before and server.requests == 0
    text = _cli(db, server.url, "--layers", "1", "--neurons", "top:3", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "layer 1: harvested" in text.stdout and "3 to explain" in text.stdout
    assert "no measurement yet" in text.stdout and "total:" in text.stdout
    assert table_counts(db) == before
    # no database at all: none is created
    missing = tmp_path / "none.db"
    proc = run_cli(
        "run",
        "smollm2-135m",
        "--layers",
        "1",
        "--neurons",
        "0-7",
        "--dry-run",
        "--db",
        str(missing),
    )
    assert proc.returncode == 0, proc.stderr
    assert "not harvested yet" in proc.stdout and "8 neurons" in proc.stdout
    assert not missing.exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--layers", "x"], "Layers must look like"),
        (["--layers", "7"], "Layer 7 does not exist"),
        (["--layers", "1", "--neurons", "best:0"], "best:K needs K >= 1"),
        (["--layers", "1", "--neurons", "30"], "Neuron 30 is out of range"),
        (["--layers", "1", "--tokens", "0"], "--tokens"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path, args: list[str], says: str
) -> None:
    server = fault_server("keyword")
    db = copy_db(small_db, tmp_path / "copy.db")
    before = table_counts(db)
    proc = _cli(db, server.url, *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert table_counts(db) == before and server.requests == 0


def test_help_explains_the_command() -> None:
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for words in ("--dry-run", "estimate", "Resumable", "--neurons", "--base-url", "--tokens"):
        assert words in proc.stdout
    assert "run " in run_cli("--help").stdout


@pytest.mark.slow
def test_run_a_layer_of_smollm2_with_the_local_llm(tmp_path: Path) -> None:
    """`autointerp run` as CI runs it: SmolLM2-135M, one layer, 8 neurons, a 4,096-token
    harvest, the packaged 0.5B local LLM; then the rerun does nothing."""
    db = tmp_path / "run.db"
    args = [
        "run",
        "smollm2-135m",
        "--layers",
        "1",
        "--neurons",
        "0-7",
        "--tokens",
        "4096",
        "--local-llm",
        "qwen2.5-coder-0.5b",
        "--db",
        str(db),
        "--no-progress",
    ]
    proc = run_cli(*args, "--json", timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["harvest"]["status"] == "complete" and out["harvest"]["tokens"] == 4096
    assert "estimate" in proc.stderr or "no measurement yet" in proc.stderr
    assert [(g["layer"], g["built"]) for g in out["graphs"]] == [(1, 8)]
    ex = out["explain"]
    assert ex["explained"] + ex["failed"] == 8 and ex["explained"] >= 1
    store = Store(db, create=False)
    rows = list(store.db.query("select neuron, status from explanations where kind = 'llm'"))
    assert sorted(r["neuron"] for r in rows) == list(range(8))
    assert out["index"]["graphs"] == 8 and out["index"]["layers"] == [1]
    assert ex["templates"] == sum(
        1 for r in store.db.query("select origin from explanations where origin = 'template'")
    )
    before = table_counts(db)
    again = run_cli(*args, "--json", timeout=600)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["harvest"] is None and second["estimate"] == []
    assert second["explain"]["already_done"] == 8 and second["explain"]["llm_calls"] == 0
    assert table_counts(db) == before
    # the estimate of the next layer is measured here now
    dry = run_cli(*args[:3], "2", *args[4:], "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert all(c["measured"] for c in json.loads(dry.stdout)["estimate"])
