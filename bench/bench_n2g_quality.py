"""Benchmark N2G graph quality on held-out top and random text, before and after the graphs used the
training random/quantile examples (version 1: top examples only; version 2: their firing tokens too,
paths calibrated).

Neurons are a seeded random sample of each layer (never chosen by any score); graphs are built from
the training split and scored on the test split only, top and random examples separately: token F1
at 0.5 x max, Pearson correlation, and the tokens of random text where the graph fires but the
neuron does not (per 1,000 tokens). F1 on random text is undefined for a neuron where neither the
graph nor the neuron fires there; the table says for how many neurons each median is defined. Both
recipes run in the same process on the same neurons.

    .venv/bin/python bench/bench_n2g_quality.py --out bench/results/n2g-quality.md
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import load_model
from autointerp.n2g.build import N2GConfig, build_graphs, evaluate
from autointerp.n2g.graph import NeuronGraph
from autointerp.n2g.readouts import ModelLayerSubject
from autointerp.n2g.run import load_examples
from autointerp.store import Store


def false_firing(
    graph: NeuronGraph, records: list[Any], max_activation: float, threshold: float
) -> tuple[int, int]:
    """(tokens where the graph fires and the neuron does not, tokens) over ``records``, BOS
    excluded."""
    bad = total = 0
    for rec in records:
        pred = np.asarray(graph.predict(rec.str_tokens[1:]))
        true = np.asarray(rec.activations[1:]) / max_activation
        bad += int(((pred >= threshold) & (true < threshold)).sum())
        total += len(pred)
    return bad, total


def median(values: list[float | None]) -> tuple[float | None, int]:
    kept = [v for v in values if v is not None]
    return (statistics.median(kept) if kept else None), len(kept)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="3,9")
    ap.add_argument(
        "--neurons", type=int, default=12, help="seeded random neurons per layer (default 12)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=32768, help="harvest budget (default 32768)")
    ap.add_argument("--db", default=None, help="reuse (or create) this harvest database")
    ap.add_argument("--out", default=None, help="also write the Markdown section here")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    torch.set_grad_enabled(False)
    model = load_model(args.model, progress=False)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "quality.db"
    store = Store(db)
    if any(store.latest_complete_run(model.name, layer) is None for layer in layers):
        harvest(
            model,
            db,
            HarvestConfig(model=model.name, layers=layers, n_tokens=args.tokens),
            progress=False,
        )
    recipes = {
        "version 1 (top examples only)": N2GConfig(extra_kinds=(), calibrate=False),
        "version 2 (+ random/quantile firing tokens, calibrated)": N2GConfig(),
    }
    rows = []
    for layer in layers:
        run = store.latest_complete_run(model.name, layer)
        neurons = sorted(
            random.Random(args.seed * 1000 + layer).sample(range(model.d_mlp), args.neurons)
        )
        maxima = {n: float(store.neuron(run["id"], layer, n)["max"]) for n in neurons}
        neurons = [n for n in neurons if maxima[n] > 0]
        train = {n: load_examples(store, run["id"], layer, n, "train", ("top",)) for n in neurons}
        extra = {
            n: load_examples(store, run["id"], layer, n, "train", ("random", "quantile"))
            for n in neurons
        }
        test_top = {n: load_examples(store, run["id"], layer, n, "test", ("top",)) for n in neurons}
        test_random = {
            n: load_examples(store, run["id"], layer, n, "test", ("random",)) for n in neurons
        }
        subject = ModelLayerSubject(model, layer)
        for name, cfg in recipes.items():
            t0 = time.perf_counter()
            graphs = build_graphs(subject, train, maxima, cfg, extra if cfg.extra_kinds else None)
            seconds = (time.perf_counter() - t0) / len(neurons)
            stats: dict[str, list[float | None]] = {}
            bad = total = 0
            for n in neurons:
                th = cfg.fire_threshold
                for kind, records in (
                    ("top", test_top[n]),
                    ("random", test_random[n]),
                    ("pooled", test_top[n] + test_random[n]),
                ):
                    m = evaluate(graphs[n], records, maxima[n], th)
                    stats.setdefault(f"f1_{kind}", []).append(m["f1"])
                    stats.setdefault(f"corr_{kind}", []).append(m["correlation"])
                b, t = false_firing(graphs[n], test_random[n], maxima[n], th)
                bad, total = bad + b, total + t
            nodes = statistics.median(len(graphs[n].to_json()["nodes"]) for n in neurons)
            rows.append(
                (
                    layer,
                    len(neurons),
                    name,
                    {k: median(v) for k, v in stats.items()},
                    1000 * bad / max(total, 1),
                    nodes,
                    seconds,
                )
            )

    def cell(value: tuple[float | None, int], n: int) -> str:
        v, defined = value
        text = "-" if v is None else f"{v:.3f}"
        return text if defined == n else f"{text} ({defined}/{n})"

    load = os.getloadavg()
    lines = [
        f"### N2G quality on held-out top and random text: {model.name}",
        "",
        (
            f"Command: `.venv/bin/python bench/bench_n2g_quality.py --layers {args.layers}"
            f" --neurons {args.neurons} --seed {args.seed} --tokens {args.tokens}`."
            f" {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, load average {load[0]:.1f}"
            " (a shared machine: seconds are not comparable across runs). Medians over seeded"
            " random neurons of each layer (in brackets: for how many neurons the number is"
            " defined); test split only: 10 top and 10 random examples per neuron. False firing:"
            " tokens of the random test text where the graph predicts >= 0.5 x max and the neuron"
            " is below, per 1,000 tokens, all neurons pooled."
        ),
        "",
        (
            "| layer | neurons | recipe | F1 top | corr top | F1 random | corr random | F1 pooled "
            "| corr pooled | false firing / 1k random tokens | median nodes | s/neuron |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer, n, name, m, fp, nodes, seconds in rows:
        lines.append(
            f"| {layer} | {n} | {name} | {cell(m['f1_top'], n)} | {cell(m['corr_top'], n)} | "
            f"{cell(m['f1_random'], n)} | {cell(m['corr_random'], n)} | "
            f"{cell(m['f1_pooled'], n)} | {cell(m['corr_pooled'], n)} | {fp:.1f} | {nodes:.0f} | "
            f"{seconds:.1f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
