"""A finished :class:`~autointerp.harvest.state.LayerState` as result rows: one statistics row per
neuron (:func:`neuron_rows`) and its example rows (:func:`example_rows`: top, bottom, random and
quantile samples, each with its split, extremes, peak and activation bytes).

Kept apart from the state: the state is what accumulates (and is checkpointed and merged), the rows
are read from it once, at the end of a run or a merge. A full Gemma harvest writes millions of
example rows, so the per-row Python work is kept to assembling tuples: everything else is computed
for all neurons at once, in numpy. The quantile samples the state keeps per fixed activation bin are
shown here per interval of the neuron's max (0-25%, ... 75-100%), up to ``quantile_per_interval``
each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autointerp.harvest.config import SPLIT_PATTERN
from autointerp.harvest.keys import INT64_MAX, INT64_MIN, LOW32, key_contexts
from autointerp.harvest.state import LayerState
from autointerp.histogram import HIST_BINS
from autointerp.store import encode_acts


def neuron_rows(state: LayerState, layer: int) -> Iterator[dict[str, Any]]:
    """One statistics row per neuron of ``layer``: count, mean, variance, extremes, share positive,
    the raw sums (so a reader can pool neurons exactly) and both histograms as JSON."""
    s = state.t
    count = int(s["count"])
    mean = (s["sum"] / max(count, 1)).tolist()
    var = (s["sum_sq"] / max(count, 1) - (s["sum"] / max(count, 1)) ** 2).clamp(min=0).tolist()
    hist = s["hist"].view(-1, HIST_BINS).tolist()
    ctx_hist = s["ctx_hist"].view(-1, HIST_BINS).tolist()
    mx, mn, npos = s["max"].tolist(), s["min"].tolist(), s["n_pos"].tolist()
    ssum, ssq = s["sum"].tolist(), s["sum_sq"].tolist()
    for n in range(len(mean)):
        yield {
            "layer": layer,
            "neuron": n,
            "count": count,
            "mean": mean[n],
            "variance": var[n],
            "max": mx[n],
            "min": mn[n],
            "frac_positive": npos[n] / max(count, 1),
            "sum": ssum[n],
            "sum_sq": ssq[n],
            "n_positive": npos[n],
            "hist": json.dumps(hist[n]),
            "ctx_max_hist": json.dumps(ctx_hist[n]),
        }


def example_rows(
    state: LayerState, layer: int, intervals: int, per_interval: int
) -> Iterator[tuple[Any, ...]]:
    """Result rows in :data:`autointerp.store.EXAMPLE_COLUMNS` order, neuron by neuron (top,
    bottom, random, quantile). A full Gemma harvest writes millions of rows, so per-row Python
    work matters: each kind's contexts, extremes, peaks and activation bytes are computed for
    every neuron at once (:func:`_measures`, :func:`_quantile_blocks`), and the loop below only
    assembles tuples."""
    s = state.t
    d = s["top_key"].shape[0]
    fixed: list[tuple[str, list[list[int]], list[int], _Measures]] = []
    for kind, prefix, sign in (("top", "top", 1.0), ("bottom", "bot", -1.0)):
        order = s[f"{prefix}_key"].argsort(dim=1, descending=True)
        keys = s[f"{prefix}_key"].gather(1, order)  # empty slots (INT64_MIN) sort last
        acts = s[f"{prefix}_acts"][torch.arange(d)[:, None], order]  # [d, K, T]
        fixed.append(
            (
                kind,
                key_contexts(keys).tolist(),
                (keys != INT64_MIN).sum(dim=1).tolist(),
                _measures(acts.numpy(), sign),
            )
        )
    rand_order = s["rand_key"][0].argsort()
    rand_keys = s["rand_key"][0, rand_order]
    rand_valid = rand_keys != INT64_MAX
    rand_ctx = (rand_keys[rand_valid] & LOW32).tolist()
    if rand_ctx:
        rand_acts = s["rand_acts"][rand_order[rand_valid]].permute(2, 0, 1)  # [d, R, T]
        measures = _measures(rand_acts.numpy(), 1.0)
        fixed.append(("random", [rand_ctx] * d, [len(rand_ctx)] * d, measures))
    quantile = _quantile_blocks(state, intervals, per_interval)
    for n in range(d):
        for kind, ctxs, counts, measures in fixed:
            if counts[n]:
                yield from _block(layer, n, kind, ctxs[n][: counts[n]], measures.of(n))
        for i, ctxs, counts, measures in quantile:
            if counts[n]:
                yield from _block(
                    layer,
                    n,
                    "quantile",
                    ctxs[n][: counts[n]],
                    measures.of(n),
                    interval=i,
                    per_interval=per_interval,
                )


def _quantile_blocks(
    state: LayerState, intervals: int, per_interval: int
) -> list[tuple[int, list[list[int]], list[int], _Measures]]:
    """Per interval ``i`` of ``(0, max]`` cut in ``intervals``: each neuron's contexts (up to
    ``per_interval``, smallest sample key first) whose peak falls in it, their count, and their
    measures. Computed for every neuron at once; the bounds are computed in float64 from the
    neuron's max and compared in float32, exactly as a per-neuron torch comparison with a Python
    float does, so the chosen contexts are the same."""
    s = state.t
    if not (intervals and per_interval):
        return []
    key = s["q_key"].view(-1, HIST_BINS).numpy()
    val = s["q_val"].view(-1, HIST_BINS).numpy()
    acts = s["q_acts"].view(-1, HIST_BINS, s["q_acts"].shape[-1]).numpy()
    d = key.shape[0]
    top = s["max"].double().numpy()
    usable = (key != INT64_MAX) & (top > 0)[:, None]
    take = min(per_interval, HIST_BINS)
    out = []
    for i in range(intervals):
        lo = (top * i / intervals).astype(np.float32)[:, None]
        hi = (top * (i + 1) / intervals).astype(np.float32)[:, None]
        inside = usable & (val > lo) & (val <= hi)
        bins = np.argsort(np.where(inside, key, INT64_MAX), axis=1, kind="stable")[:, :take]
        ctxs = (np.take_along_axis(key, bins, axis=1) & LOW32).tolist()
        counts = np.minimum(inside.sum(axis=1), take).tolist()
        out.append((i, ctxs, counts, _measures(acts[np.arange(d)[:, None], bins], 1.0)))
    return out


@dataclass
class _Measures:
    """What every example row stores besides its keys, for a block of neurons x ranks: maxima,
    minima, peak positions ([neuron][rank] lists) and each row's activation bytes (flat,
    neuron-major)."""

    maxima: list[list[float]]
    minima: list[list[float]]
    peaks: list[list[int]]
    blobs: list[bytes]
    ranks: int

    def of(self, n: int) -> tuple[list[float], list[float], list[int], list[bytes]]:
        r = self.ranks
        return self.maxima[n], self.minima[n], self.peaks[n], self.blobs[n * r : (n + 1) * r]


def _measures(values: np.ndarray, sign: float) -> _Measures:
    """Measures of ``values`` [neurons, ranks, ctx_len] (BOS at position 0, left out of extremes and
    peaks; ``sign`` -1 finds the most negative token as the peak). The bytes are one
    :func:`~autointerp.store.codec.encode_acts` of the whole block cut into rows: the same bytes as
    encoding each row, without a numpy call per row."""
    body = values[..., 1:]
    ranks, width = values.shape[1], values.shape[2] * 4
    raw = encode_acts(values)
    return _Measures(
        maxima=body.max(axis=2).tolist(),
        minima=body.min(axis=2).tolist(),
        peaks=(np.argmax(body * sign, axis=2) + 1).tolist(),
        blobs=[raw[i : i + width] for i in range(0, len(raw), width)],
        ranks=ranks,
    )


def _block(
    layer: int,
    neuron: int,
    kind: str,
    ctxs: list[int],
    measures: tuple[list[float], list[float], list[int], list[bytes]],
    interval: int | None = None,
    per_interval: int = 0,
) -> Iterator[tuple[Any, ...]]:
    """Rows for consecutive ranks of one kind of one neuron (the first ``len(ctxs)`` ranks)."""
    maxima, minima, peaks, blobs = measures
    base = interval * per_interval if interval is not None else 0
    for j, ctx in enumerate(ctxs):
        yield (
            layer,
            neuron,
            kind,
            base + j,
            SPLIT_PATTERN[j % len(SPLIT_PATTERN)],
            int(ctx),
            maxima[j],
            minima[j],
            peaks[j],
            interval,
            blobs[j],
        )
