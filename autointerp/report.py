"""The short report that ends `make explain`: what the run found, in the terms a reader checks it
by.

It is assembled from the database only (no model, no LLM), so it can be printed again at any time
with `autointerp report MODEL`. For the best-explained neurons it puts the explanation's score next
to the two references scored on exactly the same held-out text - the token-lookup baseline and the
N2G graph - because a score means little until one sees whether the LLM beat a lookup table; and it
lists each neuron's most similar neurons by graph overlap, the cheapest pointer to what else to look
at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.untrusted import terminal_text


def build_report(
    store: Any,
    model: str,
    layers: list[int] | None = None,
    limit: int = 5,
    similar: int = 3,
    graphs_folder: Path | None = None,
) -> dict[str, Any]:
    """``{"model", "layers", "tokens", "explained", "failed", "beat_baseline", "neurons": [{"layer",
    "neuron", "score", "baseline_score", "n2g_score", "explanation", "similar": [{"layer", "neuron",
    "similarity"}]}], "graphs": {"folder", "files"}, "ranked_by", "similar_min_score"}``; the
    similar neurons are those stored at or above the similarity's minimum score.

    Neurons are ranked by explanation score when any has one, else by N2G correlation, else by max
    activation (``ranked_by`` says which); failed or undefined scores are never ranked.
    """
    if limit < 1 or similar < 0:
        raise UserError("--limit must be at least 1 and --similar at least 0.")
    harvested = store.harvested_layers(model)
    if not harvested:
        raise store.not_harvested(model)
    wanted = (
        sorted(harvested) if layers is None else [layer for layer in layers if layer in harvested]
    )
    if not wanted:
        raise UserError(
            f"None of layers {layers} of {model} has been harvested; "
            f"harvested: {sorted(harvested)}."
        )
    everything = 10**9

    def ranked(by: str) -> list[dict[str, Any]]:
        return [r for r in store.rank_neurons(model, by, None, everything) if r["layer"] in wanted]

    scored = ranked("explanation")
    ranked_by = "explanation" if scored else "n2g"
    rows = scored or ranked("n2g")
    if not rows:
        ranked_by, rows = "max", ranked("max")
    failed = _count(
        store,
        model,
        wanted,
        "select count(distinct e.layer || '/' || e.neuron) from explanations e "
        "join runs r on r.id = e.run_id "
        "where r.model = ? and e.kind = 'llm' and e.status = 'failed'",
    )
    beat = sum(
        1
        for r in scored
        if r.get("baseline_score") is not None and r["score"] > r["baseline_score"]
    )
    neurons = []
    for r in rows[:limit]:
        neurons.append(
            {
                "layer": r["layer"],
                "neuron": r["neuron"],
                "score": r.get("score"),
                "baseline_score": r.get("baseline_score"),
                "n2g_score": r.get("n2g_score", r.get("n2g_correlation")),
                "explanation": r.get("explanation"),
                "max": r["max"],
                "similar": (
                    store.similar(model, r["layer"], r["neuron"], similar) if similar else []
                ),
            }
        )
    tokens = max((int(run.get("tokens_done") or 0) for run in harvested.values()), default=0)
    graphs = None
    if graphs_folder is not None and graphs_folder.is_dir():  # only a folder that was exported to
        graphs = {"folder": str(graphs_folder), "files": len(list(graphs_folder.glob("*.graphml")))}
    return {
        "model": model,
        "layers": wanted,
        "tokens": tokens,
        "ranked_by": ranked_by,
        "similarity_computed": store.similarity_run(model) is not None,
        "similar_min_score": store.similarity_min_score(model),
        "similar_per_neuron": similar,
        "explained": len(scored),
        "failed": failed,
        "beat_baseline": beat,
        "with_baseline": sum(1 for r in scored if r.get("baseline_score") is not None),
        "neurons": neurons,
        "graphs": graphs,
    }


def _count(store: Any, model: str, layers: list[int], sql: str) -> int:
    marks = ",".join("?" * len(layers))
    row = store.db.execute(f"{sql} and e.layer in ({marks})", [model, *layers]).fetchone()
    return int(row[0] or 0)


def _fmt(value: float | None, width: int = 6) -> str:
    return f"{value:{width}.3f}" if value is not None else " " * (width - 1) + "-"


def format_report(report: dict[str, Any], db: str, command: str = "autointerp") -> str:
    """The report as plain text for the terminal; the commands it suggests start with ``command``
    (what runs this autointerp from the user's shell, e.g. ``.venv/bin/autointerp``)."""
    model = report["model"]
    layers = ",".join(map(str, report["layers"]))
    lines = [f"== {model}: layers {layers}, {report['tokens']:,} tokens harvested =="]
    if report["ranked_by"] == "explanation":
        lines.append(
            f"{report['explained']} neuron{'' if report['explained'] == 1 else 's'} explained "
            f"and scored ({report['failed']} with a recorded LLM failure); the explanation beat "
            f"the token-lookup baseline on {report['beat_baseline']} of {report['with_baseline']}. "
            "Scores: correlation of simulated and real activations on held-out top + random text; "
            "baseline and n2g are scored on the same text."
        )
        lines.append(
            f"{'neuron':>10} {'score':>6} {'baseline':>8} {'n2g':>6}  explanation / similar neurons"
        )
        for n in report["neurons"]:
            scores = f"{_fmt(n['score'])} {_fmt(n['baseline_score'], 8)} {_fmt(n['n2g_score'])}"
            explanation = terminal_text(n["explanation"] or "-")  # LLM text: never raw controls
            lines.append(f"{n['layer']:>5}/{n['neuron']:<4} {scores}  {explanation}")
            if report["similar_per_neuron"]:
                lines.append(" " * 35 + _similar_text(report, n["similar"], command))
    else:
        what = (
            "N2G graph correlation on held-out text"
            if report["ranked_by"] == "n2g"
            else "max activation"
        )
        lines.append(
            f"No explanation scores yet (run `{command} explain {model}`); top neurons by {what}:"
        )
        for n in report["neurons"]:
            value = n["n2g_score"] if report["ranked_by"] == "n2g" else n["max"]
            similar = (
                _similar_text(report, n["similar"], command) if report["similar_per_neuron"] else ""
            )
            lines.append(f"{n['layer']:>5}/{n['neuron']:<4} {_fmt(value)}  {similar}".rstrip())
    if report["graphs"] is not None:
        g = report["graphs"]
        lines.append(
            f"GraphML + SVG of {g['files']} graphs in {g['folder']}/ "
            "(networkx.read_graphml, or open the folder in Gephi)"
        )
    first = report["neurons"][0] if report["neurons"] else None
    which = f"{first['layer']}/{first['neuron']}" if first else "L/N"
    lines.append(f"Look at one:  {command} neuron {model} {which} --db {db}")
    lines.append(
        f"Browse:       {command} serve --db {db}   then open http://127.0.0.1:8000/m/{model}"
    )
    return "\n".join(lines)


def _similar_text(report: dict[str, Any], similar: list[dict[str, Any]], command: str) -> str:
    if not report["similarity_computed"]:
        return f"similar: not computed yet ({command} similarity {report['model']})"
    if not similar:
        return f"similar: no similar neuron above {report['similar_min_score']:g}"
    return "similar: " + ", ".join(
        f"{s['layer']}/{s['neuron']} ({s['similarity']:.2f})" for s in similar
    )
