"""A pool of LLM servers: requests spread over the endpoints, a failing endpoint is rested and its
work goes to the others, a call fails only when every endpoint failed it, and the ledger counts each
endpoint's tokens.

The servers are the fault-injection servers of ``llmfaults`` (real HTTP on loopback); the harvest,
the pipeline and the database are real. "Dies" means the server is shut down: its port then refuses
connections.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import copy_db, run_cli

from autointerp.explain.config import ExplainConfig
from autointerp.explain.plan import plan_explain
from autointerp.explain.prompts import load_templates
from autointerp.explain.run import explain_layers
from autointerp.explain.simulate import parse_json_values
from autointerp.llm.client import LLMClient, LLMFailure, LLMSettings, split_base_urls
from autointerp.store import Store

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _pool(*urls: str, max_attempts: int = 3, backoff: float = 0.05) -> LLMClient:
    return LLMClient(
        LLMSettings(base_url=list(urls), max_attempts=max_attempts, backoff=backoff, timeout=5),
        None,
        list(urls),
    )


def test_base_urls_come_from_flags_lists_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert split_base_urls(["http://a/v1", "http://b/v1,http://c/v1", "http://a/v1"]) == (
        "http://a/v1",
        "http://b/v1",
        "http://c/v1",
    )
    assert split_base_urls(None) == () and split_base_urls(" , ") == ()
    monkeypatch.setenv("OPENAI_BASE_URLS", "http://a/v1, http://b/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://single/v1")
    assert LLMSettings.from_env().base_urls == ("http://a/v1", "http://b/v1")
    monkeypatch.delenv("OPENAI_BASE_URLS")
    assert LLMSettings.from_env().base_urls == ("http://single/v1",)
    assert LLMSettings.from_env(base_url=["http://x/v1"]).base_urls == ("http://x/v1",)  # flags win


def test_requests_are_spread_over_the_pool(fault_server) -> None:  # type: ignore[no-untyped-def]
    a, b = fault_server("ok"), fault_server("ok")
    client = _pool(a.url, b.url)
    for _ in range(10):
        client.call("chat", "fault-model", CHAT, lambda r: r)
    assert a.requests == 5 and b.requests == 5  # equally idle servers take turns
    ledger = {e["url"]: e for e in client.endpoint_usage()}
    assert ledger[a.url]["calls"] == ledger[b.url]["calls"] == 5
    assert (
        ledger[a.url]["prompt_tokens"] + ledger[b.url]["prompt_tokens"]
        == client.usage.prompt_tokens
        == 100
    )


def test_a_failing_endpoint_is_rested_and_its_requests_go_to_the_others(fault_server) -> None:  # type: ignore[no-untyped-def]
    bad, good = fault_server("500"), fault_server("ok")
    client = _pool(
        bad.url, good.url, backoff=30
    )  # a long rest: the bad server must not be asked again
    for _ in range(6):
        value, usage = client.call("chat", "fault-model", CHAT, lambda r: r)
        assert value["choices"][0]["message"]["content"]
    assert bad.requests == 1 and good.requests == 6
    ledger = {e["url"]: e for e in client.endpoint_usage()}
    assert ledger[bad.url]["failures"] == 1 and ledger[bad.url]["calls"] == 0
    assert ledger[good.url]["calls"] == 6


def test_a_call_fails_only_when_every_endpoint_failed_it(fault_server) -> None:  # type: ignore[no-untyped-def]
    first, second = fault_server("500"), fault_server("429")
    client = _pool(first.url, second.url, backoff=0.01)
    with pytest.raises(LLMFailure) as info:
        client.call("chat", "fault-model", CHAT, lambda r: r)
    assert (
        info.value.attempts == 6 and first.requests == 3 and second.requests == 3
    )  # max_attempts each
    assert info.value.reason.startswith("every endpoint failed") and "HTTP 500" in info.value.reason
    assert "HTTP 429" in info.value.reason and info.value.transient


def test_wrong_answers_are_not_the_endpoints_fault(fault_server) -> None:  # type: ignore[no-untyped-def]
    a, b = fault_server("out-of-range"), fault_server("out-of-range")
    client = _pool(a.url, b.url, backoff=0.01)
    with pytest.raises(LLMFailure) as info:
        client.call("chat", "fault-model", CHAT, lambda r: parse_json_values(r, 1))
    assert (
        info.value.attempts == 3 and a.requests + b.requests == 3
    )  # max_attempts in all, not per server
    assert "invalid output" in info.value.reason and not info.value.transient


def test_a_server_dying_mid_run_loses_nothing_and_scores_nothing_twice(
    small_db, fault_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = Store(copy_db(small_db, tmp_path / "run.db"))
    dying, survivor = fault_server("ok"), fault_server("ok")
    client = _pool(dying.url, survivor.url, backoff=0.05)
    killed = threading.Event()

    def kill_after_some_requests() -> None:
        deadline = time.time() + 60
        while dying.requests < 5 and time.time() < deadline:
            time.sleep(0.005)
        dying.close()
        killed.set()

    threading.Thread(target=kill_after_some_requests, daemon=True).start()
    cfg = ExplainConfig(
        explainer_model="fault-model",
        simulator_model="fault-model",
        prompt_version="test",
        simulator_mode="echo",
        sim_top=2,
        sim_random=2,
        explain_records=3,
        concurrency=2,
    )
    summary = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], cfg, "0-11"),
        client,
        load_templates(),
        progress=False,
    )
    assert killed.is_set()
    assert summary.explained == 12 and summary.failed == 0  # nothing lost
    per_neuron = list(
        store.db.query(
            "select neuron, count(*) n from explanations where kind = 'llm' group by neuron"
        )
    )
    assert len(per_neuron) == 12 and all(r["n"] == 1 for r in per_neuron)
    twice = list(
        store.db.query(
            "select neuron, method, count(*) n from scores group by neuron, method having n > 1"
        )
    )
    assert twice == []  # nothing scored twice
    assert not list(store.db.query("select * from scores where status = 'failed'"))
    ledger = {e["url"]: e for e in client.endpoint_usage()}
    assert ledger[dying.url]["calls"] >= 5 and ledger[dying.url]["failures"] >= 1
    assert ledger[survivor.url]["calls"] > 0
    assert sum(e["calls"] for e in ledger.values()) == summary.usage.calls
    assert sum(e["prompt_tokens"] for e in ledger.values()) == summary.usage.prompt_tokens


def test_cli_takes_repeated_base_urls_and_reports_each_endpoint(
    small_db, fault_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json

    db = copy_db(small_db, tmp_path / "cli.db")
    a, b = fault_server("ok"), fault_server("500")
    proc = run_cli(
        "explain",
        "tiny-gated",
        "--layers",
        "1",
        "--neurons",
        "0-3",
        "--db",
        str(db),
        "--base-url",
        a.url,
        "--base-url",
        b.url,
        "--explainer-model",
        "fault-model",
        "--simulator-mode",
        "echo",
        "--no-progress",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["explained"] == 4 and out["failed"] == 0
    ledger = {e["url"]: e for e in out["endpoints"]}
    assert (
        set(ledger) == {a.url, b.url}
        and ledger[b.url]["failures"] >= 1
        and ledger[b.url]["calls"] == 0
    )
    assert ledger[a.url]["calls"] == out["llm_calls"]
