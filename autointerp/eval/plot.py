"""The picture of an evaluation: per method and control, every neuron's score as a point over a box
plot.

Points matter more than boxes at the sample sizes we can afford (16 per layer): a box of 5 numbers
hides that. Drawn with matplotlib's object API on an Agg canvas (no pyplot global state), so the web
server can draw it in any thread.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

ORDER = ("explanation", "baseline", "n2g", "shuffled")
LABELS = {
    "explanation": "LLM explanation",
    "baseline": "token baseline",
    "n2g": "N2G graph",
    "shuffled": "shuffled\n(control)",
    "known_true_description": "known answers:\ntrue description",
    "known_explanation": "known answers:\nexplanation",
}


def eval_plot(result: dict[str, Any], known: list[dict[str, Any]] | None = None) -> bytes:
    """PNG of the score distributions of an ``eval`` result (``known``: calibrate feature rows,
    optional)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns: list[tuple[str, list[float]]] = []
    for method in ORDER:
        values = [n["scores"].get(method) for n in result.get("neurons", [])]
        columns.append((method, [v for v in values if v is not None]))
    if known:
        for key, name in (
            ("true_score", "known_true_description"),
            ("explanation_score", "known_explanation"),
        ):
            columns.append((name, [f[key] for f in known if f.get(key) is not None]))
    fig = Figure(figsize=(1.6 * len(columns) + 1.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    data = [v if v else [np.nan] for _, v in columns]
    ax.boxplot(
        data,
        positions=range(1, len(columns) + 1),
        widths=0.55,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for i, (method, values) in enumerate(columns, 1):
        if values:
            x = i + rng.uniform(-0.18, 0.18, size=len(values))
            colour = (
                "tab:grey"
                if method == "shuffled"
                else ("tab:green" if method.startswith("known") else "tab:red")
            )
            ax.scatter(x, values, s=16, alpha=0.75, color=colour, zorder=3)
    ax.set_xticks(range(1, len(columns) + 1))
    ax.set_xticklabels([f"{LABELS.get(m, m)}\n(n={len(v)})" for m, v in columns], fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("score (correlation, held-out text)")
    layers = ",".join(str(x) for x in result.get("layers", []))
    ax.set_title(
        f"{result.get('model')} layers {layers}: {result.get('sample')} random firing neurons per "
        "layer "
        f"(seed {result.get('seed')})",
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
