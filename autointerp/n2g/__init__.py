"""Neuron-to-Graph (Foote et al. 2023): token-trie graphs that explain and predict a neuron's
activations.

:mod:`autointerp.n2g.graph` is the trie (build, all-path prediction, JSON);
:mod:`autointerp.n2g.build` turns a neuron's training examples into a trie with prune -> saliency ->
augmentation, batched across neurons; and
:mod:`autointerp.n2g.run` drives whole layers against the store; :mod:`autointerp.n2g.export` writes
GraphML/SVG.
"""

from autointerp.n2g.build import (
    Example,
    ModelLayerSubject,
    N2GConfig,
    build_graphs,
    evaluate,
    neutral_token,
)
from autointerp.n2g.graph import NeuronGraph, PathExample, normalize_token

__all__ = [
    "Example",
    "ModelLayerSubject",
    "N2GConfig",
    "NeuronGraph",
    "PathExample",
    "build_graphs",
    "evaluate",
    "neutral_token",
    "normalize_token",
]
