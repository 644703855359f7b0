"""``autointerp harvest``, ``merge`` and ``runs``: recording the neurons' examples and statistics,
combining shards, and listing what a database holds."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from autointerp.cli.common import (
    INT64_MAX,
    Commands,
    add_db_option,
    add_device_options,
    add_executor_options,
    db_path,
    default_of,
    load_subject,
    print_json,
    whole,
)
from autointerp.errors import UserError
from autointerp.packaged import DEFAULT_MODEL, PACKAGED
from autointerp.untrusted import terminal_text

commands = Commands()


@commands.add(
    "harvest",
    help="record max-activating examples and statistics for every neuron of some layers",
    description=(
        "One forward pass per batch (stopping after the last requested layer) records every neuron"
        " of the requested layers: top-k and bottom-k contexts, a random sample, samples across"
        " activation levels, and statistics. Resumable: rerun the same command after a crash."
        " Results go to --db."
    ),
)
def harvest_options(p: argparse.ArgumentParser) -> None:
    from autointerp.harvest import HarvestConfig

    def default(name: str) -> Any:
        return default_of(HarvestConfig, name)

    p.add_argument(
        "--model",
        default=os.environ.get("MODEL", DEFAULT_MODEL),
        help=(
            f"packaged model ({', '.join(PACKAGED)}) or TransformerLens name (default: $MODEL"
            f" or {DEFAULT_MODEL})"
        ),
    )
    p.add_argument(
        "--corpus",
        default=os.environ.get("CORPUS", default("corpus")),
        help=(
            "default | wiki | code | FILE.txt/.jsonl | FOLDER | hf:NAME[:CONFIG[:SPLIT]] "
            f"(default: $CORPUS or {default('corpus')})"
        ),
    )
    p.add_argument(
        "--layers",
        default=None,
        help=(
            "e.g. 0,3,5 or 2-4, or auto (an early, a middle and a late layer: "
            "(2k+1)/6 of the depth; 3,9,15 of an 18-layer model) (default: all layers)"
        ),
    )
    p.add_argument(
        "--tokens",
        type=whole(INT64_MAX),
        default=None,
        help="token budget (default: the whole corpus)",
    )
    p.add_argument(
        "--ctx-len",
        type=whole(),
        default=default("ctx_len"),
        help=f"tokens per context, BOS included (default {default('ctx_len')})",
    )
    add_executor_options(
        p,
        tasks="the harvest runs as shard tasks on the cluster and is merged exactly into --db",
        workers="shard tasks (default: the cluster's CPUs, or GPUs with --device cuda; at least 2)",
    )
    p.add_argument(
        "--batch-size",
        type=whole(),
        default=None,
        help=(
            f"contexts per forward pass (default {default('batch_size')} on the CPU; "
            "on CUDA, from free device memory)"
        ),
    )
    p.add_argument(
        "--top-k",
        type=whole(),
        default=default("top_k"),
        help="top contexts kept per neuron (20 train/10 valid/10 test)",
    )
    p.add_argument(
        "--bottom-k",
        type=whole(),
        default=None,
        help="most negative contexts kept (default: same as --top-k for gated MLPs, else 0)",
    )
    p.add_argument(
        "--random-k",
        type=whole(),
        default=default("random_k"),
        help=f"uniformly random contexts kept (default {default('random_k')})",
    )
    p.add_argument(
        "--seed",
        type=whole(INT64_MAX),
        default=default("seed"),
        help="seed for document order and random samples",
    )
    p.add_argument(
        "--shard", default=None, help="i/n: harvest only contexts with id %% n == i (merge later)"
    )
    p.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=default("checkpoint_seconds"),
        help=(
            "seconds between resumable checkpoints (default: at least 120, and further apart"
            " when writing one takes long, so that checkpoints cost at most ~2%% of the run;"
            " the first is timed by the state's size: ~10 minutes for a whole gemma-3-270m)"
        ),
    )
    add_answers_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    add_db_option(p)
    add_device_options(p)
    p.set_defaults(func=cmd_harvest)


def add_answers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--answers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            "store every neuron's encoded page answer after the run, for a busy server: cold"
            " answers ~3x faster under load, for ~20 KB per neuron (about +50%% database size);"
            " on a finished harvest, adds the missing ones (default: off; the server then builds"
            " an answer on its first request)"
        ),
    )


def store_answers(db: str, run_ids: list[int], progress: bool) -> None:
    """The server's default answers of complete unsharded harvest runs (their layers not yet
    stored), with a progress bar over neurons."""
    from tqdm import tqdm

    from autointerp.api.fastpath import store_default_answers
    from autointerp.store import Store

    store = Store(db)
    runs = {r["id"]: r for r in store.runs()}
    for run_id in run_ids:
        run = runs[run_id]
        if run["status"] != "complete" or run["shard_count"] != 1:
            continue
        with tqdm(
            unit="neuron", disable=not progress, desc="page answers", dynamic_ncols=True
        ) as bar:
            store_default_answers(store, run_id, bar.update)


def _finished_harvest(db: str, cfg: Any) -> Any:
    """The result of a harvest that is already complete in ``db``, found without loading the
    model."""
    from autointerp.harvest import HarvestResult, completed_run

    done = completed_run(db, cfg)
    if done is None:
        return None
    print(
        f"Harvest run {done['id']} with this config is already complete; nothing to do.",
        file=sys.stderr,
    )
    return HarvestResult(
        done["id"], "already complete", done["contexts_done"], done["tokens_done"], 0.0
    )


def cmd_harvest(args: argparse.Namespace) -> int:
    from autointerp.executors import Executor, ModelRef
    from autointerp.harvest import HarvestConfig, harvest, parse_shard
    from autointerp.harvest.ray import ray_harvest
    from autointerp.model_names import canonical_model_name
    from autointerp.models import dtype_name, resolve_device, resolve_dtype
    from autointerp.ranges import is_auto_layers, parse_layers, resolve_layers

    auto = is_auto_layers(args.layers)
    layers = (
        None if auto else parse_layers(args.layers)
    )  # a typo is one sentence before the model loads
    shard = parse_shard(args.shard)
    cfg = HarvestConfig(  # checks every number before the model is loaded
        model=args.model,
        corpus=args.corpus,
        layers=layers,
        ctx_len=args.ctx_len,
        n_tokens=args.tokens,
        top_k=args.top_k,
        bottom_k=args.bottom_k,
        random_k=args.random_k,
        seed=args.seed,
        batch_size=(  # 0 is the config's to refuse, not a stand-in for the default
            default_of(HarvestConfig, "batch_size") if args.batch_size is None else args.batch_size
        ),
        shard=shard,
        checkpoint_seconds=args.checkpoint_seconds,
        dtype=args.dtype,
    )
    executor = Executor.parse(args.executor)
    if executor.kind == "ray" and (
        tuple(shard) != (0, 1) or (args.workers is not None and args.workers < 1)
    ):
        raise UserError(
            "With --executor ray the harvest is sharded for you: leave out --shard, and give "
            "--workers of at least 1."
        )
    db = db_path(args)
    cfg.model = canonical_model_name(args.model)
    # a rerun of a finished harvest loads no model (auto layers need the model's depth first)
    result = None if auto else _finished_harvest(db, cfg)
    name = cfg.model
    if result is None and executor.kind == "ray":  # the workers load the model, not this process
        result = ray_harvest(
            ModelRef(name, resolve_device(args.device), dtype_name(resolve_dtype(args.dtype))),
            db,
            cfg,
            executor,
            workers=args.workers,
            progress=not args.no_progress,
            log=lambda m: print(m, file=sys.stderr),
            auto_layers=auto,
            fit_batch=args.batch_size is None,
        )
    if result is None:
        model = load_subject(args.model, progress=not args.no_progress, args=args)
        cfg.model = name = model.name
        if auto:
            cfg.layers = layers = resolve_layers(args.layers, model.n_layers)
        if args.batch_size is None:  # the default on the CPU; on CUDA what the free memory holds
            cfg.batch_size = model.suggest_batch_size(args.ctx_len, layers or range(model.n_layers))
        result = harvest(model, db, cfg, progress=not args.no_progress)
    if args.answers:  # also after a rerun of a finished harvest, which otherwise writes nothing
        store_answers(db, [result.run_id], progress=not args.no_progress)
    out = {
        "run_id": result.run_id,
        "status": result.status,
        "model": name,
        "contexts": result.contexts,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 2),
        "db": db,
    }
    if args.json:
        print_json(out)
    else:
        rate = result.tokens / result.seconds if result.seconds else 0
        print(
            f"run {result.run_id}: {result.status}, {result.tokens} tokens"
            + (f" in {result.seconds:.1f}s ({rate:.0f} tok/s)" if result.seconds else "")
            + f" -> {db}"
        )
    return 0


@commands.add(
    "merge",
    help="combine shard databases into one, exactly",
    description=(
        "Combine complete --shard i/n harvests (from any number of databases) into "
        "unsharded runs in OUT. Top-k sets, samples and statistics merge exactly."
    ),
)
def merge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output database (created if missing)")
    p.add_argument("shards", nargs="+", help="shard databases")
    p.add_argument("--json", action="store_true", help="print the new run ids as JSON")
    add_answers_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from autointerp.harvest import merge
    from autointerp.store import Store

    paths = [os.path.abspath(p) for p in args.shards]
    if os.path.abspath(args.out) in paths:
        raise UserError("The output database must not be one of the shard databases.")
    inputs = [Store(p, create=False) for p in args.shards]
    runs = merge(args.out, inputs)
    if args.answers:
        store_answers(args.out, runs, progress=not args.no_progress)
    if args.json:
        print_json({"runs": runs, "db": args.out})
    else:
        print(f"merged into run(s) {', '.join(map(str, runs))} of {args.out}")
    return 0


@commands.add("runs", help="list the runs in a database")
def runs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_db_option(p)
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    store = Store(db_path(args), create=False)
    rows = store.runs(args.model)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(
            f"run {r['id']:>3}  {r['model']:<14} {r['stage']:<10} {r['status']:<9}"
            f" {terminal_text(run_summary(r, store.run_outputs(r['id'])))}"
        )
    return 0


def run_summary(run: dict[str, Any], outputs: dict[str, Any]) -> str:
    """One line of what a run is and wrote, by stage (a harvest: its layers, tokens and corpus;
    the later stages: what they stored)."""
    cfg, layers = run["config"], ",".join(map(str, outputs["layers"])) or "-"
    if run["stage"] == "harvest":
        shard = (
            f"shard {run['shard_index']}/{run['shard_count']}  " if run["shard_count"] > 1 else ""
        )
        return (
            f"{shard}layers {','.join(map(str, cfg.get('layers') or [])) or '-'}"
            f"  {int(run['tokens_done'] or 0):,} tokens  corpus {cfg.get('corpus') or '-'}"
        )
    if run["stage"] == "n2g":
        return f"{outputs['graphs']} graphs in layers {layers}"
    if run["stage"] == "explain":
        return (
            f"{outputs['explanations']} explanations ({outputs['failed']} failed) in layers"
            f" {layers}, explainer {cfg.get('explainer_model') or '-'}"
        )
    if run["stage"] == "similarity":
        graphs = (cfg.get("graph_state") or {}).get("graphs", 0)
        floor = cfg.get("min_score")
        return f"{graphs} graphs, {outputs['similarities']} similar pairs stored" + (
            f" (>= {floor:g})" if floor is not None else ""
        )
    return f"{outputs['evaluations']} result(s) stored"
