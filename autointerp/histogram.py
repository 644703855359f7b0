"""The fixed histogram edges every harvest bins activations on, in a module of their own.

One set of edges for every neuron and every model is what makes shard histograms add up exactly; the
harvest bins on them, the store's statistics rows are counts over them, and the API and the CLI send
them beside the counts. Kept apart from :mod:`autointerp.harvest` (which imports torch) so that
readers of the results need not import the harvest to label a histogram.
"""

from __future__ import annotations

import math

import numpy as np

HIST_LO, HIST_HI, HIST_BINS = -8.0, 8.0, 64
#: : Histogram bin edges in activation units: uniform in sign(x)*log1p(|x|) from -8 to 8 (±2980), so
#: one fixed set of : edges fits every neuron and every model, and shard histograms add up exactly.
HIST_EDGES: list[float] = [
    math.copysign(math.expm1(abs(u)), u)
    for u in np.linspace(HIST_LO, HIST_HI, HIST_BINS + 1).tolist()
]
