"""N2G graphs: written a batch of neurons at a time (with their token-index rows, in the same
transaction), read back as a neuron's newest graph."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from autointerp.store.core import newest_row
from autointerp.store.search_index import SearchIndexTables, graph_token_weights

#: The newest graph of one neuron (any N2G config) from any harvest of a model; parameters:
#: model, layer, neuron.
_NEWEST_GRAPH = "select * from graphs g where " + newest_row(
    "graphs",
    "g",
    ("layer", "neuron"),
    "h.run_id in (select id from runs where model = ?) and h.layer = ? and h.neuron = ?",
    every_group=True,
)


class GraphTables(SearchIndexTables):
    """The ``graphs`` table (written with its token-index rows: hence on top of the search
    index)."""

    def graph_done(self, run_id: int, layer: int, config_hash: str) -> set[int]:
        rows = self.db.query(
            "select neuron from graphs where run_id = ? and layer = ? and config_hash = ?",
            [run_id, layer, config_hash],
        )
        return {int(r["neuron"]) for r in rows}

    def save_graphs(self, rows: Iterable[dict[str, Any]], model: str | None = None) -> None:
        """Insert finished graphs; one transaction per call, so an interrupted layer resumes by
        neuron.

        With ``model``, the graphs' token-index rows are replaced in the same transaction: the index
        is then never behind the graphs, so searching (also from the API server, which must not
        write) finds them at once."""
        rows = list(rows)
        with self.atomic():
            self.db["graphs"].insert_all(rows, replace=True)
            if model is not None and rows:
                self._replace_token_rows(
                    model, [(r, graph_token_weights(json.loads(r["graph"]))) for r in rows]
                )

    def graph(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        """The newest graph of a neuron (any N2G config) built from the model's harvests."""
        row = next(self.db.query(_NEWEST_GRAPH, [model, layer, neuron]), None)
        if row is None:
            return None
        out = dict(row)
        out["graph"] = json.loads(row["graph"])
        return out

    def graph_for_run(self, run_id: int, layer: int, neuron: int) -> dict[str, Any] | None:
        """The newest N2G graph built from harvest ``run_id`` for a neuron (any N2G config)."""
        newest = newest_row(
            "graphs",
            "g",
            ("neuron",),
            "h.run_id = ? and h.layer = ? and h.neuron = ?",
            every_group=True,
        )
        row = next(
            self.db.query(f"select * from graphs g where {newest}", [run_id, layer, neuron]), None
        )
        if row is None:
            return None
        out = dict(row)
        out["graph"] = json.loads(row["graph"])
        return out

    def graph_json(self, run_id: int, layer: int, neuron: int, config_hash: str) -> dict[str, Any]:
        row = self.db.execute(
            "select graph from graphs where run_id = ? and layer = ? and neuron = ? and "
            "config_hash = ?",
            [run_id, layer, neuron, config_hash],
        ).fetchone()
        return json.loads(row[0])

    def layer_graphs(
        self, run_id: int, layer: int, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many neurons of the layer have a graph, a page of their newest graphs' scores by
        neuron)."""
        newest = "from graphs g where g.run_id = ? and g.layer = ? and " + newest_row(
            "graphs", "g", ("run_id", "layer", "neuron")
        )
        total = int(self.db.execute(f"select count(*) {newest}", [run_id, layer]).fetchone()[0])
        rows = self.db.query(
            "select g.neuron, g.n_nodes, g.precision, g.recall, g.f1, g.correlation, "
            f"g.config_hash {newest} order by g.neuron limit ? offset ?",
            [run_id, layer, limit, offset],
        )
        return total, [dict(r) for r in rows]

    def graph_raw(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        """Like :meth:`graph` but with the graph left as its stored JSON text."""
        row = next(self.db.query(_NEWEST_GRAPH, [model, layer, neuron]), None)
        return dict(row) if row else None
