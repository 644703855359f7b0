"""Neuron-to-Graph (Foote et al. 2023): token-trie graphs that explain and predict a neuron's
activations.

:mod:`autointerp.n2g.graph` is the trie (build, all-path prediction, JSON);
:mod:`autointerp.n2g.build` turns a neuron's training examples into a trie with prune -> saliency ->
augmentation, batched across neurons, and scores it; :mod:`autointerp.n2g.readouts` runs the
forward passes those steps ask for (batched, padded, prefix reuse) on a :class:`GraphSubject`;
:mod:`autointerp.n2g.run` drives whole layers against the store, and :mod:`autointerp.n2g.ray` the
same chunks as Ray tasks; :mod:`autointerp.n2g.export` writes GraphML/SVG.

The package imports nothing itself: the trie (no torch) is what the read-only commands need, and
importing the builder here would load torch for them (``autointerp search`` starts in a blink).
"""
