"""The harvest's tables: models, runs (every stage's runs: their config and progress), checkpoints,
documents, contexts, neuron statistics and examples; and the reads of them that the server and the
later stages make. Each read takes the harvest run that a layer is read from (see
:meth:`HarvestTables.harvested_layers`), so a newer harvest never mixes with an older one's
results."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

import autointerp.store.schema as schema
from autointerp.errors import UserError
from autointerp.store.codec import decode_acts
from autointerp.store.core import StoreCore, run_row

#: The columns of an example row after ``run_id``, in the order :meth:`HarvestTables.finish_run`
#: takes them.
EXAMPLE_COLUMNS = (
    "layer",
    "neuron",
    "kind",
    "rank",
    "split",
    "context_id",
    "max_activation",
    "min_activation",
    "peak_index",
    "interval",
    "activations",
)


class HarvestTables(StoreCore):
    """Models, runs, checkpoints and the harvest results."""

    # ----------------------------------------------------------------------------------------------
    # models/runs
    def upsert_model(self, info: dict[str, Any]) -> None:
        provenance = info.get("provenance", {})
        self.db["models"].upsert(
            {
                "name": info["name"],
                "info": json.dumps(info),
                "provenance": json.dumps(provenance),
                "updated": time.time(),
            },
            pk="name",
        )

    def model_info(self, name: str) -> dict[str, Any] | None:
        row = next(self.db.query("select info from models where name = ?", [name]), None)
        return json.loads(row["info"]) if row else None

    def find_run(
        self, model: str, stage: str, config_hash: str, shard: tuple[int, int]
    ) -> dict[str, Any] | None:
        row = next(
            self.db.query(
                "select * from runs where model = ? and stage = ? and config_hash = ? and"
                " shard_index = ? and shard_count = ? order by id desc limit 1",
                [model, stage, config_hash, shard[0], shard[1]],
            ),
            None,
        )
        return run_row(row) if row else None

    def finish_stage(self, run_id: int) -> None:
        self.db.execute(
            "update runs set status = 'complete', finished = ? where id = ?", [time.time(), run_id]
        )
        self.db.conn.commit()

    def stop_stage(self, run_id: int) -> None:
        """A run that ended before its work was done (an LLM endpoint that kept failing): neither
        ``running`` nor ``complete``; rerunning it resumes where it stopped."""
        self.db.execute(
            "update runs set status = 'stopped', finished = ? where id = ?", [time.time(), run_id]
        )
        self.db.conn.commit()

    def create_run(
        self,
        model: str,
        stage: str,
        config: dict[str, Any],
        config_hash: str,
        shard: tuple[int, int],
        corpus: dict[str, Any],
    ) -> int:
        with self.atomic():
            table = self.db["runs"]
            table.insert(
                {
                    "model": model,
                    "stage": stage,
                    "config": json.dumps(config, sort_keys=True),
                    "config_hash": config_hash,
                    "shard_index": shard[0],
                    "shard_count": shard[1],
                    "status": "running",
                    "corpus": json.dumps(corpus),
                    "contexts_done": 0,
                    "tokens_done": 0,
                    "created": time.time(),
                    "finished": None,
                }
            )
            return int(table.last_pk)

    def runs(self, model: str | None = None) -> list[dict[str, Any]]:
        sql = "select * from runs" + (" where model = ?" if model else "") + " order by id"
        return [run_row(r) for r in self.db.query(sql, [model] if model else [])]

    def harvested_layers(self, model: str) -> dict[int, dict[str, Any]]:
        """Layer -> the newest finished, unsharded (or merged) harvest run of ``model`` that covers
        it: the runs every query reads. Unmerged shard runs are not here."""
        out: dict[int, dict[str, Any]] = {}
        for run in self.runs(model):
            if (
                run["stage"] == "harvest"
                and run["status"] == "complete"
                and run["shard_count"] == 1
            ):
                for layer in run["config"]["layers"]:
                    out[layer] = run  # runs come in id order: later ones win
        return out

    def latest_complete_run(self, model: str, layer: int | None = None) -> dict[str, Any] | None:
        """The newest finished, unsharded (or merged) harvest of ``model`` that covers ``layer``
        (any layer if None)."""
        layers = self.harvested_layers(model)
        if layer is not None:
            return layers.get(layer)
        return max(layers.values(), key=lambda r: r["id"], default=None)

    # The stages and the commands that read a harvest all refuse a missing one; the sentence they
    # say is written once, here.
    def not_harvested(self, model: str, layer: int | None = None) -> UserError:
        """The one sentence for ``model`` (or one ``layer`` of it) having no complete harvest in
        this database, and what to run instead."""
        if layer is None:
            return UserError(
                f"No complete harvest of {model} in {self.path}; run `autointerp harvest` first."
            )
        harvested = sorted(self.harvested_layers(model))
        return UserError(
            f"Layer {layer} of {model} has not been harvested (harvested layers: {harvested});"
            f" run `autointerp harvest --model {model} --layers {layer}` first."
        )

    def harvest_run(self, model: str, layer: int) -> dict[str, Any]:
        """:meth:`latest_complete_run` of ``layer``, refused in one sentence when there is none."""
        run = self.latest_complete_run(model, layer)
        if run is None:
            raise self.not_harvested(model, layer)
        return run

    def harvested_layer_list(self, model: str) -> list[int]:
        """Every layer of ``model`` with a complete harvest, in order; refused in one sentence when
        there is none (what ``--layers`` left out means)."""
        layers = sorted(self.harvested_layers(model))
        if not layers:
            raise self.not_harvested(model)
        return layers

    # ----------------------------------------------------------------------------------------------
    # checkpoints
    def save_checkpoint(
        self,
        run_id: int,
        contexts_done: int,
        tokens_done: int,
        states: Iterable[tuple[int, bytes]],
    ) -> None:
        """Replace the run's checkpoint in one transaction, so a kill leaves the previous one
        intact. ``states`` yields ``(layer, state bytes)`` and is consumed one row at a time, so a
        caller that serialises each layer as it is asked holds one layer's bytes at once, not the
        whole model's (~100 MB vs ~1.8 GB for gemma-3-270m)."""
        with self.atomic():
            self.db.execute("delete from checkpoints where run_id = ?", [run_id])
            self._insert_states(run_id, contexts_done, states, final=False)
            self.db.execute(
                "update runs set contexts_done = ?, tokens_done = ? where id = ?",
                [contexts_done, tokens_done, run_id],
            )

    def _insert_states(
        self,
        run_id: int,
        contexts_done: int,
        states: Iterable[tuple[int, bytes]],
        final: bool,
    ) -> None:
        """One checkpoint row per layer (``final``: a sharded run's last state, kept for
        ``merge``), inserted a row at a time so only one layer's bytes need exist at once."""
        self.db["checkpoints"].insert_all(
            (
                {
                    "run_id": run_id,
                    "layer": layer,
                    "contexts_done": contexts_done,
                    "final": int(final),
                    "state": blob,
                }
                for layer, blob in states
            ),
            batch_size=1,
        )

    def load_checkpoint(self, run_id: int) -> tuple[int, dict[int, bytes]]:
        rows = list(
            self.db.query(
                "select layer, contexts_done, state from checkpoints where run_id = ?", [run_id]
            )
        )
        if not rows:
            return 0, {}
        return int(rows[0]["contexts_done"]), {int(r["layer"]): r["state"] for r in rows}

    # ----------------------------------------------------------------------------------------------
    # results
    def finish_run(
        self,
        run_id: int,
        documents: Iterable[dict[str, Any]],
        contexts: Iterable[dict[str, Any]],
        neurons: Iterable[dict[str, Any]],
        examples: Iterable[tuple[Any, ...]],
        states: dict[int, bytes] | None,
        contexts_done: int,
        tokens_done: int,
    ) -> None:
        """Write every result row of a run and mark it complete, all in one transaction.

        ``states`` (sharded runs) are kept as the run's final accumulator state so ``merge`` can
        combine shards. ``examples`` are tuples in :data:`EXAMPLE_COLUMNS` order, inserted with
        ``executemany`` (millions of rows).
        """
        db = self.db
        with self.atomic():
            # The checkpoint states go first: SQLite reuses the pages they free for the rows below,
            # within this transaction. Deleted last, they left the file twice its data (1.8 GB of
            # free pages after a full-corpus Gemma harvest of 1.7 GB).
            db.execute("delete from checkpoints where run_id = ?", [run_id])
            for table in ("documents", "contexts", "neurons", "examples"):
                db.execute(f"delete from {table} where run_id = ?", [run_id])
            db["documents"].insert_all(({"run_id": run_id, **d} for d in documents), batch_size=500)
            db["contexts"].insert_all(({"run_id": run_id, **c} for c in contexts), batch_size=500)
            db["neurons"].insert_all(({"run_id": run_id, **n} for n in neurons), batch_size=1000)
            columns = ", ".join(f"[{c}]" for c in ("run_id", *EXAMPLE_COLUMNS))
            marks = ", ".join("?" * (len(EXAMPLE_COLUMNS) + 1))
            db.conn.executemany(
                f"insert into examples ({columns}) values ({marks})",
                ((run_id, *row) for row in examples),
            )
            if states:
                self._insert_states(run_id, contexts_done, states.items(), final=True)
            db.execute(
                "update runs set status = 'complete', finished = ?, contexts_done = ?, tokens_done"
                " = ? where id = ?",
                [time.time(), contexts_done, tokens_done, run_id],
            )

    def neuron(self, run_id: int, layer: int, neuron: int) -> dict[str, Any] | None:
        row = next(
            self.db.query(
                "select * from neurons where run_id = ? and layer = ? and neuron = ?",
                [run_id, layer, neuron],
            ),
            None,
        )
        if row is None:
            return None
        row = dict(row)
        row["hist"] = json.loads(row["hist"])
        row["ctx_max_hist"] = json.loads(row["ctx_max_hist"])
        return row

    def examples(
        self,
        run_id: int,
        layer: int,
        neuron: int,
        kinds: Iterable[str] | None = None,
        split: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Examples with their context tokens joined in, ordered by kind then rank."""
        sql = (
            "select e.*, c.tokens, c.str_tokens, c.doc_index, c.offsets from examples e join"
            " contexts c on c.run_id = e.run_id and c.context_id = e.context_id where e.run_id = ?"
            " and e.layer = ? and e.neuron = ?"
        )
        params: list[Any] = [run_id, layer, neuron]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" and e.kind in ({','.join('?' * len(kinds))})"
            params += kinds
        if split is not None:
            sql += " and e.split = ?"
            params.append(split)
        sql += (
            " order by case e.kind when 'top' then 0 when 'bottom' then 1 when 'quantile' then 2"
            " else 3 end, e.rank"
        )
        for row in self.db.query(sql, params):
            out = dict(row)
            out["activations"] = decode_acts(row["activations"]).tolist()
            for key in ("tokens", "str_tokens", "doc_index", "offsets"):
                out[key] = json.loads(row[key])
            yield out

    def document(self, run_id: int, doc_index: int) -> dict[str, Any] | None:
        row = next(
            self.db.query(
                "select * from documents where run_id = ? and doc_index = ?", [run_id, doc_index]
            ),
            None,
        )
        return dict(row) if row else None

    def context_rows(self, run_id: int, context_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        return self._rows_by_id("contexts", "context_id", run_id, context_ids)

    def document_rows(self, run_id: int, doc_indices: Iterable[int]) -> dict[int, dict[str, Any]]:
        return self._rows_by_id("documents", "doc_index", run_id, doc_indices)

    def _rows_by_id(
        self, table: str, column: str, run_id: int, ids: Iterable[int]
    ) -> dict[int, dict[str, Any]]:
        """Rows of one run by id, in chunks that stay under SQLite's limit on bound parameters."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            sql = (
                f"select * from {table} where run_id = ? and {column} in"
                f" ({','.join('?' * len(chunk))})"
            )
            for row in self.db.query(sql, [run_id, *chunk]):
                out[int(row[column])] = dict(row)
        return out

    def delete_runs(self, run_ids: Iterable[int]) -> None:
        """Remove harvest runs and every row they own, in one transaction (the Ray driver's shard
        runs, once merged: they hold nothing the merged run lacks)."""
        ids = list(run_ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        owned = ["examples", "neurons", "contexts", "documents", "checkpoints", "runs"]
        if "answers" in self.db.table_names():  # optional: a database may predate it
            owned.insert(0, "answers")
        with self.atomic():
            for table in owned:
                column = "id" if table == "runs" else "run_id"
                self.db.execute(f"delete from {table} where {column} in ({marks})", ids)

    def final_states(self, run_id: int) -> dict[int, bytes]:
        rows = self.db.query(
            "select layer, state from checkpoints where run_id = ? and final = 1", [run_id]
        )
        return {int(r["layer"]): r["state"] for r in rows}

    def runs_fingerprint(self) -> tuple[Any, ...]:
        """A cheap value that changes whenever a run is added or finishes: the server re-reads
        its run map then."""
        row = self.db.execute(
            "select count(*), max(id), sum(status = 'complete'), max(finished) from runs"
        )
        return tuple(row.fetchone())

    def layer_neuron_count(self, run_id: int, layer: int) -> int:
        return int(
            self.db.execute(
                "select count(*) from neurons where run_id = ? and layer = ?", [run_id, layer]
            ).fetchone()[0]
        )

    def layer_stats(self, run_id: int, layer: int, offset: int, limit: int) -> list[dict[str, Any]]:
        """A page of per-neuron statistics of one layer, by neuron index (histograms left out:
        they are big)."""
        return [
            dict(r)
            for r in self.db.query(
                "select neuron, count, mean, variance, max, min, frac_positive from neurons where"
                " run_id = ? and layer = ? order by neuron limit ? offset ?",
                [run_id, layer, limit, offset],
            )
        ]

    def example_rows_raw(
        self,
        run_id: int,
        layer: int,
        neuron: int,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
        ranks: dict[str, list[int]] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Examples as raw tuples (kind, rank, split, context_id, max, min, peak_index, interval,
        activations blob, str_tokens JSON, tokens JSON, doc_index JSON), in :meth:`examples` order:
        the server embeds the stored JSON text as it is instead of decoding and re-encoding it for
        every request. ``limit``: the first ranks of each kind only (the rest are never read);
        ``ranks``: :meth:`example_ranks`, if the caller has them."""
        sql = (
            "select e.kind, e.rank, e.split, e.context_id, e.max_activation, e.min_activation,"
            " e.peak_index, e.interval, e.activations, c.str_tokens, c.tokens, c.doc_index from"
            " examples e join contexts c on c.run_id = e.run_id and c.context_id = e.context_id"
            " where e.run_id = ? and e.layer = ? and e.neuron = ?"
        )
        params: list[Any] = [run_id, layer, neuron]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" and e.kind in ({','.join('?' * len(kinds))})"
            params += kinds
        if limit is not None:  # ranks need not be contiguous (quantile ranks are interval x 4 + k)
            ranks = ranks if ranks is not None else self.example_ranks(run_id, layer, neuron)
            cuts = {
                kind: r[limit - 1] if limit else -1 for kind, r in ranks.items() if len(r) > limit
            }
            if cuts:
                sql += " and (" + " or ".join("(e.kind = ? and e.rank <= ?)" for _ in cuts)
                sql += f" or e.kind not in ({','.join('?' * len(cuts))}))"
                params += [v for kind, cut in cuts.items() for v in (kind, cut)] + list(cuts)
        sql += (
            " order by case e.kind when 'top' then 0 when 'bottom' then 1 when 'quantile' then 2"
            " else 3 end, e.rank"
        )
        return self.db.execute(sql, params).fetchall()

    def save_answers(
        self, run_id: int, layer: int, service: str, bodies: Iterable[tuple[int, bytes]]
    ) -> None:
        """Encoded answers of one layer's neurons (``(neuron, body)``), in one transaction."""
        with self.atomic():
            schema.create_table(self.db, "answers")  # optional: a database may predate it
            self.db["answers"].insert_all(
                (
                    {"run_id": run_id, "layer": layer, "neuron": n, "service": service, "body": b}
                    for n, b in bodies
                ),
                replace=True,
                batch_size=200,
            )

    def answer(self, run_id: int, layer: int, neuron: int, service: str) -> bytes | None:
        """A stored encoded answer, or None (also when the database predates the table)."""
        try:
            row = self.db.execute(
                "select body from answers where run_id = ? and layer = ? and neuron = ? and"
                " service = ?",
                [run_id, layer, neuron, service],
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return row[0] if row else None

    def answered_layers(self, run_id: int, service: str) -> set[int]:
        """Layers of a run whose answers of ``service`` are stored."""
        if "answers" not in self.db.table_names():
            return set()
        return {
            int(r[0])
            for r in self.db.execute(
                "select distinct layer from answers where run_id = ? and service = ?",
                [run_id, service],
            )
        }

    def example_ranks(self, run_id: int, layer: int, neuron: int) -> dict[str, list[int]]:
        """Kind -> the ranks of a neuron's examples of that kind, in order (from the primary key's
        index alone: no example is read)."""
        ranks: dict[str, list[int]] = {}
        for kind, rank in self.db.execute(
            "select kind, rank from examples where run_id = ? and "
            "layer = ? and neuron = ? order by rank",
            [run_id, layer, neuron],
        ):
            ranks.setdefault(kind, []).append(rank)
        return ranks

    def firing_neurons(self, run_id: int, layer: int) -> list[int]:
        """Neurons of a harvested layer that fire at all (max activation > 0), in index order."""
        return [
            int(r["neuron"])
            for r in self.db.query(
                "select neuron from neurons where run_id = ? and layer = ? and max > 0 order by"
                " neuron",
                [run_id, layer],
            )
        ]

    def neurons_by_max(self, run_id: int, layer: int) -> list[dict[str, Any]]:
        """Every firing neuron of a harvested layer (max > 0), strongest first (ties: lower
        index): ``[{neuron, max, frac_positive, hist}]``, the histogram decoded (what ``best:K``
        reads to tell dense neurons)."""
        return [
            {"neuron": int(n), "max": float(mx), "frac_positive": float(fp), "hist": json.loads(h)}
            for n, mx, fp, h in self.db.execute(
                "select neuron, max, frac_positive, hist from neurons where run_id = ? and"
                " layer = ? and max > 0 order by max desc, neuron",
                [run_id, layer],
            )
        ]

    def top_peaks(self, run_id: int, layer: int, neuron: int) -> list[tuple[int, int, float]]:
        """``(context_id, peak_index, max_activation)`` of a neuron's top examples, by rank (the
        activations themselves are not read)."""
        return [
            (int(c), int(p), float(a))
            for c, p, a in self.db.execute(
                "select context_id, peak_index, max_activation from examples where run_id = ? and"
                " layer = ? and neuron = ? and kind = 'top' order by rank",
                [run_id, layer, neuron],
            )
        ]

    def layer_top_peaks(self, run_id: int, layer: int) -> Iterator[tuple[int, str, float]]:
        """``(neuron, peak token, normalised activation)`` of every top example of a harvested
        layer: the token each top example peaks on (as the harvest stored it) and its max
        activation over the neuron's (what the harvest's token index holds)."""
        tokens = {
            int(cid): json.loads(text)
            for cid, text in self.db.execute(
                "select context_id, str_tokens from contexts where run_id = ? and context_id in"
                " (select distinct context_id from examples where run_id = ? and layer = ? and"
                " kind = 'top')",
                [run_id, run_id, layer],
            )
        }
        for neuron, cid, peak, act, top in self.db.execute(
            "select e.neuron, e.context_id, e.peak_index, e.max_activation, n.max from examples e"
            " join neurons n on n.run_id = e.run_id and n.layer = e.layer and n.neuron = e.neuron"
            " where e.run_id = ? and e.layer = ? and e.kind = 'top' and n.max > 0",
            [run_id, layer],
        ):
            yield int(neuron), tokens[int(cid)][int(peak)], float(act) / float(top)

    def run_outputs(self, run_id: int) -> dict[str, Any]:
        """What a run of any stage wrote, for ``autointerp runs``: ``{"graphs", "explanations",
        "failed", "similarities", "evaluations"}`` (row counts) and ``"layers"`` (the layers of its
        graphs or explanations)."""
        db = self.db
        graphs, graph_layers = db.execute(
            "select count(*), group_concat(distinct layer) from graphs where n2g_run_id = ?",
            [run_id],
        ).fetchone()
        explanations, failed, explained_layers = db.execute(
            "select count(*), sum(status = 'failed'), group_concat(distinct layer) from"
            " explanations where explain_run_id = ?",
            [run_id],
        ).fetchone()
        layers = {
            int(x) for text in (graph_layers, explained_layers) if text for x in text.split(",")
        }
        return {
            "graphs": int(graphs),
            "explanations": int(explanations),
            "failed": int(failed or 0),
            "similarities": int(
                db.execute(
                    "select count(*) from similarities where run_id = ?", [run_id]
                ).fetchone()[0]
            ),
            "evaluations": int(
                db.execute(
                    "select count(*) from evaluations where run_id = ?", [run_id]
                ).fetchone()[0]
            ),
            "layers": sorted(layers),
        }
