"""Benchmark N2G graph building: seconds per neuron at an early, a middle and a late layer with the
default builder (every variant in full); the speed-up of reusing the unchanged prefix of
saliency/augmentation variants (attention keys/values, ``N2GConfig(reuse_prefix=True)``) over it
(below 1: slower), with ``--versus bfloat16`` of running the subject model in bfloat16 (other
graphs: both are scored on held-out text), or with ``--versus batch`` of the default batch size
over batches of 4,096 padded tokens (on a CPU the default is 1,024), or with ``--versus layout``
of the weights as ``load_model`` lays them out over TransformerLens's own layout (which the forward
pass copies on every call; same graphs); and of the batched builder
over a naive one-forward-pass-per-sequence loop that builds the same graphs. Each timed build starts
with no substitutes cached, as a fresh run does.

All timings of a ratio come from the same process, interleaved (full, reuse, full, reuse ...; naive,
batched, ...), best of the rounds, because this 2-core machine is shared and noisy; the graphs of
the builders are compared for identity in the same run. Graphs use the default N2GConfig (top,
random and quantile training examples).

    .venv/bin/python bench/bench_n2g.py            # gemma-3-270m, layers 3,9,15, 4 neurons each
    .venv/bin/python bench/bench_n2g.py --quick    # smollm2-135m, tiny sizes (smoke check)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import load_model
from autointerp.n2g.build import N2GConfig, build_graphs, evaluate
from autointerp.n2g.graph import same_graph
from autointerp.n2g.readouts import ACCELERATOR_BATCH_TOKENS, ModelLayerSubject
from autointerp.n2g.run import load_examples
from autointerp.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smollm2-135m, small sizes")
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", default=None, help="early,middle,late (default 3,9,15 for Gemma)")
    ap.add_argument(
        "--neurons", type=int, default=None, help="neurons per layer for s/neuron (default 4)"
    )
    ap.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds per layer (default 2)"
    )
    ap.add_argument(
        "--naive-neurons",
        type=int,
        default=None,
        help="neurons for the naive ratio at the middle layer (default 1; 0: skip it)",
    )
    ap.add_argument(
        "--versus",
        choices=("reuse", "bfloat16", "batch", "layout"),
        default="reuse",
        help="what the default float32 builder is timed against: prefix reuse (default) or the"
        " subject model in bfloat16 (a CPU with bfloat16 instructions runs its matrix products"
        " faster; graphs differ, so the held-out correlation of both is reported), or batches of"
        " 4,096 padded tokens (the accelerator default; on a CPU the default is 1,024), or the"
        " weights in TransformerLens's own layout (load_model stores them as the forward pass"
        " reads them)",
    )
    ap.add_argument(
        "--other-batch-tokens",
        type=int,
        default=ACCELERATOR_BATCH_TOKENS,
        help="with --versus batch: the padded tokens per forward pass timed against the default"
        f" (default {ACCELERATOR_BATCH_TOKENS})",
    )
    ap.add_argument("--tokens", type=int, default=None, help="harvest budget (default 16384)")
    ap.add_argument("--db", default=None, help="reuse a harvest database instead of harvesting")
    ap.add_argument("--out", default=None, help="also write the Markdown section here")
    args = ap.parse_args()
    model_name = args.model or ("smollm2-135m" if args.quick else "gemma-3-270m")
    layers = [int(x) for x in (args.layers or ("1,4,8" if args.quick else "3,9,15")).split(",")]
    per_layer = args.neurons or (2 if args.quick else 4)
    naive_n = 1 if args.naive_neurons is None else args.naive_neurons
    tokens = args.tokens or (4096 if args.quick else 16384)
    torch.set_grad_enabled(False)

    model = load_model(model_name, progress=False)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "bench.db"
    if not args.db:
        harvest(
            model,
            db,
            HarvestConfig(model=model.name, layers=layers, n_tokens=tokens),
            progress=False,
        )
    store = Store(db)
    cfg = N2GConfig()  # variants in full (the default)
    if args.versus == "bfloat16":
        other_model = load_model(model_name, progress=False, dtype="bfloat16")
        other_cfg = N2GConfig(dtype="bfloat16")
        other_name = "subject in bfloat16"
    elif args.versus == "batch":
        other_model, other_cfg = model, N2GConfig(batch_tokens=args.other_batch_tokens)
        other_name = f"batches of {args.other_batch_tokens} tokens"
    elif args.versus == "layout":
        other_model, other_cfg = copy.deepcopy(model), cfg
        for p in other_model.model.parameters():  # as TransformerLens stores them
            p.data = p.data.contiguous()
        other_name = "weights in TransformerLens's layout"
    else:
        other_model, other_cfg, other_name = model, N2GConfig(reuse_prefix=True), "prefix reused"
    naive_cfg = N2GConfig(naive=True)
    rows = []
    ratio_line = ""
    for position, layer in enumerate(layers):
        run = store.latest_complete_run(model.name, layer)
        neurons = list(
            range(per_layer)
        )  # the first neurons: neither cherry-picked nor the strongest
        train = {n: load_examples(store, run["id"], layer, n, "train", ("top",)) for n in neurons}
        extra = {
            n: load_examples(store, run["id"], layer, n, "train", cfg.extra_kinds) for n in neurons
        }
        maxima = {n: float(store.neuron(run["id"], layer, n)["max"]) for n in neurons}
        full_t, other_t = [], []
        identical = True
        for _ in range(args.rounds):
            # each build computes its substitutes itself, as a fresh `autointerp graph` run does
            subject = ModelLayerSubject(model, layer)
            t0 = time.perf_counter()
            graphs = build_graphs(subject, train, maxima, cfg, extra)
            full_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            other_graphs = build_graphs(
                ModelLayerSubject(other_model, layer), train, maxima, other_cfg, extra
            )
            other_t.append(time.perf_counter() - t0)
            identical &= all(
                same_graph(other_graphs[n].to_json(), graphs[n].to_json()) for n in neurons
            )
        corr, other_corr = [], []
        for n in neurons:
            test = load_examples(store, run["id"], layer, n, "test", ("top", "random"))
            for built, into in ((graphs, corr), (other_graphs, other_corr)):
                c = evaluate(built[n], test, maxima[n], cfg.fire_threshold)["correlation"]
                if c is not None:
                    into.append(c)
        rows.append(
            (
                layer,
                len(neurons),
                min(full_t) / len(neurons),
                min(other_t) / len(neurons),
                min(full_t) / min(other_t),
                identical,
                statistics.median(corr) if corr else float("nan"),
                statistics.median(other_corr) if other_corr else float("nan"),
            )
        )
        print(
            f"layer {layer}: full {full_t}, {other_name} {other_t} s, same graphs {identical}",
            file=sys.stderr,
            flush=True,
        )
        # the middle layer: naive vs batched, interleaved
        if position == len(layers) // 2 and naive_n:
            sub = {n: train[n] for n in neurons[:naive_n]}
            naive_t, batched_t = [], []
            same = True
            for _ in range(2):
                t0 = time.perf_counter()
                naive_graphs = build_graphs(subject, sub, maxima, naive_cfg, extra)
                naive_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                batched_graphs = build_graphs(subject, sub, maxima, cfg, extra)
                batched_t.append(time.perf_counter() - t0)
                same &= all(
                    same_graph(naive_graphs[n].to_json(), batched_graphs[n].to_json()) for n in sub
                )
            ratio = min(naive_t) / min(batched_t)
            ratio_line = (
                f"- Naive per-sequence loop vs batched, layer {layer}, {naive_n} neuron(s), "
                f"best of 2 interleaved: naive {min(naive_t) / naive_n:.1f} s/neuron, batched "
                f"{min(batched_t) / naive_n:.1f} s/neuron, **{ratio:.1f}x** faster; graphs "
                f"identical (same nodes and edges, numbers within 1e-5): **{same}**."
            )
    command = "`.venv/bin/python bench/bench_n2g.py " + " ".join(sys.argv[1:]) + "`"
    harvested = store.latest_complete_run(model.name, layers[0])["tokens_done"]
    lines = [
        f"### N2G graph building: {model.name}",
        "",
        (
            f"Command: {command}. {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__},"
            f" {torch.get_num_threads()} threads, {platform.machine()}, load average"
            f" {os.getloadavg()[0]:.1f} at the end; harvest of {harvested} tokens; default"
            " N2GConfig (20 top training examples + the firing tokens of the training"
            " random/quantile examples, 5 augmentations, calibrated); best of"
            f" {args.rounds} interleaved rounds."
        ),
        "",
        (
            f"| layer | neurons | s/neuron, variants in full | s/neuron, {other_name} | speed-up "
            f"| same graphs | median held-out correlation | the same, {other_name} |"
        ),
        "|---:|---:|---:|---:|---:|---|---:|---:|",
        *[
            f"| {layer} | {n} | {f:.2f} | {r:.2f} | {x:.2f}x | {same} | {c:.3f} | {oc:.3f} |"
            for layer, n, f, r, x, same, c, oc in rows
        ],
        "",
        ratio_line,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
