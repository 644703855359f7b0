"""LLM explanations of neurons and their simulation scores (see :mod:`autointerp.explain.run`)."""
