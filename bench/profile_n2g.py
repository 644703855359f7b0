"""Where an N2G build spends its time: cProfile of one layer's graphs built with the default builder
(every variant in full) and with prefix reuse, each from a fresh subject (nothing cached), printing
the functions with the most cumulative time. For finding what to speed up; the timings that
BENCHMARKS.md quotes as results come from ``bench_n2g.py``.

    .venv/bin/python bench/profile_n2g.py --db harvest.db --layer 9 --neurons 2
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from autointerp.models import load_model
from autointerp.n2g.build import N2GConfig, build_graphs
from autointerp.n2g.readouts import ModelLayerSubject
from autointerp.n2g.run import load_examples
from autointerp.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="a harvest database holding --layer")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--neurons", type=int, default=2, help="the first N neurons of the layer")
    ap.add_argument("--lines", type=int, default=18, help="functions printed per profile")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(args.model, progress=False)
    store = Store(args.db)
    cfg = N2GConfig()
    run = store.latest_complete_run(model.name, args.layer)
    if run is None:
        raise SystemExit(f"{args.db} has no complete harvest of layer {args.layer}.")
    neurons = list(range(args.neurons))
    train = {n: load_examples(store, run["id"], args.layer, n, "train", ("top",)) for n in neurons}
    extra = {
        n: load_examples(store, run["id"], args.layer, n, "train", cfg.extra_kinds) for n in neurons
    }
    maxima = {n: float(store.neuron(run["id"], args.layer, n)["max"]) for n in neurons}
    for name, config in (("in full", cfg), ("prefix reused", N2GConfig(reuse_prefix=True))):
        subject = ModelLayerSubject(model, args.layer)
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        build_graphs(subject, train, maxima, config, extra)
        profile.disable()
        print(f"== variants {name}: {time.perf_counter() - started:.1f} s")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.lines)


if __name__ == "__main__":
    main()
