"""Facts from the weights alone (:mod:`autointerp.weights`), one layer per transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from autointerp.store.core import StoreCore


class WeightTables(StoreCore):
    """The ``weights`` table."""

    def save_weight_facts(self, model: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace weight facts (one layer per call: one transaction)."""
        now = time.time()
        with self.atomic():
            self.db["weights"].insert_all(
                (
                    {
                        "model": model,
                        **r,
                        "top_tokens": json.dumps(r["top_tokens"]),
                        "bottom_tokens": json.dumps(r["bottom_tokens"]),
                        "created": now,
                    }
                    for r in rows
                ),
                replace=True,
                batch_size=500,
            )

    def weight_layers(self, model: str) -> set[int]:
        return {
            int(r[0])
            for r in self.db.execute("select distinct layer from weights where model = ?", [model])
        }

    def weight_facts(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        """``{"layer", "neuron", "input_vector", "cos_in_out", "cos_gate_out", "top_tokens",
        "bottom_tokens"}`` or None; tokens are ``[{"token", "id", "logit"}]``."""
        row = next(
            self.db.query(
                "select * from weights where model = ? and layer = ? and neuron = ?",
                [model, layer, neuron],
            ),
            None,
        )
        if row is None:
            return None
        out = {k: row[k] for k in ("layer", "neuron", "input_vector", "cos_in_out", "cos_gate_out")}
        out["top_tokens"] = json.loads(row["top_tokens"])
        out["bottom_tokens"] = json.loads(row["bottom_tokens"])
        return out
