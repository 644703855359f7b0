"""Summaries of score samples: mean, median, bootstrap 95% intervals, paired differences, and
the difference of two independent samples' means.

The bootstrap is the percentile method over resampled neurons, seeded, so a stored evaluation is
reproducible. Failed and undefined scores are counted beside the summary and never enter it: a
failure is not a low score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

N_BOOT = 2000


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT
) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean; None with fewer than 2 values (no spread to
    resample)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def summarize(
    values: Sequence[float], failed: int = 0, undefined: int = 0, seed: int = 0
) -> dict[str, Any]:
    """``{"n", "mean", "median", "ci95", "frac_ge_0_5", "failed", "undefined"}`` of the ok
    scores."""
    x = np.asarray(values, dtype=np.float64)
    empty = len(x) == 0
    return {
        "n": int(len(x)),
        "mean": None if empty else float(x.mean()),
        "median": None if empty else float(np.median(x)),
        "ci95": bootstrap_ci(x, seed),
        "frac_ge_0_5": None if empty else float((x >= 0.5).mean()),
        "failed": int(failed),
        "undefined": int(undefined),
    }


def paired(
    a: Mapping[Any, float | None], b: Mapping[Any, float | None], seed: int = 0
) -> dict[str, Any]:
    """Mean of ``a - b`` over the keys where both have a score, with its bootstrap 95% interval."""
    both = [k for k in a if a[k] is not None and b.get(k) is not None]
    diffs = [float(a[k]) - float(b[k]) for k in both]  # type: ignore[arg-type]
    return {
        "n": len(diffs),
        "mean": float(np.mean(diffs)) if diffs else None,
        "ci95": bootstrap_ci(diffs, seed),
    }


def difference_of_means(
    a: Sequence[float], b: Sequence[float], seed: int = 0, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """``mean(a) - mean(b)`` of two independent samples (no pairing: the neurons of two models),
    with its percentile bootstrap 95% interval, each sample resampled on its own (seeded); None
    for the interval when either side has fewer than 2 values."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out: dict[str, Any] = {"n": [int(len(x)), int(len(y))], "mean": None, "ci95": None}
    if len(x) == 0 or len(y) == 0:
        return out
    out["mean"] = float(x.mean() - y.mean())
    if len(x) >= 2 and len(y) >= 2:
        rng = np.random.default_rng(seed)
        means_x = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
        means_y = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1)
        lo, hi = np.percentile(means_x - means_y, [2.5, 97.5])
        out["ci95"] = [float(lo), float(hi)]
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None with fewer than 3 pairs or a
    constant side."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):  # ties share their average rank
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks
