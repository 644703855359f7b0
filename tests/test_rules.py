"""The ``rule`` simulator: an explanation compiled into a matching rule (words, a regular
expression) that a deterministic matcher applies to every token - how rules match, which replies
are rules, how the compile prompt looks (golden file), and that a broken rule is a recorded failure
with its reason, never a score."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import copy_store, fault_config, run_cli
from llmfaults import is_revision
from test_explain import GOLDEN, _client, _golden

from autointerp.explain.plan import plan_explain
from autointerp.explain.prompts import Record, compile_messages, load_templates
from autointerp.explain.rules import (
    AnyRule,
    RuleError,
    RuleTimeout,
    TokenRule,
    parse_rule,
    piece_positions,
)
from autointerp.explain.run import ExplainSummary, explain_layers
from autointerp.explain.simulate import Simulator, score_predictions, simulate_score
from autointerp.llm.client import LLMFailure
from autointerp.store import Store

TOKENS = ["The", " Rhine", "-", "Main", " region", " of", "ten", " often", " Of", " NASA", " Nasa"]


def fired(rule: TokenRule, tokens: list[str] = TOKENS) -> list[str]:
    return [t for t, v in zip(tokens, rule.apply(tokens), strict=True) if v]


def test_words_match_whole_words_in_any_case_and_punctuation_anywhere() -> None:
    # " of" + "ten" is the word "often": not the word "of"
    assert fired(TokenRule(words=("of",))) == [" Of"]
    assert fired(TokenRule(words=("of",), case_sensitive=True)) == []
    assert fired(TokenRule(words=("-",))) == ["-"]
    assert fired(TokenRule(words=("often", "the"))) == ["The", " of", "ten", " often"]


def test_a_phrase_fires_on_every_token_it_overlaps() -> None:
    tokens = ["In", " the", " Unit", "ed", " States", " and", " United", " Kingdom"]
    assert fired(TokenRule(words=("United States",)), tokens) == [" Unit", "ed", " States"]
    # a match that starts inside a token fires that token
    assert fired(TokenRule(regex="d S"), tokens) == ["ed", " States"]


def test_regex_means_exactly_what_it_says() -> None:
    assert fired(TokenRule(regex=r"\b[A-Z]{2,}\b")) == [" NASA"]
    assert fired(TokenRule(regex=r"(?i)\bnasa\b")) == [" NASA", " Nasa"]
    assert fired(TokenRule(regex=r"(?<=-)\w+")) == ["Main"]  # context through a lookbehind
    assert fired(TokenRule(regex=r"x*")) == []  # empty matches cover no character


def test_a_pathological_regex_times_out_instead_of_hanging() -> None:
    with pytest.raises(RuleTimeout):
        TokenRule(regex=r"(a|aa)+$").apply(["a" * 20, "a" * 20, "b"])


def test_replies_are_parsed_into_rules_or_rejected_with_the_reason() -> None:
    rule = parse_rule('Here it is:\n```json\n{"words": ["of", " ", ""], "regex": null}\n```')
    assert rule == TokenRule(words=("of",))
    assert parse_rule('{"regex": "[{}]", "case_sensitive": true}').regex == "[{}]"
    for reply, reason in (
        ("the word of", "no JSON object"),
        ('{"words": "of"}', "schema"),
        ('{"words": ["of"], "note": "x"}', "schema"),
        ('{"regex": "(unclosed"}', "does not compile"),
        ('{"words": ["of"', "no JSON object"),
    ):
        with pytest.raises(RuleError, match=reason):
            parse_rule(reply)


def test_tokens_fire_inside_words_where_words_do_not() -> None:
    # Gemma cuts identifiers into pieces: the neuron fires on " Extended" inside ExtendedContext
    code = [">>>", " Extended", "Context", "(", "prec", "=", "9", ")"]
    assert fired(TokenRule(tokens=("Extended",)), code) == [" Extended"]
    assert fired(TokenRule(words=("Extended",)), code) == []  # word-bounded: not inside a word
    assert fired(TokenRule(tokens=("extended",), case_sensitive=True), code) == []
    # a year is four digit tokens: the token "9" fires on both nines, the word "9" on neither
    year = [" in", " ", "1", "9", "9", "5", ","]
    assert [i for i, v in enumerate(TokenRule(tokens=("9",)).apply(year)) if v] == [3, 4]
    assert fired(TokenRule(words=("9",)), year) == []
    # don't: the token "t" fires on the piece after the apostrophe
    assert fired(TokenRule(tokens=("t",)), [" I", " don", "'", "t", " know"]) == ["t"]


def test_word_pieces_know_their_place_in_the_word() -> None:
    tokens = [" Arn", "olf", "ini", " painted", " ExtendedContext", ".", " 1", "9", "9", "5"]
    assert piece_positions(tokens) == [
        "first", "inner", "last", "whole", "whole", None, "first", "inner", "inner", "last",
    ]  # fmt: skip
    first = TokenRule(positions=("first",))  # a condition alone fires wherever it holds
    assert fired(first, tokens) == [" Arn", " 1"]
    assert fired(TokenRule(tokens=("9", "5"), positions=("last",)), tokens) == ["5"]
    # don't: "don" and "t" are separate words (the apostrophe is not a word character)
    assert piece_positions([" don", "'", "t"]) == ["whole", None, "whole"]


def test_after_and_unions_of_clauses() -> None:
    code = [">>>", " Extended", "Context", " x", " Extended", "(", "Context"]
    after = TokenRule(tokens=("Extended",), after=(">>>",))
    assert [i for i, v in enumerate(after.apply(code)) if v] == [1]
    union = parse_rule(
        '{"any": [{"tokens": ["Extended"], "after": [">>>"]}, {"tokens": ["context"]}]}'
    )
    assert isinstance(union, AnyRule)
    assert [i for i, v in enumerate(union.apply(code)) if v] == [1, 2, 6]
    assert parse_rule(union.to_json()) == union
    assert parse_rule('{"position": "first"}') == TokenRule(positions=("first",))
    with pytest.raises(RuleError, match="schema"):
        parse_rule('{"position": "middle"}')


def test_an_empty_rule_fires_nowhere() -> None:
    assert parse_rule('{"words": [], "regex": null}').apply(TOKENS) == [0.0] * len(TOKENS)


def test_stored_rules_are_canonical_json() -> None:
    rule = TokenRule(words=("a", "b"), regex="x")
    assert json.loads(rule.to_json()) == {
        "words": ["a", "b"],
        "regex": "x",
        "case_sensitive": False,
    }
    assert parse_rule(rule.to_json()) == rule


def test_compile_prompt_matches_golden_file() -> None:
    messages = compile_messages("the hyphen character", load_templates())
    _golden(
        "compile_prompt.txt", "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages) + "\n"
    )
    assert messages[-1] == {"role": "user", "content": "Description: the hyphen character"}
    assert (GOLDEN / "compile_prompt.txt").is_file()


def test_few_shot_rules_are_valid_rules() -> None:
    for example in load_templates().compile_examples:
        parse_rule(json.dumps(example["rule"]))


# ------------------------------------------------------------------------------------------------
# against fault-injection endpoints (the server only compiles; matching and scoring are real)
def explain_with_rules(
    store: Store, url: str, neurons: str, retry_failed: bool = False, **config: Any
) -> ExplainSummary:
    """``explain`` of layer 1 of the tiny model against a fault-injection endpoint, simulated by
    rules (``config`` overrides the test config's fields)."""
    cfg = fault_config(simulator_mode="rule", **config)
    return explain_layers(
        store,
        plan_explain(store, "tiny-gated", [1], cfg, neurons),
        _client(url),
        load_templates(),
        progress=False,
        retry_failed=retry_failed,
    )


def test_rule_simulation_scores_what_the_rule_matches(fault_server) -> None:  # type: ignore[no-untyped-def]
    server = fault_server("keyword")  # compiles a description into its own words
    sim = Simulator(_client(server.url), "fault-model", load_templates(), "rule")
    record = Record(TOKENS, [5.0 if t == "-" else 0.0 for t in TOKENS])
    right, used = simulate_score(sim, "-", [record], 5.0, 1.0)
    wrong, _ = simulate_score(sim, "region", [record], 5.0, 1.0)
    assert right["score"] == pytest.approx(1.0) and wrong["score"] < 0
    assert json.loads(right["simulation"])["words"] == ["-"]
    assert used.calls == 1  # one call per explanation, whatever the number of records
    preds, _, _ = sim.simulate_records("the region", [TOKENS, TOKENS[:3]])
    assert [len(p) for p in preds] == [len(TOKENS), 3] and max(preds[0]) == 9.0
    assert score_predictions(preds[:1], [record], 5.0)["score"] is not None


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("truncated", "truncated at max_tokens"),
        ("wrong-count", "does not compile"),
        ("not-json", "no JSON object"),
    ],
)
def test_a_broken_rule_is_a_recorded_failure_never_a_score(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path, mode: str, reason: str
) -> None:
    store = copy_store(small_db, tmp_path)
    server = fault_server(mode)  # explanations are answered well; the rule is broken
    summary = explain_with_rules(store, server.url, "0-1", written_candidates=False)
    assert summary.failed == 2
    rows = list(store.db.query("select * from scores where method = 'explanation'"))
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "failed" and row["score"] is None and row["simulation"] is None
        assert reason in row["error"] and row["simulator_mode"] == "rule"
    # the token baseline is written in the template grammar: compiled with no LLM call, so the
    # broken server cannot touch it - it is scored, as its tokens
    baselines = list(store.db.query("select * from scores where method = 'baseline'"))
    assert len(baselines) == 2 and all(r["status"] != "failed" for r in baselines)
    assert all("tokens" in json.loads(r["simulation"]) for r in baselines)


def test_a_broken_rule_leaves_the_written_candidates_and_the_failure_is_recorded(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path
) -> None:
    store = copy_store(small_db, tmp_path)
    server = fault_server("not-json")  # the LLM's explanation cannot be compiled
    summary = explain_with_rules(store, server.url, "0-1")
    assert summary.failed == 2  # the LLM's failure counts: --retry-failed redoes these neurons
    for row in store.db.query("select * from explanations where kind = 'llm'"):
        # a written candidate is kept, and says so; the LLM's is stored with why it has no score
        assert row["status"] == "ok" and row["origin"] in ("tokens", "graph", "template")
        llm = [c for c in json.loads(row["candidates"]) if c["origin"] == "llm"]
        assert llm and llm[0]["valid_score"] is None and "no JSON object" in llm[0]["error"]
    for row in store.db.query("select * from scores where method = 'explanation_first'"):
        assert row["status"] == "failed" and row["score"] is None
        assert "no JSON object" in row["error"]


def test_rules_are_stored_beside_their_scores(small_db, fault_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("ok")
    explain_with_rules(store, server.url, "0")
    rows = {r["method"]: r for r in store.db.query("select * from scores")}
    assert rows["explanation"]["simulator_mode"] == "rule"
    # the LLM's first explanation, as the fault server compiled it, beside the kept one's rule
    first = json.loads(rows["explanation_first"]["simulation"])
    assert first["words"] == ["matter", "that", "tokens"]
    assert parse_rule(rows["explanation"]["simulation"]).apply(["a"]) is not None
    assert json.loads(rows["baseline"]["simulation"])["tokens"]  # compiled with no LLM call


def test_an_unreachable_simulator_is_a_failure_with_its_reason() -> None:
    sim = Simulator(_client("http://127.0.0.1:9/v1"), "m", load_templates(), "rule")
    with pytest.raises(LLMFailure, match="connection error"):
        sim.simulate_records("anything", [TOKENS])


def test_an_empty_compiled_rule_takes_the_quoted_text() -> None:
    """A compiled rule that covers nothing is checked against its description: quoted text is
    what the description names; with nothing quoted the empty rule stands."""
    from autointerp.explain.simulate import covering_rule

    empty = parse_rule('{"words": [], "regex": null}')
    assert covering_rule(empty, 'the hyphen character "-"').apply(["a", "-", "b"]) == [0, 1, 0]
    assert covering_rule(empty, "hyphens") == empty
    only_position = parse_rule('{"position": "first"}')
    assert covering_rule(only_position, "x") == only_position


def test_competing_candidates_are_ranked_shown_and_listed(small_db, fault_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("keyword")
    explain_with_rules(store, server.url, "0-3")
    proc = run_cli(
        "rank", "tiny-gated", "--by", "explanation_auprc", "--json", "--db", str(store.path)
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and all(r["auprc"] is not None and r["origin"] for r in rows)
    assert [r["auprc"] for r in rows] == sorted((r["auprc"] for r in rows), reverse=True)
    text = run_cli("rank", "tiny-gated", "--by", "explanation_random", "--db", str(store.path))
    assert text.returncode == 0 and "auprc" in text.stdout and "origin" in text.stdout
    from fastapi.testclient import TestClient

    from autointerp.api.app import create_app

    with TestClient(create_app(store.path)) as web:
        page = web.get(f"/m/tiny-gated/neuron/1/{rows[0]['neuron']}").text
        assert "candidate explanations competed" in page and "AUPRC" in page
        ranked = web.get("/api/tiny-gated/rank?by=explanation_auprc").json()
        assert [r["neuron"] for r in ranked["items"]] == [r["neuron"] for r in rows]


def test_an_llm_that_writes_nothing_leaves_written_explanations_and_counts_as_failed(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path
) -> None:
    store = copy_store(small_db, tmp_path)
    server = fault_server("truncated-explanation")  # every explanation is cut at max_tokens
    summary = explain_with_rules(store, server.url, "0-1")
    # the neurons keep a written explanation, but the LLM's failure is on record and counted, so
    # `explain` can say the endpoint wrote nothing and --retry-failed redoes them
    assert summary.failed == summary.unexplained == 2 and summary.explained == 0
    kept = list(store.db.query("select * from explanations where kind = 'llm'"))
    assert all(r["status"] == "ok" and r["origin"] in ("tokens", "graph", "template") for r in kept)
    firsts = list(store.db.query("select * from scores where method = 'explanation_first'"))
    assert len(firsts) == 2 and all("truncated at max_tokens" in r["error"] for r in firsts)
    server.mode = "ok"
    again = explain_with_rules(store, server.url, "0-1", retry_failed=True)
    assert again.explained == 2 and again.failed == 0


def test_feedback_rounds_keep_a_revision_only_when_it_scores_better(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path
) -> None:
    """A reviser that reads the feedback (it names the misses) wins on validation and is kept,
    stored with its round; one that repeats its explanation ends the rounds after one request."""
    store = copy_store(small_db, tmp_path)
    server = fault_server("reviser")
    explain_with_rules(store, server.url, "0-3", written_candidates=False, restate=False, rounds=2)
    asked = [b for b in server.bodies if is_revision(b)]
    shown = [b["messages"][-1]["content"] for b in asked]
    assert any("Misses" in t for t in shown) and all("Misses" in t or "False" in t for t in shown)
    rows = list(store.db.query("select * from explanations where kind = 'llm'"))
    revised = [r for r in rows if r["origin"] == "revision"]
    assert revised, [(r["origin"], r["text"]) for r in rows]
    for r in revised:
        candidates = json.loads(r["candidates"])
        first = next(c for c in candidates if c["origin"] == "llm")
        kept = next(c for c in candidates if c["text"] == r["text"])
        assert kept["round"] >= 1 and kept["text"] != first["text"]
        assert kept["valid_score"] > (first["valid_score"] or float("-inf"))

    (tmp_path / "stubborn").mkdir()
    stubborn_store = copy_store(small_db, tmp_path / "stubborn")
    stubborn = fault_server("stubborn")
    explain_with_rules(stubborn_store, stubborn.url, "0-3", written_candidates=False, restate=False)
    per_neuron = len([b for b in stubborn.bodies if is_revision(b)])
    assert 0 < per_neuron <= 4  # one request per neuron at most: a repeat ends the rounds
    origins = {r["origin"] for r in stubborn_store.db.query("select origin from explanations")}
    assert "revision" not in origins
