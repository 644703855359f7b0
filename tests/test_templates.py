"""Explanations the pipeline writes itself compile to rules with no LLM, and any other sentence
is left to the LLM compiler: the grammar round-trips every token, and the rule is what the words
say."""

from __future__ import annotations

import pytest

from autointerp.explain.rules import AnyRule, TokenRule
from autointerp.explain.templates import Clause, explanation_text, template_rule


@pytest.mark.parametrize(
    "clauses",
    [
        [Clause(("Extended",))],
        [Clause(("-", "–", "—"))],
        [Clause(("Arn",), "first")],
        [Clause((), "first")],
        [Clause(("Extended",), "first", (">>>",)), Clause(("Context",))],
        [Clause(('"', "\n", "\\", " ; or "), None, ("a", "b"))],  # awkward tokens survive
        [Clause(("s",), None, (), "strongly"), Clause(("a", "the"), "whole", (), "weakly")],
        [Clause((), "first", (",",), "moderately")],
    ],
)
def test_written_sentences_compile_back_to_their_clauses(clauses: list[Clause]) -> None:
    text = explanation_text(clauses)
    rule = template_rule(text)
    expected = [c.rule() for c in clauses]
    assert rule == (expected[0] if len(expected) == 1 else AnyRule(tuple(expected)))
    assert template_rule(text + ".") == rule  # a final period changes nothing


def test_the_rule_is_what_the_words_say() -> None:
    text = 'the token "Extended" as the first piece of a longer word right after ">>>"'
    assert explanation_text([Clause(("Extended",), "first", (">>>",))]) == text
    tokens = [">>>", " Extended", "Context", " Extended", " x", ">>>", " Extended"]
    assert template_rule(text).apply(tokens) == [0, 1, 0, 0, 0, 0, 0]  # type: ignore[union-attr]
    assert template_rule('the tokens "a", "b" and "c"') == TokenRule(tokens=("a", "b", "c"))
    assert template_rule("nothing in particular") == TokenRule()
    graded = template_rule('the token "s" (strongly); or the tokens "a" and "the" (weakly)')
    assert graded is not None and graded.apply([" a", "s", " the", " x"]) == [2 / 9, 1, 2 / 9, 0]


@pytest.mark.parametrize(
    "text",
    [
        'the word "point"',
        "dates",
        'the token "Extended',  # unclosed quote
        'the token "a" and more',
        'the tokens "a"',  # "the tokens" names more than one
        'the token "a" as the best piece of a word',
        "",
    ],
)
def test_other_sentences_are_left_to_the_llm(text: str) -> None:
    assert template_rule(text) is None
