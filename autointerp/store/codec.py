"""The byte format of ``examples.activations``: little-endian float32, one value per context token
(index 0 is BOS). Fixed-width bytes rather than JSON so the server can send a neuron's examples
without decoding them (see :meth:`autointerp.store.Store.example_rows_raw`)."""

from __future__ import annotations

import numpy as np


def encode_acts(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def decode_acts(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")
