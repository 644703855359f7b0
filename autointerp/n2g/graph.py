"""The N2G token trie: what a neuron's graph is, how it predicts activations, and how it is
serialised.

A graph is a forest rooted at *activating* tokens. Walking from a root goes **backwards** through
the text: each child is the token one position earlier, either a concrete (normalised) token that
mattered (*context* node) or a *wildcard* that matches any token. A path ends in an *end* node
holding the (normalised) activation the neuron had on the example(s) that produced the path.

Prediction at token ``j`` follows every path that matches the text ending at ``j`` - concrete and
wildcard children alike - and returns the highest activation among the end nodes reached. (The N2G
paper describes matching all paths; the original code was greedy and took the first matching child,
which misses a wildcard path whenever a concrete child matches the next token but leads nowhere.
:func:`predict_greedy` keeps that behaviour for comparison.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

WILDCARD = "\u0000*"  # a key no real token can normalise to


def normalize_token(token: str, case_sensitive: bool = False, strip_space: bool = True) -> str:
    """How tokens are compared: by default ``" Paris"``, ``"Paris"`` and ``"paris"`` are the same
    node.

    Whitespace-only tokens (``"\\n"``, ``"  "``) are kept as they are, so indentation and newlines
    stay distinct.
    """
    out = token
    if strip_space and token.strip():
        out = token.strip()
    if not case_sensitive:
        out = out.lower()
    return out


@dataclass
class Node:
    token: str  # normalised token, or WILDCARD
    depth: int  # 0 for activating nodes
    children: dict[str, Node] = field(default_factory=dict)
    end_sum: float = 0.0
    end_count: int = 0
    importance_sum: float = 0.0
    importance_count: int = 0

    @property
    def is_end(self) -> bool:
        return self.end_count > 0

    @property
    def activation(self) -> float:
        return self.end_sum / self.end_count if self.end_count else 0.0

    @property
    def importance(self) -> float:
        return self.importance_sum / self.importance_count if self.importance_count else 0.0


@dataclass(frozen=True)
class PathExample:
    """One training path: ``tokens[0]`` is the activating token, ``tokens[k]`` the token k positions
    earlier (``None`` for a wildcard); ``importances`` align with ``tokens``; ``activation`` is
    normalised by the max."""

    tokens: tuple[str | None, ...]
    importances: tuple[float, ...]
    activation: float


class NeuronGraph:
    """A neuron's token trie plus the per-stage facts needed to use it."""

    def __init__(self, case_sensitive: bool = False, strip_space: bool = True):
        self.roots: dict[str, Node] = {}
        self.case_sensitive = case_sensitive
        self.strip_space = strip_space

    def norm(self, token: str) -> str:
        return normalize_token(token, self.case_sensitive, self.strip_space)

    # ----------------------------------------------------------------------------------------------
    # building
    def add_path(self, path: PathExample) -> Node:
        """Insert a path; identical paths average their activations. Returns the path's end node."""
        first = path.tokens[0]
        if first is None:
            raise ValueError("A path must start at a concrete activating token.")
        key = self.norm(first)
        node = self.roots.setdefault(key, Node(key, 0))
        node.importance_sum += path.importances[0]
        node.importance_count += 1
        for depth, (token, importance) in enumerate(
            zip(path.tokens[1:], path.importances[1:], strict=True), 1
        ):
            key = WILDCARD if token is None else self.norm(token)
            node = node.children.setdefault(key, Node(key, depth))
            node.importance_sum += importance
            node.importance_count += 1
        node.end_sum += path.activation
        node.end_count += 1
        return node

    # ----------------------------------------------------------------------------------------------
    # prediction
    def predict(self, tokens: Sequence[str]) -> list[float]:
        """Predicted normalised activation at every token (all-path matching, best end wins)."""
        return [max([0.0, *(end.activation for end in ends)]) for ends in self.matched_ends(tokens)]

    def matched_ends(self, tokens: Sequence[str]) -> list[list[Node]]:
        """At every token, the end nodes of all paths that match the text ending there (what
        :meth:`predict` takes the best of); calibration counts what the neuron does at each."""
        keys = [self.norm(t) for t in tokens]
        out: list[list[Node]] = []
        for j, key in enumerate(keys):
            root = self.roots.get(key)
            ends: list[Node] = []
            if root is not None:
                stack = [(root, j - 1)]
                while stack:
                    node, i = stack.pop()
                    if node.is_end:
                        ends.append(node)
                    if i < 0:
                        continue
                    for child_key in (keys[i], WILDCARD):
                        child = node.children.get(child_key)
                        if child is not None:
                            stack.append((child, i - 1))
            out.append(ends)
        return out

    def predict_greedy(self, tokens: Sequence[str]) -> list[float]:
        """The original N2G code's matching: at each step take the concrete child if it matches,
        else the wildcard, and report the deepest end reached. Kept to show (in tests) where
        all-path matching differs."""
        keys = [self.norm(t) for t in tokens]
        out = []
        for j, key in enumerate(keys):
            node = self.roots.get(key)
            value = 0.0
            i = j - 1
            while node is not None:
                if node.is_end:
                    value = node.activation
                if i < 0:
                    break
                node = node.children.get(keys[i]) or node.children.get(WILDCARD)
                i -= 1
            out.append(value)
        return out

    # ----------------------------------------------------------------------------------------------
    # serialisation
    def to_json(self) -> dict[str, Any]:
        """Nodes and edges with numbers (activation, importance, depth), not colours; end nodes
        are explicit."""
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []

        def visit(node: Node, parent: int | None) -> None:
            kind = (
                "activating"
                if node.depth == 0
                else ("wildcard" if node.token == WILDCARD else "context")
            )
            ident = len(nodes)
            nodes.append(
                {
                    "id": ident,
                    "token": "*" if node.token == WILDCARD else node.token,
                    "kind": kind,
                    "depth": node.depth,
                    "importance": round(node.importance, 6),
                    "activation": None,
                    "count": node.importance_count,
                }
            )
            if parent is not None:
                edges.append({"source": parent, "target": ident})
            if node.is_end:
                end = len(nodes)
                nodes.append(
                    {
                        "id": end,
                        "token": "END",
                        "kind": "end",
                        "depth": node.depth + 1,
                        "importance": None,
                        "activation": round(node.activation, 6),
                        "count": node.end_count,
                    }
                )
                edges.append({"source": ident, "target": end})
            for key in sorted(node.children):
                visit(node.children[key], ident)

        for key in sorted(self.roots):
            visit(self.roots[key], None)
        return {
            "version": 1,
            "case_sensitive": self.case_sensitive,
            "strip_space": self.strip_space,
            "nodes": nodes,
            "edges": edges,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NeuronGraph:
        graph = cls(data["case_sensitive"], data["strip_space"])
        by_id: dict[int, Node] = {}
        parents = {e["target"]: e["source"] for e in data["edges"]}
        for item in data["nodes"]:  # parents always precede children in to_json's order
            if item["kind"] == "end":
                owner = by_id[parents[item["id"]]]
                owner.end_count = item["count"]
                owner.end_sum = item["activation"] * item["count"]
                continue
            key = WILDCARD if item["kind"] == "wildcard" else item["token"]
            node = Node(
                key,
                item["depth"],
                importance_sum=item["importance"] * item["count"],
                importance_count=item["count"],
            )
            by_id[item["id"]] = node
            if item["kind"] == "activating":
                graph.roots[key] = node
            else:
                by_id[parents[item["id"]]].children[key] = node
        return graph


def same_graph(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-5) -> bool:
    """Whether two serialised graphs are the same graph: identical nodes, kinds, tokens, counts and
    edges, and activations/importances equal within ``atol``. (A batched forward pass and a
    single-sequence one differ in the last float32 bits, so exact float equality would compare
    rounding, not graphs.)"""
    if a["edges"] != b["edges"] or len(a["nodes"]) != len(b["nodes"]):
        return False
    for x, y in zip(a["nodes"], b["nodes"], strict=True):
        if (x["token"], x["kind"], x["depth"], x["count"]) != (
            y["token"],
            y["kind"],
            y["depth"],
            y["count"],
        ):
            return False
        for key in ("activation", "importance"):
            if (x[key] is None) != (y[key] is None) or (
                x[key] is not None and abs(x[key] - y[key]) > atol
            ):
                return False
    return True
