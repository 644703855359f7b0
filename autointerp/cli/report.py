"""``autointerp report``: what a run found, from the database alone (the report `make explain`
ends with)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autointerp.cli.common import (
    Commands,
    add_db_option,
    command_name,
    db_path,
    default_of,
    print_json,
    store_model,
    stored_layers,
    whole,
)

commands = Commands()


@commands.add(
    "report",
    help="what a run found: best-explained neurons, baseline and graph scores, similar neurons",
    description=(
        "The report `make explain` ends with, from the database alone: the neurons "
        "with the best explanation scores (or, before any explanation, the best N2G "
        "graphs), each with its explanation, its score next to the token-lookup "
        "baseline's and the N2G graph's on the same held-out text, and its most "
        "similar neurons by graph overlap (stored by `autointerp similarity`); then "
        "where the graph files are and how to browse."
    ),
)
def report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "--layers", default=None, help="only these layers, or auto (default: every harvested layer)"
    )
    from autointerp.report import build_report

    limit, similar = default_of(build_report, "limit"), default_of(build_report, "similar")
    p.add_argument("--limit", type=whole(), default=limit, help=f"neurons shown (default {limit})")
    p.add_argument(
        "--similar",
        type=whole(),
        default=similar,
        help=f"similar neurons per neuron (default {similar})",
    )
    p.add_argument(
        "--graphs",
        default=None,
        help="folder of exported graphs to mention (default graphs/<model>)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_db_option(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from autointerp.n2g.export import model_folder, safe_output_path
    from autointerp.report import build_report, format_report
    from autointerp.store import Store

    store = Store(db_path(args), create=False)
    model = store_model(store, args.model)
    layers = stored_layers(store, model, args.layers)
    folder = safe_output_path(args.graphs or Path("graphs") / model_folder(model), folder=True)
    report = build_report(
        store, model, layers, limit=args.limit, similar=args.similar, graphs_folder=folder
    )
    if args.json:
        print_json(report)
    else:
        print(format_report(report, db_path(args), command_name()))
    return 0
