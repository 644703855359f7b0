"""Explanations the pipeline writes itself, in a small fixed grammar that compiles to a rule with no
LLM.

Why a grammar: the token-lookup baseline, the single-token template and the candidates built from
the token statistics and the N2G graph are written by code, from facts about tokens. Sending such a
sentence to a 1.5B model to be turned back into those facts only adds the model's mistakes (it
compiled `the token "Extended"` to a word-bounded rule that never fires inside ``ExtendedContext``).
So every sentence in this grammar compiles deterministically (:func:`template_rule`), whoever wrote
it - the pipeline, the explainer, or a researcher testing a hypothesis with ``autointerp score`` -
and any other sentence goes to the LLM rule compiler as before. The text alone decides the rule:
nothing is hidden beside it.

The grammar (tokens are JSON string literals, so any token, quotes and newlines included, round
trips)::

    explanation := clause ("; or " clause)*  |  "nothing in particular"
    clause      := (head [" as " position] | position) [" right after " tokens] [" (" strength ")"]
    strength    := "strongly" | "moderately" | "weakly"          (9, 5, 2 on the 0-9 scale)
    head        := "the token " STRING  |  "the tokens " tokens
    tokens      := STRING ((", " STRING)* " and " STRING | (" or " STRING)*)
    position    := "the first piece of a longer word" | "a middle piece of a longer word"
                 | "the last piece of a longer word" | "a whole word"

For example ``the token "Extended" as the first piece of a longer word right after ">>>"``, or
``the tokens "-", "–" and "—"``, or ``the token "s" (strongly); or the tokens "a" and "the"
(weakly)``. A clause with no strength fires at 9; where clauses differ, each says its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from autointerp.explain.rules import AnyRule, Rule, TokenRule

#: The phrase for each word-piece position (:data:`autointerp.explain.rules.POSITIONS`).
POSITION_PHRASES = {
    "first": "the first piece of a longer word",
    "inner": "a middle piece of a longer word",
    "last": "the last piece of a longer word",
    "whole": "a whole word",
}
#: The words for a clause's strength and the activation (0-9) each stands for.
STRENGTHS = {"strongly": 9, "moderately": 5, "weakly": 2}
NOTHING = "nothing in particular"
CLAUSE_SEPARATOR = "; or "


@dataclass(frozen=True)
class Clause:
    """One clause of a template explanation: which tokens fire, where in a word, after what."""

    #: the tokens that fire (empty: any token in ``position``)
    tokens: tuple[str, ...] = ()
    #: the word-piece position a firing token must have, or None for any
    position: str | None = None
    #: tokens one of which must come right before (empty: any)
    after: tuple[str, ...] = ()
    #: the strength word (:data:`STRENGTHS`), or None for the default 9 with no word
    strength: str | None = None

    def text(self) -> str:
        if not self.tokens:
            if self.position is None:
                raise ValueError("a clause needs tokens or a position")
            out = POSITION_PHRASES[self.position]
        else:
            noun = "the token " if len(self.tokens) == 1 else "the tokens "
            out = noun + quote_list(self.tokens, "and")
            if self.position is not None:
                out += " as " + POSITION_PHRASES[self.position]
        if self.after:
            out += " right after " + quote_list(self.after, "or")
        if self.strength is not None:
            out += f" ({self.strength})"
        return out

    def rule(self) -> TokenRule:
        return TokenRule(
            tokens=self.tokens,
            positions=(self.position,) if self.position else (),
            after=self.after,
            strength=STRENGTHS[self.strength] if self.strength else 9,
        )


def quote(token: str) -> str:
    """A token as a JSON string literal: readable for ordinary tokens, exact for every token."""
    return json.dumps(token, ensure_ascii=False)


def quote_list(tokens: Sequence[str], conjunction: str) -> str:
    """``"a"``, ``"a" and "b"``, ``"a", "b" and "c"`` (or ``"a" or "b" or "c"`` with ``or``)."""
    quoted = [quote(t) for t in tokens]
    if len(quoted) == 1:
        return quoted[0]
    if conjunction == "or":
        return " or ".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def explanation_text(clauses: Sequence[Clause]) -> str:
    """The sentence for ``clauses`` (``nothing in particular`` for none)."""
    return CLAUSE_SEPARATOR.join(c.text() for c in clauses) if clauses else NOTHING


def clauses_rule(clauses: Sequence[Clause]) -> Rule:
    """The rule the sentence of ``clauses`` compiles to (what :func:`template_rule` gives back)."""
    if len(clauses) == 1:
        return clauses[0].rule()
    return AnyRule(tuple(c.rule() for c in clauses))


# ------------------------------------------------------------------------------------------------
# parsing
_STRING = r'"(?:[^"\\]|\\.)*"'
_STRING_RE = re.compile(_STRING)
_POSITION_BY_PHRASE = {phrase: name for name, phrase in POSITION_PHRASES.items()}


def template_rule(text: str) -> Rule | None:
    """The rule of a sentence in the grammar (module docstring), or None when ``text`` is not one
    (then the LLM compiles it). Surrounding spaces and one final period are ignored."""
    body = text.strip()
    if body.endswith(".") and not body.endswith('"."'):
        body = body[:-1].rstrip()
    if body == NOTHING:
        return TokenRule()
    clauses = []
    for part in _split_clauses(body):
        clause = _parse_clause(part)
        if clause is None:
            return None
        clauses.append(clause)
    return clauses_rule(clauses) if clauses else None


def _split_clauses(body: str) -> list[str]:
    """``body`` cut at each ``; or `` that is not inside a quoted token."""
    parts, start, i = [], 0, 0
    while i < len(body):
        if body[i] == '"':
            m = _STRING_RE.match(body, i)
            if m is None:
                return [body]  # an unclosed quote: not the grammar (the parser will say None)
            i = m.end()
            continue
        if body.startswith(CLAUSE_SEPARATOR, i):
            parts.append(body[start:i])
            i += len(CLAUSE_SEPARATOR)
            start = i
            continue
        i += 1
    parts.append(body[start:])
    return parts


def _parse_clause(part: str) -> Clause | None:
    rest = part
    tokens: tuple[str, ...] = ()
    position = None
    for phrase, name in _POSITION_BY_PHRASE.items():
        if rest.startswith(phrase):
            position, rest = name, rest[len(phrase) :]
            break
    else:
        for noun, many in (("the token ", False), ("the tokens ", True)):
            if rest.startswith(noun):
                parsed = _parse_strings(rest[len(noun) :], "and" if many else None)
                if parsed is None:
                    return None
                tokens, rest = parsed
                break
        else:
            return None
        if rest.startswith(" as "):
            phrase = next((p for p in _POSITION_BY_PHRASE if rest[4:].startswith(p)), None)
            if phrase is None:
                return None
            position, rest = _POSITION_BY_PHRASE[phrase], rest[4 + len(phrase) :]
    after: tuple[str, ...] = ()
    if rest.startswith(" right after "):
        parsed = _parse_strings(rest[len(" right after ") :], "or")
        if parsed is None:
            return None
        after, rest = parsed
    strength = next((w for w in STRENGTHS if rest == f" ({w})"), None)
    if strength is not None:
        rest = ""
    if rest:
        return None
    return Clause(tokens, position, after, strength)


def _parse_strings(text: str, conjunction: str | None) -> tuple[tuple[str, ...], str] | None:
    """Quoted tokens at the start of ``text`` joined as :func:`quote_list` joins them (one only when
    ``conjunction`` is None), and the text after them; None when they are not there."""
    out: list[str] = []
    pos = 0
    while True:
        m = _STRING_RE.match(text, pos)
        if m is None:
            return None
        try:
            out.append(json.loads(m.group(0)))
        except ValueError:
            return None
        pos = m.end()
        if conjunction is None:
            break
        separators = (", ", " and ") if conjunction == "and" else (" or ",)
        sep = next((s for s in separators if text.startswith(s + '"', pos)), None)
        if sep is None:
            break
        pos += len(sep)
        if sep == " and ":
            m = _STRING_RE.match(text, pos)
            if m is None:
                return None
            try:
                out.append(json.loads(m.group(0)))
            except ValueError:
                return None
            pos = m.end()
            break
    if conjunction == "and" and len(out) == 1:
        return None  # "the tokens" names more than one
    return tuple(out), text[pos:]
