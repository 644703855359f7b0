"""Compiled explanations: an explanation turned into a small declarative rule that a deterministic
matcher applies to every held-out token.

Why: with the packaged 1.5B and 0.5B models, token-by-token LLM simulation caps every score - the
true description of a clean hyphen neuron scored 0.11-0.29 and known-answer features' true
descriptions a median of 0.2 (BENCHMARKS.md). Reading a 0-9 digit from the logprobs at each of 32
slots asks a small model for 32 careful judgements per record; writing one rule ("these words",
"this regular expression") is one judgement per explanation, and a *coder* model writes regular
expressions well. The rule is then applied exactly, so a correct description that compiles to the
right rule scores as high as the feature allows, and the simulation costs one short LLM call per
explanation instead of one long call per record.

A rule is data, never code: JSON checked against :data:`RULE_SCHEMA`, with

* ``words`` - words, tokens or phrases (``"of"``, ``"-"``, ``"United States"``): case-insensitive
  unless ``case_sensitive``; a word that starts or ends with a letter, digit or underscore matches
  only at a word boundary there (``"of"`` does not fire inside "often"; ``"-"`` fires on any
  hyphen);
* ``tokens`` - tokens by their text, with no word boundary: a token fires when its text, stripped of
  surrounding spaces (and case unless ``case_sensitive``), equals a listed token. Tokenizers cut
  identifiers, numbers and rare words into pieces (Gemma: ``ExtendedContext`` is `` Extended`` +
  ``Context``, a year is four digit tokens), and a neuron that fires on such a piece is exactly
  described by "the token X" - which ``words`` would only match where the piece is a whole word;
* ``regex`` - a regular expression over the text, exactly as written (case-sensitive; ``(?i)`` makes
  it insensitive), for character patterns, formats and context (lookbehind: ``(?<=def )\\w+``);
* ``position`` - where in a word the firing token sits: ``first``, ``inner`` or ``last`` piece of a
  word split into several tokens, or ``whole`` (the token holds the whole word). Alone it fires on
  every such token (many small-model neurons fire on the first piece of rare names:
  ``Arn|olfini``); with the parts above it narrows them;
* ``after`` - the token right before must be one of these (compared as ``tokens`` are): context,
  as an N2G graph path states it;
* ``strength`` - 1-9, how strongly the clause fires (default 9): in a union of clauses, the tokens
  a neuron fires on weakly can be told from the ones it fires on strongly.

A rule with none of ``words``, ``tokens``, ``regex`` and ``position`` fires nowhere (an explanation
such as "nothing in particular" says exactly that; its score is 0, as for any constant prediction).
A token fires (1.0) when any of its characters lies inside a match of ``words`` or ``regex``, or it
is one of ``tokens``, and it passes ``position`` and ``after`` - the same character-overlap rule as
the known-answer features (:mod:`autointerp.eval.features`), so a phrase that spans several tokens
fires on each. ``{"any": [rule, ...]}`` fires where any of its rules does: the graph-grounded and
token-list explanations the pipeline writes itself are unions of such clauses
(:mod:`autointerp.explain.templates`). Regular expressions come from a model, so they run under the
``regex`` package's timeout: a pathological pattern is a recorded failure, not a hung run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import regex

from autointerp.n2g.graph import normalize_token

#: Seconds one regular expression may spend on one record before the rule counts as broken.
REGEX_TIMEOUT_S = 0.25

#: Where a token sits in a word that the tokenizer split (see :func:`piece_positions`).
POSITIONS = ("first", "inner", "last", "whole")

_STRINGS: dict[str, Any] = {
    "type": "array",
    # an empty word matches nothing: dropped, not a failure (the 1.5B wrote "" for the quote token
    # of `the tokens """, ""," and "call"`, four times over)
    "items": {"type": "string", "maxLength": 100},
    "maxItems": 200,
}
CLAUSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "words": _STRINGS,
        "tokens": _STRINGS,
        "regex": {"type": ["string", "null"], "maxLength": 500},
        "case_sensitive": {"type": "boolean"},
        "position": {
            "anyOf": [
                {"type": "null"},
                {"enum": list(POSITIONS)},
                {"type": "array", "items": {"enum": list(POSITIONS)}, "maxItems": 4},
            ]
        },
        "after": _STRINGS,
        "strength": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "additionalProperties": False,
}
RULE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        CLAUSE_SCHEMA,
        {
            "type": "object",
            "properties": {"any": {"type": "array", "items": CLAUSE_SCHEMA, "maxItems": 32}},
            "required": ["any"],
            "additionalProperties": False,
        },
    ]
}


class RuleError(ValueError):
    """The text is not a usable rule (not JSON, wrong shape, a regular expression that does not
    compile, or nothing to match); the message is the one-line reason."""


class RuleTimeout(RuleError):
    """The rule's regular expression ran past :data:`REGEX_TIMEOUT_S` on a record."""


@dataclass(frozen=True)
class TokenRule:
    """What an explanation says fires the neuron, in a form a matcher can apply (one clause)."""

    #: words, tokens or phrases that fire, word-bounded (see the module docstring for boundaries)
    words: tuple[str, ...] = ()
    #: a regular expression over the text; every token overlapping a match fires
    regex: str | None = None
    #: whether ``words``, ``tokens`` and ``after`` must match in case (``regex`` always means
    #: exactly what it says)
    case_sensitive: bool = False
    #: tokens that fire wherever they occur, inside words too (compared stripped of spaces)
    tokens: tuple[str, ...] = ()
    #: the word-piece positions a firing token must have (empty: any), from :data:`POSITIONS`
    positions: tuple[str, ...] = ()
    #: tokens one of which must come right before a firing token (empty: any)
    after: tuple[str, ...] = ()
    #: how strongly the clause's tokens fire, 1-9 (the activation scale): a union of clauses can
    #: say that some tokens fire more weakly than others
    strength: int = 9

    def to_dict(self) -> dict[str, Any]:
        """The clause as JSON data. The parts a rule compiled before tokens and positions existed
        has are always written; the newer ones only when set, so old rules store the same text."""
        out: dict[str, Any] = {
            "words": list(self.words),
            "regex": self.regex,
            "case_sensitive": self.case_sensitive,
        }
        if self.tokens:
            out["tokens"] = list(self.tokens)
        if self.positions:
            out["position"] = list(self.positions)
        if self.after:
            out["after"] = list(self.after)
        if self.strength != 9:
            out["strength"] = self.strength
        return out

    def to_json(self) -> str:
        """The rule as stored beside its score (keys sorted, so equal rules store equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    def patterns(self) -> list[regex.Pattern[str]]:
        """The compiled character patterns: one for the words (longest first, so a phrase wins
        over its prefix), one for the regular expression."""
        out = []
        if self.words:
            alternatives = sorted({_word_pattern(w) for w in self.words}, key=lambda p: -len(p))
            flags = 0 if self.case_sensitive else regex.IGNORECASE
            out.append(regex.compile("|".join(alternatives), flags))
        if self.regex:
            out.append(regex.compile(self.regex))
        return out

    def apply(self, tokens: Sequence[str]) -> list[float]:
        """``strength`` / 9 (1.0 by default) at every token the rule fires on, 0.0 elsewhere.
        Raises :class:`RuleTimeout`."""
        level = self.strength / 9
        return [level * f for f in self._fired(tokens)] if level != 1 else self._fired(tokens)

    def _fired(self, tokens: Sequence[str]) -> list[float]:
        patterns = self.patterns()
        if patterns or self.tokens:
            fired = apply_patterns(patterns, tokens) if patterns else [0.0] * len(tokens)
            if self.tokens:
                wanted = {self._norm(t) for t in self.tokens}
                fired = [
                    1.0 if f or self._norm(t) in wanted else 0.0
                    for f, t in zip(fired, tokens, strict=True)
                ]
        elif self.positions or self.after:
            fired = [1.0] * len(tokens)  # a condition alone: every token that meets it
        else:
            return [0.0] * len(tokens)
        if self.positions:
            where = piece_positions(tokens)
            fired = [f if where[i] in self.positions else 0.0 for i, f in enumerate(fired)]
        if self.after:
            before = {self._norm(t) for t in self.after}
            fired = [
                f if i > 0 and self._norm(tokens[i - 1]) in before else 0.0
                for i, f in enumerate(fired)
            ]
        return fired

    def _norm(self, token: str) -> str:
        return normalize_token(token, self.case_sensitive)


@dataclass(frozen=True)
class AnyRule:
    """A union of clauses: fires wherever any of them does (``{"any": [...]}``)."""

    clauses: tuple[TokenRule, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"any": [c.to_dict() for c in self.clauses]}, sort_keys=True, ensure_ascii=False
        )

    def apply(self, tokens: Sequence[str]) -> list[float]:
        """The strongest clause that fires at each token."""
        out = [0.0] * len(tokens)
        for clause in self.clauses:
            out = [max(a, b) for a, b in zip(out, clause.apply(tokens), strict=True)]
        return out


Rule = TokenRule | AnyRule
"""What a compiled explanation is: one clause, or a union of clauses."""


def _word_pattern(word: str) -> str:
    body = regex.escape(word)
    start = r"\b" if re.match(r"\w", word) else ""
    end = r"\b" if re.search(r"\w$", word) else ""
    return start + body + end


def piece_positions(tokens: Sequence[str]) -> list[str | None]:
    """Each token's place in the word it belongs to: ``whole`` when the word lies inside the one
    token, ``first`` / ``inner`` / ``last`` when the tokenizer split the word over several tokens,
    None for a token with no letter, digit or underscore. A word is a run of word characters in the
    joined text; a token belongs to the word of its first word character."""
    starts, text = [], ""
    for tok in tokens:
        starts.append(len(text))
        text += tok
    # the index of the token that holds each character
    owner = [i for i, tok in enumerate(tokens) for _ in tok]
    word_span: dict[int, tuple[int, int]] = {}  # character -> (first token, last token) of its word
    for m in re.finditer(r"\w+", text):
        span = (owner[m.start()], owner[m.end() - 1])
        for ch in range(m.start(), m.end()):
            word_span[ch] = span
    out: list[str | None] = []
    for i, tok in enumerate(tokens):
        first_word_char = next((k for k, ch in enumerate(tok) if re.match(r"\w", ch)), None)
        if first_word_char is None:
            out.append(None)
            continue
        lo, hi = word_span[starts[i] + first_word_char]
        out.append("whole" if lo == hi else "first" if i == lo else "last" if i == hi else "inner")
    return out


def apply_patterns(patterns: Sequence[regex.Pattern[str]], tokens: Sequence[str]) -> list[float]:
    """Fire every token whose characters overlap a match of any pattern over the joined text."""
    starts, text = [], ""
    for tok in tokens:
        starts.append(len(text))
        text += tok
    fired = [0.0] * len(tokens)
    for pattern in patterns:
        try:
            matches = [
                (m.start(), m.end()) for m in pattern.finditer(text, timeout=REGEX_TIMEOUT_S)
            ]
        except TimeoutError as exc:
            raise RuleTimeout(
                f"the rule's regular expression ran past {REGEX_TIMEOUT_S} s on one record"
            ) from exc
        for lo, hi in matches:
            if hi <= lo:
                continue  # an empty match covers no character
            for i, start in enumerate(starts):
                end = start + len(tokens[i])
                if start < hi and lo < end:
                    fired[i] = 1.0
    return fired


def parse_rule(text: str) -> Rule:
    """The rule in a model's reply: the first JSON object in it (code fences and surrounding prose
    are tolerated), checked against :data:`RULE_SCHEMA`. Raises :class:`RuleError` with the
    reason."""
    body = _first_json_object(text)
    if body is None:
        raise RuleError(f"no JSON object in the reply: {text.strip()[:60]!r}")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RuleError(f"not JSON: {body[:60]!r}") from exc
    return rule_from_data(data)


def rule_from_data(data: Any) -> Rule:
    """A rule from parsed JSON, checked against :data:`RULE_SCHEMA` (:class:`RuleError` with the
    reason)."""
    try:
        jsonschema.validate(data, RULE_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise RuleError(f"the rule does not match the schema: {_schema_reason(exc)}") from exc
    if "any" in data:
        return AnyRule(tuple(_clause(c) for c in data["any"]))
    return _clause(data)


def _schema_reason(exc: jsonschema.ValidationError) -> str:
    """The most specific reason: for a clause that fails, what is wrong in it (not "is not valid
    under any of the given schemas")."""
    best = jsonschema.exceptions.best_match([exc, *exc.context]) if exc.context else exc
    return best.message[:120]


def _clause(data: dict[str, Any]) -> TokenRule:
    position = data.get("position")
    positions = (position,) if isinstance(position, str) else tuple(position or ())
    rule = TokenRule(
        words=tuple(w for w in data.get("words") or [] if w.strip()),
        regex=data.get("regex") or None,
        case_sensitive=bool(data.get("case_sensitive", False)),
        tokens=tuple(t for t in data.get("tokens") or [] if t),
        positions=tuple(dict.fromkeys(positions)),
        after=tuple(t for t in data.get("after") or [] if t),
        strength=int(data.get("strength", 9)),
    )
    try:
        rule.patterns()
    except regex.error as exc:
        raise RuleError(f"the regex does not compile: {exc}") from exc
    return rule


def _first_json_object(text: str) -> str | None:
    """The first balanced ``{...}`` in ``text`` (braces inside JSON strings are skipped)."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None
