"""Explanations and simulation scores: prompt rendering (golden files), scoring maths, retries and
recorded failures under injected faults, and - against a real local llama.cpp server with the
packaged
Qwen2.5-Coder-0.5B - a real explanation, stored and scored, and a correct explanation outscoring a
wrong one."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ANIMALS, clear_tables, copy_store, fault_config, run_cli

from autointerp.errors import UserError
from autointerp.explain.baseline import baseline_explanation
from autointerp.explain.plan import plan_explain
from autointerp.explain.prompts import (
    OutputTokens,
    Record,
    discretise,
    explanation_messages,
    load_templates,
    parse_explanation,
    simulation_prompt,
)
from autointerp.explain.rules import parse_rule
from autointerp.explain.run import explain_layers
from autointerp.explain.simulate import (
    Simulator,
    expected_digit,
    parse_echo,
    parse_json_values,
    score_predictions,
)
from autointerp.llm.cache import LLMCache
from autointerp.llm.client import InvalidOutput, LLMClient, LLMFailure, LLMSettings
from autointerp.store import Store
from autointerp.untrusted import escape_token

GOLDEN = Path(__file__).parent / "golden"
RECORDS = [
    Record(
        ["The", " cat", " sat", " on", " the", " mat", ".\n"], [0.0, 4.0, 0.1, 0.0, -0.2, 2.0, 0.0]
    ),
    Record(["\t", "A", " dog", " barked"], [0.0, 0.0, 3.9, 0.5]),
]


# ------------------------------------------------------------------------------------------------
# prompts
def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), (
        f"{name} changed; rerun with UPDATE_GOLDEN=1 if that was intended"
    )


def test_explainer_prompt_matches_golden_file() -> None:
    messages = explanation_messages(RECORDS, 4.0, load_templates(), ["the ... cat: 9"])
    _golden(
        "explain_prompt.txt", "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages) + "\n"
    )
    assert messages[-1]["content"].endswith("the main thing this neuron does is find")


def test_output_tokens_are_one_escaped_sentence_after_the_evidence() -> None:
    output = OutputTokens([" States", "\n"], ["the"])
    messages = explanation_messages(
        RECORDS, 4.0, load_templates(), ["the ... cat: 9"], None, output
    )
    expected = (
        'When this neuron fires, its output makes these next tokens more likely: " States", "\\n";'
        ' it makes these less likely: "the".'
    )
    body = messages[-1]["content"]
    assert expected in body and body.index("the ... cat: 9") < body.index(expected)
    # the few-shot neurons have no output side: only the target's message changes
    plain = explanation_messages(RECORDS, 4.0, load_templates(), ["the ... cat: 9"])
    assert (
        messages[:-1] == plain[:-1] and body.replace(expected + "\n\n", "") == plain[-1]["content"]
    )


def test_summary_variant_shows_text_then_only_the_firing_tokens() -> None:
    templates = load_templates(None, "summary")
    messages = explanation_messages(RECORDS, 4.0, templates, ["the ... cat: 9"])
    _golden(
        "explain_prompt_summary.txt",
        "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages) + "\n",
    )
    body = messages[-1]["content"]
    assert 'Excerpt 1: The cat sat on the mat.\\n\nFires on: " cat" 9, " mat" 4\n' in body
    assert 'Excerpt 2: \\tA dog barked\nFires on: " dog" 9, " barked" 1\n' in body
    assert messages[0]["content"] != load_templates().explain_system
    tokens = explanation_messages(RECORDS, 4.0, load_templates(), ["the ... cat: 9"])
    assert sum(len(m["content"]) for m in messages) < sum(len(m["content"]) for m in tokens)
    # a variant's results never mix with the default's
    assert templates.version != load_templates().version and "-summary-" in templates.version
    with pytest.raises(UserError, match="Unknown prompt variant 'bogus'"):
        load_templates(None, "bogus")


def test_simulator_prompt_matches_golden_file_and_marks_every_slot() -> None:
    prompt = simulation_prompt("small animals", RECORDS[0].tokens, load_templates())
    _golden("simulate_prompt.txt", prompt.text)
    assert len(prompt.slot_offsets) == len(RECORDS[0].tokens)
    assert all(prompt.text[o] == "?" and prompt.text[o - 1] == "\t" for o in prompt.slot_offsets)


def test_tokens_are_escaped_readably_and_activations_discretised() -> None:
    assert escape_token(" a\nb\tc\\") == " a\\nb\\tc\\\\"
    assert escape_token("\x01") == "\\x01"
    assert discretise([0.0, 4.0, 2.0, -3.0, 9.0], 4.0) == [0, 9, 4, 0, 9]
    assert discretise([1.0, 2.0], 0.0) == [0, 0]


def test_explanation_replies_are_parsed_or_rejected() -> None:
    assert parse_explanation(" the word cat.") == "the word cat"
    assert (
        parse_explanation("The main thing this neuron does is find days of the week.\nMore")
        == "days of the week"
    )
    with pytest.raises(ValueError):
        parse_explanation("   ")
    # quotes: a phrase in quotes loses them, a quoted word at the end keeps its closing one
    assert parse_explanation(' the word "cat"') == 'the word "cat"'
    assert parse_explanation(' the word "cat".') == 'the word "cat"'
    assert parse_explanation(' "tokens that matter."') == "tokens that matter"
    assert parse_explanation(' "the word "cat""') == 'the word "cat"'
    assert parse_explanation(' "tokens that matter') == "tokens that matter"


def test_baseline_names_the_most_activating_tokens() -> None:
    text = baseline_explanation(RECORDS, 4.0)
    assert text.startswith('the tokens "cat"') and '"dog"' in text


# ------------------------------------------------------------------------------------------------
# scoring
def test_score_is_the_pooled_correlation_over_top_and_random_records() -> None:
    records = [
        Record(["a", "b", "c"], [0.0, 2.0, 1.0], "top"),
        Record(["d", "e"], [0.5, -1.0], "random"),
    ]
    preds = [[0.0, 9.0, 3.0], [2.0, 0.0]]
    out = score_predictions(preds, records, 2.0)
    truth = np.maximum(np.array([0.0, 2.0, 1.0, 0.5, -1.0]), 0)
    assert out["score"] == pytest.approx(np.corrcoef([0, 9, 3, 2, 0], truth)[0, 1])
    assert out["score_top"] == pytest.approx(np.corrcoef([0, 9, 3], [0, 2, 1])[0, 1])
    assert out["score_random"] == pytest.approx(1.0)  # [2, 0] against [0.5, 0]
    assert out["n_tokens"] == 5
    assert (
        score_predictions([[1, 1, 1], [1, 1]], records, 2.0)["score"] == 0.0
    )  # constant: explains nothing
    flat = [Record(["a", "b"], [0.0, 0.0])]
    assert (
        score_predictions([[0.0, 9.0]], flat, 1.0)["score"] is None
    )  # undefined, never a made-up number


def test_expected_value_over_digit_logprobs() -> None:
    assert expected_digit({"0": np.log(0.5), "9": np.log(0.5), "x": 0.0}) == pytest.approx(4.5)
    assert expected_digit({"hello": -0.1}) is None
    response = {
        "choices": [
            {"logprobs": {"text_offset": [0, 2, 3], "top_logprobs": [None, {"7": 0.0}, {"2": 0}]}}
        ]
    }
    assert parse_echo(response, [2], 0) == [7.0]
    assert parse_echo(response, [3], -1) == [
        7.0
    ]  # servers whose top_logprobs[i] predicts token i + 1
    with pytest.raises(InvalidOutput):
        parse_echo(response, [1], 0)


def test_json_simulations_are_validated_by_schema() -> None:
    def reply(text: str) -> dict[str, Any]:
        return {"choices": [{"message": {"content": text}}]}

    assert parse_json_values(reply('```json\n{"activations": [0, 9]}\n```'), 2) == [0.0, 9.0]
    for bad in (
        '{"activations": [0, 10]}',
        '{"activations": [0]}',
        "[1, 2]",
        "not json",
        '{"activations": [0.5, 1]}',
    ):
        with pytest.raises(InvalidOutput):
            parse_json_values(reply(bad), 2)


# ------------------------------------------------------------------------------------------------
# fault injection
def _client(url: str, cache: LLMCache | None = None, timeout: float = 10.0) -> LLMClient:
    return LLMClient(
        LLMSettings(base_url=url, max_attempts=3, backoff=0.01, timeout=timeout), cache, url
    )


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("500", "HTTP 500"),
        ("429", "HTTP 429"),
        ("garbage", ""),
        ("hang", "timeout"),
        ("out-of-range", "invalid output"),
    ],
)
def test_faults_are_retried_then_raised_with_the_reason(
    fault_server, mode: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    server = fault_server(mode)
    client = _client(server.url, timeout=1.0)
    with pytest.raises(LLMFailure) as info:
        client.call(
            "chat",
            "fault-model",
            {"messages": [{"role": "user", "content": "hi"}]},
            lambda r: parse_json_values(r, 1),
        )
    assert info.value.attempts == 3 and server.requests >= 3
    assert reason in info.value.reason and "after 3 attempts" in info.value.reason


def test_endpoint_down_is_a_recorded_reason() -> None:
    client = _client("http://127.0.0.1:9/v1")
    with pytest.raises(LLMFailure) as info:
        client.call("chat", "m", {"messages": []}, lambda r: r)
    assert "connection error" in info.value.reason and info.value.transient


def test_failures_are_recorded_never_scored_and_retry_failed_redoes_only_them(
    small_db, fault_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("500")
    cfg = fault_config()
    summary = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], cfg, "0-2"),
        _client(server.url),
        load_templates(),
        progress=False,
    )
    assert summary.failed == 3 and summary.explained == 0
    rows = list(
        store.db.query(
            "select kind, status, text, error, prompt_hash from explanations where kind = 'llm'"
        )
    )
    assert len(rows) == 3 and all(
        r["status"] == "failed" and r["text"] is None and "HTTP 500" in r["error"] for r in rows
    )
    assert all(len(r["prompt_hash"]) == 64 for r in rows)  # which prompt failed is on record too
    scores = list(store.db.query("select method, status, score from scores"))
    assert scores and all(
        r["score"] is None for r in scores
    )  # no number anywhere: not even the baseline's
    assert store.rank_neurons("tiny-gated", "explanation", None, 10) == []

    server.mode = "ok"
    again = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], cfg, "0-2"),
        _client(server.url),
        load_templates(),
        progress=False,
    )
    assert (
        again.skipped == 3 and again.explained == 0
    )  # a plain rerun resumes; failures wait for --retry-failed
    before = server.requests
    redo = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], cfg, "0-2"),
        _client(server.url),
        load_templates(),
        retry_failed=True,
        progress=False,
    )
    assert redo.explained == 3 and redo.failed == 0 and server.requests > before
    rows = list(store.db.query("select status, text from explanations where kind = 'llm'"))
    assert len(rows) == 3 and all(
        r["status"] == "ok" and r["text"] == "tokens that matter" for r in rows
    )
    assert not list(store.db.query("select * from scores where status = 'failed'"))


def test_a_copied_few_shot_answer_is_asked_again(small_db, fault_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("copycat")  # repeats "days of the week" unless asked again hotter
    cfg = fault_config()
    explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], cfg, "0"),
        _client(server.url),
        load_templates(),
        progress=False,
    )
    row = next(store.db.query("select * from explanations where kind = 'llm'"))
    assert row["status"] == "ok" and row["text"] == "tokens that matter"


def test_output_tokens_come_from_stored_weight_facts_or_are_refused_up_front(  # type: ignore[no-untyped-def]
    small_db, fault_server, tiny_gated, tmp_path
) -> None:
    from llmfaults import is_simulation

    from autointerp.weights import store_weight_facts

    store = copy_store(small_db, tmp_path)
    server = fault_server("ok")
    cfg = fault_config(output_tokens=2)

    def explain() -> None:
        explain_layers(
            store,
            plan_explain(store, "tiny-gated", [1], cfg, "0,1"),
            _client(server.url),
            load_templates(),
            progress=False,
        )

    with pytest.raises(UserError, match="run `autointerp weights tiny-gated --layers 1`"):
        explain()
    assert server.requests == 0 and not [r for r in store.runs() if r["stage"] == "explain"]

    store_weight_facts(store, tiny_gated, [1], top_k=4, progress=False)
    explain()
    asked = [b["messages"][-1]["content"] for b in server.bodies if not is_simulation(b)]
    assert len(asked) == 2  # one explanation per neuron
    for neuron, prompt in zip((0, 1), asked, strict=True):
        facts = store.weight_facts("tiny-gated", 1, neuron)
        assert facts is not None
        promoted = [f'"{escape_token(t["token"])}"' for t in facts["top_tokens"]]
        suppressed = [f'"{escape_token(t["token"])}"' for t in facts["bottom_tokens"]]
        line = next(x for x in prompt.splitlines() if x.startswith("When this neuron fires"))
        assert line == (
            "When this neuron fires, its output makes these next tokens more likely: "
            f"{', '.join(promoted[:2])}; it makes these less likely: {', '.join(suppressed[:2])}."
        )
    # an option at its "off" default leaves the hash of results made before it existed unchanged
    assert "output_tokens" not in fault_config().identity()
    assert cfg.config_hash() != fault_config().config_hash()


def test_responses_are_cached_so_reruns_cost_nothing(small_db, fault_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("ok")
    cache = LLMCache(store.path)
    first = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], fault_config(), "0"),
        _client(server.url, cache),
        load_templates(),
        progress=False,
    )
    assert first.usage.calls > 0 and first.usage.prompt_tokens > 0
    clear_tables(store, "explanations", "scores")
    calls = server.requests
    second = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], fault_config(), "0"),
        _client(server.url, cache),
        load_templates(),
        progress=False,
    )
    assert server.requests == calls and second.usage.calls == 0 and second.usage.prompt_tokens == 0
    assert second.usage.cached_calls == first.usage.calls


def test_cli_bad_input_is_one_clear_error(small_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli(
        "explain",
        "tiny-gated",
        "--layers",
        "7",
        "--db",
        str(small_db),
        "--base-url",
        "http://x/v1",
        "--explainer-model",
        "m",
    )
    assert (
        proc.returncode == 2
        and "has not been harvested" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = run_cli(
        "explain", "tiny-gated", "--layers", "1", "--db", str(small_db), "--local-llm", "gpt-5"
    )
    assert proc.returncode == 2 and "Unknown local LLM" in proc.stderr
    proc = run_cli("rank", "tiny-gated", "--by", "vibes", "--db", str(small_db))
    assert proc.returncode == 2 and "Cannot rank by" in proc.stderr


# ------------------------------------------------------------------------------------------------
# real LLM server
HYPHENS = (
    [
        "The",
        " Rhine",
        "-",
        "Main",
        " region",
        " and",
        " Miami",
        "-",
        "Dade",
        " county",
        " in",
        " the",
        " north",
        "-",
        "east",
    ],
    {"-"},
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "rule"])
def test_real_simulator_scores_a_correct_explanation_above_a_wrong_one(mode: str) -> None:
    from autointerp.llm.local_server import local_server

    # the rule simulator never asks for logprobs: its server runs without them, caching prompts
    with local_server("qwen2.5-coder-0.5b", prompt_logprobs=mode != "rule") as (url, model):
        sim = Simulator(_client(url, timeout=120), model, load_templates(), mode)
        # our server answers prompt logprobs in OpenAI's alignment
        assert sim.mode == ("echo" if mode == "auto" else "rule")
        if mode == "rule":  # and says why it cannot answer a logprob request
            with pytest.raises(LLMFailure, match="without prompt logprobs"):
                Simulator(_client(url), model, load_templates(), "echo").simulate("x", ["a"])
        for (tokens, firing), right, wrong in (
            (ANIMALS, "names of animals", "numbers written as digits"),
            (HYPHENS, 'the hyphen character "-"', "days of the week"),
        ):
            record = Record(tokens, [5.0 if t in firing else 0.0 for t in tokens])
            scores = {}
            for explanation in (right, wrong):
                values, _ = sim.simulate(explanation, tokens)
                scores[explanation] = score_predictions([values], [record], 5.0)["score"]
            assert scores[right] > scores[wrong] + 0.1, scores


@pytest.mark.slow
def test_real_explanation_is_stored_with_its_prompt_version_and_scored(tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    proc = run_cli(
        "harvest",
        "--model",
        "smollm2-135m",
        "--layers",
        "1",
        "--tokens",
        "8192",
        "--no-progress",
        "--db",
        str(db),
    )
    assert proc.returncode == 0, proc.stderr
    best = json.loads(
        run_cli(
            "rank", "smollm2-135m", "--by", "max", "--limit", "1", "--db", str(db), "--json"
        ).stdout
    )[0]["neuron"]
    assert (
        run_cli(
            "graph",
            "smollm2-135m",
            "--layers",
            "1",
            "--neurons",
            str(best),
            "--db",
            str(db),
            "--no-progress",
        ).returncode
        == 0
    )
    args = [
        "explain",
        "smollm2-135m",
        "--layers",
        "1",
        "--neurons",
        str(best),
        "--local-llm",
        "qwen2.5-coder-0.5b",
        "--sim-top",
        "2",
        "--sim-random",
        "2",
        "--explain-records",
        "5",
        "--no-progress",
        "--json",
        "--db",
        str(db),
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["explained"] == 1 and summary["prompt_tokens"] > 0 and summary["llm_calls"] > 0
    store = Store(db)
    expl = {r["kind"]: r for r in store.db.query("select * from explanations")}
    assert expl["llm"]["status"] == "ok" and len(expl["llm"]["text"]) > 1
    assert (
        expl["llm"]["prompt_version"] == load_templates().version
        and expl["llm"]["prompt_tokens"] > 0
    )
    # the prompt behind the kept text: an LLM-written one has its hash; a candidate written by the
    # pipeline (token sets, graph, template) had no prompt
    written = expl["llm"]["origin"] in ("tokens", "graph", "template")
    assert (
        (expl["llm"]["prompt_hash"] is None) if written else len(expl["llm"]["prompt_hash"]) == 64
    )
    assert expl["baseline"]["prompt_hash"] is None
    scores = {r["method"]: r for r in store.db.query("select * from scores")}
    assert {"explanation", "baseline", "n2g"} <= set(scores)
    assert (
        scores["explanation"]["simulator_mode"] == "rule"
        and scores["n2g"]["n_tokens"] == scores["explanation"]["n_tokens"]
    )  # every method scored on exactly the same tokens
    if scores["explanation"]["status"] == "ok":  # the rule it was simulated with is on record
        assert (
            parse_rule(scores["explanation"]["simulation"]).to_json()
            == (scores["explanation"]["simulation"])
        )
    ranked = json.loads(
        run_cli("rank", "smollm2-135m", "--by", "explanation", "--json", "--db", str(db)).stdout
    )
    if scores["explanation"]["status"] == "ok":
        assert ranked[0]["neuron"] == best and ranked[0]["explanation"] == expl["llm"]["text"]
        assert ranked[0]["score"] == pytest.approx(scores["explanation"]["score"])
    # a rerun with the rows removed is answered entirely from the cache
    clear_tables(store, "explanations", "scores")
    again = json.loads(run_cli(*args).stdout)
    assert again["llm_calls"] == 0 and again["cached_calls"] > 0 and again["prompt_tokens"] == 0


def test_negative_side_of_gated_neurons_is_explained_and_scored_separately(
    small_db, fault_server, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("ok")
    summary = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], fault_config(negative=True), "0"),
        _client(server.url),
        load_templates(),
        progress=False,
    )
    assert summary.explained == 1
    kinds = {r["kind"] for r in store.db.query("select kind from explanations where status = 'ok'")}
    methods = {r["method"] for r in store.db.query("select method from scores")}
    assert kinds == {"llm", "llm_negative", "baseline"}
    assert {"explanation", "explanation_negative", "baseline"} <= methods


def test_price_table_gives_dollars_per_row_and_per_run(small_db, fault_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("ok")
    prices = {"fault-model": {"prompt": 1.0, "completion": 2.0}}  # dollars per 1M tokens
    summary = explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], fault_config(), "0"),
        _client(server.url),
        load_templates(),
        prices,
        progress=False,
    )
    rows = list(
        store.db.query(
            "select prompt_tokens, completion_tokens, cost_usd from explanations where "
            "kind = 'llm' union all select prompt_tokens, completion_tokens, cost_usd from scores "
            "where method != 'n2g'"
        )
    )
    for r in rows:
        assert r["cost_usd"] == pytest.approx(
            (r["prompt_tokens"] + 2 * r["completion_tokens"]) / 1e6
        )
    assert (
        summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows)) and summary.cost_usd > 0
    )


def test_the_prompt_cache_keeps_one_row_of_logits_per_state() -> None:
    """The logprob-free local server's prompt cache: a state keeps its key/value bytes and only
    the last row of logits (the stock cache kept a 311 MB buffer per entry, uncounted)."""
    from llama_cpp.llama import LlamaState

    from autointerp.llm.echo_server import slim_prompt_cache

    cache = slim_prompt_cache(capacity_bytes=250)
    for i in range(3):
        scores = np.arange(6 * 4, dtype=np.single).reshape(6, 4) + i
        cache[[1, 2, i]] = LlamaState(
            np.array([1, 2, i], dtype=np.intc), scores, 3, b"x" * 100, 100, 0
        )
    assert len(cache.cache_state) == 2  # the capacity counts the state bytes: the oldest went
    kept = cache[[1, 2, 2, 9]]  # the longest-prefix lookup finds the state of [1, 2, 2]
    assert kept.scores.shape == (1, 4) and kept.scores[0, 0] == 20 + 2


@pytest.mark.slow
def test_the_real_explainer_revises_an_explanation_after_feedback() -> None:
    """The packaged 1.5B, shown where 'the word "point"' missed (the piece " Extended" of
    ExtendedContext) and fired wrongly, writes a revision that differs from the explanation; the
    revision competes on validation and is stored only if it wins (tested with a fault server)."""
    from autointerp.explain.compete import Competition, feedback_rounds
    from autointerp.explain.job import NeuronJob
    from autointerp.explain.prompts import Record
    from autointerp.llm.local_server import local_server

    def record(words: list[str], firing: str) -> Record:
        return Record(["<bos>", *words], [0.0] + [9.0 if w == firing else 0.0 for w in words])

    valid = [
        record([">>>", " Extended", "Context", "(", "prec", "=", "9", ")"], " Extended"),
        record([" c", " =", " Extended", "Context", "()", "\n"], " Extended"),
        record([" the", " point", " of", " the", " story", " is", " simple"], " Extended"),
        record([">>>", " print", "(", "Extended", "Context", ".", "prec", ")"], "Extended"),
    ]
    job = NeuronJob(0, 3, 2005, 9.0, 0.0, valid[:1], [], None, valid=valid, train_all=valid)
    with local_server("qwen2.5-coder-1.5b", prompt_logprobs=False) as (url, model):
        client = _client(url, timeout=300)
        cfg = fault_config(explainer_model=model, simulator_model=model, simulator_mode="rule")
        comp = Competition(job, Simulator(client, model, load_templates(), "rule"))
        first = comp.add('the word "point"', "llm")
        assert first.rule is not None and first.valid is not None
        feedback_rounds(comp, client, dataclasses.replace(cfg, rounds=1), load_templates())
    revisions = [e for e in comp.entries if e.origin == "revision"]
    assert len(revisions) == 1 and revisions[0].round == 1, comp.entries
    assert revisions[0].text and revisions[0].text != first.text
