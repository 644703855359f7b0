"""Cheap scorers beside simulation: how well an explanation *separates* windows where the neuron
fires from windows where it does not, without predicting every token.

* **Embedding** (delphi's embedding scorer): the explanation and each held-out window are embedded
  with the packaged sentence model (``all-mpnet-base-v2``, :mod:`autointerp.embeddings`); the score
  is the AUROC of the cosine similarity against "the neuron fires in this window". No LLM call at
  all: a few milliseconds per window on the CPU.

A window *fires* when its largest positive activation reaches :data:`FIRE_FRACTION` of the neuron's
maximum - the threshold the token baseline uses for "the tokens it fires on". The windows are the
same held-out records every other method is scored on (test-split top examples and random
examples), so the numbers sit beside the simulation scores; with windows of only one kind (the
neuron fires in all or none) the AUROC is undefined and reported as such, never as 0.5.

* **Detection** (delphi's detection scorer, SAEBench's question): the LLM is asked of each held-out
  window whether it contains what the explanation names (``prompts/detect_system.txt``); the score
  is the AUROC of its answers against "the neuron fires in this window". One short chat call per
  window, where the rule simulator needs one per explanation. The answer is the reply's Yes or No,
  not P(yes) from logprobs: the local server that the default rule simulator runs is started
  without logprobs (faster, with a prompt cache), so with yes/no answers the AUROC is the balanced
  accuracy, (true-positive rate + true-negative rate) / 2. A reply that is neither is asked again
  hotter, then the neuron's detection score is a recorded failure with the reason, never a number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from autointerp.explain.prompts import Record, prompts_dir
from autointerp.explain.simulate import retry_hotter, target
from autointerp.llm.client import InvalidOutput, LLMClient, Usage
from autointerp.untrusted import escape_token

#: The detection scorer's instructions (a file, like every prompt; not part of the explainer's
#: versioned template set, so adding it changed no stored explanation's identity).
DETECT_SYSTEM_FILE = "detect_system.txt"

#: A window fires when its largest positive activation reaches this fraction of the neuron's max.
FIRE_FRACTION = 0.3


def fires(records: Sequence[Record], max_activation: float) -> list[bool]:
    """Whether the neuron fires in each window (see :data:`FIRE_FRACTION`)."""
    return [
        bool(len(r.activations)) and float(target(r).max()) >= FIRE_FRACTION * max_activation
        for r in records
    ]


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None when all
    labels are equal."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def embedding_score(
    explanation: str, records: Sequence[Record], max_activation: float
) -> float | None:
    """AUROC of cosine(explanation, window text) against whether the neuron fires in the window."""
    from autointerp.embeddings import embed

    vectors = embed([explanation] + ["".join(r.tokens) for r in records])
    similarity = vectors[1:] @ vectors[0]
    return auroc(similarity.tolist(), fires(records, max_activation))


def detection_messages(system: str, explanation: str, text: str) -> list[dict[str, str]]:
    """The chat for one window: the instructions, then the description and the window's text
    (whitespace escaped as in every other prompt, so a newline or a tab is visible)."""
    return [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": (
                f"Neuron description: {explanation}\nText: {escape_token(text)}\n"
                "Does the text contain what the description names? Answer Yes or No."
            ),
        },
    ]


def parse_detection(response: dict[str, Any]) -> bool:
    """True for a reply that starts with Yes, False for No; :class:`InvalidOutput` otherwise."""
    try:
        text = response["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidOutput("the response has no message") from exc
    first = re.match(r"\W*(\w+)", text)
    word = first.group(1).lower() if first else ""
    if word in ("yes", "no"):
        return word == "yes"
    raise InvalidOutput(f"expected Yes or No, got {text.strip()[:60]!r}")


def detection_score(
    client: LLMClient,
    model: str,
    explanation: str,
    records: Sequence[Record],
    max_activation: float,
) -> tuple[float | None, Usage]:
    """AUROC of the LLM's yes/no answers ("does this window contain what the explanation names?")
    against whether the neuron fires in each window; None when every window is of one kind (then
    no call is made). Raises :class:`LLMFailure` when a window cannot be answered."""
    labels = fires(records, max_activation)
    usage = Usage()
    if all(labels) or not any(labels):
        return None, usage
    system = (prompts_dir() / DETECT_SYSTEM_FILE).read_text(encoding="utf-8").strip()
    answers = []
    for record in records:
        body = {
            "messages": detection_messages(system, explanation, "".join(record.tokens)),
            "max_tokens": 3,
            "temperature": 0,
        }
        said, spent = client.call("chat", model, body, parse_detection, retry_hotter)
        usage.add(spent)
        answers.append(1.0 if said else 0.0)
    return auroc(answers, labels), usage
