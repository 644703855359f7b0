"""Server-rendered pictures: the per-layer score distribution of a model and a neuron's N2G graph.

matplotlib's pyplot keeps global state, so every matplotlib drawing holds one lock (the N2G graph
is written as SVG text, :mod:`autointerp.n2g.picture`, and needs none); pictures are cached by the
data they show (the caller passes a key that changes when the data does).
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PLOT_LOCK = threading.Lock()
_CACHE: OrderedDict[Any, bytes] = OrderedDict()
_CACHE_LOCK = threading.Lock()

METHOD_LABELS = {
    "explanation": "LLM explanation (simulation)",
    "baseline": "token baseline (simulation)",
    "n2g": "N2G (simulation)",
    "n2g_graph": "N2G graph (held-out correlation)",
}


def cached(key: Any, make: Callable[[], bytes]) -> bytes:
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = make()
    with _CACHE_LOCK:
        _CACHE[key] = data
        while len(_CACHE) > 256:
            _CACHE.popitem(last=False)
    return data


def score_plot(model: str, per_layer: dict[int, dict[str, list[float]]]) -> bytes:
    """Box plots of scores per layer, one colour per method; an SVG that says "no scores" when
    there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({m for scores in per_layer.values() for m in scores})
    layers = sorted(per_layer)
    with _PLOT_LOCK:
        fig, ax = plt.subplots(
            figsize=(max(5.0, 0.6 * len(layers) * max(1, len(methods)) + 2), 3.2)
        )
        try:
            if not methods:
                ax.text(0.5, 0.5, "No scores computed yet", ha="center", va="center", fontsize=12)
                ax.axis("off")
            else:
                width = 0.8 / len(methods)
                colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
                for i, method in enumerate(methods):
                    data = [per_layer[layer].get(method, []) for layer in layers]
                    positions = [
                        j + (i - (len(methods) - 1) / 2) * width for j in range(len(layers))
                    ]
                    keep = [(p, d) for p, d in zip(positions, data, strict=True) if d]
                    if not keep:
                        continue
                    bp = ax.boxplot(
                        [d for _, d in keep],
                        positions=[p for p, _ in keep],
                        widths=width * 0.9,
                        patch_artist=True,
                        showfliers=True,
                        manage_ticks=False,
                    )
                    for patch in bp["boxes"]:
                        patch.set_facecolor(colours[i % len(colours)])
                        patch.set_alpha(0.6)
                    ax.plot(
                        [],
                        [],
                        color=colours[i % len(colours)],
                        lw=6,
                        alpha=0.6,
                        label=METHOD_LABELS.get(method, method),
                    )
                ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
                ax.set_xlabel("layer")
                ax.set_ylabel("score (correlation)")
                ax.axhline(0, color="#999", lw=0.5)
                ax.legend(fontsize=7, loc="best")
            ax.set_title(f"{model}: score distribution per layer", fontsize=9)
            fig.tight_layout()
            return _svg_bytes(fig)
        finally:
            plt.close(fig)


def graph_svg(row: dict[str, Any], model: str, layer: int, neuron: int) -> bytes:
    """The N2G picture from :mod:`autointerp.n2g.export` (strongest paths, N2G colours), as SVG
    bytes. Written as text, not drawn by matplotlib: no lock needed."""
    from autointerp.n2g.export import graph_meta, svg_text, to_networkx

    g = to_networkx(row["graph"], graph_meta(model, layer, neuron, row))
    corr = f"{row['correlation']:.2f}" if row["correlation"] is not None else "n/a"
    return svg_text(g, f"{model} {layer}/{neuron}  (held-out correlation {corr})").encode()


def graphml_bytes(row: dict[str, Any], model: str, layer: int, neuron: int) -> bytes:
    from autointerp.n2g.export import to_networkx, write_graphml

    meta = {
        "model": model,
        "layer": layer,
        "neuron": neuron,
        "config_hash": row["config_hash"],
        "correlation": row["correlation"],
        "f1": row["f1"],
    }
    with tempfile.TemporaryDirectory(prefix="autointerp-graphml-") as tmp:
        path = Path(tmp) / "graph.graphml"
        write_graphml(to_networkx(row["graph"], meta), path)
        return path.read_bytes()


def _svg_bytes(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()
