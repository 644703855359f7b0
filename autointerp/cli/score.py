"""``autointerp score``: score any description of a neuron - your own hypothesis - with the default
simulator on the held-out records its stored scores were computed on, and print it beside them.

The work is :func:`autointerp.explain.score_text.score_description`; this module parses, opens the
LLM only when the library asks for it (a description in the template grammar needs none, so the
local server is not started for it), and prints."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from autointerp.cli.common import Commands, add_db_option, db_path, print_json, store_model
from autointerp.cli.explain import add_call_options, add_endpoint_options, llm_session, llm_settings
from autointerp.ranges import parse_neuron
from autointerp.untrusted import terminal_text

if TYPE_CHECKING:
    from autointerp.explain.simulate import Simulator
    from autointerp.store import Store

commands = Commands()


@commands.add(
    "score",
    help="score your own description of a neuron beside its stored explanation's score",
    description=(
        "Score TEXT as an explanation of neuron L/N with the default (rule) simulator, on the same"
        " held-out records as the neuron's stored scores, and print it beside the stored"
        " explanation's, the token baseline's and the N2G graph's. A description in the template"
        ' grammar (the token "X"; the tokens "a", "b" and "c"; see docs/explanations.md) is'
        " compiled with no LLM; any other is compiled by the LLM (--base-url, else the embedded"
        " local server)."
        " Nothing is stored unless --save."
    ),
    epilog=(
        "examples:\n  autointerp score gemma-3-270m 9/117 'the token \"Extended\"'\n"
        "  autointerp score gemma-3-270m 9/117 'hyphens between two words' --json --save"
    ),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def score_options(p: argparse.ArgumentParser) -> None:
    from autointerp.explain.score_text import MAX_TEXT_CHARS

    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 9/117")
    p.add_argument(
        "description",
        metavar="TEXT",
        help=f"the description to score (at most {MAX_TEXT_CHARS} characters)",
    )
    p.add_argument(
        "--save",
        action="store_true",
        help=(
            "store the description and its score (or why it has none) as a user explanation of the"
            " neuron: `autointerp neuron` and the neuron page list it"
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_endpoint_options(p)
    add_call_options(p)
    p.add_argument("--prompts", default=None, help="prompt template folder (default: prompts/)")
    add_db_option(p)
    p.set_defaults(func=cmd_score, simulator_mode="rule")


def cmd_score(args: argparse.Namespace) -> int:
    from autointerp.explain.score_text import score_description
    from autointerp.store import Store

    layer, neuron = parse_neuron(args.neuron)
    store = Store(db_path(args), create=False)
    model = store_model(store, args.model)
    result = score_description(
        store,
        model,
        layer,
        neuron,
        args.description,
        lambda: _compiler(args, store),
        save=args.save,
    )
    if args.json:
        print_json(result)
    else:
        _print(result)
    if result["status"] == "failed":
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _compiler(args: argparse.Namespace, store: Store) -> Iterator[Simulator]:
    """The rule simulator on the LLM the options name (the endpoints, or the local server, started
    here and stopped when scoring is done)."""
    from autointerp.explain.prompts import load_templates
    from autointerp.explain.simulate import Simulator

    templates = load_templates(args.prompts)
    settings = llm_settings(args)
    if settings.base_urls and not settings.explainer_model and settings.simulator_model:
        # only the simulator compiles here: naming it is enough
        settings = dataclasses.replace(settings, explainer_model=settings.simulator_model)
    with llm_session(args, settings, store) as llm:
        yield Simulator(llm.client, llm.simulator_model, templates, "rule")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _print(r: dict[str, Any]) -> None:
    """The result as a few lines: the score and what it is made of, the rule, the stored scores."""
    import json

    print(f"{r['model']} {r['neuron']}: {terminal_text(r['text'])}")
    if r["status"] == "ok":
        print(
            f"  score {_number(r['score'])} (top {_number(r['score_top'])}, random"
            f" {_number(r['score_random'])}, AUPRC {_number(r['auprc'])}) on {r['n_tokens']}"
            " held-out tokens"
        )
    elif r["status"] == "undefined":
        print(f"  no score: {terminal_text(r['error'] or '')}")
    if r["rule"] is not None:
        rule = terminal_text(json.dumps(r["rule"], ensure_ascii=False))
        print(f"  rule ({terminal_text(r['compiled_by'])}): {rule}")
        if r.get("fire_rate") is not None:
            print(f"  it fires on {r['fire_rate']:.1%} of the held-out tokens")
    if any(r[k] is not None for k in ("explanation_score", "baseline_score", "n2g_score")):
        said = f" ({terminal_text(r['explanation'])})" if r["explanation"] else ""
        where = "on the same records" if r["same_records"] else "on other records"
        print(
            f"  stored, {where}: explanation {_number(r['explanation_score'])}{said},"
            f" baseline {_number(r['baseline_score'])}, N2G graph {_number(r['n2g_score'])}"
        )
    else:
        print(f"  no stored scores yet (`autointerp explain {r['model']}` computes them)")
    if r["saved"]:
        print(f"  saved: `autointerp neuron {r['model']} {r['neuron']}` lists it")
