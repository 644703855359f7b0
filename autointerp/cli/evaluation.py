"""``autointerp calibrate`` and ``autointerp eval``: measuring explanation quality on
known-answer features and on a seeded random sample of neurons, with text and JSON reports.

Both talk to an LLM as ``explain`` does (:class:`autointerp.llm.session.LLMSession`: the endpoint
the options name, or the embedded local server) and share its options here.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    db_path,
    default_of,
    log,
    parse_executor,
    print_json,
    stdout_to_stderr,
)
from autointerp.cli.explain import (
    add_llm_executor_options,
    add_prompt_variant_option,
    add_record_options,
)
from autointerp.errors import UserError
from autointerp.packaged import DEFAULT_LOCAL_LLM

commands = Commands()


def _add_llm_options(p: argparse.ArgumentParser) -> None:
    from autointerp.explain.run import ExplainConfig
    from autointerp.explain.simulate import MODES
    from autointerp.llm.client import LLMSettings

    def default(name: str) -> Any:
        return default_of(ExplainConfig, name)

    p.add_argument(
        "--base-url",
        default=None,
        help=(
            "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else the embedded local server)"
        ),
    )
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--explainer-model", default=None, help="model that writes explanations")
    p.add_argument(
        "--simulator-model", default=None, help="model that simulates (default: the explainer)"
    )
    p.add_argument(
        "--local-llm",
        default=DEFAULT_LOCAL_LLM,
        help=(
            f"packaged model for the local server: {DEFAULT_LOCAL_LLM} (default) or "
            "qwen2.5-coder-0.5b"
        ),
    )
    p.add_argument(
        "--simulator-mode",
        default=default("simulator_mode"),
        choices=list(MODES),
        help=(
            "rule (default: the explanation compiled into a matching rule) or a token-by-token "
            "LLM simulation (auto probes the endpoint; see `explain --help`)"
        ),
    )
    add_record_options(p)
    p.add_argument(
        "--max-attempts",
        type=int,
        default=default_of(LLMSettings, "max_attempts"),
        help="attempts per LLM call before recording a failure",
    )
    timeout = default_of(LLMSettings, "timeout")
    p.add_argument(
        "--llm-timeout",
        type=float,
        default=timeout,
        help=f"seconds per LLM request (default {timeout:g})",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for the local server (default: all)"
    )
    p.add_argument(
        "--prompts", default=None, help="prompt template folder (default: the packaged prompts)"
    )
    add_prompt_variant_option(p)
    add_llm_executor_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_db_option(p)


@contextlib.contextmanager
def _llm(args: argparse.Namespace, store: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(client, explain config, templates) for the LLM the options name; the settings are all
    checked before the local server (if any) starts."""
    from autointerp.explain.prompts import load_templates
    from autointerp.explain.run import ExplainConfig, check_config
    from autointerp.explain.simulate import LOGPROB_FREE_MODES
    from autointerp.llm.client import LLMSettings
    from autointerp.llm.session import LLMSession

    settings = LLMSettings.from_env(
        base_url=args.base_url,
        api_key=args.api_key,
        explainer_model=args.explainer_model,
        simulator_model=args.simulator_model,
        timeout=args.llm_timeout,
        max_attempts=args.max_attempts,
    )
    templates = load_templates(args.prompts, args.prompt)
    llm = LLMSession(
        settings,
        store.path,
        local_llm=args.local_llm,
        threads=args.threads,
        prompt_logprobs=args.simulator_mode not in LOGPROB_FREE_MODES,
        log=log,
    )

    def config(explainer: str, simulator: str) -> Any:
        cfg = ExplainConfig(
            explainer_model=explainer,
            simulator_model=simulator,
            prompt_version=templates.version,
            sim_top=args.sim_top,
            sim_random=args.sim_random,
            simulator_mode=args.simulator_mode,
            explain_records=args.explain_records,
            candidates=args.candidates,
            output_tokens=args.output_tokens,
        )
        check_config(cfg)
        return cfg

    config("-", "-")  # refuse bad settings before the server starts
    with llm:
        yield llm.client, config(llm.explainer_model, llm.simulator_model), templates


def _fmt(value: float | None, width: int = 6) -> str:
    return f"{value:{width}.3f}" if value is not None else " " * (width - 1) + "-"


@commands.add(
    "calibrate",
    help="score the pipeline on known-answer regex features (true description vs explanation)",
    description=(
        "Known-answer features (a regular expression over the decoded text; activation "
        "1 on every token whose characters overlap a match) go through the same harvest, N2G, "
        "explain and simulate code as neurons, using only MODEL's tokenizer. Per feature: the true "
        "description's score (the simulator's ceiling), the explanation's score (the explainer's "
        "recovery), the baseline's and N2G's, plus medians."
    ),
    epilog=(
        "examples:\n  autointerp calibrate gemma-3-270m\n"
        "  autointerp calibrate smollm2-135m --features my_features.json --tokens 16384 --json\n"
        'FILE is JSON: [{"name": ..., "pattern": ..., "description": ...}]'
    ),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def calibrate_options(p: argparse.ArgumentParser) -> None:
    from autointerp.eval.calibrate import CalibrateConfig

    p.add_argument("model", help="model whose tokenizer cuts the text (e.g. gemma-3-270m)")
    p.add_argument(
        "--features", default=None, help="JSON feature file (default: the packaged set of 12)"
    )
    tokens = default_of(CalibrateConfig, "tokens")
    p.add_argument(
        "--tokens", type=int, default=tokens, help=f"corpus tokens to harvest (default {tokens})"
    )
    p.add_argument(
        "--corpus",
        default=default_of(CalibrateConfig, "corpus"),
        help="corpus (default: the packaged wiki + code mix)",
    )
    _add_llm_options(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from autointerp.eval.calibrate import CalibrateConfig, calibrate
    from autointerp.eval.features import load_features
    from autointerp.executors import explain_runner
    from autointerp.models import load_tokenizer
    from autointerp.store import Store

    features = load_features(args.features)
    if args.output_tokens:
        raise UserError(
            "--output-tokens shows what a neuron's output weights promote; known-answer features"
            " have no weights (use it with eval or explain)."
        )
    if args.tokens < 256:
        raise UserError("--tokens must be at least 256 (a few contexts of 64 tokens).")
    with stdout_to_stderr():
        name, tokenizer = load_tokenizer(args.model, progress=not args.no_progress)
    executor = parse_executor(args)
    store = Store(db_path(args))
    cfg = CalibrateConfig(corpus=args.corpus, tokens=args.tokens)
    with (
        _llm(args, store) as (client, explain_cfg, templates),
        stdout_to_stderr(),
    ):
        result = calibrate(
            store,
            name,
            tokenizer,
            features,
            cfg,
            explain_cfg,
            client,
            templates,
            progress=not args.no_progress,
            log=log,
            runner=explain_runner(executor, args.workers),
        )
    if args.json:
        print_json(result["features"])
        return 0
    print(
        f"known-answer features of {name} ({len(features)}, {args.tokens} tokens of "
        f"{args.corpus}); "
        f"explainer {result['explainer_model']}, simulator {result['simulator_model']} "
        f"({result['simulator_mode']})"
    )
    print(
        "true = simulator given the true description (its ceiling); explanation = the explainer's "
        "phrase; "
        "scores are correlations on held-out text"
    )
    print(
        f"{'feature':<24} {'active':>7} {'true':>6} {'expl':>6} {'base':>6} {'n2g':>6}  explanation"
    )
    for r in result["features"]:
        active = f"{100 * r['frac_active']:6.2f}%" if r["frac_active"] is not None else "      -"
        print(
            f"{r['name'][:24]:<24} {active} {_fmt(r['true_score'])} {_fmt(r['explanation_score'])} "
            f"{_fmt(r['baseline_score'])} {_fmt(r['n2g_score'])}  {r['explanation'] or '-'}"
        )
        for method, error in r["errors"].items():
            print(f"{'':<24} {method}: {error}")
    m = result["medians"]
    print(
        f"{'median':<24} {'':>7} {_fmt(m['true_score'])} {_fmt(m['explanation_score'])} "
        f"{_fmt(m['baseline_score'])} {_fmt(m['n2g_score'])}"
    )
    print(f"stored as calibrate run {result['run_id']}")
    return 0


@commands.add(
    "eval",
    help=(
        "score explanations of a seeded random sample of neurons, against baseline, N2G and "
        "controls"
    ),
    description=(
        "A seeded random sample of --sample neurons per layer among those that fire "
        "(not the top ones), with whatever stage is missing run for them; per method (explanation, "
        "baseline, n2g) and control (shuffled explanations; known answers from `calibrate`): n, "
        "mean, median, bootstrap 95% CI, fraction >= 0.5, failed, undefined, and paired "
        "differences. Stored as an eval run."
    ),
    epilog="example:\n  autointerp eval gemma-3-270m --layers 3,9,15 --sample 16 --plot eval.png",
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def eval_options(p: argparse.ArgumentParser) -> None:
    from autointerp.eval.evaluate import EvalConfig

    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "--layers", default=None, help="layers, e.g. 3,9,15 (default: every harvested layer)"
    )
    sample, seed = default_of(EvalConfig, "sample"), default_of(EvalConfig, "seed")
    p.add_argument(
        "--sample",
        type=int,
        default=sample,
        help=f"random firing neurons per layer (default {sample})",
    )
    p.add_argument("--seed", type=int, default=seed, help=f"sample seed (default {seed})")
    p.add_argument("--plot", default=None, help="write a PNG of the score distributions here")
    p.add_argument(
        "--embedding-scorer",
        action="store_true",
        help=(
            "also score each explanation by embedding (AUROC of its similarity to the held-out "
            "windows against where the neuron fires; the packaged all-mpnet-base-v2) and report "
            "its Spearman correlation with the simulation scores"
        ),
    )
    p.add_argument(
        "--detection-scorer",
        action="store_true",
        help=(
            "also score each explanation by detection: the simulator's LLM answers yes or no for "
            "each held-out window ('does it contain what the explanation names?'; one call per "
            "window), scored as AUROC against where the neuron fires, and report its Spearman "
            "correlation with the simulation scores"
        ),
    )
    p.add_argument(
        "--no-graphs",
        action="store_true",
        help="do not build missing N2G graphs (no subject model)",
    )
    _add_llm_options(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from autointerp.eval.evaluate import EvalConfig, evaluate
    from autointerp.eval.plot import eval_plot
    from autointerp.executors import explain_runner
    from autointerp.model_names import canonical_model_name
    from autointerp.ranges import parse_layers
    from autointerp.store import Store

    store = Store(db_path(args), create=False)
    model = canonical_model_name(args.model)
    layers = parse_layers(args.layers)
    if layers is None:
        layers = sorted(store.harvested_layers(model))
        if not layers:
            raise UserError(
                f"No complete harvest of {model} in {store.path}; run `autointerp harvest` first."
            )
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        raise UserError(f"The folder for the plot {args.plot} does not exist.")
    if args.sample < 2:
        raise UserError(
            "--sample must be at least 2 (the shuffled control needs another neuron of the layer)."
        )
    executor = parse_executor(args)
    cfg = EvalConfig(
        layers=layers,
        sample=args.sample,
        seed=args.seed,
        embedding=args.embedding_scorer,
        detection=args.detection_scorer,
    )
    subject: dict[str, Any] = {}

    def build_graphs(layer: int, neurons: list[int]) -> None:
        from autointerp.models import load_model
        from autointerp.n2g.build import N2GConfig
        from autointerp.n2g.run import graph_layers

        if "model" not in subject:
            subject["model"] = load_model(model, progress=not args.no_progress)
        if executor.kind == "ray":
            from autointerp.n2g.ray import ray_graph

            ray_graph(
                subject["model"],
                store,
                [layer],
                ",".join(str(n) for n in neurons),
                N2GConfig(),
                executor,
                workers=args.workers,
                progress=not args.no_progress,
            )
            return
        graph_layers(
            subject["model"],
            store,
            [layer],
            ",".join(str(n) for n in neurons),
            N2GConfig(),
            progress=not args.no_progress,
        )

    for layer in layers:  # refuse unharvested layers before the LLM server starts
        if store.latest_complete_run(model, layer) is None:
            raise UserError(
                f"Layer {layer} of {model} has not been harvested yet; run `autointerp harvest "
                f"--model {model} --layers {layer}` first."
            )
    missing_weights = sorted(set(layers) - store.weight_layers(model)) if args.output_tokens else []
    if missing_weights and not args.no_graphs:  # the subject model is at hand: compute them
        from autointerp.models import load_model
        from autointerp.weights import store_weight_facts

        subject["model"] = load_model(model, progress=not args.no_progress)
        with stdout_to_stderr():
            store_weight_facts(
                store, subject["model"], missing_weights, progress=not args.no_progress
            )
    with (
        _llm(args, store) as (client, explain_cfg, templates),
        stdout_to_stderr(),
    ):
        result = evaluate(
            store,
            model,
            cfg,
            explain_cfg,
            client,
            templates,
            build_graphs=None if args.no_graphs else build_graphs,
            progress=not args.no_progress,
            runner=explain_runner(executor, args.workers),
        )
    if args.plot:
        known = store.latest_evaluation(model, "calibrate")
        Path(args.plot).write_bytes(
            eval_plot(result, known["result"]["features"] if known else None)
        )
    if args.json:
        print_json(result)
        return 0
    print(
        f"{model} layers {','.join(map(str, layers))}: {args.sample} random firing neurons per "
        "layer "
        f"(seed {args.seed}); explainer {result['explainer_model']}, simulator "
        f"{result['simulator_model']} ({result['simulator_mode']})"
    )
    print(
        f"{'method':<24} {'n':>3} {'mean':>6} {'median':>6} {'95% CI':>16} {'>=0.5':>6} "
        f"{'failed':>6} "
        f"{'undef':>6}"
    )
    for name, s in result["methods"].items():
        ci = f"[{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]" if s["ci95"] else "-"
        frac = f"{s['frac_ge_0_5']:6.2f}" if s["frac_ge_0_5"] is not None else "     -"
        print(
            f"{name:<24} {s['n']:>3} {_fmt(s['mean'])} {_fmt(s['median'])} {ci:>16} {frac} "
            f"{s['failed']:>6} "
            f"{s['undefined']:>6}"
        )
    print("paired differences (per neuron, both scored):")
    for name, d in result["paired"].items():
        ci = f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else "-"
        print(f"  {name:<22} n={d['n']:<3} mean {_fmt(d['mean'])}  95% CI {ci}")
    for name, agreement in result.get("scorer_agreement", {}).items():
        rho = agreement["spearman_with_simulation"]
        print(
            f"{name} scorer: Spearman {_fmt(rho)} with the simulation scores over "
            f"{agreement['n']} neurons, {agreement['seconds_per_neuron']:.2f} s per neuron"
            + (
                f", {agreement['llm_calls_per_neuron']:.1f} LLM calls per neuron"
                if agreement["llm_calls_per_neuron"]
                else ""
            )
        )
    print(f"stored as eval run {result['run_id']}" + (f"; plot: {args.plot}" if args.plot else ""))
    return 0
