"""``autointerp calibrate`` and ``autointerp eval``: measuring explanation quality on
known-answer features and on a seeded random sample of neurons, with text and JSON reports.

Both talk to an LLM as ``explain`` does (:class:`autointerp.llm.session.LLMSession`: the endpoint
the options name, or the embedded local server) and take its LLM options, declared once in
:mod:`autointerp.cli.explain` (:func:`~autointerp.cli.explain.add_llm_options`). Each handler
parses, plans (what the database can tell is checked before the LLM starts), runs and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp.cli.common import (
    INT64_MAX,
    Commands,
    add_db_option,
    db_path,
    default_of,
    log,
    parse_executor,
    print_json,
    stdout_to_stderr,
    whole,
)
from autointerp.cli.explain import add_llm_options, explain_config, llm_session, llm_settings
from autointerp.errors import UserError
from autointerp.untrusted import terminal_text

if TYPE_CHECKING:
    from autointerp.eval.control import ControlSpec
    from autointerp.eval.control_run import ControlPlan
    from autointerp.eval.evaluate import EvalConfig, EvalPlan, GraphBuilder
    from autointerp.eval.features import RegexFeature
    from autointerp.executors import Executor
    from autointerp.explain.config import ExplainConfig
    from autointerp.models import SubjectModel
    from autointerp.store import Store

commands = Commands()


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """--no-progress, --json and --db, after the LLM options."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_db_option(p)


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
        "--tokens",
        type=whole(INT64_MAX),
        default=tokens,
        help=f"corpus tokens to harvest (default {tokens})",
    )
    p.add_argument(
        "--corpus",
        default=default_of(CalibrateConfig, "corpus"),
        help="corpus (default: the packaged wiki + code mix)",
    )
    add_llm_options(p)
    _add_output_options(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from autointerp.eval.calibrate import CalibrateConfig, calibrate
    from autointerp.eval.features import load_features
    from autointerp.explain.prompts import load_templates
    from autointerp.explain.ray import explain_runner
    from autointerp.models import load_tokenizer
    from autointerp.store import Store

    features = load_features(args.features)
    if args.output_tokens:
        raise UserError(
            "--output-tokens shows what a neuron's output weights promote; known-answer features"
            " have no weights (use it with eval or explain)."
        )
    cfg = CalibrateConfig(corpus=args.corpus, tokens=args.tokens)
    executor = parse_executor(args)
    templates = load_templates(args.prompts, args.prompt)
    explain_cfg = explain_config(args, templates)
    settings = llm_settings(args)
    with stdout_to_stderr():
        name, tokenizer = load_tokenizer(args.model, progress=not args.no_progress)
    store = Store(db_path(args))
    with llm_session(args, settings, store) as llm, stdout_to_stderr():
        result = calibrate(
            store,
            name,
            tokenizer,
            features,
            cfg,
            explain_cfg.with_models(llm.explainer_model, llm.simulator_model),
            llm.client,
            templates,
            progress=not args.no_progress,
            log=log,
            runner=explain_runner(executor, args.workers),
        )
    _print_calibration(args, name, features, result)
    return 0


def _print_calibration(
    args: argparse.Namespace, name: str, features: list[RegexFeature], result: dict[str, Any]
) -> None:
    """The calibration as a table (or the features' rows as JSON)."""
    if args.json:
        print_json(result["features"])
        return
    print(
        f"known-answer features of {name} ({len(features)}, {args.tokens} tokens of "
        f"{args.corpus}); "
        f"explainer {result['explainer_model']}, simulator {result['simulator_model']} "
        f"({result['simulator_mode']})"
    )
    print(
        "true = simulator given the true description (its ceiling); expl = the kept explanation "
        "(its origin below); llm1 = the LLM's first explanation alone; scores are correlations on "
        "held-out text"
    )
    print(
        f"{'feature':<24} {'active':>7} {'true':>6} {'expl':>6} {'llm1':>6} {'base':>6} {'n2g':>6}"
        "  origin: explanation"
    )
    for r in result["features"]:
        active = f"{100 * r['frac_active']:6.2f}%" if r["frac_active"] is not None else "      -"
        explanation = terminal_text(r["explanation"] or "-")  # LLM text: never raw controls
        print(
            f"{terminal_text(r['name'][:24]):<24} {active} {_fmt(r['true_score'])}"
            f" {_fmt(r['explanation_score'])} {_fmt(r.get('explanation_first_score'))}"
            f" {_fmt(r['baseline_score'])} {_fmt(r['n2g_score'])}"
            f"  {r.get('origin') or '-'}: {explanation}"
        )
        for method, error in r["errors"].items():
            print(f"{'':<24} {method}: {terminal_text(error)}")
    m = result["medians"]
    print(
        f"{'median':<24} {'':>7} {_fmt(m['true_score'])} {_fmt(m['explanation_score'])} "
        f"{_fmt(m.get('explanation_first_score'))} {_fmt(m['baseline_score'])} "
        f"{_fmt(m['n2g_score'])}"
    )
    rec = result.get("recovered")
    if rec:
        share = f"{rec['share_of_true']:g}"
        print(
            f"explanation >= {share} x the true description's score on {rec['explanation']} of "
            f"{rec['features']} features (the LLM's first explanation alone: "
            f"{rec['explanation_first']})"
        )
    print(f"stored as calibrate run {result['run_id']}")


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
        "differences. With --control random-init, the same for the model's architecture with "
        "seeded random weights and how far the trained model's scores stand above it. Stored as "
        "an eval run."
    ),
    epilog=(
        "examples:\n  autointerp eval gemma-3-270m --layers 3,9,15 --sample 16 --plot eval.png\n"
        "  autointerp eval smollm2-135m --layers 3 --sample 16 --control random-init"
    ),
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
        type=whole(),
        default=sample,
        help=f"random firing neurons per layer (default {sample})",
    )
    p.add_argument(
        "--seed", type=whole(INT64_MAX), default=seed, help=f"sample seed (default {seed})"
    )
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
    p.add_argument(
        "--control",
        choices=["random-init"],
        default=None,
        help=(
            "also evaluate the model's architecture with seeded random weights (stored as "
            "MODEL+random-init-SEED), harvested like the trained model's layers, its sample drawn "
            "with the same seed among its own firing neurons, and report how far the trained "
            "model's scores stand above it"
        ),
    )
    p.add_argument(
        "--control-seed",
        type=int,
        default=0,
        help="seed of the control's random weights (default 0)",
    )
    add_llm_options(p)
    _add_output_options(p)
    p.set_defaults(func=cmd_eval)


class _Subject:
    """The subject model of ``eval`` (or its random-init control), loaded at most once per dtype
    and only when something needs it (a missing harvest of the control, weight facts or N2G
    graphs)."""

    def __init__(self, name: str, progress: bool) -> None:
        self.name, self.progress = name, progress
        self._models: dict[str, SubjectModel] = {}

    def model(self, dtype: str = "float32") -> SubjectModel:
        from autointerp.random_init import load_subject

        if dtype not in self._models:
            self._models[dtype] = load_subject(self.name, progress=self.progress, dtype=dtype)
        return self._models[dtype]


def _graph_builder(
    store: Store, subject: _Subject, executor: Executor, workers: int | None
) -> GraphBuilder:
    """Builds the N2G graphs the sample lacks, in this process or as Ray tasks."""
    from autointerp.n2g.build import N2GConfig

    def build(layer: int, neurons: list[int]) -> None:
        spec = ",".join(str(n) for n in neurons)
        if executor.kind == "ray":
            from autointerp.n2g.ray import ray_graph

            ray_graph(
                subject.model(),
                store,
                [layer],
                spec,
                N2GConfig(),
                executor,
                workers=workers,
                progress=subject.progress,
            )
            return
        from autointerp.n2g.run import graph_layers

        graph_layers(subject.model(), store, [layer], spec, N2GConfig(), progress=subject.progress)

    return build


def _store_missing_weights(store: Store, plan: EvalPlan, subject: _Subject) -> None:
    """Compute the weight facts ``--output-tokens`` needs that the plan lacks."""
    from autointerp.weights import store_weight_facts

    if plan.explain.missing_weights:
        loaded = subject.model()  # its download progress may go to stdout; the facts' may not
        with stdout_to_stderr():
            store_weight_facts(
                store, loaded, plan.explain.missing_weights, progress=subject.progress
            )


def _plan_control(
    args: argparse.Namespace,
    store: Store,
    model: str,
    cfg: EvalConfig,
    explain_cfg: ExplainConfig,
    spec: ControlSpec,
) -> tuple[ControlPlan, _Subject]:
    """The random-init control harvested where it lacks a layer (building it) and planned, with
    its weight facts; and the control model, for its graphs."""
    from autointerp.eval.control_run import plan_control

    subject = _Subject(spec.model_name(model), not args.no_progress)
    with stdout_to_stderr():
        control = plan_control(
            store,
            model,
            spec,
            cfg,
            explain_cfg,
            subject.model,
            weights_to_come=not args.no_graphs,
            progress=subject.progress,
            log=log,
        )
    _store_missing_weights(store, control.plan, subject)
    return control, subject


def cmd_eval(args: argparse.Namespace) -> int:
    from autointerp.eval.control import ControlSpec
    from autointerp.eval.control_run import evaluate_control
    from autointerp.eval.evaluate import EvalConfig, evaluate, plan_eval
    from autointerp.eval.plot import eval_plot
    from autointerp.explain.prompts import load_templates
    from autointerp.explain.ray import explain_runner
    from autointerp.model_names import canonical_model_name
    from autointerp.ranges import parse_layers
    from autointerp.store import Store

    executor = parse_executor(args)
    templates = load_templates(args.prompts, args.prompt)
    explain_cfg = explain_config(args, templates)
    settings = llm_settings(args)
    spec = ControlSpec(args.control, args.control_seed) if args.control else None
    store = Store(db_path(args), create=False)
    model = canonical_model_name(args.model)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        raise UserError(f"The folder for the plot {args.plot} does not exist.")
    layers = parse_layers(args.layers)
    cfg = EvalConfig(
        layers=store.harvested_layer_list(model) if layers is None else layers,
        sample=args.sample,
        seed=args.seed,
        embedding=args.embedding_scorer,
        detection=args.detection_scorer,
    )
    # the subject model is at hand unless --no-graphs: then missing weight facts are computed
    plan = plan_eval(store, model, cfg, explain_cfg, weights_to_come=not args.no_graphs)
    progress = not args.no_progress
    subject = _Subject(model, progress)
    _store_missing_weights(store, plan, subject)
    control = _plan_control(args, store, model, cfg, explain_cfg, spec) if spec else None
    builder = None if args.no_graphs else _graph_builder(store, subject, executor, args.workers)
    with llm_session(args, settings, store) as llm, stdout_to_stderr():
        runner = explain_runner(executor, args.workers)
        control_run = None
        if control is not None:
            control_run = evaluate_control(
                store,
                control[0].with_models(llm.explainer_model, llm.simulator_model),
                llm.client,
                templates,
                None
                if args.no_graphs
                else _graph_builder(store, control[1], executor, args.workers),
                progress=progress,
                runner=runner,
            )
        result = evaluate(
            store,
            plan.with_models(llm.explainer_model, llm.simulator_model),
            llm.client,
            templates,
            build_graphs=builder,
            progress=progress,
            runner=runner,
            control=control_run,
        )
    if args.plot:
        known = store.latest_evaluation(model, "calibrate")
        Path(args.plot).write_bytes(
            eval_plot(result, known["result"]["features"] if known else None)
        )
    _print_eval(args, result)
    return 0


def _print_side_metrics(result: dict[str, Any]) -> None:
    """The numbers beside the headline (random records alone, AUPRC) and who wrote the kept
    explanations."""
    side = result.get("side_metrics", {})
    if side:
        print("beside the headline (median; n):")
        for name in next(iter(side.values())):
            cells = [
                f"{metric} {_fmt(side[metric][name]['median'])} ({side[metric][name]['n']})"
                for metric in side
            ]
            print(f"  {name:<22} " + "   ".join(cells))
    origins = result.get("origins") or {}
    if origins:
        total = sum(origins.values())
        shares = ", ".join(f"{o} {n} ({100 * n / total:.0f}%)" for o, n in origins.items())
        print(f"kept explanations by origin: {shares}")


def _print_control(result: dict[str, Any]) -> None:
    """The random-init control's summaries beside the trained model's, and the difference."""
    control = result.get("control")
    if not control:
        return
    print(
        f"random-init control {control['model']} (weights drawn with seed {control['seed']};"
        f" {len(control['neurons'])} of its own firing neurons, drawn with the same sample seed;"
        f" eval run {control['eval_run_id']}); mean scores and trained - control (unpaired:"
        " different neurons):"
    )
    print(f"  {'method':<22} {'trained':>7} {'control':>7} {'n':>7} {'diff':>7} {'95% CI':>16}")
    for name, d in control["trained_minus_control"].items():
        ci = f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else "-"
        counts = f"{d['n'][0]}/{d['n'][1]}"
        print(
            f"  {name:<22} {_fmt(result['methods'][name]['mean'], 7)}"
            f" {_fmt(control['methods'][name]['mean'], 7)} {counts:>7} {_fmt(d['mean'], 7)}"
            f" {ci:>16}"
        )


def _print_eval(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The evaluation as tables (or all of it as JSON)."""
    if args.json:
        print_json(result)
        return
    model, layers = result["model"], result["layers"]
    print(
        f"{model} layers {','.join(map(str, layers))}: {result['sample']} random firing"
        " neurons per layer "
        f"(seed {result['seed']}); explainer {result['explainer_model']}, simulator "
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
        print(f"  {name:<27} n={d['n']:<3} mean {_fmt(d['mean'])}  95% CI {ci}")
    _print_side_metrics(result)
    _print_control(result)
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
