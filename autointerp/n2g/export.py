"""N2G graphs as files people open elsewhere: GraphML (networkx, Gephi, yEd) and an SVG picture.

The picture follows N2G's convention: activating nodes red by activation, context nodes blue by importance,
wildcards grey; the text reads right to left from the activating token back into its context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx

from autointerp.errors import UserError
from autointerp.untrusted import escaped_pictures, xml_text


def to_networkx(data: dict[str, Any], meta: dict[str, Any] | None = None) -> nx.DiGraph:
    """A DiGraph with typed attributes: token (str), kind (str), depth (int), count (int), importance and
    activation (float; present where they apply). Edges point from a token to the one before it in the text."""
    g = nx.DiGraph(**{k: xml_text(v) if isinstance(v, str) else v
                      for k, v in (meta or {}).items() if v is not None})
    activation_of = {}
    for node in data["nodes"]:
        # tokens come from an untrusted corpus: control characters are not XML (see
        # autointerp.untrusted)
        attrs: dict[str, Any] = {"token": xml_text(node["token"]), "kind": node["kind"],
                                 "depth": int(node["depth"]),
                                 "count": int(node["count"])}
        if node["importance"] is not None:
            attrs["importance"] = float(node["importance"])
        if node["activation"] is not None:
            attrs["activation"] = float(node["activation"])
            activation_of[node["id"]] = float(node["activation"])
        g.add_node(f"n{node['id']}", **attrs)
    for edge in data["edges"]:
        target = data["nodes"][edge["target"]]
        relation = "ends" if target["kind"] == "end" else "preceded_by"
        g.add_edge(f"n{edge['source']}", f"n{edge['target']}", relation=relation)
    # An activating node's own activation: the best end reachable from it (what the graph predicts at best).
    for node in data["nodes"]:
        if node["kind"] == "activating":
            reach = nx.descendants(g, f"n{node['id']}")
            values = [activation_of[int(n[1:])] for n in reach if int(n[1:]) in activation_of]
            g.nodes[f"n{node['id']}"]["activation"] = max(values, default=0.0)
    return g


def safe_output_path(path: str | Path) -> Path:
    """An export path is user input: it may only name a file inside the working directory (or a
    folder below it, created as needed). ``..``, absolute paths elsewhere and symlinks that lead out
    are refused, as is a path that is an existing folder."""
    p = Path(path)
    if ".." in p.parts:
        raise UserError(f"The output path {str(path)!r} contains '..'; give a path inside the working directory.")
    here = Path.cwd().resolve()
    target = (here / p).resolve()  # follows symlinks, also of folders that exist along the way
    if not target.is_relative_to(here):
        raise UserError(f"The output path {str(path)!r} leads to {target}, outside the working "
                        f"directory {here}; exports are written only inside it.")
    if target.is_dir():
        raise UserError(f"The output path {str(path)!r} is a folder; give a file name ending in "
                        ".graphml.")
    return p


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that becomes ``path`` only when writing it succeeded (and is
    removed when it did not: a full disk or a folder in the way leaves nothing behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_graphml(g: nx.DiGraph, path: Path) -> None:
    with _replacing(path) as tmp:
        nx.write_graphml(g, tmp)


def _layout(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Tidy tree layout: x by depth (activating token on the right), leaves stacked, parents centred."""
    pos: dict[str, tuple[float, float]] = {}
    next_row = [0.0]

    def place(node: str) -> float:
        children = sorted(g.successors(node), key=lambda n: (g.nodes[n]["kind"] != "end", g.nodes[n]["token"]))
        if not children:
            y = next_row[0]
            next_row[0] += 1
        else:
            ys = [place(c) for c in children]
            y = sum(ys) / len(ys)
        pos[node] = (-float(g.nodes[node]["depth"]), -y)
        return y

    roots = sorted((n for n in g if g.in_degree(n) == 0), key=lambda n: -g.nodes[n].get("activation", 0))
    for root in roots:
        place(root)
        next_row[0] += 0.5
    return pos


def strongest_paths(g: nx.DiGraph, max_paths: int) -> nx.DiGraph:
    """The subgraph of the paths to the ``max_paths`` end nodes with the highest activation: a whole graph can have
    thousands of nodes, more than a picture can show."""
    ends = sorted((n for n, a in g.nodes(data=True) if a["kind"] == "end"),
                  key=lambda n: (-g.nodes[n]["activation"], n))[:max_paths]
    keep = set(ends)
    for end in ends:
        keep |= nx.ancestors(g, end)
    return g.subgraph(keep).copy()


def write_svg(g: nx.DiGraph, path: Path, title: str, max_paths: int = 16) -> None:
    """Draw the graph's strongest paths; SVG by default, or any format matplotlib knows from the suffix."""
    total = sum(1 for _, a in g.nodes(data=True) if a["kind"] == "end")
    if total > max_paths:
        g = strongest_paths(g, max_paths)
        title += f"\n(the {max_paths} strongest of {total} paths; the GraphML has them all)"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    pos = _layout(g)
    rows = max((-y for _, y in pos.values()), default=0) + 1
    depth = max((-x for x, _ in pos.values()), default=0) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * depth), max(2.0, 0.45 * rows)))
    reds, blues = colormaps["Reds"], colormaps["Blues"]
    colours, labels = [], {}
    for n, attrs in g.nodes(data=True):
        kind = attrs["kind"]
        if kind == "activating":
            colours.append(reds(0.25 + 0.75 * min(max(attrs.get("activation", 0.0), 0.0), 1.0)))
        elif kind == "context":
            colours.append(blues(0.2 + 0.8 * min(max(attrs.get("importance", 0.0), 0.0), 1.0)))
        elif kind == "wildcard":
            colours.append((0.85, 0.85, 0.85, 1.0))
        else:
            colours.append(reds(0.15 + 0.85 * min(max(attrs.get("activation", 0.0), 0.0), 1.0)))
        token = attrs["token"] if attrs["token"].strip() else attrs["token"].replace(" ", "␣")
        shown = escaped_pictures(repr(token)[1:-1])[:14]
        labels[n] = f"{attrs['activation']:.2f}" if kind == "end" else shown
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=False, edge_color="#999999", width=0.8)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=900, node_shape="s", edgecolors="#555555",
                           linewidths=0.5)
    nx.draw_networkx_labels(g, pos, labels=labels, ax=ax, font_size=7)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    try:
        with _replacing(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "svg", dpi=110)
    finally:
        plt.close(fig)
