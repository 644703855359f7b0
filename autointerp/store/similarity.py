"""Stored similarity results: one complete ``similarity`` run per model, replaced whole, and the
fingerprint of the graphs it was computed from (so a stale result is recomputed)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from autointerp.faults import kill_point
from autointerp.store.core import StoreCore, run_row
from autointerp.store.search_index import CURRENT_GRAPHS

#: The default minimum similarity: a pair below it is neither stored nor listed
#: (:mod:`autointerp.similarity`).
MIN_SIMILARITY = 0.1


class SimilarityTables(StoreCore):
    """The ``similarities`` table and its ``runs`` rows."""

    def graph_state(self, model: str) -> dict[str, Any]:
        """A fingerprint of the model's current graphs: similarities older than it are stale."""
        row = self.db.execute(
            f"select count(*), max(created) from ({CURRENT_GRAPHS})", [model]
        ).fetchone()
        return {"graphs": int(row[0]), "created": row[1]}

    def save_similarities(
        self,
        model: str,
        config: dict[str, Any],
        state: dict[str, Any],
        rows: Sequence[tuple[int, tuple[int, int], tuple[int, int], float]],
    ) -> int:
        """Store a whole similarity result - (rank, (layer, neuron), (other_layer, other_neuron),
        similarity) rows - as a new complete ``similarity`` run, and drop the model's older ones;
        one transaction."""
        db = self.db
        with self.atomic():
            old = [
                r[0]
                for r in db.execute(
                    "select id from runs where model = ? and stage = 'similarity'", [model]
                )
            ]
            for run_id in old:
                db.execute("delete from similarities where run_id = ?", [run_id])
                db.execute("delete from runs where id = ?", [run_id])
            cfg = {**config, "graph_state": state}
            now = time.time()
            runs = db["runs"]
            runs.insert(
                {
                    "model": model,
                    "stage": "similarity",
                    "config": json.dumps(cfg, sort_keys=True),
                    "config_hash": "",
                    "shard_index": 0,
                    "shard_count": 1,
                    "status": "complete",
                    "corpus": "{}",
                    "contexts_done": 0,
                    "tokens_done": 0,
                    "created": now,
                    "finished": now,
                }
            )
            run_id = int(runs.last_pk)
            db.conn.executemany(
                "insert into similarities (run_id, layer, neuron, rank, other_layer, other_neuron,"
                " similarity) values (?, ?, ?, ?, ?, ?, ?)",
                ((run_id, a[0], a[1], rank, b[0], b[1], sim) for rank, a, b, sim in rows),
            )
            kill_point(
                "similarity"
            )  # crash tests: killed here, the old result must still be there, whole
        return run_id

    def similarity_run(self, model: str) -> dict[str, Any] | None:
        row = next(
            self.db.query(
                "select * from runs where model = ? and stage = 'similarity' and status = "
                "'complete' order by id desc limit 1",
                [model],
            ),
            None,
        )
        return run_row(row) if row else None

    def similarity_stale(self, model: str, limit: int = 0, formula: str | None = None) -> bool:
        """True when no similarity result exists, it keeps fewer than ``limit`` per neuron, the
        graphs changed, or (given ``formula``) it was computed by another formula."""
        run = self.similarity_run(model)
        return (
            run is None
            or run["config"].get("limit", 0) < limit
            or run["config"].get("graph_state") != self.graph_state(model)
            or (formula is not None and run["config"].get("formula") != formula)
        )

    def similarity_min_score(self, model: str) -> float:
        """The minimum score of the stored result (:data:`MIN_SIMILARITY` for one that predates
        the setting, or when none is stored)."""
        run = self.similarity_run(model)
        return float((run or {}).get("config", {}).get("min_score", MIN_SIMILARITY))

    def graph_harvest_runs(self, model: str) -> list[int]:
        """The harvest runs the model's current graphs were built from."""
        sql = f"select distinct run_id from ({CURRENT_GRAPHS}) order by run_id"
        return [int(r[0]) for r in self.db.execute(sql, [model])]

    def context_str_tokens(self, run_ids: Sequence[int]) -> Iterator[list[str]]:
        """The string tokens of every context the runs stored (BOS first), one context at a time:
        the corpus sample token weights are counted on."""
        for run_id in run_ids:
            for (text,) in self.db.execute(
                "select str_tokens from contexts where run_id = ?", [run_id]
            ):
                yield json.loads(text)

    def similar(self, model: str, layer: int, neuron: int, limit: int = 10) -> list[dict[str, Any]]:
        """The stored most similar neurons of ``layer/neuron``: ``[{"layer", "neuron",
        "similarity"}]``, most similar first, none below the result's minimum score (a result
        stored before the minimum existed is cut at :data:`MIN_SIMILARITY`); empty when nothing
        is stored (:func:`autointerp.similarity.similar` computes first)."""
        run = self.similarity_run(model)
        if run is None:
            return []
        floor = float(run["config"].get("min_score", MIN_SIMILARITY))
        return [
            dict(r)
            for r in self.db.query(
                "select other_layer as layer, other_neuron as neuron, similarity from similarities"
                " where run_id = ? and layer = ? and neuron = ? and similarity >= ? order by rank"
                " limit ?",
                [run["id"], layer, neuron, floor, limit],
            )
        ]
