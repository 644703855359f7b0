"""The explainer: its prompt for one neuron, the hash stored beside what it wrote, and the call.

Apart from the neuron worker because several steps ask the explainer - the first explanation,
best-of-n samples, feedback rounds and the restated graph (:mod:`autointerp.explain.compete`) - and
every answer is parsed and checked the same way (:func:`ask_explainer`).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from autointerp.explain.baseline import baseline_explanation
from autointerp.explain.config import ExplainConfig
from autointerp.explain.prompts import (
    OutputTokens,
    Record,
    Templates,
    explanation_messages,
    parse_explanation,
)
from autointerp.llm.client import InvalidOutput, LLMClient, Usage


def explain_messages(
    cfg: ExplainConfig,
    templates: Templates,
    records: list[Record],
    max_act: float,
    evidence: list[str] | None,
    output: OutputTokens | None = None,
) -> list[dict[str, str]]:
    """The explainer's chat messages for one neuron as ``explain`` sends them: the records, the
    tokens it fires on most, the N2G ``evidence``, the ``output`` side; the weakest records are
    dropped while the prompt is longer than ``cfg.max_prompt_chars`` (small local context
    windows)."""
    top_tokens = (
        baseline_explanation(records, max_act, 5)
        .removeprefix("the tokens ")
        .removeprefix("the token ")
    )
    messages = explanation_messages(records, max_act, templates, evidence, top_tokens, output)
    while len(records) > 1 and sum(len(m["content"]) for m in messages) > cfg.max_prompt_chars:
        records = records[:-1]
        messages = explanation_messages(records, max_act, templates, evidence, top_tokens, output)
    return messages


def sample_messages(
    cfg: ExplainConfig,
    templates: Templates,
    train: list[Record],
    max_act: float,
    evidence: list[str] | None,
    output: OutputTokens | None,
    sample: int,
) -> list[dict[str, str]]:
    """The messages of best-of-n sample ``sample``: the training records as they are for the
    first (0), in a shuffled order seeded by ``sample`` for the others (as Transluce permutes
    them), so a rerun asks the same questions."""
    records = list(train)
    if sample:
        random.Random(sample).shuffle(records)
    return explain_messages(cfg, templates, records, max_act, evidence, output)


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """The hash stored beside an explanation: exactly which prompt produced it (failed or not)."""
    return hashlib.sha256(
        json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    ).hexdigest()


def ask_explainer(
    client: LLMClient,
    cfg: ExplainConfig,
    messages: list[dict[str, str]],
    templates: Templates,
    sample: int = 0,
) -> tuple[str, Usage]:
    """One explanation; ``sample`` > 0 draws candidate ``sample`` of best-of-n at temperature 0.7
    (seeded, so a rerun asks the same questions and the response cache answers them).

    A reply that repeats a few-shot answer word for word is refused and asked again at a higher
    temperature: small models fall back on copying an example's answer when unsure (the 1.5B
    explained a year neuron and a hyphen neuron as 'the word "of"', the third example's answer),
    and a copied phrase is about another neuron."""
    copies = {ex["explanation"].strip().lower() for ex in templates.examples}
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": cfg.explainer_max_tokens,
        "temperature": 0,
    }
    if sample:
        body.update({"temperature": 0.7, "seed": sample})

    def parse(response: dict[str, Any]) -> str:
        try:
            content = response["choices"][0]["message"]["content"] or ""
            if (
                response["choices"][0].get("finish_reason") == "length"
                and "\n" not in content.strip()
            ):
                # cut at max_tokens inside the first line: the phrase itself is incomplete, never
                # store it
                raise InvalidOutput(f"truncated at max_tokens: {content[:60]!r}")
            text = parse_explanation(content)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidOutput(str(exc)) from exc
        if text.lower() in copies:
            raise InvalidOutput(f"the reply copies a few-shot answer: {text[:60]!r}")
        return text

    return client.call(
        "chat", cfg.explainer_model, body, parse, lambda a: {"temperature": 0.7, "seed": a}
    )
