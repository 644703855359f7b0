"""One neuron's job: everything the worker needs of it, read from the store on the main thread.

In a module of its own because the worker (:mod:`autointerp.explain.neuron`) and the competition
of candidates it runs (:mod:`autointerp.explain.compete`) both read it, and neither may import the
other both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autointerp.explain.prompts import OutputTokens, Record
from autointerp.n2g.graph import NeuronGraph


@dataclass
class NeuronJob:
    run_id: int
    layer: int
    neuron: int
    max_activation: float
    min_activation: float
    train: list[Record]
    heldout: list[Record]
    graph: NeuronGraph | None
    #: the validation split: where candidates compete (rule simulator) or best-of-n chooses
    valid: list[Record] = field(default_factory=list)
    #: every training-split record: what the written candidates are built from
    train_all: list[Record] = field(default_factory=list)
    train_negative: list[Record] = field(default_factory=list)
    heldout_negative: list[Record] = field(default_factory=list)
    #: other explanations to simulate and score on the same records, by score method (e.g. a
    #: known-answer feature's true description as ``true_description``)
    extra: dict[str, str] = field(default_factory=dict)
    #: what the neuron's output promotes and suppresses (only with ``output_tokens`` > 0)
    output: OutputTokens | None = None
