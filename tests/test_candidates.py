"""Candidate explanations written with no LLM: what the token statistics and the N2G graph say,
put into sentences that compile to exactly the rule they state."""

from __future__ import annotations

from autointerp.explain.candidates import (
    graph_candidates,
    greedy_tokens,
    rule_score,
    single_token,
    token_candidates,
)
from autointerp.explain.prompts import Record
from autointerp.explain.templates import template_rule
from autointerp.n2g.graph import NeuronGraph, PathExample


def rec(pairs: list[tuple[str, float]], kind: str = "top") -> Record:
    return Record([t for t, _ in pairs], [a for _, a in pairs], kind)


# " Extended" fires strongly inside an identifier, " point" weakly, " the" never; " a" is frequent
# and fires once, weakly: naming it costs more than it gains
RECORDS = [
    rec([(">>>", 0), (" Extended", 9), ("Context", 1), (" a", 0), (" point", 3)]),
    rec([(" the", 0), (" Extended", 8), ("Context", 0), (" a", 0), (" the", 0)]),
    rec([(" a", 2), (" point", 3), (" the", 0), (" a", 0), (" a", 0)], "random"),
    rec([(" the", 0), (" a", 0), (" b", 0), (" a", 0), (" c", 0)], "random"),
]


def test_the_greedy_set_names_what_predicts_the_neuron_and_stops() -> None:
    order, level = greedy_tokens(RECORDS, 9.0, 10)
    assert order == ["extended", "point"]  # " a" would lower the correlation: never added
    assert level["extended"] == 8.5 and level["point"] == 3.0


def test_token_candidates_say_their_strengths_and_compile_to_their_rule() -> None:
    cands = token_candidates(RECORDS, 9.0)
    texts = [c.text for c in cands]
    assert texts[0] == 'the token "Extended"'
    assert 'the token "Extended" (strongly); or the token "point" (moderately)' in texts
    for c in cands:
        assert c.origin == "tokens" and template_rule(c.text) == c.rule
    best = max(cands, key=lambda c: rule_score(c.rule, RECORDS, 9.0) or -1)  # type: ignore[arg-type]
    assert "point" in best.text


def test_single_token_neurons_are_told_apart() -> None:
    assert single_token(RECORDS[:2]) == "Extended"
    assert single_token(RECORDS) is None  # one record peaks on " a"
    assert single_token(RECORDS[:1]) is None  # one record says nothing


def test_graph_candidates_state_the_context_the_graph_needs() -> None:
    graph = NeuronGraph()
    # "extended" fires only right after ">>>"; "point" fires alone, half as strongly
    graph.add_path(PathExample(("Extended", ">>>"), (1.0, 0.9), 1.0))
    graph.add_path(PathExample(("point",), (1.0,), 0.5))
    texts = [c.text for c in graph_candidates(graph, RECORDS, 9.0)]
    assert texts == [
        'the token "Extended" right after ">>>"',
        'the token "Extended" right after ">>>" (strongly); or the token "point" (moderately)',
    ]
