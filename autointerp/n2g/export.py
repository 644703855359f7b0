"""N2G graphs as files people open elsewhere: GraphML (networkx, Gephi, yEd) and an SVG picture.

**What a file holds.** A node's ``kind`` says what it is: ``activating`` (a token the neuron fires
on: a root whose best path predicts at least :data:`~autointerp.store.search_index.MIN_ACTIVATION`,
0.1 of its max), ``substitute`` (a root N2G made by putting another token in an activating token's
place, on which the neuron stayed below that: the graph predicts it stops the neuron there; in
3/2005 of the first Gemma run 92 of the 93 roots were such), ``context``, ``wildcard`` or ``end``
(a path's prediction). Graphs of some neurons run to thousands of nodes (9/408, 9/1579:
1,800-3,600), too many to read in Gephi, so an export keeps by default the paths to the
:data:`EXPORT_PATHS` (64) ends with the highest activation - the predictions that say where the
neuron fires - and records the cut as the graph attributes ``paths`` (all) and
``paths_exported``; ``--full`` writes every path.

The picture (:mod:`autointerp.n2g.picture`) follows N2G's colours: activating nodes red by
activation, context nodes blue by importance, wildcards grey; each path reads left to right, as the
text does, from its context into the activating token. A character the picture's font lacks (CJK,
Indic scripts, emoji) is written as its ``\\uXXXX`` escape
(:func:`~autointerp.n2g.picture.drawable`) instead of an empty box; the GraphML and DOT files keep
the tokens as they are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx

from autointerp.errors import UserError
from autointerp.n2g.picture import graph_svg
from autointerp.store.search_index import MIN_ACTIVATION
from autointerp.untrusted import escape_token, xml_text

#: The paths (to the ends with the highest activation) an export keeps unless asked for all.
EXPORT_PATHS = 64


def to_networkx(data: dict[str, Any], meta: dict[str, Any] | None = None) -> nx.DiGraph:
    """A DiGraph with typed attributes: token (str), kind (str: ``activating``, ``substitute``,
    ``context``, ``wildcard`` or ``end``; see the module docstring), depth (int), count (int),
    importance and activation (float; present where they apply). Edges point from a token to the
    one before it in the text."""
    g = nx.DiGraph(
        **{
            k: xml_text(v) if isinstance(v, str) else v
            for k, v in (meta or {}).items()
            if v is not None
        }
    )
    activation_of = {}
    for node in data["nodes"]:
        # tokens come from an untrusted corpus: control characters are not XML (see
        # autointerp.untrusted)
        attrs: dict[str, Any] = {
            "token": xml_text(node["token"]),
            "kind": node["kind"],
            "depth": int(node["depth"]),
            "count": int(node["count"]),
        }
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
    # An activating node's own activation: the best end reachable from it (what the graph predicts
    # at best).
    for node in data["nodes"]:
        if node["kind"] == "activating":
            reach = nx.descendants(g, f"n{node['id']}")
            values = [activation_of[int(n[1:])] for n in reach if int(n[1:]) in activation_of]
            best = max(values, default=0.0)
            g.nodes[f"n{node['id']}"]["activation"] = best
            if best < MIN_ACTIVATION:
                g.nodes[f"n{node['id']}"]["kind"] = "substitute"
    return g


def path_count(g: nx.DiGraph) -> int:
    """How many paths (end nodes) a graph has."""
    return sum(1 for _, a in g.nodes(data=True) if a["kind"] == "end")


def export_cut(g: nx.DiGraph, full: bool = False) -> nx.DiGraph:
    """What an export writes: the paths to the :data:`EXPORT_PATHS` strongest ends (all with
    ``full``), with the graph attributes ``paths`` and ``paths_exported`` saying so."""
    total = path_count(g)
    out = g if full or total <= EXPORT_PATHS else strongest_paths(g, EXPORT_PATHS)
    out.graph["paths"] = total
    out.graph["paths_exported"] = path_count(out)
    return out


def safe_output_path(path: str | Path, folder: bool = False) -> Path:
    """Check an export path (a file, or with ``folder`` the folder the files go to) before anything
    is written. It may be anywhere the user can write - ``-o`` is the user's own choice, as for any
    command-line program, and symbolic links are followed as the system follows them - but two
    mistakes are refused in one sentence: a file path that is an existing folder (or a folder path
    that is an existing file), a missing folder outside the working directory (a typo such as
    ``/nonexistent_dir/x.graphml`` would otherwise create folders at the filesystem root; inside the
    working directory missing folders are created; an export folder itself may be new), and ``..``
    in a path."""
    p = Path(path)
    if ".." in p.parts:  # a relative climb out is almost always a mistake (and a model named "..")
        raise UserError(f"The output path {str(path)!r} contains '..'; give the folder directly.")
    target = (Path.cwd() / p).resolve()
    if not folder and target.is_dir():
        raise UserError(
            f"The output path {str(path)!r} is a folder; give a file name ending in .graphml."
        )
    if folder and target.is_file():
        raise UserError(f"The output folder {str(path)!r} is a file; give a folder for the files.")
    here = Path.cwd().resolve()
    parent = target.parent  # the file's folder, or the folder's own parent (the folder may be new)
    existing = next(q for q in (parent, *parent.parents) if q.exists())
    if existing != parent and not parent.is_relative_to(here):
        raise UserError(
            f"The folder {existing / parent.relative_to(existing).parts[0]} does not "
            "exist; create it first (folders are created only inside the working "
            f"directory {here})."
        )
    return p


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that becomes ``path`` only when writing it succeeded (and is
    removed when it did not: a full disk or a folder in the way leaves nothing behind). A ``path``
    that is a symbolic link is followed, as the system follows it for any write: the file it points
    to is replaced, and the link stays a link."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
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


def strongest_paths(g: nx.DiGraph, max_paths: int) -> nx.DiGraph:
    """The subgraph of the paths to the ``max_paths`` end nodes with the highest activation: a whole
    graph can have thousands of nodes, more than a picture can show."""
    ends = sorted(
        (n for n, a in g.nodes(data=True) if a["kind"] == "end"),
        key=lambda n: (-g.nodes[n]["activation"], n),
    )[:max_paths]
    keep = set(ends)
    for end in ends:
        keep |= nx.ancestors(g, end)
    return g.subgraph(keep).copy()


def svg_text(
    g: nx.DiGraph, title: str, max_paths: int = 16, beside: str = "the GraphML has them all"
) -> str:
    """The picture of the graph's strongest ``max_paths`` paths (:mod:`autointerp.n2g.picture`);
    ``beside`` says what the file next to the picture holds when paths were left out."""
    total = path_count(g)
    if total > max_paths:
        g = strongest_paths(g, max_paths)
        title += f"\n(the {max_paths} strongest of {total} paths; {beside})"
    return graph_svg(g, title)


def write_svg(
    g: nx.DiGraph,
    path: Path,
    title: str,
    max_paths: int = 16,
    beside: str = "the GraphML has them all",
) -> None:
    """Write :func:`svg_text` to ``path`` atomically."""
    text = svg_text(g, title, max_paths, beside)
    with _replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------- DOT, bulk export
# networkx writes DOT only through pydot or pygraphviz (nx.nx_pydot / nx.nx_agraph), neither of
# which is a dependency; the format is small, so it is written here, with the escaping spelled out
# and tested against pydot's parser.


def visible_token(token: str) -> str:
    """A token with backslash escapes for what would not show or would break a line: ``\\`` ->
    ``\\\\``, newline -> ``\\n``, tab -> ``\\t``, carriage return -> ``\\r``, other control
    characters -> ``\\xNN``. Reversible (:func:`unescape_visible`), and what the DOT file's
    ``token`` and ``label`` hold."""
    # the explainer prompt's escaping, plus the C1 controls
    return "".join(f"\\x{ord(c):02x}" if 0x80 <= ord(c) <= 0x9F else c for c in escape_token(token))


def unescape_visible(text: str) -> str:
    """The inverse of :func:`visible_token`."""
    out, i = [], 0
    simple = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if nxt == "x" and i + 3 < len(text):
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def dot_string(text: str) -> str:
    """A DOT quoted string. In DOT only ``\\"`` is an escape and Graphviz reads ``\\\\`` in labels
    as one backslash, so doubling every backslash and escaping quotes keeps any text - a trailing
    backslash included - inside its quotes and shows it as written. Text is made visible first, so a
    value never spans lines."""
    return '"' + visible_token(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_value(value: Any) -> str:
    if isinstance(value, bool):
        return dot_string(str(value).lower())
    if isinstance(value, float):
        return dot_string(repr(value))
    return dot_string(str(value))


def _fill(kind: str, attrs: dict[str, Any]) -> str:
    """Node colour as in the SVG: activating/end nodes red by activation, context blue by
    importance."""
    if kind == "wildcard":
        return "#d9d9d9"
    if kind == "context":
        level = min(max(float(attrs.get("importance", 0.0)), 0.0), 1.0)
        shade = int(255 - 180 * level)
        return f"#{shade:02x}{shade:02x}ff"
    level = min(max(float(attrs.get("activation", 0.0)), 0.0), 1.0)
    shade = int(255 - 180 * level)
    return f"#ff{shade:02x}{shade:02x}"


def to_dot(g: nx.DiGraph) -> str:
    """Graphviz DOT text of an N2G graph: the same nodes, edges and attributes as the GraphML (all
    DOT values are strings; ``token`` and ``label`` hold :func:`visible_token`), plus a label and
    fill colour per node and the graph's metadata as graph attributes. Read right to left, like the
    SVG."""
    name = " ".join(str(g.graph[k]) for k in ("model", "layer", "neuron") if k in g.graph) or "n2g"
    lines = [f"digraph {dot_string(name)} {{"]
    graph_attrs = {**{k: v for k, v in g.graph.items() if v is not None}, "rankdir": "RL"}
    lines.append(
        "  graph [" + ", ".join(f"{k}={_dot_value(v)}" for k, v in graph_attrs.items()) + "];"
    )
    lines.append('  node [shape="box", style="filled", fontname="monospace"];')
    for node, attrs in g.nodes(data=True):
        kind = attrs.get("kind", "")
        label = (
            f"{attrs['activation']:.2f}"
            if kind == "end" and "activation" in attrs
            else attrs.get("token", "")
        )
        shown = {**attrs, "label": label, "fillcolor": _fill(kind, attrs)}
        lines.append(
            f"  {dot_string(str(node))} ["
            + ", ".join(f"{k}={_dot_value(v)}" for k, v in shown.items())
            + "];"
        )
    for source, target, attrs in g.edges(data=True):
        extra = (
            " [" + ", ".join(f"{k}={_dot_value(v)}" for k, v in attrs.items()) + "]"
            if attrs
            else ""
        )
        lines.append(f"  {dot_string(str(source))} -> {dot_string(str(target))}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(g: nx.DiGraph, path: Path) -> None:
    """Write :func:`to_dot` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as tmp:
        tmp.write_text(to_dot(g), encoding="utf-8")


EXPORT_FORMATS = {"graphml": ".graphml", "dot": ".dot"}


def graph_meta(model: str, layer: int, neuron: int, row: dict[str, Any]) -> dict[str, Any]:
    """The graph-level attributes every exported file carries: which neuron, which N2G config, how
    well the graph predicts the neuron on held-out text."""
    return {
        "model": model,
        "layer": layer,
        "neuron": neuron,
        "config_hash": row["config_hash"],
        "correlation": row["correlation"],
        "f1": row["f1"],
    }


def model_folder(model: str) -> str:
    """The folder name of a model under ``graphs/`` (a hub name's ``/`` would make a subfolder)."""
    return model.replace("/", "_")


def export_graph(
    model: str,
    layer: int,
    neuron: int,
    row: dict[str, Any],
    out: Path,
    fmt: str = "graphml",
    svg: bool = True,
    full: bool = False,
) -> dict[str, str]:
    """Write one stored graph as ``out`` (GraphML or DOT, by ``fmt``; the :func:`export_cut`, or
    every path with ``full``) and, with ``svg``, its picture beside it. Returns ``{"graphml" or
    "dot": path, "svg": path}``."""
    g = to_networkx(row["graph"], graph_meta(model, layer, neuron, row))
    written_graph = export_cut(g, full)
    (write_graphml if fmt == "graphml" else write_dot)(written_graph, out)
    written = {fmt: str(out)}
    if svg:
        picture = out.with_suffix(".svg")
        corr = f"{row['correlation']:.2f}" if row["correlation"] is not None else "n/a"
        kept, name = written_graph.graph["paths_exported"], {"graphml": "GraphML"}.get(fmt, "DOT")
        beside = (
            f"the {name} has them all"
            if kept == written_graph.graph["paths"]
            else f"the {name} has the strongest {kept}; --full for all"
        )
        title = f"{model} {layer}/{neuron}  (held-out correlation {corr})"
        write_svg(g, picture, title, beside=beside)
        written["svg"] = str(picture)
    return written


def graphed_neurons(
    store: Any, model: str, layers: list[int] | None = None
) -> list[tuple[int, int]]:
    """Every (layer, neuron) of ``model`` with a stored N2G graph, in order (only ``layers`` when
    given)."""
    rows = store.db.execute(
        "select distinct g.layer, g.neuron from graphs g join runs r on r.id = g.run_id "
        "where r.model = ? "
        "order by g.layer, g.neuron",
        [model],
    ).fetchall()
    wanted = None if layers is None else set(layers)
    return [(int(r[0]), int(r[1])) for r in rows if wanted is None or int(r[0]) in wanted]


def export_graphs(
    store: Any,
    model: str,
    neurons: list[tuple[int, int]],
    folder: Path,
    fmt: str = "graphml",
    svg: bool = True,
    progress: bool = True,
    full: bool = False,
) -> list[dict[str, Any]]:
    """Write ``folder/<L>_<N>.graphml`` (or ``.dot``) and ``.svg`` for each of ``neurons`` that has
    a graph (:func:`export_cut`, or every path with ``full``), with a progress bar; each file is
    written atomically, so an interrupted export leaves whole files. Returns one ``{"layer",
    "neuron", fmt: path, "svg": path}`` per graph written."""
    from tqdm import tqdm

    folder = safe_output_path(folder, folder=True)
    out = []
    for layer, neuron in tqdm(
        neurons,
        unit="graph",
        desc=f"export {fmt} {model}",
        disable=not progress,
        dynamic_ncols=True,
    ):
        row = store.graph(model, layer, neuron)
        if row is None:
            continue
        path = folder / f"{layer}_{neuron}{EXPORT_FORMATS[fmt]}"
        out.append(
            {
                "layer": layer,
                "neuron": neuron,
                **export_graph(model, layer, neuron, row, path, fmt, svg, full),
            }
        )
    return out
