"""``autointerp graph`` and ``autointerp export``: building Neuron-to-Graph graphs and writing
them out as GraphML or DOT files."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_device_options,
    add_executor_options,
    db_path,
    default_of,
    load_subject,
    log,
    parse_executor,
    print_json,
    stored_layers,
    whole,
)
from autointerp.errors import UserError
from autointerp.ranges import parse_neuron

commands = Commands()


@commands.add(
    "graph",
    help="build N2G graphs (prune, saliency, augmentation, trie) and score them on held-out text",
    description=(
        "Neuron-to-Graph: for each neuron, prune its top training examples (and "
        "the firing tokens of its training random/quantile examples) to the shortest "
        "context that keeps the activation, find which tokens matter by replacing "
        "each, add embedding-neighbour variants, build a token trie and calibrate its "
        "paths on the training text. Scored on held-out top + random examples "
        "(precision/recall/F1 at 0.5 x max, Pearson correlation; also each kind "
        "alone). Resumable per neuron."
    ),
)
def graph_options(p: argparse.ArgumentParser) -> None:
    from autointerp.n2g.build import N2GConfig
    from autointerp.n2g.run import CHUNK

    def default(name: str) -> Any:
        return default_of(N2GConfig, name)

    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "--layers",
        default=None,
        help=(
            "e.g. 3,9, or auto (the layers `harvest --layers auto` chose) (default: "
            "every harvested layer)"
        ),
    )
    p.add_argument(
        "--neurons",
        default=None,
        help=(
            "best:K (the K strongest by max activation that are not dense, not from one document"
            " and not sharing a top context: what `make explain` graphs), top:K (the K strongest),"
            " or ranges like 0-15,100 (default: all neurons)"
        ),
    )
    p.add_argument(
        "--train-examples",
        type=whole(),
        default=default("train_examples"),
        help=f"top training examples per neuron (default {default('train_examples')})",
    )
    p.add_argument(
        "--augmentations",
        type=whole(),
        default=default("augmentations"),
        help=f"substitutes per important token (default {default('augmentations')})",
    )
    p.add_argument(
        "--importance-threshold",
        type=float,
        default=default("importance_threshold"),
        help=(
            "saliency at which a context token becomes a concrete node "
            f"(default {default('importance_threshold')})"
        ),
    )
    p.add_argument(
        "--top-only",
        action="store_true",
        help=(
            "build from the top examples alone and do not calibrate the paths on the "
            "training random and quantile examples (the original N2G recipe)"
        ),
    )
    p.add_argument(
        "--naive", action="store_true", help="one forward pass per sequence (for comparison only)"
    )
    add_executor_options(
        p,
        tasks=(
            f"each chunk of {CHUNK} neurons of a layer is a task on the cluster; only this process"
            " writes --db"
        ),
        workers="chunk tasks at once (default: the cluster's CPUs, or GPUs with --device cuda)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_db_option(p)
    add_device_options(p)
    p.set_defaults(func=cmd_graph)


def cmd_graph(args: argparse.Namespace) -> int:
    from autointerp.n2g.build import N2GConfig
    from autointerp.n2g.ray import ray_graph
    from autointerp.n2g.run import graph_layers
    from autointerp.ranges import is_auto_layers, parse_layers, resolve_layers
    from autointerp.store import Store

    if not is_auto_layers(args.layers):
        parse_layers(args.layers)  # a typo is one sentence before the model loads
    executor = parse_executor(args)
    cfg = N2GConfig(
        augmentations=args.augmentations,  # checks the numbers first
        importance_threshold=args.importance_threshold,
        train_examples=args.train_examples,
        naive=args.naive,
    )
    if args.top_only:  # the original recipe: top examples only, paths not calibrated
        cfg = dataclasses.replace(cfg, extra_kinds=(), calibrate=False)
    store = Store(db_path(args), create=False)
    model = load_subject(args.model, progress=not args.no_progress, args=args)
    layers = resolve_layers(args.layers, model.n_layers)
    if layers is None:
        layers = store.harvested_layer_list(model.name)
    model.check_layers(layers)
    if executor.kind == "ray":
        summaries = ray_graph(
            model,
            store,
            layers,
            args.neurons,
            cfg,
            executor,
            workers=args.workers,
            progress=not args.no_progress,
            log=log,
        )
    else:
        summaries = graph_layers(
            model, store, layers, args.neurons, cfg, progress=not args.no_progress
        )
    out = [
        {
            "layer": s.layer,
            "built": s.built,
            "already_done": s.skipped,
            "seconds": round(s.seconds, 2),
            "seconds_per_neuron": round(s.seconds / s.built, 3) if s.built else None,
        }
        for s in summaries
    ]
    if args.json:
        print_json(out)
    else:
        for o in out:
            print(
                f"layer {o['layer']}: built {o['built']} graphs ({o['already_done']} already done)"
                + (f", {o['seconds_per_neuron']} s/neuron" if o["built"] else "")
            )
    return 0


# autointerp.n2g.export.EXPORT_FORMATS, without importing networkx for --help
EXPORT_FORMAT_NAMES = ("graphml", "dot")


@commands.add(
    "export",
    help="export N2G graphs as GraphML or Graphviz DOT (+ SVG pictures), one neuron or in bulk",
    description=(
        "Write N2G graphs as GraphML (typed attributes: token, kind, activation, "
        "importance, depth, count; edges: relation) or DOT (the same attributes as "
        "strings; tokens with \\n-style escapes), each with an SVG picture beside it. "
        "A node's kind is activating (a token the neuron fires on), substitute (a token N2G put "
        "in an activating token's place, on which the neuron stays below 0.1 of its max), "
        "context, wildcard or end (a path's predicted activation). By default a file keeps the "
        "paths to the 64 ends with the highest activation (graph attributes paths and "
        "paths_exported say how many of how many); --full writes every path. "
        "With L/N: that neuron, to -o FILE (default graphs/<model>/<L>_<N>.graphml). "
        "Without: every chosen neuron that has a graph, to -o DIR (default "
        "graphs/<model>/), as <L>_<N>.graphml."
    ),
    epilog=(
        "examples:\n  autointerp export graphml gemma-3-270m 9/408\n"
        "  autointerp export graphml gemma-3-270m --all      # every graph of the model\n"
        "  autointerp export dot gemma-3-270m --layers 3,9 --neurons top:4 -o dot/"
    ),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=sorted(EXPORT_FORMAT_NAMES), help="graphml or dot")
    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "neuron", nargs="?", default=None, help="L/N, e.g. 3/117 (omit for a bulk export)"
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="output file for one neuron, folder for a bulk export (default graphs/<model>/)",
    )
    p.add_argument(
        "--layers",
        default=None,
        help="bulk: these layers, or auto (default: every layer with graphs)",
    )
    p.add_argument(
        "--neurons",
        default=None,
        help=(
            "bulk: best:K or top:K (as for `graph`), ranges like 0-15,100, or all (default: all)"
        ),
    )
    p.add_argument(
        "--all", action="store_true", help="bulk: every neuron that has a graph (the default)"
    )
    p.add_argument("--no-svg", action="store_true", help="skip the SVG pictures")
    p.add_argument(
        "--full",
        action="store_true",
        help="every path of each graph (default: the paths to the 64 strongest ends)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    add_db_option(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from autointerp.model_names import canonical_model_name
    from autointerp.n2g.export import EXPORT_FORMATS, export_graph, model_folder, safe_output_path
    from autointerp.store import Store

    model = canonical_model_name(args.model)
    if args.neuron is None:
        return _export_bulk(args, model)
    if args.layers is not None or args.neurons is not None or args.all:
        raise UserError("Give either one neuron L/N or --layers/--neurons/--all, not both.")
    layer, neuron = parse_neuron(args.neuron)
    suffix = EXPORT_FORMATS[args.format]
    default = Path("graphs") / model_folder(model) / f"{layer}_{neuron}{suffix}"
    out = safe_output_path(args.output or default)
    if out.suffix != suffix:
        raise UserError(f"The output file must end in {suffix}, not {out.name!r}.")
    store = Store(db_path(args), create=False)
    row = store.graph(model, layer, neuron)
    if row is None:
        raise UserError(
            f"No N2G graph for {model} {layer}/{neuron}; run `autointerp graph {model} "
            f"--layers {layer} --neurons {neuron}` first."
        )
    written = export_graph(
        model, layer, neuron, row, out, args.format, svg=not args.no_svg, full=args.full
    )
    if args.json:
        print_json(written)
    else:
        print(" ".join(written.values()))
    return 0


def _export_bulk(args: argparse.Namespace, model: str) -> int:
    """``export FORMAT MODEL [--layers] [--neurons|--all] [-o DIR]``: every chosen neuron that has a
    graph."""
    from autointerp.n2g.export import (
        EXPORT_FORMATS,
        export_graphs,
        graphed_neurons,
        model_folder,
        safe_output_path,
    )
    from autointerp.selection import select_neurons
    from autointerp.store import Store

    if args.all and args.neurons is not None:
        raise UserError("Give --neurons or --all, not both.")
    folder = safe_output_path(args.output or Path("graphs") / model_folder(model), folder=True)
    if folder.suffix in EXPORT_FORMATS.values() or folder.is_file():
        raise UserError(f"Without a neuron, -o is a folder for the files, not {str(folder)!r}.")
    store = Store(db_path(args), create=False)
    layers = stored_layers(store, model, args.layers)
    graphed = graphed_neurons(store, model, layers)
    if args.neurons is None or args.all:
        chosen = graphed
    else:
        d_mlp = int((store.model_info(model) or {}).get("d_mlp") or 0)
        in_layers = layers if layers is not None else sorted({g[0] for g in graphed})
        chosen = [
            (layer, n)
            for layer in in_layers
            for n in select_neurons(store, model, layer, args.neurons, d_mlp)
        ]
    have = set(graphed)
    missing = [c for c in chosen if c not in have]
    todo = [c for c in chosen if c in have]
    if not todo:
        where = f" in layers {','.join(map(str, layers))}" if layers is not None else ""
        raise UserError(
            f"No N2G graphs of {model}{where} to export from {store.path}; run "
            f"`autointerp graph {model}` first."
        )
    written = export_graphs(
        store,
        model,
        todo,
        folder,
        args.format,
        svg=not args.no_svg,
        progress=not args.no_progress,
        full=args.full,
    )
    out = {
        "model": model,
        "format": args.format,
        "folder": str(folder),
        "graphs": len(written),
        "files": written,
        "without_graph": [f"{layer}/{n}" for layer, n in missing],
    }
    if args.json:
        print_json(out)
        return 0
    kinds = args.format.upper() if args.format == "dot" else "GraphML"
    suffix = EXPORT_FORMATS[args.format]
    print(
        f"{len(written)} graphs of {model} written to {folder}/ as <layer>_<neuron>{suffix}"
        f" ({kinds}{'' if args.no_svg else ' + SVG'})"
    )
    if missing:
        listed = ", ".join(out["without_graph"][:10])
        print(
            f"no graph yet for {len(missing)} chosen neuron(s): {listed}"
            + (" ..." if len(missing) > 10 else "")
        )
    return 0
