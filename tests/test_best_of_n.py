"""Best-of-n explanations: n candidates, the best on validation records the explainer never saw,
the reported score on the test split only - and every candidate on record with its validation
score."""

from __future__ import annotations

import json

from helpers import copy_store, fault_config
from test_explain import _client
from test_rules import explain_with_rules

from autointerp.explain.prompts import load_templates
from autointerp.explain.records import explain_records, heldout_records, validation_records
from autointerp.explain.simulate import Simulator, simulate_score


def test_validation_records_are_neither_shown_nor_reported(small_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    run = store.latest_complete_run("tiny-gated", 1)
    assert run is not None
    cfg = fault_config(candidates=3, explain_records=2)
    for neuron in range(4):
        valid = validation_records(store, run["id"], 1, neuron, cfg)
        shown = explain_records(store, run["id"], 1, neuron, cfg)
        train = {
            (e["kind"], e["context_id"])
            for e in store.examples(run["id"], 1, neuron, kinds=["top", "random"], split="train")
        }
        assert valid and {r.kind for r in valid} == {"top", "random"}
        picked = {(r.kind, r.context_id) for r in valid}
        assert picked <= train  # never a test-split example
        assert not picked & {(r.kind, r.context_id) for r in shown}  # nor one the explainer saw


def test_where_unseen_examples_cannot_tell_candidates_apart_the_shown_ones_are_added(
    small_db, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    run = store.latest_complete_run("tiny-gated", 1)
    assert run is not None
    # every training top example is shown and no random one is asked for: nothing unseen is left
    cfg = fault_config(candidates=3, explain_records=1000, sim_random=0)
    valid = validation_records(store, run["id"], 1, 0, cfg)
    shown = explain_records(store, run["id"], 1, 0, cfg)
    assert valid and {r.context_id for r in valid} == {r.context_id for r in shown}
    test = {e["context_id"] for e in store.examples(run["id"], 1, 0, kinds=["top"], split="test")}
    assert not {r.context_id for r in valid} & test  # still never the test split


def test_the_best_candidate_on_validation_is_kept_and_scored_on_the_test_split(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path
) -> None:
    store = copy_store(small_db, tmp_path)
    # explanations name a different top token per seed; the simulator compiles them into rules
    server = fault_server("candidates")
    cfg = fault_config(candidates=3, simulator_mode="rule", explain_records=2)
    templates = load_templates()
    summary = explain_with_rules(store, server.url, "0-3", candidates=3, explain_records=2)
    assert summary.explained == 4 and summary.failed == 0
    run = store.latest_complete_run("tiny-gated", 1)
    assert run is not None
    sim = Simulator(_client(server.url), "fault-model", templates, "rule")
    distinct = 0
    for row in store.db.query("select * from explanations where kind = 'llm'"):
        candidates = json.loads(row["candidates"])
        assert len(candidates) == 3 and all(c["text"] for c in candidates)
        distinct += len({c["text"] for c in candidates}) > 1
        valid = [c["valid_score"] for c in candidates]
        best = max(v for v in valid if v is not None)
        # the kept text is the first candidate with the best validation score
        assert row["text"] == candidates[valid.index(best)]["text"]
        # the reported score is the kept text's score on the test records, recomputed here
        score = store.db.execute(
            "select score from scores where method = 'explanation' and layer = ? and neuron = ?",
            [row["layer"], row["neuron"]],
        ).fetchone()[0]
        stats = store.neuron(run["id"], 1, row["neuron"])
        test = heldout_records(store, run["id"], 1, row["neuron"], cfg)
        again, _ = simulate_score(sim, row["text"], test, float(stats["max"]), 1.0)
        assert score == again["score"]
    assert distinct  # the candidates really differed somewhere


def test_one_candidate_is_the_plain_explanation(small_db, fault_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    server = fault_server("candidates")
    explain_with_rules(store, server.url, "0")
    row = next(store.db.query("select * from explanations where kind = 'llm'"))
    assert row["candidates"] is None and row["status"] == "ok"
