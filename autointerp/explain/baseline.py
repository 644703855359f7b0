"""Evidence that needs no LLM: the token-lookup baseline and the N2G graph's strongest paths.

The baseline (the tokens at which a neuron fires most) is both a method scored beside the LLM's
explanation and a line of the explainer's prompt (the tokens it fires on most); the N2G paths are
shown to the explainer as extra evidence. Both are pure functions of the records or the graph, so
the prompt tests and the benchmarks call them without a database or an LLM.
"""

from __future__ import annotations

from collections import defaultdict

from autointerp.explain.prompts import SCALE_MAX, Record
from autointerp.explain.templates import Clause, explanation_text
from autointerp.n2g.graph import NeuronGraph, Node, normalize_token
from autointerp.untrusted import escape_token


def baseline_explanation(records: list[Record], max_activation: float, k: int = 3) -> str:
    """Token lookup: the (normalised) tokens at which the neuron fires most, summed over the
    training examples, as ``the tokens "a", "b" and "c"`` (:mod:`autointerp.explain.templates`:
    its rule is those tokens, inside words too)."""
    weight: dict[str, float] = defaultdict(float)
    shown: dict[str, str] = {}
    for r in records:
        for tok, act in zip(r.tokens, r.activations, strict=True):
            if act > 0.3 * max_activation:
                key = normalize_token(tok)
                weight[key] += act
                shown.setdefault(key, tok.strip() or tok)
    best = sorted(weight, key=lambda t: -weight[t])[:k]
    # in the template grammar: the sentence compiles to exactly these tokens, with no LLM call
    return explanation_text([Clause(tuple(shown[t] for t in best))] if best else [])


def n2g_evidence(graph: NeuronGraph, limit: int) -> list[str]:
    """The graph's strongest end paths as lines ``earlier ... activating: strength`` (strength on
    0-9)."""
    paths: list[tuple[float, str]] = []

    def visit(node: Node, trail: list[str]) -> None:
        trail = trail + [node.token]
        if node.is_end:
            context = [("*" if t == "\u0000*" else escape_token(t)) for t in reversed(trail[1:])]
            line = (" ".join(context) + " ... " if context else "") + escape_token(trail[0])
            paths.append((node.activation, f"{line}: {round(node.activation * SCALE_MAX)}"))
        for child in node.children.values():
            visit(child, trail)

    for root in graph.roots.values():
        visit(root, [])
    paths.sort(key=lambda p: -p[0])
    return [p[1] for p in paths[:limit]]
