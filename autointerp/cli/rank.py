"""``autointerp rank``: the harvested neurons ordered by an activation statistic or by how well
they are explained."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    at_least,
    db_path,
    print_json,
    whole,
)
from autointerp.errors import UserError
from autointerp.untrusted import terminal_text

commands = Commands()


def default_rank_order(store: Any, model: str, layer: int | None) -> str:
    """What ``rank`` orders by when no ``--by`` is given: the explanation score once any neuron (of
    ``layer``) has a successful one - ranking neurons by how well they are explained is what people
    run it for - else the max activation, which every harvest has."""
    return "explanation" if store.rank_neurons(model, "explanation", layer, 1) else "max"


#: What an explanation score is, in every `rank --json` row: the headline and the published
#: convention beside it.
SCORE_BASIS = (
    "correlation of simulated and real activations against the activation's "
    "positive part (the headline: an explanation says what a neuron finds, and gated "
    "MLPs' negative values are not that); score_raw: against the raw signed activation, "
    "as OpenAI and Neuronpedia score"
)


@commands.add(
    "rank",
    help="neurons ranked by a statistic or a score (explanation, n2g, baseline)",
    description=(
        "Rank harvested neurons by an activation statistic, or by how well their "
        "explanation (or N2G graph, or the token-lookup baseline) predicts them on held-out text."
    ),
)
def rank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--layer", type=at_least(0), default=None, help="only this layer")
    p.add_argument(
        "--by",
        default=None,
        help=(
            "explanation (simulation score; the default once explanations exist), "
            "max (the default before), min (most negative), frac_positive, variance, n2g "
            "(graph correlation), baseline (token-lookup score), explanation_random (the "
            "explanation's correlation on random text alone), explanation_auprc (its average "
            "precision against 'the neuron fires'), explanation_negative, cos_in_out "
            "(cos(w_in, w_out), most positive first; cos_in_out_negative: most negative first; "
            "from `autointerp weights`). The order used is said on stderr and as "
            '"ranked_by" in --json'
        ),
    )
    p.add_argument("--limit", type=whole(), default=20, help="how many (default 20)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print JSON: a list of {"layer", "neuron", "score", "explanation", ...}, best first',
    )
    add_db_option(p)
    p.set_defaults(func=cmd_rank)


def cmd_rank(args: argparse.Namespace) -> int:
    from autointerp.model_names import canonical_model_name
    from autointerp.store import Store

    store = Store(db_path(args), create=False)
    model = canonical_model_name(args.model)
    if args.limit < 1:
        raise UserError("--limit must be at least 1.")
    by = args.by or default_rank_order(store, model, args.layer)
    rows = store.rank_neurons(model, by, args.layer, args.limit)
    if args.by is None:
        why = (
            "explanations exist; --by max for activation order"
            if by == "explanation"
            else "no explanations yet; --by explanation once `autointerp explain` ran"
        )
        print(f"ranked by {by} ({why})", file=sys.stderr)
    args.by = by

    def score(r: dict[str, Any]) -> float:
        return {"min": -r["min"]}.get(args.by, r.get("score", r.get(args.by)))  # type: ignore[return-value]

    if args.json:
        basis = {"score_is": SCORE_BASIS} if by in Store.SCORE_METHODS else {}
        print_json(
            [{"model": model, **r, "score": score(r), "ranked_by": by, **basis} for r in rows]
        )
        return 0
    if not rows:
        hint = f" (run `autointerp weights {model}`)" if args.by.startswith("cos_in_out") else ""
        print(f"No neurons of {model} have a {args.by} score yet{hint}.")
        return 0
    if args.by in Store.SCORE_METHODS:
        print(
            f"ranked by {args.by} score: correlation of simulated and real activations "
            "(positive part: the headline) on held-out top + random text; raw = against the "
            "signed activation (OpenAI/Neuronpedia); auprc = average precision against 'the "
            "neuron fires' (>= half its max); baseline = token-lookup explanation, n2g = graph, "
            "on the same text; origin = who wrote the explanation"
        )
        print(
            f"{'neuron':>10} {'score':>7} {'raw':>6} {'top':>6} {'random':>6} {'auprc':>6} "
            f"{'baseline':>8} {'n2g':>6}  origin: explanation"
        )
        for r in rows:
            cells = " ".join(
                f"{r[k]:6.3f}" if r.get(k) is not None else "     -"
                for k in ("score_raw", "score_top", "score_random", "auprc")
            )
            base = (
                f"{r['baseline_score']:8.3f}" if r.get("baseline_score") is not None else "       -"
            )
            n2g = f"{r['n2g_score']:6.3f}" if r.get("n2g_score") is not None else "     -"
            print(
                f"{r['layer']:>5}/{r['neuron']:<4} {r['score']:7.3f} {cells} {base} {n2g}  "
                f"{r.get('origin') or '-'}: {terminal_text(r['explanation'] or '-')}"
            )
        return 0
    n2g, cos = args.by == "n2g", args.by.startswith("cos_in_out")
    if n2g:
        print(
            "n2g: held-out correlation and F1 on the test top + random examples pooled, then on "
            "each alone (- : undefined, e.g. F1 where neither the graph nor the neuron fires)"
        )
    columns = "   n2g corr    f1  top corr  top f1  rnd corr  rnd f1" if n2g else ""
    columns += "  cos(in,out)" if cos else ""
    print(
        f"{'neuron':>10} {'max':>9} {'min':>9} {'mean':>9} {'active':>7}{columns}"
        f"   (ranked by {args.by})"
    )

    def cell(value: float | None, width: int) -> str:
        return f"{value:{width}.2f}" if value is not None else " " * (width - 1) + "-"

    for r in rows:
        line = (
            f"{r['layer']:>5}/{r['neuron']:<4} {r['max']:9.3f} {r['min']:9.3f} "
            f"{r['mean']:9.4f} {100 * r['frac_positive']:6.1f}%"
        )
        if n2g:
            line += (
                f"   {r['n2g_correlation']:8.3f} {cell(r['n2g_f1'], 5)} "
                f"{cell(r['n2g_correlation_top'], 9)} {cell(r['n2g_f1_top'], 7)} "
                f"{cell(r['n2g_correlation_random'], 9)} {cell(r['n2g_f1_random'], 7)}"
            )
        if cos:
            line += f"  {r['cos_in_out']:+11.3f}"
        print(line)
    return 0
