"""``autointerp run``: a whole layer (or several) end to end - harvest, N2G graphs, explanations
scored by simulation, the search index - with the cost said before it starts
(:func:`autointerp.pipeline.run_layers` does the work; this module parses and prints).

The explain stage's options are explain's own (:func:`.explain.add_llm_options`,
:func:`.explain.add_explain_stage_options`, read by :func:`.explain.explain_inputs`), so ``run``
explains exactly as ``autointerp explain`` does with the same options."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from autointerp.cli.common import (
    INT64_MAX,
    Commands,
    add_db_option,
    add_device_options,
    db_path,
    default_of,
    load_subject,
    log,
    parse_executor,
    print_json,
    whole,
)
from autointerp.cli.explain import (
    add_explain_stage_options,
    add_llm_options,
    explain_inputs,
    llm_session,
)

if TYPE_CHECKING:
    from autointerp.pipeline import RunPlan, RunSummary

commands = Commands()

#: ``run``'s token budget when the layer is not harvested yet: ``make explain``'s (TOKENS).
DEFAULT_RUN_TOKENS = 65536


@commands.add(
    "run",
    help="a whole layer end to end: harvest, graph, explain + score, index, with a cost estimate",
    description=(
        "For the chosen neurons of each layer (default: every neuron): harvest the layer if it is"
        " not harvested yet, build the N2G graphs, explain and score the neurons with the LLM"
        " (exactly as `autointerp explain` with the same options; single-token neurons get their"
        " template explanation with no LLM call), and bring the search index up to date. Before"
        " any work it prints the plan (what is already stored, what each stage will do) and a"
        " cost estimate from what earlier runs of the same model measured in this database,"
        " saying where each number comes from (or that there is no measurement yet, and what is"
        " assumed instead). --dry-run prints that and stops, writing nothing. Progress bars show"
        " each stage's ETA. Resumable: rerun the same command after an interruption; a rerun"
        " with everything stored does no new work (no model load, no LLM server)."
    ),
    epilog=(
        "examples:\n"
        "  autointerp run smollm2-135m --layers 1 --neurons all --dry-run\n"
        "  autointerp run smollm2-135m --layers 1 --neurons 0-7 --tokens 4096"
        " --local-llm qwen2.5-coder-0.5b\n"
        "  autointerp run gemma-3-270m --layers 9 --neurons best:4 --json\n"
        "  autointerp run gemma-3-270m --layers 9 --base-url http://gpu-box:8000/v1"
        " --explainer-model qwen2.5-7b"
    ),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def run_options(p: argparse.ArgumentParser) -> None:
    from autointerp.harvest import HarvestConfig

    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument(
        "--layers",
        required=True,
        help="layers, e.g. 3, 3,9 or 0-5, or auto (an early, a middle and a late layer)",
    )
    p.add_argument(
        "--neurons",
        default="all",
        help=(
            "all (default: the whole layer), best:K (the K strongest that are not dense, not from"
            " one document and not sharing a top context), top:K (strongest max activation), or"
            " ranges like 0-15,100"
        ),
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the cost estimate, then stop (writes nothing)",
    )
    corpus = default_of(HarvestConfig, "corpus")
    p.add_argument(
        "--corpus",
        default=corpus,
        help=f"corpus to harvest a layer that is not harvested yet (default {corpus})",
    )
    p.add_argument(
        "--tokens",
        type=whole(INT64_MAX),
        default=DEFAULT_RUN_TOKENS,
        help=(
            "token budget of that harvest (default"
            f" {DEFAULT_RUN_TOKENS}, as `make explain`; a layer already harvested is used as it is)"
        ),
    )
    add_llm_options(p, add_explain_stage_options, price_table=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary (the plan and estimate; with a run, what each stage did)",
    )
    add_db_option(p)
    add_device_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from autointerp.explain.ray import explain_runner
    from autointerp.harvest import HarvestConfig
    from autointerp.model_names import canonical_model_name
    from autointerp.pipeline import RunRequest, run_layers

    executor = parse_executor(args)
    templates, cfg, settings = explain_inputs(args)
    request = RunRequest(
        model=canonical_model_name(args.model),
        layers=args.layers,
        neurons=args.neurons,
        harvest=HarvestConfig(
            model=args.model, corpus=args.corpus, n_tokens=args.tokens, dtype=args.dtype
        ),
        explain=cfg,
        dtype=args.dtype,
        retry_failed=args.retry_failed,
        stop_after=args.stop_after_failures or None,
    )
    db = db_path(args)
    summary = run_layers(
        db,
        request,
        lambda: load_subject(args.model, progress=not args.no_progress, args=args),
        llm_session(args, settings, db),  # its response cache: the results database
        templates,
        prices=settings.prices,
        runner=explain_runner(executor, args.workers),
        dry_run=args.dry_run,
        progress=not args.no_progress,
        on_plan=lambda plan: _print_plan(
            plan, sys.stdout if args.dry_run and not args.json else sys.stderr
        ),
        log=log,
    )
    return _report(args, summary)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_lines(plan: RunPlan) -> list[str]:
    """The plan and estimate as the user reads them before the run."""
    from autointerp.costs import total_seconds

    lines = [f"plan for {plan.model}, neurons {plan.neurons_spec}, database {plan.db}:"]
    for s in plan.layers:
        if s.harvest_run is None:
            at_most = ":" in plan.neurons_spec  # best:K / top:K: at most K
            chosen = "all" if s.neurons is None else f"{'up to ' if at_most else ''}{s.neurons}"
            lines.append(
                f"  layer {s.layer}: not harvested yet (will harvest {plan.tokens or 'all'}"
                f" tokens); {chosen} neurons to graph and explain"
            )
        else:
            lines.append(
                f"  layer {s.layer}: harvested (run {s.harvest_run}); {s.neurons} neurons chosen:"
                f" {s.graphed} graphed, {s.explained} explained already; {s.graphs_todo} to graph,"
                f" {s.explain_todo} to explain"
            )
    lines.append(f"estimate (explainer {plan.explainer or '-'}):")
    for c in plan.costs:
        amount = "?" if c.units is None else f"{c.units:,} {c.unit}s"
        took = "unknown" if c.seconds is None else _duration(c.seconds)
        lines.append(f"  {c.stage}: {amount} -> {took}  [{c.source}]")
    if not plan.costs:
        lines.append("  nothing left to do: every chosen neuron is graphed and explained")
    total, complete = total_seconds(plan.costs)
    lines.append(
        f"  total: {'' if complete else 'at least '}{_duration(total)}"
        " (+ the search index: seconds)"
    )
    return lines


def _print_plan(plan: RunPlan, stream: Any) -> None:
    print("\n".join(plan_lines(plan)), file=stream)


def _summary_json(summary: RunSummary) -> dict[str, Any]:
    ex, h = summary.explain, summary.harvest
    return {
        **summary.plan.as_json(),
        "harvest": None
        if h is None
        else {
            "run_id": h.run_id,
            "status": h.status,
            "tokens": h.tokens,
            "seconds": round(h.seconds, 1),
        },
        "graphs": [
            {
                "layer": g.layer,
                "built": g.built,
                "already_done": g.skipped,
                "seconds": round(g.seconds, 1),
            }
            for g in summary.graphs
        ],
        "explain": {
            "explained": ex.explained,
            "failed": ex.failed,
            "already_done": ex.skipped,
            "templates": summary.templates,
            "origins": ex.origins,
            "llm_calls": ex.usage.calls,
            "prompt_tokens": ex.usage.prompt_tokens,
            "completion_tokens": ex.usage.completion_tokens,
            "cost_usd": ex.cost_usd,
            "seconds": round(ex.seconds, 1),
            "stopped": ex.stopped,
        },
        "index": summary.index,
        "seconds": round(summary.seconds, 1),
    }


def _report(args: argparse.Namespace, summary: RunSummary) -> int:
    """Print what the run did (text or ``--json``); exit status 1 when the explain stage stopped
    or wrote no explanation for any neuron it processed."""
    out = _summary_json(summary) if not args.dry_run else summary.plan.as_json()
    if args.json:
        print_json(out)
    if args.dry_run:
        return 0
    ex = summary.explain
    if not args.json:
        h = summary.harvest
        if h is not None:
            print(f"harvest: run {h.run_id} {h.status}, {h.tokens:,} tokens in {h.seconds:.1f} s")
        for g in summary.graphs:
            print(f"graphs, layer {g.layer}: built {g.built} ({g.skipped} already done)")
        print(
            f"explanations: {ex.explained} explained ({summary.templates} by the single-token"
            f" template, no LLM call), {ex.failed} with failures recorded, {ex.skipped} already"
            f" done; {ex.usage.calls} LLM calls"
        )
        idx = summary.index
        print(
            f"search index: {idx['graphs_indexed']} graphs and {idx['layers_indexed']} layers"
            f" indexed now; done in {_duration(summary.seconds)}"
        )
    if ex.stopped:
        print(f"error: {ex.stopped}", file=sys.stderr)
        return 1
    if ex.failed and not ex.explained and ex.unexplained == ex.failed:
        print(
            f"error: the LLM wrote no explanation for any of the {ex.failed} neurons processed"
            f" (the reasons are stored; rerun with --retry-failed).",
            file=sys.stderr,
        )
        return 1
    return 0
