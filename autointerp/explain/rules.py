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
* ``regex`` - a regular expression over the text, exactly as written (case-sensitive; ``(?i)`` makes
  it insensitive), for character patterns, formats and context (lookbehind: ``(?<=def )\\w+``).

A rule with neither part fires nowhere (an explanation such as "nothing in particular" says exactly
that; its score is 0, as for any constant prediction). A token fires (1.0) when any of its
characters lies inside a match of either part, 0 otherwise - the same character-overlap rule as the
known-answer features (:mod:`autointerp.eval.features`), so a phrase that spans several tokens fires
on each. Regular expressions come from a model, so they run under the ``regex`` package's timeout: a
pathological pattern is a recorded failure, not a hung run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import regex

#: Seconds one regular expression may spend on one record before the rule counts as broken.
REGEX_TIMEOUT_S = 0.25

RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "words": {
            "type": "array",
            # an empty word matches nothing: dropped, not a failure (the 1.5B wrote "" for the
            # quote token of `the tokens """, ""," and "call"`, four times over)
            "items": {"type": "string", "maxLength": 100},
            "maxItems": 200,
        },
        "regex": {"type": ["string", "null"], "maxLength": 500},
        "case_sensitive": {"type": "boolean"},
    },
    "additionalProperties": False,
}


class RuleError(ValueError):
    """The text is not a usable rule (not JSON, wrong shape, a regular expression that does not
    compile, or nothing to match); the message is the one-line reason."""


class RuleTimeout(RuleError):
    """The rule's regular expression ran past :data:`REGEX_TIMEOUT_S` on a record."""


@dataclass(frozen=True)
class TokenRule:
    """What an explanation says fires the neuron, in a form a matcher can apply."""

    #: words, tokens or phrases that fire (see the module docstring for boundaries and case)
    words: tuple[str, ...] = ()
    #: a regular expression over the text; every token overlapping a match fires
    regex: str | None = None
    #: whether ``words`` must match in case (``regex`` always means exactly what it says)
    case_sensitive: bool = False

    def to_json(self) -> str:
        """The rule as stored beside its score (keys sorted, so equal rules store equal text)."""
        return json.dumps(
            {"words": list(self.words), "regex": self.regex, "case_sensitive": self.case_sensitive},
            sort_keys=True,
            ensure_ascii=False,
        )

    def patterns(self) -> list[regex.Pattern[str]]:
        """The compiled patterns: one for the words (longest first, so a phrase wins over its
        prefix), one for the regular expression."""
        out = []
        if self.words:
            alternatives = sorted({_word_pattern(w) for w in self.words}, key=lambda p: -len(p))
            flags = 0 if self.case_sensitive else regex.IGNORECASE
            out.append(regex.compile("|".join(alternatives), flags))
        if self.regex:
            out.append(regex.compile(self.regex))
        return out

    def apply(self, tokens: Sequence[str]) -> list[float]:
        """1.0 at every token that overlaps a match, 0.0 elsewhere. Raises :class:`RuleTimeout`."""
        return apply_patterns(self.patterns(), tokens)


def _word_pattern(word: str) -> str:
    body = regex.escape(word)
    start = r"\b" if re.match(r"\w", word) else ""
    end = r"\b" if re.search(r"\w$", word) else ""
    return start + body + end


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


def parse_rule(text: str) -> TokenRule:
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
    try:
        jsonschema.validate(data, RULE_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise RuleError(f"the rule does not match the schema: {exc.message[:120]}") from exc
    rule = TokenRule(
        tuple(w for w in data.get("words") or [] if w.strip()),
        data.get("regex") or None,
        bool(data.get("case_sensitive", False)),
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
