"""``autointerp explain``: explanations by an LLM, scored by simulation, with the token-lookup
baseline and the N2G graph scored on the same held-out text. Which LLM (endpoints or the embedded
local server) is :class:`autointerp.llm.session.LLMSession`'s business.

The LLM's options are declared here once (:func:`add_llm_options`) for ``explain``, ``eval`` and
``calibrate``, with the functions that read them (:func:`explain_config`, :func:`llm_settings`,
:func:`llm_session`): the three commands take the same endpoints (a pool), refuse the same nonsense
and check the endpoint up front alike."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_executor_options,
    at_least,
    count_or_all,
    db_path,
    default_of,
    finite,
    log,
    parse_executor,
    print_json,
    stored_layers,
    whole,
)
from autointerp.packaged import DEFAULT_LOCAL_LLM

if TYPE_CHECKING:
    from autointerp.explain.config import ExplainConfig
    from autointerp.explain.plan import ExplainPlan
    from autointerp.explain.prompts import Templates
    from autointerp.explain.run import ExplainSummary
    from autointerp.llm.client import LLMSettings
    from autointerp.llm.session import LLMSession
    from autointerp.store import Store

commands = Commands()


def add_record_options(p: argparse.ArgumentParser) -> None:
    """How many examples the explainer sees and the simulator is scored on, and how many candidate
    explanations are drawn: the same options for explain, calibrate and eval, with ExplainConfig's
    defaults."""
    from autointerp.explain.config import LLM_SIM_RECORDS, ExplainConfig

    def default(name: str) -> Any:
        return default_of(ExplainConfig, name)

    every = (
        f"(default: every one the harvest kept under the rule simulator, {LLM_SIM_RECORDS} under a"
        " token-by-token one, where each is an LLM call)"
    )
    p.add_argument(
        "--sim-top",
        type=count_or_all,
        default=default("sim_top"),
        metavar="N|all",
        help=f"held-out top examples simulated {every}",
    )
    p.add_argument(
        "--sim-random",
        type=count_or_all,
        default=default("sim_random"),
        metavar="N|all",
        help=f"held-out random examples simulated {every}",
    )
    p.add_argument(
        "--explain-records",
        type=whole(),
        default=default("explain_records"),
        help=f"top training examples shown (default {default('explain_records')})",
    )
    p.add_argument(
        "--candidates",
        type=whole(),
        default=default("candidates"),
        help=(
            "best-of-n: sample N explanations per neuron, keep the one that scores best on "
            "the validation split (examples neither the explainer nor written candidates saw; the "
            f"reported score stays on the test split) (default {default('candidates')})"
        ),
    )
    p.add_argument(
        "--rounds",
        type=at_least(0),
        default=default("rounds"),
        metavar="K",
        help=(
            "feedback rounds (rule simulator): show the explainer where its explanation's rule "
            "missed and fired wrongly on validation records and ask for a revision, kept only when"
            f" it scores better there (default {default('rounds')}; 0: none)"
        ),
    )
    p.add_argument(
        "--llm-only",
        action="store_true",
        help=(
            "keep only explanations the LLM wrote: no candidates written from the token statistics,"
            " the N2G graph or the single-token template (by default they compete with the LLM's "
            "on validation records, and the kept one's origin is stored)"
        ),
    )
    p.add_argument(
        "--no-restate",
        action="store_true",
        help="do not ask the LLM to restate the best graph-written candidate in plain words",
    )
    p.add_argument(
        "--output-tokens",
        type=whole(),
        default=default("output_tokens"),
        metavar="N",
        help=(
            "also show the explainer the N tokens the neuron's output promotes most and the N it "
            "suppresses (direct logit effect, from `autointerp weights`; eval computes missing "
            f"ones) (default {default('output_tokens')}: none)"
        ),
    )


def add_prompt_variant_option(p: argparse.ArgumentParser) -> None:
    """--prompt: how the explainer sees the records (explain, calibrate, eval)."""
    from autointerp.explain.prompts import DEFAULT_VARIANT, PROMPT_VARIANTS

    p.add_argument(
        "--prompt",
        default=DEFAULT_VARIANT,
        choices=list(PROMPT_VARIANTS),
        help=(
            "explainer prompt variant: tokens (every token with its 0-9 activation, as OpenAI's "
            "neuron-explainer) or summary (each excerpt as text, then only the tokens it fires on; "
            f"about a third fewer prompt tokens) (default {DEFAULT_VARIANT})"
        ),
    )


def add_llm_executor_options(p: argparse.ArgumentParser) -> None:
    """--executor/--workers for the LLM stage (explain, and eval's and calibrate's explain step)."""
    from autointerp.explain.ray import EXPLAIN_CHUNK

    add_executor_options(
        p,
        tasks=(
            f"every {EXPLAIN_CHUNK} neurons are a task on the cluster, whose workers call the LLM"
            " servers themselves (they must reach --base-url; the local server suits ray:local);"
            " only this process writes --db"
        ),
        workers="tasks at once (default: twice the cluster's CPUs)",
    )


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    """Which LLM: the endpoint(s) and key, the models on them, or the packaged local model (explain,
    eval, calibrate, and score, whose LLM only compiles a description into a rule)."""
    p.add_argument(
        "--base-url",
        action="append",
        default=None,
        help=(
            "OpenAI-compatible endpoint; repeat it (or comma-separate) for a pool of servers that"
            " serve the same models: requests go to the least busy, a failing one is rested and the"
            " others take its work (default: $OPENAI_BASE_URLS, $OPENAI_BASE_URL, else the embedded"
            " local server)"
        ),
    )
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument(
        "--explainer-model",
        default=None,
        help=(
            "model that writes explanations "
            f"($AUTOINTERP_EXPLAINER_MODEL; local default {DEFAULT_LOCAL_LLM})"
        ),
    )
    p.add_argument(
        "--simulator-model", default=None, help="model that simulates (default: the explainer)"
    )
    p.add_argument(
        "--local-llm",
        default=DEFAULT_LOCAL_LLM,
        help=(
            f"packaged model for the local server: {DEFAULT_LOCAL_LLM} (default) or "
            "qwen2.5-coder-0.5b (fast)"
        ),
    )


def add_call_options(p: argparse.ArgumentParser) -> None:
    """How each LLM call is made: attempts, timeout, and the local server's threads."""
    from autointerp.llm.client import LLMSettings

    p.add_argument(
        "--max-attempts",
        type=at_least(1),
        default=default_of(LLMSettings, "max_attempts"),
        help="attempts per LLM call before recording a failure",
    )
    timeout = default_of(LLMSettings, "timeout")
    p.add_argument(
        "--llm-timeout",
        type=finite,
        default=timeout,
        help=(
            f"deadline of each LLM request in seconds, the whole request: connecting, headers"
            f" and body (default {timeout:g})"
        ),
    )
    p.add_argument(
        "--threads",
        type=at_least(1),
        default=None,
        help="CPU threads for the local server (default: all)",
    )


def add_llm_options(
    p: argparse.ArgumentParser,
    stage_options: Callable[[argparse.ArgumentParser], None] | None = None,
    price_table: bool = False,
) -> None:
    """The LLM's options, the same for explain, eval and calibrate: which endpoint(s) or local
    model, which models explain and simulate, the records shown and scored, attempts, timeout,
    prompts and executor. ``stage_options`` adds the command's own options after the record
    options (where ``--help`` lists them), ``price_table`` the price table of ``explain``."""
    from autointerp.explain.config import ExplainConfig
    from autointerp.explain.simulate import MODES

    add_endpoint_options(p)
    p.add_argument(
        "--simulator-mode",
        default=default_of(ExplainConfig, "simulator_mode"),
        choices=list(MODES),
        help=(
            "rule (default: the LLM compiles the explanation into a matching rule of words and a "
            "regular expression, applied to every token), or token-by-token LLM simulation: auto "
            "(probe the endpoint), echo (prompt logprobs: llama.cpp, vLLM), chat-logprobs (hosted "
            "chat models), json (no logprobs)"
        ),
    )
    add_record_options(p)
    if stage_options is not None:
        stage_options(p)
    add_call_options(p)
    if price_table:
        p.add_argument(
            "--price-table",
            default=None,
            help='JSON {"model": {"prompt": $ per 1M tokens, "completion": ...}} to report dollars',
        )
    p.add_argument("--prompts", default=None, help="prompt template folder (default: prompts/)")
    add_prompt_variant_option(p)
    add_llm_executor_options(p)


def explain_config(args: argparse.Namespace, templates: Templates, **stage: Any) -> ExplainConfig:
    """The explain config the LLM options give (without the LLMs' names, known once the session is
    up: :meth:`ExplainConfig.with_models`); ``stage``: the command's own fields. Nonsense numbers
    are refused here, before anything runs."""
    from autointerp.explain.config import ExplainConfig

    return ExplainConfig(
        prompt_version=templates.version,
        sim_top=args.sim_top,
        sim_random=args.sim_random,
        simulator_mode=args.simulator_mode,
        explain_records=args.explain_records,
        candidates=args.candidates,
        output_tokens=args.output_tokens,
        rounds=args.rounds,
        written_candidates=not args.llm_only,
        restate=not args.no_restate,
        **stage,
    )


def llm_settings(args: argparse.Namespace, **extra: Any) -> LLMSettings:
    """The endpoints, key, models, timeout and attempts the options (or the environment) give;
    ``extra``: more settings of the command (explain's concurrency and prices)."""
    from autointerp.llm.client import LLMSettings

    return LLMSettings.from_env(
        base_url=args.base_url,
        api_key=args.api_key,
        explainer_model=args.explainer_model,
        simulator_model=args.simulator_model,
        timeout=args.llm_timeout,
        max_attempts=args.max_attempts,
        **extra,
    )


def llm_session(args: argparse.Namespace, settings: LLMSettings, store: Store | str) -> LLMSession:
    """The LLM session of the options: the endpoints, checked now (a malformed or silent one is one
    sentence before any work), or the local server, started on entering. Its response cache is in
    ``store`` (or the database file at that path, which ``run`` creates only later)."""
    from autointerp.explain.simulate import LOGPROB_FREE_MODES
    from autointerp.llm.session import LLMSession

    return LLMSession(
        settings,
        store if isinstance(store, str) else store.path,
        local_llm=args.local_llm,
        threads=args.threads,
        prompt_logprobs=args.simulator_mode not in LOGPROB_FREE_MODES,
        check_endpoints=True,
        log=log,
    )


def add_explain_stage_options(p: argparse.ArgumentParser) -> None:
    """explain's own options among the LLM's: which sides and methods, retries, concurrency."""
    from autointerp.explain.config import ExplainConfig

    p.add_argument(
        "--negative", action="store_true", help="also explain the negative side of gated neurons"
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the token-lookup baseline")
    p.add_argument(
        "--no-n2g", action="store_true", help="do not show the N2G graph's paths to the explainer"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="redo only the neurons with a recorded failure"
    )
    concurrency = default_of(ExplainConfig, "concurrency")
    p.add_argument(
        "--concurrency",
        type=whole(),
        default=concurrency,
        help=f"neurons processed at once (default {concurrency})",
    )
    from autointerp.explain.run import STOP_AFTER_FAILURES

    p.add_argument(
        "--stop-after-failures",
        type=at_least(0),
        default=STOP_AFTER_FAILURES,
        metavar="N",
        help=(
            "stop after N neurons in a row whose every LLM call failed at the endpoint (refused,"
            " timed out, 429, 5xx); --retry-failed resumes (default"
            f" {STOP_AFTER_FAILURES}; 0: never stop)"
        ),
    )


@commands.add(
    "explain",
    help="explain neurons with an LLM and score explanations, baseline and N2G by simulation",
    description=(
        "For each chosen neuron: an LLM explains its top training examples (prompts/ templates), a"
        " simulator predicts its activations on held-out top + random text from the explanation,"
        " and the score is the correlation with the real activations. The token-lookup baseline and"
        " the N2G graph are scored on the same text. Resumable per neuron; a failed LLM call is"
        " recorded with its reason, never as a score. With no --base-url / OPENAI_BASE_URL, a local"
        " llama.cpp server with a packaged Qwen2.5-Coder model is started and stopped"
        " automatically."
    ),
    epilog=(
        "examples:\n  autointerp explain gemma-3-270m --layers 3,9 --neurons best:4\n  autointerp"
        " explain smollm2-135m --layers 2 --neurons 0-9 --local-llm qwen2.5-coder-0.5b\n "
        " OPENAI_API_KEY=... autointerp explain gemma-3-270m --layers 9 --neurons top:20 \\\n     "
        " --base-url https://api.openai.com/v1 --explainer-model gpt-4o-mini --simulator-mode"
        " chat-logprobs"
    ),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "--layers",
        default=None,
        help=(
            "layers, e.g. 3,9 or 0-5, or auto (the layers `harvest --layers auto` "
            "chose) (default: every harvested layer)"
        ),
    )
    p.add_argument(
        "--neurons",
        default="best:4",
        help=(
            "best:K (the K strongest that are not dense, not from one document and not sharing a"
            " top context; default best:4), top:K (strongest max activation), ranges like"
            " 0-15,100, or all"
        ),
    )
    add_llm_options(p, add_explain_stage_options, price_table=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--json", action="store_true", help="print a JSON summary (counts, tokens, cost)"
    )
    add_db_option(p)
    p.set_defaults(func=cmd_explain)


def explain_inputs(args: argparse.Namespace) -> tuple[Templates, ExplainConfig, LLMSettings]:
    """The prompt templates, explain config and LLM settings that explain's options give (the
    options :func:`add_llm_options` and :func:`add_explain_stage_options` add): ``explain`` and
    ``run`` explain alike."""
    from autointerp.explain.prompts import load_templates
    from autointerp.llm.client import load_prices

    templates = load_templates(args.prompts, args.prompt)
    stage = {
        "use_n2g": not args.no_n2g,
        "negative": args.negative,
        "baseline": not args.no_baseline,
    }
    cfg = explain_config(args, templates, **stage, concurrency=args.concurrency)
    settings = llm_settings(
        args, concurrency=args.concurrency, prices=load_prices(args.price_table)
    )
    return templates, cfg, settings


def cmd_explain(args: argparse.Namespace) -> int:
    from autointerp.explain.plan import plan_explain
    from autointerp.explain.ray import explain_runner
    from autointerp.explain.run import explain_layers
    from autointerp.model_names import canonical_model_name
    from autointerp.store import Store

    executor = parse_executor(args)
    templates, cfg, settings = explain_inputs(args)
    store = Store(db_path(args), create=False)
    model = canonical_model_name(args.model)
    info = store.model_info(model) or {}
    if args.negative and info and not info.get("gated_mlp"):
        # GELU/ReLU neurons (GPT-2 style) barely go below zero (GELU's minimum is -0.17) and their
        # harvest keeps no bottom examples, so there is no negative side to explain; the positive
        # side is explained as usual. Said first: it holds whatever layers are asked for.
        print(
            f"note: --negative does nothing for {model}: its MLP is not gated "
            f"({info.get('act_fn')}), so its neurons have no negative side worth explaining",
            file=sys.stderr,
        )
    # what the database can tell is checked before any LLM is contacted
    plan = plan_explain(store, model, stored_layers(store, model, args.layers), cfg, args.neurons)
    with llm_session(args, settings, store) as llm:
        plan = plan.with_models(llm.explainer_model, llm.simulator_model)
        summary = explain_layers(
            store,
            plan,
            llm.client,
            templates,
            settings.prices,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            runner=explain_runner(executor, args.workers),
            stop_after=args.stop_after_failures or None,
        )
    return _report(args, plan, summary, llm.client.endpoint_usage())


def _report(
    args: argparse.Namespace,
    plan: ExplainPlan,
    summary: ExplainSummary,
    endpoints: list[dict[str, Any]],
) -> int:
    """Print what the run did (text or ``--json``); exit status 1 when no neuron got an
    explanation at all."""
    model, cfg, u = plan.model, plan.cfg, summary.usage
    out = {
        "model": model,
        "layers": plan.layer_numbers,
        "explain_run_id": summary.run_id,
        "explained": summary.explained,
        "failed": summary.failed,
        "already_done": summary.skipped,
        "seconds": round(summary.seconds, 1),
        "explainer_model": cfg.explainer_model,
        "simulator_model": cfg.simulator_model,
        "prompt_version": cfg.prompt_version,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "llm_calls": u.calls,
        "cached_calls": u.cached_calls,
        "cost_usd": summary.cost_usd,
        "endpoints": endpoints,
        "origins": summary.origins,
    }
    if summary.stopped:
        out["stopped"] = summary.stopped
    if args.json:
        print_json(out)
    else:
        per = (
            f", {summary.seconds / max(1, summary.explained + summary.failed):.1f} s/neuron"
            if summary.explained + summary.failed
            else ""
        )
        print(
            f"explained {summary.explained} neurons, {summary.failed} with failures recorded,"
            f" {summary.skipped} already done{per}; tokens: {u.prompt_tokens} prompt +"
            f" {u.completion_tokens} completion in {u.calls} calls ({u.cached_calls} from the"
            " cache)"
        )
        if summary.origins:
            kept = ", ".join(f"{o} {n}" for o, n in sorted(summary.origins.items()))
            print(f"kept explanations by who wrote them: {kept}")
        if len(endpoints) > 1:
            for e in endpoints:
                print(
                    f"  {e['url']}: {e['prompt_tokens']} prompt + {e['completion_tokens']}"
                    f" completion tokens in {e['calls']} calls, {e['failures']} failures"
                )
        if summary.failed:
            print(
                f"Redo the failures with: autointerp explain {model} --retry-failed (same options)"
            )
    if summary.stopped:  # the endpoint kept failing: one sentence, what is recorded stays
        print(f"error: {summary.stopped}", file=sys.stderr)
        return 1
    # Nothing explained at all (every explanation call failed) is an error; explanations whose
    # scores failed (e.g. a simulator that does not answer on the 0-9 scale) are output, with the
    # failures recorded, counted above and redone by --retry-failed.
    if summary.failed and not summary.explained and summary.unexplained == summary.failed:
        print(
            f"error: the LLM wrote no explanation for any of the {summary.failed} neurons "
            f"processed (the reasons are stored; see `autointerp neuron {model} L/N`).",
            file=sys.stderr,
        )
        return 1
    return 0
