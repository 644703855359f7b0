"""Neuron-to-Graph (Foote et al. 2023): token-trie graphs that explain and predict a neuron's
activations.

:mod:`autointerp.n2g.graph` is the trie (build, all-path prediction, JSON);
:mod:`autointerp.n2g.build` turns a neuron's training examples into a trie with prune -> saliency ->
augmentation, batched across neurons; and
:mod:`autointerp.n2g.run` drives whole layers against the store; :mod:`autointerp.n2g.export` writes
GraphML/SVG.

The package imports nothing itself: the trie (no torch) is what the read-only commands need, and
importing the builder here would load torch for them (``autointerp search`` starts in a blink).
"""
