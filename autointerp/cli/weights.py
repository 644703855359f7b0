"""``autointerp weights`` and ``autointerp compare``: what a neuron's weights say without a corpus,
and which neurons of another model behave like it on the same texts."""

from __future__ import annotations

import argparse

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_device_options,
    at_least,
    db_path,
    default_of,
    load_subject,
    print_json,
    stdout_to_stderr,
    store_model,
)
from autointerp.ranges import parse_neuron

commands = Commands()


@commands.add(
    "weights",
    help="weight-based neuron facts: cos(w_in, w_out) and direct logit effect",
    description=(
        "For every neuron of --layers: cosine of its input and output vectors (norm "
        "weights folded in; gated MLPs use W_in, the linear factor, and also report "
        "cos(W_gate, w_out)) and the top/bottom tokens of w_out . W_U. No corpus needed; "
        "shown by `autointerp neuron`."
    ),
)
def weights_options(p: argparse.ArgumentParser) -> None:
    from autointerp.weights import WeightsConfig

    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument(
        "--layers",
        default=None,
        help=(
            "e.g. 0,3,5 or 2-4, or auto (an early, a middle and a late layer: "
            "(2k+1)/6 of the depth; 3,9,15 of an 18-layer model) (default: all layers)"
        ),
    )
    top_k = default_of(WeightsConfig, "top_k")
    p.add_argument(
        "--top-k",
        type=at_least(1),
        default=top_k,
        help=f"top and bottom tokens kept per neuron (default {top_k})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_db_option(p)
    add_device_options(p)
    p.set_defaults(func=cmd_weights)


def cmd_weights(args: argparse.Namespace) -> int:
    from autointerp.ranges import is_auto_layers, parse_layers, resolve_layers
    from autointerp.store import Store
    from autointerp.weights import store_weight_facts

    if not is_auto_layers(args.layers):
        parse_layers(args.layers)
    store = Store(db_path(args))
    model = load_subject(args.model, progress=not args.no_progress, args=args)
    layers = resolve_layers(args.layers, model.n_layers)
    layers = list(range(model.n_layers)) if layers is None else layers
    with stdout_to_stderr():
        out = store_weight_facts(
            store, model, layers, top_k=args.top_k, progress=not args.no_progress
        )
    if args.json:
        print_json(out)
    else:
        print(
            f"weight facts of {out['neurons']} neurons of {model.name} (layers {layers}) ->"
            f" {store.path}"
        )
    return 0


@commands.add(
    "compare",
    help="neurons of MODEL_B that correlate best with MODEL_A's L/N on the same texts",
    description=(
        "Runs both models on the texts, aligns their tokens by character offsets (a "
        "position counts where both tokenizers end a token: both have read the same "
        "text), and ranks MODEL_B's neurons by Pearson correlation with L/N of MODEL_A. "
        "Without --text, the neuron's stored top and random examples are used."
    ),
)
def compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_a", help="model of the neuron")
    p.add_argument("neuron", help="L/N of MODEL_A")
    p.add_argument("model_b", help="model to search")
    p.add_argument("--text", action="append", help="a text to compare on (repeatable)")
    p.add_argument("--layers", default=None, help="layers of MODEL_B to search (default: all)")
    p.add_argument("--limit", type=at_least(1), default=10, help="how many neurons (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_db_option(p)
    add_device_options(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from autointerp.compare import compare_neuron, example_texts
    from autointerp.model_names import canonical_model_name
    from autointerp.ranges import parse_layers

    layer, neuron = parse_neuron(args.neuron)
    layers = parse_layers(args.layers)
    texts = list(args.text or [])
    if not texts:
        from autointerp.store import Store

        store = Store(db_path(args), create=False)
        texts = example_texts(store, store_model(store, args.model_a), layer, neuron)
    a = load_subject(args.model_a, progress=False, args=args)
    same = canonical_model_name(args.model_b) == a.name
    b = a if same else load_subject(args.model_b, progress=False, args=args)
    out = compare_neuron(a, layer, neuron, b, texts, layers=layers, limit=args.limit)
    if args.json:
        print_json(out)
        return 0
    print(
        f"{out['model_b']} neurons most correlated with {out['model_a']} {layer}/{neuron} over"
        f" {out['positions']} aligned positions of {out['texts']} texts:"
    )
    for r in out["neurons"]:
        print(f"{r['layer']:>5}/{r['neuron']:<5} r = {r['correlation']:.3f}")
    return 0
