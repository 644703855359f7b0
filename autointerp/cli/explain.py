"""``autointerp explain``: explanations by an LLM, scored by simulation, with the token-lookup
baseline and the N2G graph scored on the same held-out text. Which LLM (endpoints or the embedded
local server) is :class:`autointerp.llm.session.LLMSession`'s business."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_executor_options,
    at_least,
    db_path,
    default_of,
    finite,
    log,
    parse_executor,
    print_json,
    stored_layers,
)
from autointerp.errors import UserError
from autointerp.packaged import DEFAULT_LOCAL_LLM

commands = Commands()


def add_record_options(p: argparse.ArgumentParser) -> None:
    """How many examples the explainer sees and the simulator is scored on, and how many candidate
    explanations are drawn: the same options for explain, calibrate and eval, with ExplainConfig's
    defaults."""
    from autointerp.explain.run import ExplainConfig

    def default(name: str) -> Any:
        return default_of(ExplainConfig, name)

    p.add_argument(
        "--sim-top",
        type=int,
        default=default("sim_top"),
        help=f"held-out top examples simulated (default {default('sim_top')})",
    )
    p.add_argument(
        "--sim-random",
        type=int,
        default=default("sim_random"),
        help=f"held-out random examples simulated (default {default('sim_random')})",
    )
    p.add_argument(
        "--explain-records",
        type=int,
        default=default("explain_records"),
        help=f"top training examples shown (default {default('explain_records')})",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=default("candidates"),
        help=(
            "best-of-n: sample N explanations per neuron, keep the one that scores best on "
            "validation records (training-split examples the explainer did not see; the reported "
            f"score stays on the test split) (default {default('candidates')})"
        ),
    )
    p.add_argument(
        "--output-tokens",
        type=int,
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
    from autointerp.executors import EXPLAIN_CHUNK

    add_executor_options(
        p,
        tasks=(
            f"every {EXPLAIN_CHUNK} neurons are a task on the cluster, whose workers call the LLM"
            " servers themselves (they must reach --base-url; the local server suits ray:local);"
            " only this process writes --db"
        ),
        workers="tasks at once (default: twice the cluster's CPUs)",
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
    from autointerp.explain.run import ExplainConfig
    from autointerp.explain.simulate import MODES
    from autointerp.llm.client import LLMSettings

    def default(name: str) -> Any:
        return default_of(ExplainConfig, name)

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
    p.add_argument(
        "--simulator-mode",
        default=default("simulator_mode"),
        choices=list(MODES),
        help=(
            "rule (default: the LLM compiles the explanation into a matching rule of words and a "
            "regular expression, applied to every token), or token-by-token LLM simulation: auto "
            "(probe the endpoint), echo (prompt logprobs: llama.cpp, vLLM), chat-logprobs (hosted "
            "chat models), json (no logprobs)"
        ),
    )
    add_record_options(p)
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
    p.add_argument(
        "--concurrency",
        type=int,
        default=default("concurrency"),
        help=f"neurons processed at once (default {default('concurrency')})",
    )
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
        help=f"seconds per LLM request (default {timeout:g})",
    )
    p.add_argument(
        "--threads",
        type=at_least(1),
        default=None,
        help="CPU threads for the local server (default: all)",
    )
    p.add_argument(
        "--price-table",
        default=None,
        help='JSON {"model": {"prompt": $ per 1M tokens, "completion": ...}} to report dollars',
    )
    p.add_argument("--prompts", default=None, help="prompt template folder (default: prompts/)")
    add_prompt_variant_option(p)
    add_llm_executor_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--json", action="store_true", help="print a JSON summary (counts, tokens, cost)"
    )
    add_db_option(p)
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from autointerp.executors import explain_runner
    from autointerp.explain.prompts import load_templates
    from autointerp.explain.run import ExplainConfig, check_heldout, explain_layers, plan_neurons
    from autointerp.explain.simulate import LOGPROB_FREE_MODES
    from autointerp.llm.client import LLMSettings, load_prices
    from autointerp.llm.session import LLMSession
    from autointerp.model_names import canonical_model_name
    from autointerp.store import Store

    options = {
        "sim_top": args.sim_top,
        "sim_random": args.sim_random,
        "simulator_mode": args.simulator_mode,
        "use_n2g": not args.no_n2g,
        "negative": args.negative,
        "baseline": not args.no_baseline,
        "explain_records": args.explain_records,
        "candidates": args.candidates,
        "output_tokens": args.output_tokens,
    }
    ExplainConfig(**options, concurrency=args.concurrency)  # nonsense numbers: refused before all
    executor = parse_executor(args)
    store = Store(db_path(args), create=False)
    model = canonical_model_name(args.model)
    layers = stored_layers(store, model, args.layers)
    if layers is None:
        layers = sorted(store.harvested_layers(model))
        if not layers:
            raise UserError(
                f"No complete harvest of {model} in {store.path}; run `autointerp harvest` first."
            )
    settings = LLMSettings.from_env(
        base_url=args.base_url,
        api_key=args.api_key,
        explainer_model=args.explainer_model,
        simulator_model=args.simulator_model,
        timeout=args.llm_timeout,
        max_attempts=args.max_attempts,
        concurrency=args.concurrency,
        prices=load_prices(args.price_table),
    )
    info = store.model_info(model)
    if info is None:
        raise UserError(
            f"{model} has not been harvested in {store.path}; run `autointerp harvest` first."
        )
    if args.negative and not info.get("gated_mlp"):
        # GELU/ReLU neurons (GPT-2 style) barely go below zero (GELU's minimum is -0.17) and their
        # harvest keeps no bottom examples, so there is no negative side to explain; the positive
        # side is explained as usual.
        print(
            f"note: --negative does nothing for {model}: its MLP is not gated "
            f"({info.get('act_fn')}), so its neurons have no negative side worth explaining",
            file=sys.stderr,
        )
    templates = load_templates(args.prompts, args.prompt)
    # what the database can tell is checked before any LLM is contacted
    plan = plan_neurons(store, model, layers, args.neurons, int(info["d_mlp"]))
    check_heldout(store, plan, ExplainConfig(**options))
    llm = LLMSession(
        settings,
        store.path,
        local_llm=args.local_llm,
        threads=args.threads,
        prompt_logprobs=args.simulator_mode not in LOGPROB_FREE_MODES,
        check_endpoints=True,
        log=log,
    )
    with llm:
        cfg = ExplainConfig(
            explainer_model=llm.explainer_model,
            simulator_model=llm.simulator_model,
            prompt_version=templates.version,
            concurrency=settings.concurrency,
            **options,
        )
        summary = explain_layers(
            store,
            model,
            layers,
            args.neurons,
            cfg,
            llm.client,
            templates,
            settings.prices,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            runner=explain_runner(executor, args.workers),
        )
    endpoints = llm.client.endpoint_usage()
    u = summary.usage
    out = {
        "model": model,
        "layers": layers,
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
    }
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
    # Nothing explained at all (every explanation call failed) is an error; explanations whose
    # scores failed (e.g. a simulator that does not answer on the 0-9 scale) are output, with the
    # failures recorded, counted above and redone by --retry-failed.
    if summary.failed and not summary.explained and summary.unexplained == summary.failed:
        print(
            f"error: every one of the {summary.failed} neurons processed failed to get an "
            f"explanation (the reasons are stored; see `autointerp neuron {model} L/N`).",
            file=sys.stderr,
        )
        return 1
    return 0
