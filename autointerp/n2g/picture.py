"""An N2G graph as an SVG picture, written by hand rather than drawn by matplotlib.

Why by hand: matplotlib drew every node as the same small square (font 7 pt) whatever its token, so
long tokens overflowed their boxes and short ones were unreadable at page size, and its SVG changed
between runs (random clip-path ids, a date). Here each box is as wide as its label, labels are real
SVG text in a monospace font (crisp at any zoom, selectable, with the whole token and its numbers in
a tooltip), and the same graph always gives the same bytes.

**Layout.** A layered tree that reads the way the text does, left to right: the activating token in
the rightmost column, the token just before it one column to the left, and so on back into the
context. Every path is one row (leaves stacked, a node centred on the rows it leads to), the
strongest first, and each path's prediction - the activation it predicts at the activating token,
as a share of the neuron's max - is a rounded badge at its left end. Colours follow N2G: activating
tokens red by activation, context tokens blue by importance, wildcards (``*``, any token) grey.

**Glyphs.** The picture asks for DejaVu Sans Mono (matplotlib ships it, so the check needs no system
font); a character that font lacks (CJK, Indic scripts, emoji) is written as its ``\\uXXXX`` escape
(:func:`drawable`), as are invisible format characters (a right-to-left override would reorder the
label), so a viewer never shows an empty box.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any
from xml.sax.saxutils import escape

import networkx as nx

from autointerp.untrusted import escaped_pictures

FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
FONT_SIZE = 13
CHAR_W = 0.602 * FONT_SIZE  # DejaVu Sans Mono's advance width, in em
BOX_H = 20
ROW_H = 26
COL_GAP = 26
BADGE_GAP = 10  # between a path's prediction badge and the token it ends on
PAD_X = 6
MARGIN = 16
MAX_LABEL = 24  # characters of a token shown in its box (the tooltip has all of it)
LEGEND_H = 44


@functools.cache
def _font_characters(family: str) -> frozenset[int]:
    """The code points matplotlib's copy of ``family`` has glyphs for."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=[family]))
    return frozenset(FT2Font(path).get_charmap())


def drawable(text: str, family: str = "sans-serif") -> str:
    """``text`` with every character the font ``family`` lacks, and every control or format
    character, as ``\\uXXXX`` (``\\UXXXXXXXX`` above the basic plane). ``sans-serif`` is
    matplotlib's default font (DejaVu Sans)."""
    have = _font_characters(family)

    def shown(c: str) -> str:
        if c == " " or (ord(c) in have and unicodedata.category(c)[0] != "C"):
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"

    return "".join(shown(c) for c in text)


def node_label(attrs: dict[str, Any]) -> str:
    """What a node's box says: the prediction of an end node, ``*`` for a wildcard, else the
    token with spaces as ``␣``, escapes for what is invisible, cut to :data:`MAX_LABEL`."""
    kind = attrs["kind"]
    if kind == "end":
        return f"{attrs.get('activation', 0.0):.2f}"
    if kind == "wildcard":
        return "*"
    return _short(token_text(attrs["token"]))


def token_text(token: str) -> str:
    """A token as the picture writes it (whole): spaces of an all-space token as ``␣``, newlines and
    quotes as Python escapes, characters the font lacks as ``\\u`` escapes."""
    token = token if token.strip() else token.replace(" ", "␣")
    return drawable(escaped_pictures(repr(token)[1:-1]), "DejaVu Sans Mono")


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _mix(light: tuple[int, int, int], dark: tuple[int, int, int], level: float) -> str:
    level = min(max(level, 0.0), 1.0)
    r, g, b = (round(a + (d - a) * level) for a, d in zip(light, dark, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


RED = ((254, 229, 217), (165, 15, 21))
BLUE = ((222, 235, 247), (8, 69, 148))


def node_style(attrs: dict[str, Any]) -> tuple[str, str, str]:
    """(fill, text colour, extra SVG attributes) of a node by its kind and numbers."""
    kind = attrs["kind"]
    if kind == "wildcard":
        return "#e6e6e6", "#555555", ""
    if kind == "substitute":  # the graph predicts the neuron stops here: pale and dashed
        return _mix(*RED, 0.0), "#333333", ' stroke-dasharray="3,2"'
    if kind == "context":
        level = 0.15 + 0.85 * min(max(attrs.get("importance", 0.0), 0.0), 1.0)
        return _mix(*BLUE, level), "#ffffff" if level > 0.55 else "#111111", ""
    level = (0.25 if kind == "activating" else 0.1) + 0.75 * min(
        max(attrs.get("activation", 0.0), 0.0), 1.0
    )
    return _mix(*RED, level), "#ffffff" if level > 0.55 else "#111111", ""


def _best(g: nx.DiGraph) -> dict[str, float]:
    """Each node's strongest prediction: the highest activation of an end node below it."""
    best: dict[str, float] = {}
    for node in reversed(list(nx.topological_sort(g))):
        attrs = g.nodes[node]
        own = attrs.get("activation", 0.0) if attrs["kind"] == "end" else float("-inf")
        best[node] = max([own, *(best[c] for c in g.successors(node))])
    return best


def layout(g: nx.DiGraph) -> dict[str, float]:
    """The row of every node (its column is its depth): one row per path, strongest first, a node
    centred on the rows below it, half a row between the trees of two activating tokens."""
    best = _best(g)
    rows: dict[str, float] = {}
    next_row = 0.0

    def order(nodes: Any) -> list[str]:
        return sorted(nodes, key=lambda n: (-best[n], node_label(g.nodes[n]), n))

    def place(node: str) -> float:
        nonlocal next_row
        children = order(g.successors(node))
        if not children:
            rows[node] = next_row
            next_row += 1
        else:
            ys = [place(c) for c in children]
            rows[node] = (min(ys) + max(ys)) / 2
        return rows[node]

    for root in order(n for n in g if g.in_degree(n) == 0):
        place(root)
        next_row += 0.5
    return rows


def _text_width(text: str) -> float:
    # wide characters (CJK) never reach here: the font lacks them, so they are \u escapes
    return len(text) * CHAR_W


def _boxes(
    g: nx.DiGraph, rows: dict[str, float], labels: dict[str, str], top: float
) -> dict[str, tuple[float, float, float]]:
    """(left, right, centre y) of every node's box. Tokens stand in columns by depth, right-aligned
    (so the edges into the next column are short); a path's prediction badge sits just left of the
    token it ends on, which is alone on its row to the left (a row is one path)."""
    badge_w = max(
        (_text_width(labels[n]) + 2 * PAD_X for n in g if g.out_degree(n) == 0), default=0
    )
    tokens = [n for n, a in g.nodes(data=True) if a["kind"] != "end"]
    max_depth = max((g.nodes[n]["depth"] for n in tokens), default=0)
    widths = [0.0] * (max_depth + 1)  # by column from the left: depth max_depth .. 0
    for n in tokens:
        col = max_depth - g.nodes[n]["depth"]
        widths[col] = max(widths[col], _text_width(labels[n]) + 2 * PAD_X)
    lefts, x = [], MARGIN + badge_w + BADGE_GAP
    for w in widths:
        lefts.append(x)
        x += w + COL_GAP
    out = {}
    for n in tokens:
        col = max_depth - g.nodes[n]["depth"]
        right = lefts[col] + widths[col]
        out[n] = (right - _text_width(labels[n]) - 2 * PAD_X, right, top + (rows[n] + 0.5) * ROW_H)
    for n, a in g.nodes(data=True):
        if a["kind"] == "end":
            parents = list(g.predecessors(n))
            right = out[parents[0]][0] - BADGE_GAP if parents else MARGIN + badge_w
            out[n] = (
                right - _text_width(labels[n]) - 2 * PAD_X,
                right,
                top + (rows[n] + 0.5) * ROW_H,
            )
    return out


def graph_svg(g: nx.DiGraph, title: str) -> str:
    """The SVG text of graph ``g`` (already cut to the paths to show) under ``title`` (lines split
    at newlines; the first is bold)."""
    rows = layout(g)
    labels = {n: node_label(a) for n, a in g.nodes(data=True)}
    title_lines = [drawable(line) for line in title.split("\n")]
    top = MARGIN + 18 * len(title_lines) + 8
    boxes = _boxes(g, rows, labels, top)
    width = max(max((r for _, r, _ in boxes.values()), default=0) + MARGIN, _legend_width())
    n_rows = max(rows.values(), default=0.0) + 1
    height = top + n_rows * ROW_H + LEGEND_H
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}"'
        f' viewBox="0 0 {width:.0f} {height:.0f}" font-family="{FONT}" font-size="{FONT_SIZE}">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
    ]
    for i, line in enumerate(title_lines):
        weight = ' font-weight="bold"' if i == 0 else ""
        out.append(
            f'<text x="{MARGIN}" y="{MARGIN + 12 + 18 * i}" font-family="DejaVu Sans, sans-serif"'
            f"{weight}>{escape(line)}</text>"
        )
    out.append('<g fill="none" stroke="#9e9e9e" stroke-width="1">')
    for parent, child in sorted(g.edges()):
        _, x1, y1 = boxes[child]
        x2, _, y2 = boxes[parent]
        mid = (x1 + x2) / 2
        out.append(
            f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f}'
            f' {x2:.1f},{y2:.1f}"/>'
        )
    out.append("</g>")
    for node in sorted(g.nodes, key=lambda n: (rows[n], g.nodes[n]["depth"], n)):
        out.append(_node_svg(node, g.nodes[node], labels[node], *boxes[node]))
    out.append(_legend(top + n_rows * ROW_H + 12))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _node_svg(
    node: str, attrs: dict[str, Any], label: str, left: float, right: float, y: float
) -> str:
    """One node: its box, its label and a tooltip with the whole token and its numbers; the group's
    id is the node's name in the GraphML (``n12``)."""
    fill, ink, extra = node_style(attrs)
    kind = attrs["kind"]
    tip = {
        "end": f"predicts {attrs.get('activation', 0.0):.3f} of the neuron's max at the"
        " activating token",
        "wildcard": "any token",
    }.get(kind, f"{kind} token {token_text(attrs['token'])}")
    if "importance" in attrs and kind not in ("end",):
        tip += f" · importance {attrs['importance']:.3f}"
    if kind in ("activating", "substitute"):
        tip += f" · best prediction {attrs.get('activation', 0.0):.3f}"
    radius = BOX_H / 2 if kind == "end" else 3
    ident = escape(node, {'"': "&quot;"})
    return (
        f'<g id="{ident}"><title>{escape(tip)}</title>'
        f'<rect x="{left:.1f}" y="{y - BOX_H / 2:.1f}" width="{right - left:.1f}" height="{BOX_H}"'
        f' rx="{radius:g}" fill="{fill}" stroke="#555555" stroke-width="0.6"{extra}/>'
        f'<text x="{(left + right) / 2:.1f}" y="{y + 4.5:.1f}" text-anchor="middle"'
        f' fill="{ink}" xml:space="preserve">{escape(label)}</text></g>'
    )


LEGEND = (
    ({"kind": "context", "importance": 0.8}, 3, "context (darker: matters more)"),
    ({"kind": "wildcard"}, 3, "* any token"),
    ({"kind": "activating", "activation": 0.8}, 3, "the token it fires on"),
    ({"kind": "end", "activation": 0.8}, 7, "predicted activation (share of max)"),
)
LEGEND_CHAR_W = 6.2  # DejaVu Sans at 11 px, on average
LEGEND_LINE = (
    "Each row reads left to right, as the text does: the context before the token, then the token"
    " the neuron fires on."
)


def _legend_width() -> float:
    items = sum(19 + LEGEND_CHAR_W * len(text) + 18 for _, _, text in LEGEND)
    return max(items, LEGEND_CHAR_W * len(LEGEND_LINE)) + 2 * MARGIN


def _legend(y: float) -> str:
    """One line of swatches saying what the colours and badges mean, and how to read a row."""
    parts = ['<g font-family="DejaVu Sans, sans-serif" font-size="11" fill="#333333">']
    x = float(MARGIN)
    for attrs, radius, text in LEGEND:
        fill, _, extra = node_style(attrs)
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="14" height="14" rx="{radius}" fill="{fill}"'
            f' stroke="#555555" stroke-width="0.6"{extra}/>'
            f'<text x="{x + 19:.1f}" y="{y + 11:.1f}">{escape(text)}</text>'
        )
        x += 19 + LEGEND_CHAR_W * len(text) + 18
    parts.append(f'<text x="{MARGIN}" y="{y + 30:.1f}">{escape(LEGEND_LINE)}</text></g>')
    return "".join(parts)
