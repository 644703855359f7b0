"""LLM explanations of neurons and their simulation scores: the config (``config.py``), the records
(``records.py``), the no-LLM evidence (``baseline.py``), the plan (``plan.py``), one neuron
(``neuron.py``), the layer runner (``run.py``, start there) and its Ray runner (``ray.py``); prompts
and simulation in ``prompts.py`` and ``simulate.py``."""
