"""What earlier runs of a model cost on this machine, read from the rows they left: the harvest
runs' tokens and wall clock, the graphs' seconds per neuron, the explanations' seconds and tokens
per neuron.

Why here and not in a table of its own: every stage already records its own timing beside its
results (``runs.created``/``finished``/``tokens_done``, ``graphs.seconds``,
``explanations.seconds``), so a cost estimate (``autointerp run``) reads what was measured when the
work was done, and a database merged or copied from another machine carries its numbers with it.
"""

from __future__ import annotations

import json
from typing import Any

from autointerp.store.core import StoreCore


class MeasurementQueries(StoreCore):
    """Measured costs of earlier runs of a model (read-only)."""

    def harvest_timings(self, model: str) -> list[dict[str, Any]]:
        """``model``'s complete unsharded harvest runs that folded in tokens, oldest first: ``{id,
        layers, tokens, seconds}`` with ``seconds`` the run's wall clock from its creation to its
        finish (a resumed run's pause counts too)."""
        rows = self.db.query(
            "select id, config, tokens_done, finished - created as seconds from runs where"
            " model = ? and stage = 'harvest' and status = 'complete' and shard_count = 1 and"
            " tokens_done > 0 and finished > created order by id",
            [model],
        )
        return [
            {
                "id": int(r["id"]),
                "layers": list(json.loads(r["config"]).get("layers") or []),
                "tokens": int(r["tokens_done"]),
                "seconds": float(r["seconds"]),
            }
            for r in rows
        ]

    def graph_timings(self, model: str) -> dict[int, dict[str, float]]:
        """Layer -> ``{graphs, seconds}``: how many of ``model``'s stored N2G graphs recorded their
        time, and their mean seconds per neuron (a chunk's wall clock over its neurons)."""
        rows = self.db.query(
            "select g.layer, count(*) as n, avg(g.seconds) as seconds from graphs g join runs r"
            " on r.id = g.run_id where r.model = ? and g.seconds is not null group by g.layer",
            [model],
        )
        return {
            int(r["layer"]): {"graphs": int(r["n"]), "seconds": float(r["seconds"])} for r in rows
        }

    def explanation_timings(self, model: str, explainer: str) -> dict[str, float]:
        """``{neurons, seconds, tokens, templates}`` of ``model``'s stored positive-side
        explanations from explain runs whose explainer was ``explainer``: how many succeeded, their
        mean seconds and LLM tokens (prompt + completion) per neuron, and how many of them were the
        single-token template (no LLM call, ~0 s; counted in the mean as the mix they came in)."""
        row = next(
            self.db.query(
                "select count(*) as n, avg(e.seconds) as seconds,"
                " avg(coalesce(e.prompt_tokens, 0) + coalesce(e.completion_tokens, 0)) as tokens,"
                " coalesce(sum(e.origin = 'template'), 0) as templates"
                " from explanations e join runs r on r.id = e.explain_run_id"
                " where r.model = ? and r.stage = 'explain' and e.kind = 'llm'"
                " and e.status = 'ok' and e.seconds is not null"
                " and json_extract(r.config, '$.explainer_model') = ?",
                [model, explainer],
            )
        )
        return {
            "neurons": int(row["n"]),
            "seconds": float(row["seconds"] or 0.0),
            "tokens": float(row["tokens"] or 0.0),
            "templates": int(row["templates"]),
        }
