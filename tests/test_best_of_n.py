"""Best-of-n explanations: n candidates, the best on the validation split (which neither the
explainer nor the written candidates see), the reported score on the test split only - and every
candidate on record with its validation score."""

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
        split = {
            (e["kind"], e["context_id"])
            for e in store.examples(run["id"], 1, neuron, split="valid")
            if e["kind"] != "bottom"
        }
        assert valid and {"top", "random"} <= {r.kind for r in valid}
        picked = {(r.kind, r.context_id) for r in valid}
        assert picked == split  # the whole validation split: never train or test
        assert not picked & {(r.kind, r.context_id) for r in shown}  # nor one the explainer saw


def test_where_the_validation_split_cannot_tell_candidates_apart_training_records_are_added(
    small_db, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = copy_store(small_db, tmp_path)
    run = store.latest_complete_run("tiny-gated", 1)
    assert run is not None
    # a neuron whose validation split is gone: nothing there could tell candidates apart
    store.db.execute("delete from examples where neuron = 0 and split = 'valid'")
    store.db.conn.commit()
    cfg = fault_config(candidates=3)
    valid = validation_records(store, run["id"], 1, 0, cfg)
    picked = {(r.kind, r.context_id) for r in valid}

    def split(name: str) -> set[tuple[str, int]]:
        examples = store.examples(run["id"], 1, 0, kinds=["top", "random", "quantile"], split=name)
        return {(e["kind"], e["context_id"]) for e in examples}

    assert valid and picked == split("train")
    assert not picked & split("test")  # still never the test split


def test_the_best_candidate_on_validation_is_kept_and_scored_on_the_test_split(  # type: ignore[no-untyped-def]
    small_db, fault_server, tmp_path
) -> None:
    store = copy_store(small_db, tmp_path)
    # explanations name a different top token per seed; the simulator compiles them into rules
    server = fault_server("candidates")
    cfg = fault_config(candidates=3, simulator_mode="rule", explain_records=2)
    templates = load_templates()
    # the LLM's candidates alone, with no feedback round: best-of-n as it was
    summary = explain_with_rules(
        store,
        server.url,
        "0-3",
        candidates=3,
        explain_records=2,
        written_candidates=False,
        rounds=0,
    )
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
    explain_with_rules(store, server.url, "0", written_candidates=False, rounds=0, restate=False)
    row = next(store.db.query("select * from explanations where kind = 'llm'"))
    [only] = json.loads(row["candidates"])
    assert row["status"] == "ok" and row["origin"] == "llm" and row["text"] == only["text"]
