"""``autointerp neuron`` and ``autointerp activations``: one neuron's stored statistics and
examples, and its activations on any text computed live, coloured on the terminal or as JSON."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_device_options,
    at_least,
    db_path,
    load_subject,
    print_json,
    text_arg,
    whole,
)
from autointerp.errors import UserError
from autointerp.ranges import parse_neuron
from autointerp.untrusted import terminal_text

commands = Commands()


@commands.add(
    "neuron",
    help="show a neuron's statistics and examples (coloured, or --json)",
    description=(
        "Statistics and examples of neuron L/N from the latest complete harvest; the "
        "peak token is underlined, tokens are red by activation (blue if negative)."
    ),
)
def neuron_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name as harvested")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument(
        "--limit",
        type=at_least(0),
        default=10,
        help="examples shown per kind (0 = all; default 10)",
    )
    from autointerp.records import EXAMPLE_KINDS

    kinds = ",".join(EXAMPLE_KINDS)
    p.add_argument(
        "--kinds",
        default=kinds,
        type=lambda s: s.split(","),
        help=f"which kinds to show (default {kinds})",
    )
    p.add_argument(
        "--full", action="store_true", help="show whole contexts, not a window around the peak"
    )
    p.add_argument(
        "--run", type=whole(), default=None, help="a specific run id (default: latest complete)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_db_option(p)
    p.set_defaults(func=cmd_neuron)


def cmd_neuron(args: argparse.Namespace) -> int:
    from autointerp.store import Store

    layer, neuron = parse_neuron(args.neuron)
    store = Store(db_path(args), create=False)
    record = _neuron_record(store, args.model, layer, neuron, args.run, args.limit)
    if args.json:
        print_json(record)
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    s = record["stats"]
    console.print(
        f"[bold]{record['model']} neuron {layer}/{neuron}[/]  ({record['hook']}, run"
        f" {record['run_id']})"
    )
    console.print(
        f"max {s['max']:.3f}  min {s['min']:.3f}  mean {s['mean']:.4f}  std"
        f" {s['variance'] ** 0.5:.4f}  active (>0) {100 * s['frac_positive']:.1f}% of {s['count']}"
        " tokens"
    )
    if record.get("weights"):
        w = record["weights"]
        gate = (
            f"  cos(W_gate, w_out) {w['cos_gate_out']:+.3f}"
            if w["cos_gate_out"] is not None
            else ""
        )
        console.print(
            f"weights: cos({w['input_vector']}, w_out) {w['cos_in_out']:+.3f}{gate}  logits up: "
            + ", ".join(repr(t["token"]) for t in w["top_tokens"][:6])
            + "  down: "
            + ", ".join(repr(t["token"]) for t in w["bottom_tokens"][:6]),
            markup=False,
        )
    for kind, row in record["explanations"].items():
        if row["status"] != "ok":
            console.print(
                f"explanation ({kind}): failed - {terminal_text(row['error'] or '')}", markup=False
            )
            continue
        method = {"llm": "explanation", "llm_negative": "explanation_negative"}.get(kind, kind)
        sc = record["scores"].get(method) or {}
        shown = (
            f"score {sc['score']:.3f}"
            if sc.get("score") is not None
            else f"score {sc.get('status', '-')}"
        )
        if sc.get("score_raw") is not None:
            shown += f", raw {sc['score_raw']:.3f}"
        console.print(
            f"explanation ({kind}, {terminal_text(str(row['model']))}):"
            f" {terminal_text(row['text'])}  [{shown}]",
            markup=False,
        )
    for user in record["user_explanations"]:  # saved with `autointerp score --save`
        shown = (
            f"score {user['score']:.3f}"
            if user["score"] is not None
            else f"{user['status']}: {terminal_text(user['error'] or '')}"
        )
        console.print(f"your description: {terminal_text(user['text'])}  [{shown}]", markup=False)
    n2g = record["scores"].get("n2g")
    if n2g and n2g.get("score") is not None:
        console.print(f"N2G graph score on the same held-out text: {n2g['score']:.3f}")
    scale = max(abs(s["max"]), abs(s["min"]), 1e-9)
    titles = {
        "top": "Top activating",
        "bottom": "Most negative",
        "quantile": "Across activation levels",
        "random": "Random",
    }
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


def _neuron_record(
    store: Any, model: str, layer: int, neuron: int, run_id: int | None, limit: int
) -> dict[str, Any]:
    from autointerp.model_names import canonical_model_name, resolve_model_name

    names = [r["model"] for r in store.runs()]
    if model not in names:
        model = canonical_model_name(model)
    if model not in names:
        if not names:
            raise UserError(
                f"The database {store.path} has no harvests yet; run `autointerp harvest` first."
            )
        resolve_model_name(model)  # says "did you mean" for misspellings
        raise UserError(
            f"No harvest of {model} in {store.path}; it has: {', '.join(sorted(set(names)))}."
        )
    run = (
        store.latest_complete_run(model, layer)
        if run_id is None
        else next((r for r in store.runs(model) if r["id"] == run_id), None)
    )
    if run is None:
        raise store.not_harvested(model, layer)
    from autointerp.records import neuron_summary

    record = neuron_summary(store, model, layer, neuron, run["id"], limit)
    if record is None:
        info = store.model_info(model) or {}
        raise UserError(
            f"Neuron {layer}/{neuron} is not in run {run['id']} ({model} has "
            f"{info.get('d_mlp', '?')} neurons per layer)."
        )
    return record


def _render_tokens(
    tokens: Sequence[str],
    acts: Sequence[float],
    scale: float,
    peak: int | None,
    window: tuple[int, int] | None,
) -> Any:
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


@commands.add(
    "activations",
    help="per-token activations of one neuron on any text, computed live",
    description=(
        "The interactive neuroscope: run the model on --text (or stdin) and print the "
        "neuron's activation at every token."
    ),
)
def activations_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="packaged model or TransformerLens name")
    p.add_argument("neuron", help="L/N, e.g. 3/117")
    p.add_argument("--text", default=None, help="text to run (default: read standard input)")
    p.add_argument(
        "--max-chars", type=at_least(1), default=20000, help="refuse longer texts (default 20000)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_device_options(p)
    p.set_defaults(func=cmd_activations)


def cmd_activations(args: argparse.Namespace) -> int:
    import torch

    layer, neuron = parse_neuron(args.neuron)
    text = text_arg(args)
    if not text:
        raise UserError("Give some text with --text (or on standard input).")
    if len(text) > args.max_chars:
        raise UserError(
            f"The text is {len(text)} characters; the limit is {args.max_chars} (--max-chars)."
        )
    model = load_subject(args.model, progress=False, args=args)
    model.check_neuron(layer, neuron)
    ids, _ = model.encode(text)
    acts = model.feature_activation(torch.tensor([ids]), layer, neuron)[0].tolist()
    tokens = model.str_tokens(ids)
    record = {
        "model": model.name,
        "layer": layer,
        "neuron": neuron,
        "tokens": tokens[1:],
        "activations": acts[1:],
    }
    if args.json:
        print_json(record)
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    scale = max(max(abs(a) for a in acts[1:]), 1e-9)
    console.print(_render_tokens(tokens[1:], acts[1:], scale, None, None))
    for tok, a in zip(tokens[1:], acts[1:], strict=True):
        console.print(f"{a:9.4f}  {tok!r}")
    return 0
