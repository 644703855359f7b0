"""Feedback rounds: the explainer is shown where the rule compiled from its explanation went wrong
on the validation records, and asked for a revision.

Why this shape: a rule makes two kinds of mistake, and both are facts about tokens - a *miss*, where
the neuron fires (>= half its max, N2G's threshold) and the rule does not, and a *false alarm*,
where the rule fires and the neuron stays quiet (<= a tenth of its max). Each is listed once per
token, most frequent first, with how often it happened and one short piece of the text before it,
so a small model sees what to add and what to drop without reading records again. A hand test of
the packaged 1.5B found that it can ignore such feedback (given counts, it kept its phrase); that is
why a revision is only kept when it scores better on validation, like every other candidate
(:mod:`autointerp.explain.compete`), and why the rounds' outcome is measured and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autointerp.explain.prompts import Record, Templates
from autointerp.explain.rules import Rule
from autointerp.explain.simulate import FIRE_THRESHOLD
from autointerp.n2g.graph import normalize_token
from autointerp.untrusted import escape_token

#: The neuron is "quiet" at or below this share of its max: where a rule firing is a false alarm.
QUIET_SHARE = 0.1
#: Tokens of each kind of mistake shown, and tokens of text before each.
SHOWN = 5
CONTEXT_TOKENS = 6


@dataclass(frozen=True)
class Mistake:
    """One token the rule got wrong, however often."""

    #: the token as it appears (stripped of surrounding spaces)
    token: str
    #: how many times on the validation records
    count: int
    #: a short piece of text ending in the token, the token in ``[[ ]]``
    context: str


def mistakes(
    rule: Rule, records: Sequence[Record], max_activation: float
) -> tuple[list[Mistake], list[Mistake]]:
    """(misses, false alarms) of ``rule`` on ``records``, at most :data:`SHOWN` tokens each, most
    frequent first."""
    found: dict[str, dict[str, list[str]]] = {"miss": {}, "false": {}}
    spelled: dict[str, str] = {}
    for r in records:
        fired = rule.apply(r.tokens)
        for i, (tok, act, pred) in enumerate(zip(r.tokens, r.activations, fired, strict=True)):
            if act >= FIRE_THRESHOLD * max_activation and pred == 0:
                which = "miss"
            elif pred > 0 and act <= QUIET_SHARE * max_activation:
                which = "false"
            else:
                continue
            key = normalize_token(tok)
            spelled.setdefault(key, tok.strip() or tok)
            before = "".join(r.tokens[max(0, i - CONTEXT_TOKENS) : i])
            found[which].setdefault(key, []).append(f"{before}[[{tok}]]")

    def top(kind: str) -> list[Mistake]:
        ranked = sorted(found[kind].items(), key=lambda kv: (-len(kv[1]), kv[0]))[:SHOWN]
        return [Mistake(spelled[k], len(v), v[0]) for k, v in ranked]

    return top("miss"), top("false")


def revision_messages(
    text: str, misses: Sequence[Mistake], false_alarms: Sequence[Mistake], templates: Templates
) -> list[dict[str, str]]:
    """The chat asking for a revision of ``text`` (system text ``prompts/revise_system.txt``)."""
    body = f"Explanation: {text}\n"
    for title, items in (
        ("Misses (the neuron fired, the explanation did not cover the token)", misses),
        ("False alarms (the explanation covered the token, the neuron did not fire)", false_alarms),
    ):
        if items:
            body += f"\n{title}:\n" + "\n".join(_line(m) for m in items) + "\n"
    body += "\nBetter explanation:"
    return [
        {"role": "system", "content": templates.revise_system},
        {"role": "user", "content": body},
    ]


def restate_messages(text: str, templates: Templates) -> list[dict[str, str]]:
    """The chat asking for a plain-words restatement of a written candidate (system text
    ``prompts/restate_system.txt``)."""
    return [
        {"role": "system", "content": templates.restate_system},
        {"role": "user", "content": f"Description: {text}\n\nPlain phrase:"},
    ]


def _line(m: Mistake) -> str:
    times = "time" if m.count == 1 else "times"
    return f'"{escape_token(m.token)}" {m.count} {times}, e.g. "{escape_token(m.context)}"'
