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

Detection (an LLM asked "does this window contain what the explanation describes?") is not built:
it costs one call per window, where the rule simulator already costs one call per explanation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autointerp.explain.prompts import Record
from autointerp.explain.simulate import target

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
