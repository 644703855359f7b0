"""``autointerp similarity``, ``similar``, ``index``, ``search`` and ``fire``: finding neurons by
graph overlap, by graph (or harvest) tokens or explanation text, and by what fires on a text."""

from __future__ import annotations

import argparse
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_device_options,
    at_least,
    db_path,
    default_of,
    finite,
    load_subject,
    print_json,
    stdout_to_stderr,
    store_model,
    text_arg,
)
from autointerp.errors import UserError
from autointerp.ranges import parse_neuron
from autointerp.untrusted import terminal_text

commands = Commands()


@commands.add(
    "similarity",
    help="compute and store the most similar neurons of every graphed neuron (graph overlap)",
    description=(
        "Similarity of two neurons' N2G graphs: 0.5 x Dice(activating tokens) + 0.5 x"
        " Dice(important context tokens), Dice = harmonic mean of the two overlap proportions"
        " (symmetric), each token weighted by its IDF in the contexts the harvest stored (so"
        " punctuation and 'the' weigh almost nothing). Tokens in more than --max-df graphs are"
        " stop tokens. Computed for all graphs of MODEL through an inverted index (only pairs"
        " sharing a token); the top --limit per neuron scoring at least --min-score are stored."
    ),
)
def similarity_options(p: argparse.ArgumentParser) -> None:
    from autointerp.similarity import SimilarityConfig

    def default(name: str) -> Any:
        return default_of(SimilarityConfig, name)

    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "--limit",
        type=at_least(1),
        default=default("limit"),
        help=f"similar neurons kept per neuron (default {default('limit')})",
    )
    p.add_argument(
        "--max-df",
        type=at_least(1),
        default=default("max_df"),
        help="stop-token cap: tokens in more graphs are ignored (default max(50, 2*sqrt(graphs)))",
    )
    p.add_argument(
        "--activating-weight",
        type=finite,
        default=default("activating_weight"),
        help=(
            "weight of the activating-token overlap; the rest goes to context tokens "
            f"(default {default('activating_weight')})"
        ),
    )
    p.add_argument(
        "--min-score",
        type=finite,
        default=default("min_score"),
        help=(
            "pairs scoring less are neither stored nor listed by `similar`, the API or the report"
            f" (default {default('min_score')})"
        ),
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_db_option(p)
    p.set_defaults(func=cmd_similarity)


def cmd_similarity(args: argparse.Namespace) -> int:
    from autointerp.similarity import compute_similarities
    from autointerp.store import Store

    store = Store(db_path(args), create=False)
    model = store_model(store, args.model)
    with stdout_to_stderr():
        out = compute_similarities(
            store,
            model,
            limit=args.limit,
            max_df=args.max_df,
            activating_weight=args.activating_weight,
            progress=not args.no_progress,
            min_score=args.min_score,
        )
    if args.json:
        print_json(out)
    else:
        print(
            f"{out['graphs']} graphs: top {args.limit} similar neurons each at >="
            f" {out['min_score']:g} stored ({out['pairs']} rows; tokens weighted by IDF over"
            f" {out['idf_contexts']:,} contexts; stop tokens in > {out['max_df']} graphs:"
            f" {out['stop_tokens']['activating']} activating, {out['stop_tokens']['context']}"
            f" context) in {out['seconds']:.1f}s"
        )
    return 0


@commands.add(
    "similar",
    help="neurons whose N2G graphs overlap most with L/N's",
    description=(
        "The most similar neurons by graph overlap (see `autointerp similarity --help`), none"
        " below the stored minimum score (0.1 by default); computed first when missing or older"
        " than the graphs."
    ),
)
def similar_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    from autointerp.similarity import similar

    limit = default_of(similar, "limit")
    p.add_argument("--limit", type=at_least(1), default=limit, help=f"how many (default {limit})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar when computing")
    p.add_argument(
        "--json",
        action="store_true",
        help='print JSON: [{"layer", "neuron", "similarity"}], best first',
    )
    add_db_option(p)
    p.set_defaults(func=cmd_similar)


def cmd_similar(args: argparse.Namespace) -> int:
    from autointerp.similarity import similar
    from autointerp.store import Store

    layer, neuron = parse_neuron(args.neuron)
    if args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.")
    store = Store(db_path(args), create=False)
    model = store_model(store, args.model)
    with stdout_to_stderr():
        rows = similar(store, model, layer, neuron, args.limit, progress=not args.no_progress)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        floor = store.similarity_min_score(model)
        print(f"No neuron of {model} is similar to {layer}/{neuron} above {floor:g}.")
    for r in rows:
        print(f"{r['layer']:>5}/{r['neuron']:<5} {r['similarity']:.3f}")
    return 0


@commands.add(
    "index",
    help="build the token search indexes: graph tokens and every harvested neuron's peak tokens",
    description=(
        "Bring MODEL's search indexes up to date: the tokens of every N2G graph (written with the"
        " graphs; rebuilt here if behind) and, for every harvested layer, the tokens each neuron's"
        " top examples peak on, so that `search` finds neurons without a graph too. `search`"
        " builds what is missing itself; the server never does (it reads every top example of a"
        " layer), so `make explain` runs this."
    ),
)
def index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_db_option(p)
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    from autointerp.store import Store
    from autointerp.token_index import build_search_indexes

    store = Store(db_path(args), create=False)
    model = store_model(store, args.model)
    with stdout_to_stderr():
        out = build_search_indexes(store, model, progress=not args.no_progress)
    if args.json:
        print_json(out)
    else:
        print(
            f"search index of {model}: {out['graphs']} graphs, {out['harvest_neurons']:,} harvested"
            f" neurons in layers {','.join(map(str, out['layers'])) or '-'}"
            f" ({out['graphs_indexed']} graphs and {out['layers_indexed']} layers indexed now,"
            f" {out['seconds']:.1f}s)"
        )
    return 0


@commands.add(
    "search",
    help="neurons by graph or harvest tokens (any:/activating:/important:) or explanation text",
    description=(
        "Token query: terms KIND:TOKEN[,TOKEN...] with KIND any, activating or important; tokens of"
        " a term are a union, terms an intersection; a bare token means any:. A neuron with an N2G"
        " graph answers from it; one without answers activating: and any: terms from the tokens"
        " its harvested top examples peak on (each result says its source, graph or harvest)."
        " Tokens are normalised like the graphs (lower case, surrounding space stripped); quote"
        ' tokens with spaces, commas or colons: important:"\\n". Sorted by the summed'
        " activation/importance of the matches. --explanations TEXT searches explanations by"
        " meaning instead (cosine similarity of sentence embeddings, offline); add --exact for"
        ' exact words (SQLite FTS5, stemmed, words ANDed, "a phrase", prefix*).'
    ),
    epilog=(
        'examples:\n  autointerp search gemma-3-270m "any:the activating:battery important:legal"\n'
        '  autointerp search gemma-3-270m --explanations "weekday names" --json\n'
        '  autointerp search gemma-3-270m --explanations "days of the week" --exact'
    ),
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
def search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument(
        "query", nargs="?", default=None, help='token query, e.g. "any:the activating:battery"'
    )
    p.add_argument(
        "--explanations",
        metavar="TEXT",
        default=None,
        help=(
            "search explanations instead, by meaning (sentence embeddings of the packaged "
            "all-mpnet-base-v2, offline; score = cosine similarity)"
        ),
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help='with --explanations: exact words instead (FTS5: "a phrase", prefix*; score = -bm25)',
    )
    from autointerp.search import search_tokens

    limit = default_of(search_tokens, "limit")
    p.add_argument(
        "--limit", type=at_least(1), default=limit, help=f"how many results (default {limit})"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_db_option(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from autointerp.search import search_explanations, search_explanations_by_meaning, search_tokens
    from autointerp.store import Store

    if (args.query is None) == (args.explanations is None):
        raise UserError(
            'Give either a token query (e.g. "any:the activating:battery") or --explanations TEXT.'
        )
    store = Store(db_path(args), create=False)
    model = store_model(store, args.model)
    if args.explanations is not None:
        find = search_explanations if args.exact else search_explanations_by_meaning
        rows = find(store, model, args.explanations, limit=args.limit)
        if args.json:
            print_json(rows)
        for r in [] if args.json else rows:
            print(
                f"{r['layer']:>5}/{r['neuron']:<5} {r['score']:7.3f}  [{r['kind']}] "
                f"{terminal_text(r['text'])}"
            )
        if not rows and not args.json:
            print("No explanation matches.")
        return 0
    rows = search_tokens(store, model, args.query, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        found = ", ".join(f"{m['kind']}:{m['token']!r} {m['weight']:.2f}" for m in r["matches"])
        print(f"{r['layer']:>5}/{r['neuron']:<5} {r['score']:7.3f}  {r['source']:<7}  {found}")
    if not rows:
        print("No neuron's graph or harvested top examples match every term.")
    return 0


@commands.add(
    "fire",
    help="which neurons of a layer fire on a text (above --hi or below --lo), live",
    description=(
        "Run the model on --text (or stdin) and list the neurons of --layer whose "
        "activation goes above --hi or below --lo on any token, strongest first, with "
        "their value at every token."
    ),
)
def fire_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("--layer", type=at_least(0), required=True, help="layer to look at")
    p.add_argument("--text", default=None, help="text to run (default: read standard input)")
    from autointerp.live import text_neurons

    hi = default_of(text_neurons, "hi")
    p.add_argument("--hi", type=finite, default=hi, help=f"fires above this (default {hi})")
    p.add_argument("--lo", type=finite, default=None, help="or below this (default: off)")
    p.add_argument(
        "--limit", type=at_least(1), default=None, help="at most this many neurons (default: all)"
    )
    p.add_argument(
        "--max-chars", type=at_least(1), default=20000, help="refuse longer texts (default 20000)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_device_options(p)
    p.set_defaults(func=cmd_fire)


def cmd_fire(args: argparse.Namespace) -> int:
    from autointerp.live import text_neurons

    text = text_arg(args)
    if len(text) > args.max_chars:
        raise UserError(
            f"The text is {len(text)} characters; the limit is {args.max_chars} (--max-chars)."
        )
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.")
    if args.hi is None and args.lo is None:
        raise UserError("Give a threshold: --hi (fires above) and/or --lo (fires below).")
    model = load_subject(args.model, progress=False, args=args)
    out = text_neurons(model, text, args.layer, hi=args.hi, lo=args.lo, limit=args.limit)
    if args.json:
        print_json(out)
        return 0
    if not out["neurons"]:
        limits = " or ".join(
            x
            for x in (
                args.hi is not None and f"above {args.hi}",
                args.lo is not None and f"below {args.lo}",
            )
            if x
        )
        print(f"No neuron of layer {args.layer} goes {limits} on this text.")
    for n in out["neurons"]:
        print(
            f"{args.layer}/{n['neuron']:<5} max {n['max']:8.3f}  min {n['min']:8.3f}  peak"
            f" {n['peak_token']!r}"
        )
        print(
            "      "
            + " ".join(f"{t!r}:{v:.2f}" for t, v in zip(out["tokens"], n["values"], strict=True))
        )
    return 0
