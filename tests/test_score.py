"""`autointerp score` and ``POST /api/{model}/score/{layer}/{neuron}``: a person's own description
of a neuron, scored by the default (rule) simulator on the held-out records of the stored scores.

The database is a real harvest of the tiny gated model with N2G graphs, and neuron 1/2 explained by
a real ``explain`` run (rule simulator, a non-default number of held-out records) against the
fault-injection endpoint in ``keyword`` mode, which compiles a description into its own words: so
a score can be checked against the stored ones, computed the same way on the same records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from apidb import build_api_db
from fastapi.testclient import TestClient
from helpers import copy_db, fault_config, run_cli
from test_explain import _client

from autointerp.api import create_app
from autointerp.cli import main
from autointerp.errors import UserError
from autointerp.explain.plan import plan_explain
from autointerp.explain.prompts import load_templates
from autointerp.explain.records import heldout_records
from autointerp.explain.run import explain_layers
from autointerp.explain.score_text import (
    MAX_TEXT_CHARS,
    TEMPLATE,
    config_of,
    score_description,
)
from autointerp.explain.simulate import Simulator, simulate_score
from autointerp.llm.client import LLMSettings
from autointerp.models import SubjectModel
from autointerp.store import Store

M = "tiny-gated"
NEURON = 2  # layer 1: has an N2G graph, and an explain run in the fixture
KEYS = {
    "model",
    "neuron",
    "text",
    "status",
    "score",
    "score_top",
    "score_random",
    "auprc",
    "n_tokens",
    "fire_rate",
    "error",
    "rule",
    "compiled_by",
    "explanation",
    "explanation_score",
    "baseline_score",
    "n2g_score",
    "same_records",
    "config_hash",
    "saved",
}


@pytest.fixture(scope="module")
def db(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmfaults import FaultServer

    path = build_api_db(tiny_gated, tmp_path_factory.mktemp("score"))
    server = FaultServer("keyword")
    try:
        store = Store(path)
        cfg = fault_config(simulator_mode="rule", rounds=0, restate=False)
        plan = plan_explain(store, M, [1], cfg, str(NEURON))
        summary = explain_layers(store, plan, _client(server.url), load_templates(), progress=False)
        assert summary.explained == 1, summary
    finally:
        server.close()
    return path


def dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def stored(path: Path) -> dict[str, Any]:
    """Neuron 1/2's explain run: its config, its explanation and baseline texts and its scores."""
    store = Store(path, create=False)
    run = store.latest_complete_run(M, 1)
    [explain_run] = [r for r in store.runs(M) if r["stage"] == "explain"]
    explanations, scores = store.config_results(run["id"], 1, NEURON, explain_run["config_hash"])
    return {
        "store": store,
        "run_id": run["id"],
        "cfg": config_of(explain_run["config"]),
        "baseline": explanations["baseline"]["text"],
        "explanation": explanations["llm"]["text"],
        "scores": {m: r["score"] for m, r in scores.items()},
    }


def score_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["score", *argv, "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


# ------------------------------------------------------------------------------------------------
# the command line


def test_a_template_description_is_scored_with_no_llm_on_the_stored_records(
    db: Path, tmp_path: Path
) -> None:
    """The stored baseline's own text, scored again: the same number as stored - the same records
    and the same simulator - and no LLM anywhere (no endpoint is configured and the local server's
    cache is empty, so starting it would fail)."""
    copy = copy_db(db, tmp_path / "run.db")
    before = dump(copy)
    facts = stored(copy)
    env = {"AUTOINTERP_CACHE": str(tmp_path / "empty-cache"), "OPENAI_BASE_URL": ""}
    env["OPENAI_BASE_URLS"] = ""
    proc = run_cli(
        "score", M, f"1/{NEURON}", facts["baseline"], "--json", "--db", str(copy), env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "local LLM" not in proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == KEYS
    scores = facts["scores"]
    assert result["score"] == scores["baseline"] is not None
    assert result["baseline_score"] == scores["baseline"]
    assert result["explanation_score"] == scores["explanation"]
    assert result["n2g_score"] == scores["n2g"] is not None
    assert result["explanation"] == facts["explanation"]
    assert result["compiled_by"] == TEMPLATE and result["rule"]["tokens"]
    assert result["config_hash"] == facts["cfg"].config_hash() and result["same_records"] is True
    assert 0 < result["fire_rate"] < 1 and result["status"] == "ok" and result["error"] is None
    assert result["neuron"] == f"1/{NEURON}" and result["saved"] is False
    assert dump(copy) == before  # nothing stored without --save

    proc = run_cli("score", M, f"1/{NEURON}", facts["baseline"], "--db", str(copy), env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{M} 1/{NEURON}: {facts['baseline']}"
    assert f"score {scores['baseline']:.3f}" in lines[1]
    assert "rule (template grammar" in proc.stdout and "stored, on the same records" in proc.stdout


def test_a_phrase_is_compiled_by_the_llm_and_saved(
    db: Path, tmp_path: Path, fault_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fault_server("keyword")  # compiles a description into its own words
    copy = copy_db(db, tmp_path / "run.db")
    facts = stored(copy)
    llm = ["--base-url", server.url, "--simulator-model", "fault-model", "--db", str(copy)]
    before = dump(copy)
    code, result, _ = score_json(capsys, M, f"1/{NEURON}", "capital cities", *llm)
    assert code == 0
    assert result["rule"]["words"] == ["capital", "cities"]
    assert result["compiled_by"] == "fault-model"
    # the library's own simulation of the same text on the stored config's held-out records
    store, cfg = facts["store"], facts["cfg"]
    records = heldout_records(store, facts["run_id"], 1, NEURON, cfg)
    sim = Simulator(_client(server.url), "fault-model", load_templates(), "rule")
    top = float(store.neuron(facts["run_id"], 1, NEURON)["max"])
    again, _ = simulate_score(sim, "capital cities", records, top, 1.0)
    assert result["score"] == again["score"] and result["auprc"] == again["auprc"]
    assert [line for line in dump(copy) if "llm_cache" not in line] == [
        line for line in before if "llm_cache" not in line
    ]  # nothing but the LLM response cache (as explain keeps it) without --save

    for text in ("capital cities", "capital cities", 'the token "Paris"'):
        code, result, _ = score_json(capsys, M, f"1/{NEURON}", text, *llm, "--save")
        assert code == 0 and result["saved"]
    assert main(["neuron", M, f"1/{NEURON}", "--json", "--db", str(copy)]) == 0
    record = json.loads(capsys.readouterr().out)
    saved = record["user_explanations"]
    assert [u["text"] for u in saved] == ['the token "Paris"', "capital cities"]  # once each
    assert saved[1]["score"] == again["score"] and saved[1]["status"] == "ok"
    assert saved[1]["simulation"]["words"] == ["capital", "cities"]
    assert saved[1]["simulator_model"] == "fault-model" and saved[0]["simulator_model"] is None
    assert "user" not in record["explanations"] and "user" not in record["scores"]
    # the explain run's rows are untouched: the neuron is still done under its config
    assert store.explain_state(facts["run_id"], 1, cfg.config_hash()) == {NEURON: "ok"}
    assert main(["neuron", M, f"1/{NEURON}", "--db", str(copy)]) == 0
    assert "your description: capital cities  [score" in capsys.readouterr().out

    api = TestClient(create_app(copy)).get(f"/api/{M}/explanation/1/{NEURON}").json()
    assert [u["text"] for u in api["user_explanations"]] == [u["text"] for u in saved]
    page = TestClient(create_app(copy)).get(f"/m/{M}/neuron/1/{NEURON}").text
    assert 'id="user-explanations"' in page and "capital cities" in page


def test_a_description_the_llm_cannot_compile_is_a_recorded_failure(
    db: Path, tmp_path: Path, fault_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fault_server("not-json")  # rule requests are answered with prose
    copy = copy_db(db, tmp_path / "run.db")
    llm = ["--base-url", server.url, "--explainer-model", "fault-model", "--max-attempts", "2"]
    code, result, err = score_json(
        capsys, M, f"1/{NEURON}", "capital cities", *llm, "--db", str(copy), "--save"
    )
    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert "could not compile the description into a rule" in line and "Traceback" not in err
    assert result["status"] == "failed" and result["score"] is None and result["rule"] is None
    [saved] = stored(copy)["store"].user_explanations(stored(copy)["run_id"], 1, NEURON)
    assert saved["status"] == "failed" and saved["score"] is None
    assert saved["error"] == result["error"] and saved["text"] == "capital cities"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([f"1/{NEURON}", "   "], "The description is empty"),
        ([f"1/{NEURON}", "x" * (MAX_TEXT_CHARS + 1)], f"at most {MAX_TEXT_CHARS}"),
        (["1/99", 'the token "a"'], "Neuron 1/99 does not exist"),
        (["5/0", 'the token "a"'], "Layer 5 of tiny-gated has not been harvested"),
        (["one/two", 'the token "a"'], "L/N"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    copy = copy_db(db, tmp_path / "run.db")
    before = dump(copy)
    assert main(["score", M, *argv, "--db", str(copy), "--save"]) == 2
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert needle in line, err
    assert main(["score", "nosuch", f"1/{NEURON}", "x", "--db", str(copy)]) == 2
    assert "No results for nosuch" in capsys.readouterr().err
    assert dump(copy) == before


# ------------------------------------------------------------------------------------------------
# the API


def test_the_api_scores_as_the_command_does_and_stores_nothing(db: Path) -> None:
    facts = stored(db)
    before = dump(db)
    client = TestClient(create_app(db))
    url = f"/api/{M}/score/1/{NEURON}"
    r = client.post(url, json={"text": facts["baseline"]})
    assert r.status_code == 200, r.text
    expected = score_description(facts["store"], M, 1, NEURON, facts["baseline"], None)
    assert r.json() == json.loads(json.dumps(expected)) and set(r.json()) == KEYS
    # a phrase needs an LLM, and this server has none
    r = client.post(url, json={"text": "capital cities"})
    assert r.status_code == 409 and "no LLM" in r.json()["detail"]
    for body, status, needle in [
        ({"text": ""}, 422, "text"),
        ({"text": "  "}, 422, "empty"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, 422, f"at most {MAX_TEXT_CHARS}"),
        ({}, 422, "text"),
        ({"text": 5}, 422, "text"),
    ]:
        r = client.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in (r.json().get("message") or r.json()["detail"]), r.text
    r = client.post(
        url, content='{"text": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "text" in r.json()["message"]  # not text: a lone surrogate
    for path, needle in [
        (f"/api/{M}/score/7/0", "has not been harvested"),
        (f"/api/{M}/score/1/99", "does not exist"),
        ("/api/nosuch/score/1/0", "nosuch"),
    ]:
        r = client.post(path, json={"text": 'the token "a"'})
        assert r.status_code == 404 and needle in r.json()["detail"], r.text
    assert dump(db) == before
    spec = client.get("/openapi.json").json()["paths"]["/api/{model}/score/{layer}/{neuron}"]
    assert "post" in spec


def test_the_api_compiles_a_phrase_with_the_servers_llm(db: Path, fault_server: Any) -> None:
    server = fault_server("keyword")
    client = TestClient(create_app(db, llm=LLMSettings(base_url=server.url)))
    r = client.post(f"/api/{M}/score/1/{NEURON}", json={"text": "capital cities"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rule"]["words"] == ["capital", "cities"] and body["compiled_by"] == "fault-model"
    page = client.get(f"/m/{M}/neuron/1/{NEURON}").text
    assert "compiled by this server's LLM" in page
    down = TestClient(create_app(db, llm=LLMSettings(base_url="http://127.0.0.1:9/v1")))
    r = down.post(f"/api/{M}/score/1/{NEURON}", json={"text": "capital cities"})
    assert r.status_code == 503 and "does not answer" in r.json()["detail"]
    r = down.post(f"/api/{M}/score/1/{NEURON}", json={"text": 'the token "a"'})
    assert r.status_code == 200  # a template description needs no LLM, up or down
    with pytest.raises(UserError, match="--base-url must be"):
        create_app(db, llm=LLMSettings(base_url="localhost:8080"))
    assert main(["serve", "--base-url", "nowhere", "--db", str(db), "--port", "0"]) == 2
