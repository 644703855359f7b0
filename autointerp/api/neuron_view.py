"""What the neuron page shows, computed from the neuron's record (:mod:`autointerp.records`): the
summary card at the top, the histograms drawn over the neuron's own range, the examples with their
peak windows, and the weight facts in words.

Kept apart from :mod:`autointerp.api.pages` (the routes) because this is where the page's choices
are made and tested: which explanation the card shows (the kept one, with who wrote it), what
"density" means for a signed activation (the share of tokens at or above half the max, from the
harvest's histogram, beside the share that is positive), and how a cosine reads in words.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from autointerp.histogram import HIST_EDGES
from autointerp.selection import near_max_share

# tokens shown around an example's peak until "full text" is toggled
WINDOW_BEFORE, WINDOW_AFTER = 12, 4
#: peak tokens of the top examples the summary card lists
TOP_TOKENS = 8


def hist_range(edges: list[float], *hists: list[int]) -> tuple[int, int]:
    """The bins a neuron's histograms are drawn over: from the first bin any of them counts to the
    last, one empty bin either side, and always the bins at 0 (the fixed edges span +-2,980 for
    every neuron, so drawn whole a neuron's bars are a sliver in the middle)."""
    used = [i for h in hists for i, c in enumerate(h) if c]
    n = len(edges) - 1
    if not used:
        return 0, n
    zero = min(range(len(edges)), key=lambda i: abs(edges[i]))
    lo = max(0, min(min(used) - 1, zero - 1))
    hi = min(n, max(max(used) + 2, zero + 1))
    return lo, hi


def hist_bars(
    counts: list[int],
    edges: list[float],
    bins: tuple[int, int] | None = None,
    width: int = 640,
    height: int = 110,
) -> list[dict[str, Any]]:
    """Bars for an inline SVG histogram over the bins ``bins`` (all by default): log-scaled
    heights (counts span orders of magnitude), coloured by sign."""
    lo_bin, hi_bin = bins or (0, len(counts))
    shown = counts[lo_bin:hi_bin]
    top = max(shown, default=0)
    if not top:
        return []
    bar_w = width / len(shown)
    out = []
    for i, c in enumerate(shown):
        h = height * math.log1p(c) / math.log1p(top)
        lo, hi = edges[lo_bin + i], edges[lo_bin + i + 1]
        colour = "#d62728" if lo >= 0 else ("#1f77b4" if hi <= 0 else "#888888")
        out.append(
            {
                "x": round(i * bar_w, 2),
                "y": round(height - h, 2),
                "w": round(max(bar_w - 1, 0.5), 2),
                "h": round(h, 2),
                "colour": colour,
                "title": f"[{lo:.3g}, {hi:.3g}): {c} tokens",
            }
        )
    return out


def hist_ticks(
    edges: list[float], bins: tuple[int, int], width: int = 640, most: int = 13
) -> list[dict[str, Any]]:
    """Labelled ticks under a histogram drawn over ``bins``: bin edges (log-spaced, so the labels
    are not evenly spaced numbers), at most ``most`` of them, always the two ends and 0."""
    lo_bin, hi_bin = bins
    n = hi_bin - lo_bin
    step = max(1, math.ceil(n / (most - 1)))
    must = {lo_bin, hi_bin} | {i for i in range(lo_bin, hi_bin + 1) if edges[i] == 0}
    between = {
        i
        for i in range(lo_bin, hi_bin + 1, step)
        if all(abs(i - m) >= max(step / 2, 1) for m in must)
    }
    ticks = []
    for i in sorted(must | between):
        anchor = "start" if i == lo_bin else ("end" if i == hi_bin else "middle")
        x = (i - lo_bin) * width / n
        ticks.append({"x": round(x, 2), "label": f"{edges[i]:.3g}", "anchor": anchor})
    return ticks


def example_view(ex: dict[str, Any]) -> dict[str, Any]:
    """Tokens of one example (BOS dropped) with a flag for those outside the window around the
    peak."""
    peak = ex["peak_index"]
    lo, hi = max(1, peak - WINDOW_BEFORE), min(len(ex["tokens"]), peak + WINDOW_AFTER + 1)
    toks = [
        {"text": t, "act": a, "far": not lo <= i < hi, "peak": i == peak}
        for i, (t, a) in enumerate(zip(ex["tokens"], ex["activations"], strict=True))
        if i > 0
    ]
    value = ex["activations"][peak] if 0 <= peak < len(ex["activations"]) else None
    return {
        **ex,
        "toks": toks,
        "value": value,
        "clipped_left": lo > 1,
        "clipped_right": hi < len(ex["tokens"]),
    }


def example_text(ex: dict[str, Any], max_chars: int) -> str:
    """An example's text (BOS dropped, its tokens joined) for the live box's "load this example",
    cut to what the live box takes."""
    return "".join(ex["tokens"][1:])[:max_chars]


def top_tokens(top: list[dict[str, Any]], limit: int = TOP_TOKENS) -> list[dict[str, Any]]:
    """The tokens the top examples peak on, most frequent first (then strongest): ``{"token",
    "count", "max"}``."""
    counts: Counter[str] = Counter()
    best: dict[str, float] = {}
    for ex in top:
        peak = ex["peak_index"]
        if not 0 <= peak < len(ex["tokens"]):
            continue
        token, value = ex["tokens"][peak], ex["activations"][peak]
        counts[token] += 1
        best[token] = max(best.get(token, -math.inf), value)
    ranked = sorted(counts, key=lambda t: (-counts[t], -best[t], t))[:limit]
    return [{"token": t, "count": counts[t], "max": best[t]} for t in ranked]


def summary_card(rec: dict[str, Any], top: list[dict[str, Any]]) -> dict[str, Any]:
    """The card at the top of the neuron page: the kept explanation (who wrote it, its score) beside
    the token baseline's and the N2G graph's scores, the max, the density, the top tokens, and the
    graph picture's URL (None without a graph)."""
    e, n2g = rec["explanation"], rec["n2g"]
    stats = rec["stats"]["stats"]
    explanations, scores = e.get("explanations", {}), e.get("scores", {})
    kept = explanations.get("llm")

    def score(method: str) -> float | None:
        row = scores.get(method)
        return row.get("score") if row else None

    rows = [
        {"label": "explanation", "score": score("explanation"), "id": "card-score-explanation"},
        {"label": "token baseline", "score": score("baseline"), "id": "card-score-baseline"},
    ]
    graph_score, graph_note = score("n2g"), "simulated, as the explanations are scored"
    if graph_score is None and n2g.get("available"):
        graph_score, graph_note = n2g.get("correlation"), "held-out correlation of its predictions"
    rows.append(
        {"label": "N2G graph", "score": graph_score, "id": "card-score-graph", "note": graph_note}
    )
    return {
        "explanation": kept,
        "baseline": explanations.get("baseline"),
        "message": None if e.get("available") else e.get("message"),
        "scores": rows,
        "auprc": (scores.get("explanation") or {}).get("auprc"),
        "max": stats["max"],
        "min": stats["min"],
        "near_max": near_max_bounds(rec["stats"]["hist"], stats["max"] or 0.0),
        "frac_positive": stats["frac_positive"],
        "top_tokens": top_tokens(top),
        "graph_url": n2g.get("svg_url") if n2g.get("available") else None,
    }


def near_max_bounds(hist: list[int], top: float) -> tuple[float, float]:
    """The share of a neuron's histogram-sampled tokens at or above half its max, as bounds: the
    bins wholly above half the max (:func:`~autointerp.selection.near_max_share`, what ``best:K``
    reads) and the bins that reach above it. The fixed bins are coarse for small activations
    (0.28-0.65 is one bin), so one number would mislead."""
    total = sum(hist)
    if not total or top <= 0:
        return 0.0, 0.0
    reach = sum(c for c, hi in zip(hist, HIST_EDGES[1:], strict=True) if hi > top / 2)
    return near_max_share(hist, top), reach / total


def cos_words(cos: float | None, reads: str = "the direction it reads") -> str:
    """A cosine between what a neuron reads and what it writes, in words."""
    if cos is None or not math.isfinite(cos):
        return "not computed"
    size = abs(cos)
    if size < 0.1:
        return f"nearly orthogonal: what the neuron writes is unrelated to {reads}"
    strength = "weakly" if size < 0.3 else ("moderately" if size < 0.6 else "strongly")
    if cos > 0:
        return f"{strength} aligned: the neuron writes back along {reads}, reinforcing it"
    return f"{strength} opposed: the neuron writes against {reads}, erasing it"


def weights_view(facts: dict[str, Any] | None) -> dict[str, Any] | None:
    """Weight facts as the page shows them: the cosines with their words, and the promoted and
    suppressed tokens as rows."""
    if not facts:
        return None
    gate = facts.get("cos_gate_out")
    return {
        "input_vector": facts.get("input_vector"),
        "cos_in_out": facts.get("cos_in_out"),
        "cos_in_out_words": cos_words(facts.get("cos_in_out")),
        "cos_gate_out": gate,
        "cos_gate_out_words": None
        if gate is None
        else cos_words(gate, "the direction that opens its gate"),
        "promoted": facts.get("top_tokens") or [],
        "suppressed": facts.get("bottom_tokens") or [],
    }
