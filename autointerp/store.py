"""The one place that reads and writes results: a single SQLite file through sqlite-utils.

WAL mode (readers never block the writer), foreign keys on, and every unit of work in one transaction
(:meth:`Store.atomic`: ``BEGIN IMMEDIATE``, so the write lock is taken before the first read of the unit and a
concurrent writer makes it wait, never fail), so a crash leaves either the whole unit or none of it.
Schema (also in README):

* ``meta(key, value)`` - ``schema_version``.
* ``models(name, info, provenance)`` - architecture facts and where the weights came from (file sha256, dtype).
* ``runs(id, model, stage, config, config_hash, shard_index, shard_count, status, corpus, ...)`` - one row per
  harvest run; ``config`` is the full typed config as JSON, saved beside the results.
* ``checkpoints(run_id, layer, contexts_done, final, state)`` - resumable accumulator state (torch.save bytes); kept
  after a sharded run finishes (``final=1``) so ``merge`` can combine shards exactly.
* ``documents(run_id, doc_index, doc_id, source, text)`` and ``contexts(run_id, context_id, tokens, str_tokens,
  doc_index, offsets)`` - only those referenced by some example.
* ``neurons(run_id, layer, neuron, count, mean, variance, max, min, frac_positive, sum, sum_sq, n_positive, hist,
  ctx_max_hist)`` - per-neuron statistics; histograms use :data:`autointerp.harvest.HIST_EDGES`.
* ``examples(run_id, layer, neuron, kind, rank, split, context_id, max_activation, min_activation, peak_index,
  interval, activations)`` - kind is top/bottom/random/quantile; ``activations`` is little-endian float32 bytes,
  one value per context token (index 0 is BOS and is never counted in statistics).
* ``graphs(run_id, layer, neuron, config_hash, graph, n_nodes, precision, recall, f1, correlation, ...)`` - N2G
  graphs (JSON nodes/edges) built from harvest ``run_id`` with the N2G config whose hash is ``config_hash`` (the
  config itself is the ``runs`` row ``n2g_run_id``), and their held-out scores.
* ``explanations(run_id, layer, neuron, kind, config_hash, status, text, error, prompt_version, prompt_hash, model,
  explain_run_id, prompt_tokens, completion_tokens, cost_usd, seconds, created)`` - kind is ``llm`` (the positive
  side), ``llm_negative`` (the negative side of a gated neuron) or ``baseline`` (token lookup, no LLM); status is
  ``ok`` or ``failed`` (then ``text`` is null and ``error`` says why: a failure is never stored as a result).
* ``scores(run_id, layer, neuron, method, config_hash, status, score, score_top, score_random, r2, n_tokens,
  simulator_model, simulator_mode, error, prompt_tokens, completion_tokens, cost_usd, explain_run_id, created)`` -
  method is ``explanation``, ``baseline`` or ``n2g``; ``score`` is the Pearson correlation pooled over the held-out
  top and random records (``score_top``/``score_random`` per subset). A failed simulation is ``status='failed'``
  with a null score.
* ``llm_cache(key, model, endpoint_kind, request, response, prompt_tokens, completion_tokens, created)`` - every LLM
  request/response keyed by (model, prompt hash, params), so reruns cost nothing.
* ``explanations_fts`` - SQLite FTS5 index (porter stemming) over ``explanations.text``, external content kept in
  step by triggers: ``autointerp search --explanations``.
* ``token_index(model, layer, neuron, kind, token, weight)`` - the tokens of each neuron's newest N2G graph: kind
  ``activating`` (weight = highest normalised activation on that token) or ``context`` (weight = highest
  importance); the inverted index behind token search and graph similarity. ``indexed_graphs(model, layer, neuron,
  run_id, config_hash, created)`` says which graph each neuron's rows came from (rebuilt when a newer graph appears).
* ``similarities(run_id, layer, neuron, rank, other_layer, other_neuron, similarity)`` - the top similar neurons of
  every neuron by graph overlap (:mod:`autointerp.similarity`), from the ``runs`` row of stage ``similarity`` whose
  config holds the limit, stop-token cap, weight and the graphs' fingerprint.
* ``weights(model, layer, neuron, input_vector, cos_in_out, cos_gate_out, top_tokens, bottom_tokens, created)`` -
  facts from the weights alone (:mod:`autointerp.weights`): cosine of the input and output vectors and the direct
  logit effect (top/bottom tokens of w_out · W_U as JSON lists).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from autointerp.errors import UserError
from autointerp.faults import kill_point

#: 3: ``scores.score_raw`` (correlation with the raw activation) and the ``evaluations`` table.
#: Older databases are upgraded in place when opened (new tables and columns only; no row is
#: rewritten).
SCHEMA_VERSION = 3
DEFAULT_DB = "autointerp.db"
TABLES = ("meta", "models", "runs", "checkpoints", "documents", "contexts", "neurons", "examples", "graphs",
          "explanations", "scores", "llm_cache",
          # issue 5: similarity / search / weights
          "explanations_fts", "token_index", "indexed_graphs", "similarities", "weights",
          # evaluation results; search by meaning
          "evaluations", "text_embeddings")
EXAMPLE_COLUMNS = ("layer", "neuron", "kind", "rank", "split", "context_id", "max_activation", "min_activation",
                   "peak_index", "interval", "activations")


def _write_refused(exc: sqlite3.OperationalError) -> bool:
    """SQLite's ways of saying the file or its folder cannot be written (read-only media,
    permissions).
    """
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def default_db_path() -> str:
    return os.environ.get("AUTOINTERP_DB", DEFAULT_DB)


def encode_acts(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def decode_acts(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


class Store:
    """Typed access to the results database."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path} is a folder, not a database file; pass --db with a file "
                            "name.")
        if not create and not self.path.exists():
            raise UserError(f"No database at {self.path}; run `autointerp harvest` first or pass --db.")
        if self.path.parent and not self.path.parent.exists():
            raise UserError(f"The folder for the database {self.path} does not exist.")
        self.read_only = False
        try:
            self.db = sqlite_utils.Database(self.path)
            self.db.execute("PRAGMA busy_timeout=30000")
            try:
                self._check_owner()  # first read, before WAL mode (which changes the file)
                self.db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if not self.path.exists() or not _write_refused(exc):
                    raise
                # Read-only media: WAL readers need a -shm file next to the database, which cannot
                # be created there, and WAL mode cannot be set. Nobody can write the file either, so
                # reading it immutable is exact (for a published database: checkpointed, no -wal
                # file beside it).
                self.db.close()
                self.db = sqlite_utils.Database(sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?immutable=1", uri=True, timeout=30.0))
                self.read_only = True
                self._check_owner()
            self.db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} cannot be read as an autointerp database ({exc}); give "
                            "another --db or restore the file.") from exc
        self._ensure_schema()

    def _check_owner(self) -> None:
        """Refuse another program's SQLite file: creating our tables in it would change someone
        else's data."""
        tables = set(self.db.table_names())
        if not tables:
            return
        row = self.db.execute("select value from meta where key = 'schema_version'").fetchone() \
            if "meta" in tables and "value" in {c.name for c in self.db["meta"].columns} else None
        if row is None:
            some = ", ".join(sorted(tables)[:4])
            raise UserError(f"{self.path} is an SQLite database of another program (tables: "
                            f"{some}), not an autointerp database; give another --db.")

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One unit of work in one transaction. ``BEGIN IMMEDIATE`` takes the write lock up front: a deferred
        transaction that reads first and writes later fails at once with "database is locked" when another
        connection committed in between (SQLite cannot upgrade a stale snapshot), whereas waiting for the lock
        here goes through ``busy_timeout``. Nested calls become savepoints."""
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    # ---------------------------------------------------------------------------------------------- schema
    # Nullable columns added after a table first shipped: a database that lacks them gets them when
    # opened (older rows read NULL there; older code ignores them), without a schema version bump.
    ADDED_COLUMNS: dict[str, dict[str, type]] = {
        "graphs": {"f1_top": float, "correlation_top": float, "f1_random": float,
                   "correlation_random": float},
    }

    def _missing_columns(self) -> list[tuple[str, str, type]]:
        tables = set(self.db.table_names())
        return [(table, column, kind) for table, columns in self.ADDED_COLUMNS.items()
                if table in tables
                for column, kind in columns.items() if column not in self.db[table].columns_dict]

    def _ensure_schema(self) -> None:
        db = self.db
        if "meta" in db.table_names():
            row = db.execute("select value from meta where key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"The database {self.path} has schema version {version}, newer than this autointerp "
                    f"understands ({SCHEMA_VERSION}); upgrade autointerp."
                )
            current = set(TABLES) <= set(db.table_names()) and not self._missing_columns()
            if version == SCHEMA_VERSION and current:
                return  # opening a current database writes nothing, so readers never wait for a writer
        if self.read_only:
            raise UserError(f"The database {self.path} is read-only and was written by an older "
                            "autointerp; copy it somewhere writable once so it can be upgraded.")
        with self.atomic():
            db["meta"].insert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key", replace=True)
            db["models"].create(
                {"name": str, "info": str, "provenance": str, "updated": float}, pk="name", if_not_exists=True
            )
            db["runs"].create(
                {
                    "id": int, "model": str, "stage": str, "config": str, "config_hash": str,
                    "shard_index": int, "shard_count": int, "status": str, "corpus": str,
                    "contexts_done": int, "tokens_done": int, "created": float, "finished": float,
                },
                pk="id",
                foreign_keys=[("model", "models", "name")],
                if_not_exists=True,
            )
            db["checkpoints"].create(
                {"run_id": int, "layer": int, "contexts_done": int, "final": int, "state": bytes},
                pk=("run_id", "layer"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["documents"].create(
                {"run_id": int, "doc_index": int, "doc_id": str, "source": str, "text": str},
                pk=("run_id", "doc_index"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["contexts"].create(
                {"run_id": int, "context_id": int, "tokens": str, "str_tokens": str, "doc_index": str,
                 "offsets": str},
                pk=("run_id", "context_id"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["neurons"].create(
                {
                    "run_id": int, "layer": int, "neuron": int, "count": int, "mean": float, "variance": float,
                    "max": float, "min": float, "frac_positive": float, "sum": float, "sum_sq": float,
                    "n_positive": int, "hist": str, "ctx_max_hist": str,
                },
                pk=("run_id", "layer", "neuron"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["examples"].create(
                {
                    "run_id": int, "layer": int, "neuron": int, "kind": str, "rank": int, "split": str,
                    "context_id": int, "max_activation": float, "min_activation": float, "peak_index": int,
                    "interval": int, "activations": bytes,
                },
                pk=("run_id", "layer", "neuron", "kind", "rank"),
                foreign_keys=[("run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["graphs"].create(
                {
                    "run_id": int, "layer": int, "neuron": int, "config_hash": str, "graph": str, "n_nodes": int,
                    "precision": float, "recall": float, "f1": float, "correlation": float, "n_tokens": int,
                    "n_true_firing": int, "n2g_run_id": int, "seconds": float, "created": float,
                    **self.ADDED_COLUMNS["graphs"],
                },
                pk=("run_id", "layer", "neuron", "config_hash"),
                foreign_keys=[("run_id", "runs", "id"), ("n2g_run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["explanations"].create(
                {
                    "run_id": int, "layer": int, "neuron": int, "kind": str, "config_hash": str, "status": str,
                    "text": str, "error": str, "prompt_version": str, "prompt_hash": str, "model": str,
                    "explain_run_id": int, "prompt_tokens": int, "completion_tokens": int, "cost_usd": float,
                    "seconds": float, "created": float,
                },
                pk=("run_id", "layer", "neuron", "kind", "config_hash"),
                foreign_keys=[("run_id", "runs", "id"), ("explain_run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["scores"].create(
                {
                    "run_id": int, "layer": int, "neuron": int, "method": str, "config_hash": str, "status": str,
                    "score": float, "score_raw": float, "score_top": float, "score_random": float,
                    "r2": float, "n_tokens": int,
                    "simulator_model": str, "simulator_mode": str, "error": str, "prompt_tokens": int,
                    "completion_tokens": int, "cost_usd": float, "explain_run_id": int, "created": float,
                },
                pk=("run_id", "layer", "neuron", "method", "config_hash"),
                foreign_keys=[("run_id", "runs", "id"), ("explain_run_id", "runs", "id")],
                if_not_exists=True,
            )
            db["llm_cache"].create(
                {"key": str, "model": str, "endpoint_kind": str, "request": str, "response": str,
                 "prompt_tokens": int, "completion_tokens": int, "created": float},
                pk="key",
                if_not_exists=True,
            )
            db["runs"].create_index(["model", "status"], if_not_exists=True)
            for table, column, kind in self._missing_columns():  # plain SQL: inside the transaction
                sql_type = {float: "FLOAT", int: "INTEGER", str: "TEXT"}[kind]
                db.execute(f"alter table [{table}] add column [{column}] {sql_type}")
            self._ensure_issue5_schema()
            # sentence embeddings of explanation texts, keyed by a hash of (embedder, text): computed once
            db["text_embeddings"].create({"key": str, "embedder": str, "vector": bytes, "created": float},
                                         pk="key", if_not_exists=True)
            self._ensure_evaluation_schema()

    def _ensure_evaluation_schema(self) -> None:
        """Schema 3, inside ``_ensure_schema``'s transaction: the raw-activation score column (added
        to older databases) and the stored results of ``eval`` and ``calibrate`` runs (their config
        is the ``runs`` row)."""
        db = self.db
        if "score_raw" not in db["scores"].columns_dict:
            db.execute("alter table scores add column score_raw float")
        db["evaluations"].create(
            {"run_id": int, "model": str, "kind": str, "result": str, "created": float},
            pk="run_id", foreign_keys=[("run_id", "runs", "id")], if_not_exists=True,
        )

    def save_evaluation(self, model: str, kind: str, config: dict[str, Any], config_hash: str,
                        result: dict[str, Any] | list[Any], run_model: str | None = None) -> int:
        """Store one ``eval`` / ``calibrate`` result with its config (a ``runs`` row of that stage) in
        one transaction; returns the run id. Every invocation is kept, so a later explainer can be
        compared. ``run_model`` names the ``runs`` row's model when it differs: a calibration run
        belongs to the feature set's model (which the ``models`` table holds), while its result is
        filed under the real model that ``eval`` looks it up by."""
        now = time.time()
        with self.atomic():
            table = self.db["runs"]
            table.insert({"model": run_model or model, "stage": kind,
                          "config": json.dumps(config, sort_keys=True), "config_hash": config_hash,
                          "shard_index": 0, "shard_count": 1, "status": "complete",
                          "corpus": json.dumps({}), "contexts_done": 0, "tokens_done": 0,
                          "created": now, "finished": now})
            run_id = int(table.last_pk)
            self.db["evaluations"].insert({"run_id": run_id, "model": model, "kind": kind,
                                           "result": json.dumps(result), "created": now})
        return run_id

    def latest_evaluation(self, model: str, kind: str) -> dict[str, Any] | None:
        """The newest stored ``eval`` / ``calibrate`` result of ``model``: ``{run_id, config,
        result, created}``."""
        row = next(self.db.query(
            "select e.run_id, e.result, e.created, r.config, r.config_hash from evaluations e "
            "join runs r on r.id = e.run_id where e.model = ? and e.kind = ? "
            "order by e.run_id desc limit 1", [model, kind]), None)
        if row is None:
            return None
        return {"run_id": row["run_id"], "config": json.loads(row["config"]),
                "config_hash": row["config_hash"], "result": json.loads(row["result"]),
                "created": row["created"]}

    # ---------------------------------------------------------------------------------------------- models/runs
    def upsert_model(self, info: dict[str, Any]) -> None:
        provenance = info.get("provenance", {})
        self.db["models"].upsert(
            {"name": info["name"], "info": json.dumps(info), "provenance": json.dumps(provenance),
             "updated": time.time()},
            pk="name",
        )

    def model_info(self, name: str) -> dict[str, Any] | None:
        row = next(self.db.query("select info from models where name = ?", [name]), None)
        return json.loads(row["info"]) if row else None

    def find_run(self, model: str, stage: str, config_hash: str, shard: tuple[int, int]) -> dict[str, Any] | None:
        row = next(
            self.db.query(
                "select * from runs where model = ? and stage = ? and config_hash = ? and shard_index = ? "
                "and shard_count = ? order by id desc limit 1",
                [model, stage, config_hash, shard[0], shard[1]],
            ),
            None,
        )
        return _run_row(row) if row else None

    def finish_stage(self, run_id: int) -> None:
        self.db.execute("update runs set status = 'complete', finished = ? where id = ?", [time.time(), run_id])
        self.db.conn.commit()

    def create_run(self, model: str, stage: str, config: dict[str, Any], config_hash: str, shard: tuple[int, int],
                   corpus: dict[str, Any]) -> int:
        with self.atomic():
            table = self.db["runs"]
            table.insert(
                {
                    "model": model, "stage": stage, "config": json.dumps(config, sort_keys=True),
                    "config_hash": config_hash, "shard_index": shard[0], "shard_count": shard[1],
                    "status": "running", "corpus": json.dumps(corpus), "contexts_done": 0, "tokens_done": 0,
                    "created": time.time(), "finished": None,
                }
            )
            return int(table.last_pk)

    def runs(self, model: str | None = None) -> list[dict[str, Any]]:
        sql = "select * from runs" + (" where model = ?" if model else "") + " order by id"
        return [_run_row(r) for r in self.db.query(sql, [model] if model else [])]

    def harvested_layers(self, model: str) -> dict[int, dict[str, Any]]:
        """Layer -> the newest finished, unsharded (or merged) harvest run of ``model`` that covers it: the runs
        every query reads. Unmerged shard runs are not here."""
        out: dict[int, dict[str, Any]] = {}
        for run in self.runs(model):
            if run["stage"] == "harvest" and run["status"] == "complete" and run["shard_count"] == 1:
                for layer in run["config"]["layers"]:
                    out[layer] = run  # runs come in id order: later ones win
        return out

    def latest_complete_run(self, model: str, layer: int | None = None) -> dict[str, Any] | None:
        """The newest finished, unsharded (or merged) harvest of ``model`` that covers ``layer`` (any layer if None)."""
        layers = self.harvested_layers(model)
        if layer is not None:
            return layers.get(layer)
        return max(layers.values(), key=lambda r: r["id"], default=None)

    # ---------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, run_id: int, contexts_done: int, tokens_done: int, states: dict[int, bytes]) -> None:
        """Replace the run's checkpoint in one transaction, so a kill leaves the previous one intact."""
        with self.atomic():
            self.db.execute("delete from checkpoints where run_id = ?", [run_id])
            self.db["checkpoints"].insert_all(
                {"run_id": run_id, "layer": layer, "contexts_done": contexts_done, "final": 0, "state": blob}
                for layer, blob in states.items()
            )
            self.db.execute(
                "update runs set contexts_done = ?, tokens_done = ? where id = ?", [contexts_done, tokens_done, run_id]
            )

    def load_checkpoint(self, run_id: int) -> tuple[int, dict[int, bytes]]:
        rows = list(self.db.query("select layer, contexts_done, state from checkpoints where run_id = ?", [run_id]))
        if not rows:
            return 0, {}
        return int(rows[0]["contexts_done"]), {int(r["layer"]): r["state"] for r in rows}

    # ---------------------------------------------------------------------------------------------- results
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

        ``states`` (sharded runs) are kept as the run's final accumulator state so ``merge`` can combine shards.
        ``examples`` are tuples in :data:`EXAMPLE_COLUMNS` order, inserted with ``executemany`` (millions of rows).
        """
        db = self.db
        with self.atomic():
            for table in ("documents", "contexts", "neurons", "examples"):
                db.execute(f"delete from {table} where run_id = ?", [run_id])
            db["documents"].insert_all(({"run_id": run_id, **d} for d in documents), batch_size=500)
            db["contexts"].insert_all(({"run_id": run_id, **c} for c in contexts), batch_size=500)
            db["neurons"].insert_all(({"run_id": run_id, **n} for n in neurons), batch_size=1000)
            columns = ", ".join(f"[{c}]" for c in ("run_id", *EXAMPLE_COLUMNS))
            marks = ", ".join("?" * (len(EXAMPLE_COLUMNS) + 1))
            db.conn.executemany(f"insert into examples ({columns}) values ({marks})",
                                ((run_id, *row) for row in examples))
            db.execute("delete from checkpoints where run_id = ?", [run_id])
            if states:
                db["checkpoints"].insert_all(
                    {"run_id": run_id, "layer": layer, "contexts_done": contexts_done, "final": 1, "state": blob}
                    for layer, blob in states.items()
                )
            db.execute(
                "update runs set status = 'complete', finished = ?, contexts_done = ?, tokens_done = ? where id = ?",
                [time.time(), contexts_done, tokens_done, run_id],
            )

    def neuron(self, run_id: int, layer: int, neuron: int) -> dict[str, Any] | None:
        row = next(
            self.db.query(
                "select * from neurons where run_id = ? and layer = ? and neuron = ?", [run_id, layer, neuron]
            ),
            None,
        )
        if row is None:
            return None
        row = dict(row)
        row["hist"] = json.loads(row["hist"])
        row["ctx_max_hist"] = json.loads(row["ctx_max_hist"])
        return row

    def examples(self, run_id: int, layer: int, neuron: int, kinds: Iterable[str] | None = None,
                 split: str | None = None) -> Iterator[dict[str, Any]]:
        """Examples with their context tokens joined in, ordered by kind then rank."""
        sql = (
            "select e.*, c.tokens, c.str_tokens, c.doc_index, c.offsets from examples e join contexts c "
            "on c.run_id = e.run_id and c.context_id = e.context_id "
            "where e.run_id = ? and e.layer = ? and e.neuron = ?"
        )
        params: list[Any] = [run_id, layer, neuron]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" and e.kind in ({','.join('?' * len(kinds))})"
            params += kinds
        if split is not None:
            sql += " and e.split = ?"
            params.append(split)
        sql += " order by case e.kind when 'top' then 0 when 'bottom' then 1 when 'quantile' then 2 else 3 end, e.rank"
        for row in self.db.query(sql, params):
            out = dict(row)
            out["activations"] = decode_acts(row["activations"]).tolist()
            for key in ("tokens", "str_tokens", "doc_index", "offsets"):
                out[key] = json.loads(row[key])
            yield out

    #: rank --by choices that read the scores table (method name) rather than a statistic
    SCORE_METHODS = {"explanation": ("explanation", "llm"), "baseline": ("baseline", "baseline"),
                     "explanation_negative": ("explanation_negative", "llm_negative")}

    def rank_neurons(self, model: str, by: str, layer: int | None, limit: int) -> list[dict[str, Any]]:
        """Neurons of the latest complete harvest(s) of ``model``, best first by a statistic or a score.

        Scores (``n2g``, ``explanation``, ``baseline``) use each neuron's newest successful score; neurons without
        one drop out - a failed or undefined score is never ranked as a number."""
        columns = {"max": "n.max", "min": "-n.min", "frac_positive": "n.frac_positive", "variance": "n.variance",
                   "n2g": "g.correlation", **{k: "s.score" for k in self.SCORE_METHODS}}
        if by not in columns:
            raise UserError(f"Cannot rank by {by!r}; choose one of {', '.join(columns)}.")
        runs = {lay: run["id"] for lay, run in self.harvested_layers(model).items()}
        if layer is not None:
            if layer not in runs:
                raise UserError(f"Layer {layer} of {model} has not been harvested; harvested: {sorted(runs)}.")
            runs = {layer: runs[layer]}
        if not runs:
            raise UserError(f"No complete harvest of {model} in {self.path}.")
        where = " or ".join("(n.run_id = ? and n.layer = ?)" for _ in runs)
        params: list[Any] = [v for lay, run_id in runs.items() for v in (run_id, lay)]
        join, extra, join_params = "", "", []
        if by == "n2g":
            # the newest graph of each neuron, scored by its held-out correlation
            join = ("join graphs g on g.run_id = n.run_id and g.layer = n.layer and g.neuron = n.neuron and "
                    "g.created = (select max(created) from graphs h where h.run_id = n.run_id and "
                    "h.layer = n.layer and h.neuron = n.neuron) and g.correlation is not null")
            extra = (", g.correlation as score, g.correlation as n2g_correlation, g.f1 as n2g_f1, "
                     "g.precision as n2g_precision, g.recall as n2g_recall, "
                     "g.f1_top as n2g_f1_top, g.correlation_top as n2g_correlation_top, "
                     "g.f1_random as n2g_f1_random, g.correlation_random as n2g_correlation_random")
        elif by in self.SCORE_METHODS:
            method, kind = self.SCORE_METHODS[by]
            join = ("join scores s on s.run_id = n.run_id and s.layer = n.layer and s.neuron = n.neuron and "
                    "s.method = ? and s.status = 'ok' and s.created = (select max(created) from scores t where "
                    "t.run_id = n.run_id and t.layer = n.layer and t.neuron = n.neuron and t.method = ? and "
                    "t.status = 'ok') left join explanations e on e.run_id = s.run_id and e.layer = s.layer and "
                    "e.neuron = s.neuron and e.config_hash = s.config_hash and e.kind = ?")
            join_params = [method, method, kind]
            other = ("(select o.score from scores o where o.run_id = s.run_id and o.layer = s.layer and "
                     "o.neuron = s.neuron and o.config_hash = s.config_hash and o.method = '{}' and "
                     "o.status = 'ok')")
            extra = (", s.score, s.score_raw, s.score_top, s.score_random, s.r2, "
                     "s.simulator_model, s.simulator_mode, "
                     "e.text as explanation, e.model as explainer_model, e.prompt_version, s.config_hash, "
                     f"{other.format('baseline')} as baseline_score, {other.format('n2g')} as n2g_score")
        sql = (f"select n.layer, n.neuron, n.max, n.min, n.mean, n.frac_positive, n.variance, n.run_id{extra} "
               f"from neurons n {join} where ({where}) order by {columns[by]} desc, n.layer, n.neuron limit ?")
        return [dict(r) for r in self.db.query(sql, [*join_params, *params, limit])]

    def graph_done(self, run_id: int, layer: int, config_hash: str) -> set[int]:
        rows = self.db.query("select neuron from graphs where run_id = ? and layer = ? and config_hash = ?",
                             [run_id, layer, config_hash])
        return {int(r["neuron"]) for r in rows}

    def save_graphs(self, rows: Iterable[dict[str, Any]], model: str | None = None) -> None:
        """Insert finished graphs; one transaction per call, so an interrupted layer resumes by neuron.

        With ``model``, the graphs' token-index rows are replaced in the same transaction: the index is then never
        behind the graphs, so searching (also from the API server, which must not write) finds them at once."""
        rows = list(rows)
        with self.atomic():
            self.db["graphs"].insert_all(rows, replace=True)
            if model is not None and rows:
                from autointerp.similarity import graph_token_weights

                self._replace_token_rows(model, [(r, graph_token_weights(json.loads(r["graph"]))) for r in rows])

    def graph(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        """The newest graph of a neuron (any N2G config) built from the model's harvests."""
        row = next(self.db.query(
            "select g.* from graphs g join runs r on r.id = g.run_id where r.model = ? and g.layer = ? and "
            "g.neuron = ? order by g.created desc limit 1", [model, layer, neuron]), None)
        if row is None:
            return None
        out = dict(row)
        out["graph"] = json.loads(row["graph"])
        return out

    def document(self, run_id: int, doc_index: int) -> dict[str, Any] | None:
        row = next(
            self.db.query("select * from documents where run_id = ? and doc_index = ?", [run_id, doc_index]), None
        )
        return dict(row) if row else None

    def context_rows(self, run_id: int, context_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        return self._rows_by_id("contexts", "context_id", run_id, context_ids)

    def document_rows(self, run_id: int, doc_indices: Iterable[int]) -> dict[int, dict[str, Any]]:
        return self._rows_by_id("documents", "doc_index", run_id, doc_indices)

    def _rows_by_id(self, table: str, column: str, run_id: int, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Rows of one run by id, in chunks that stay under SQLite's limit on bound parameters."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            sql = f"select * from {table} where run_id = ? and {column} in ({','.join('?' * len(chunk))})"
            for row in self.db.query(sql, [run_id, *chunk]):
                out[int(row[column])] = dict(row)
        return out

    def delete_runs(self, run_ids: Iterable[int]) -> None:
        """Remove harvest runs and every row they own, in one transaction (the Ray driver's shard runs, once
        merged: they hold nothing the merged run lacks)."""
        ids = list(run_ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.atomic():
            for table in ("examples", "neurons", "contexts", "documents", "checkpoints", "runs"):
                column = "id" if table == "runs" else "run_id"
                self.db.execute(f"delete from {table} where {column} in ({marks})", ids)

    def final_states(self, run_id: int) -> dict[int, bytes]:
        rows = self.db.query("select layer, state from checkpoints where run_id = ? and final = 1", [run_id])
        return {int(r["layer"]): r["state"] for r in rows}

    # ---- API reads (issue 6)
    # Small read-only queries for `autointerp serve`. Each takes the harvest run that a layer is read from (see
    # harvested_layers), so a newer harvest never mixes with an older one's explanations or graphs.
    def runs_fingerprint(self) -> tuple[Any, ...]:
        """A cheap value that changes whenever a run is added or finishes: the server re-reads its run map then."""
        row = self.db.execute("select count(*), max(id), sum(status = 'complete'), max(finished) from runs")
        return tuple(row.fetchone())

    def layer_neuron_count(self, run_id: int, layer: int) -> int:
        return int(self.db.execute("select count(*) from neurons where run_id = ? and layer = ?",
                                   [run_id, layer]).fetchone()[0])

    def layer_stats(self, run_id: int, layer: int, offset: int, limit: int) -> list[dict[str, Any]]:
        """A page of per-neuron statistics of one layer, by neuron index (histograms left out: they are big)."""
        return [dict(r) for r in self.db.query(
            "select neuron, count, mean, variance, max, min, frac_positive from neurons where run_id = ? and "
            "layer = ? order by neuron limit ? offset ?", [run_id, layer, limit, offset])]

    def layer_graphs(self, run_id: int, layer: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many neurons of the layer have a graph, a page of their newest graphs' scores by neuron)."""
        newest = ("from graphs g where g.run_id = ? and g.layer = ? and g.created = (select max(created) from "
                  "graphs h where h.run_id = g.run_id and h.layer = g.layer and h.neuron = g.neuron)")
        total = int(self.db.execute(f"select count(*) {newest}", [run_id, layer]).fetchone()[0])
        rows = self.db.query(f"select g.neuron, g.n_nodes, g.precision, g.recall, g.f1, g.correlation, "
                             f"g.config_hash {newest} order by g.neuron limit ? offset ?",
                             [run_id, layer, limit, offset])
        return total, [dict(r) for r in rows]

    def neuron_explanations(self, run_id: int, layer: int, neuron: int) -> list[dict[str, Any]]:
        """Every explanation row of a neuron (all kinds and configs, failures included), newest first."""
        return [dict(r) for r in self.db.query(
            "select * from explanations where run_id = ? and layer = ? and neuron = ? order by created desc",
            [run_id, layer, neuron])]

    def neuron_scores(self, run_id: int, layer: int, neuron: int) -> list[dict[str, Any]]:
        """Every score row of a neuron (all methods and configs, failures included), newest first."""
        return [dict(r) for r in self.db.query(
            "select * from scores where run_id = ? and layer = ? and neuron = ? order by created desc",
            [run_id, layer, neuron])]

    def layer_explanations(self, run_id: int, layer: int, offset: int, limit: int
                           ) -> tuple[int, list[dict[str, Any]]]:
        """(how many neurons have an ok ``llm`` explanation, a page of them with their newest explanation score)."""
        newest = ("from explanations e where e.run_id = ? and e.layer = ? and e.kind = 'llm' and e.status = 'ok' "
                  "and e.created = (select max(created) from explanations f where f.run_id = e.run_id and "
                  "f.layer = e.layer and f.neuron = e.neuron and f.kind = 'llm' and f.status = 'ok')")
        total = int(self.db.execute(f"select count(*) {newest}", [run_id, layer]).fetchone()[0])
        rows = self.db.query(
            f"select e.neuron, e.text, e.model, e.prompt_version, (select s.score from scores s where "
            f"s.run_id = e.run_id and s.layer = e.layer and s.neuron = e.neuron and s.method = 'explanation' and "
            f"s.status = 'ok' order by s.created desc limit 1) as score {newest} order by e.neuron limit ? offset ?",
            [run_id, layer, limit, offset])
        return total, [dict(r) for r in rows]

    def layer_counts(self, run_id: int, layer: int) -> dict[str, int]:
        """How many neurons of a layer have statistics, graphs, ok explanations and ok scores."""
        q = {
            "neurons": "select count(*) from neurons where run_id = ? and layer = ?",
            "graphs": "select count(distinct neuron) from graphs where run_id = ? and layer = ?",
            "explanations": "select count(distinct neuron) from explanations where run_id = ? and layer = ? and "
                            "status = 'ok' and kind = 'llm'",
            "scores": "select count(distinct neuron) from scores where run_id = ? and layer = ? and status = 'ok'",
        }
        return {k: int(self.db.execute(sql, [run_id, layer]).fetchone()[0]) for k, sql in q.items()}

    def example_rows_raw(self, run_id: int, layer: int, neuron: int,
                         kinds: Iterable[str] | None = None, limit: int | None = None,
                         ranks: dict[str, list[int]] | None = None) -> list[tuple[Any, ...]]:
        """Examples as raw tuples (kind, rank, split, context_id, max, min, peak_index, interval, activations blob,
        str_tokens JSON, tokens JSON, doc_index JSON), in :meth:`examples` order: the server embeds the stored JSON
        text as it is instead of decoding and re-encoding it for every request. ``limit``: the first
        ranks of each kind only (the rest are never read); ``ranks``: :meth:`example_ranks`, if the
        caller has them."""
        sql = ("select e.kind, e.rank, e.split, e.context_id, e.max_activation, e.min_activation, e.peak_index, "
               "e.interval, e.activations, c.str_tokens, c.tokens, c.doc_index from examples e join contexts c "
               "on c.run_id = e.run_id and c.context_id = e.context_id where e.run_id = ? and e.layer = ? and "
               "e.neuron = ?")
        params: list[Any] = [run_id, layer, neuron]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" and e.kind in ({','.join('?' * len(kinds))})"
            params += kinds
        if limit is not None:  # ranks need not be contiguous (quantile ranks are interval x 4 + k)
            ranks = ranks if ranks is not None else self.example_ranks(run_id, layer, neuron)
            cuts = {kind: (r[limit - 1] if limit else -1) for kind, r in ranks.items()
                    if len(r) > limit}
            if cuts:
                sql += " and (" + " or ".join("(e.kind = ? and e.rank <= ?)" for _ in cuts)
                sql += f" or e.kind not in ({','.join('?' * len(cuts))}))"
                params += [v for kind, cut in cuts.items() for v in (kind, cut)] + list(cuts)
        sql += " order by case e.kind when 'top' then 0 when 'bottom' then 1 when 'quantile' then 2 else 3 end, e.rank"
        return self.db.execute(sql, params).fetchall()

    def example_ranks(self, run_id: int, layer: int, neuron: int) -> dict[str, list[int]]:
        """Kind -> the ranks of a neuron's examples of that kind, in order (from the primary key's
        index alone: no example is read)."""
        ranks: dict[str, list[int]] = {}
        for kind, rank in self.db.execute("select kind, rank from examples where run_id = ? and "
                                          "layer = ? and neuron = ? order by rank",
                                          [run_id, layer, neuron]):
            ranks.setdefault(kind, []).append(rank)
        return ranks

    def graph_raw(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        """Like :meth:`graph` but with the graph left as its stored JSON text."""
        row = next(self.db.query(
            "select g.* from graphs g join runs r on r.id = g.run_id where r.model = ? and g.layer = ? and "
            "g.neuron = ? order by g.created desc limit 1", [model, layer, neuron]), None)
        return dict(row) if row else None

    def score_values(self, run_id: int, layer: int) -> dict[str, list[float]]:
        """Every ok score of a layer by method (newest per neuron), plus ``n2g_graph``: graph correlations."""
        out: dict[str, list[float]] = {}
        for row in self.db.query(
                "select s.method, s.score from scores s where s.run_id = ? and s.layer = ? and s.status = 'ok' and "
                "s.score is not null and s.created = (select max(created) from scores t where t.run_id = s.run_id "
                "and t.layer = s.layer and t.neuron = s.neuron and t.method = s.method and t.status = 'ok')",
                [run_id, layer]):
            out.setdefault(row["method"], []).append(float(row["score"]))
        graphs = [float(r["correlation"]) for r in self.db.query(
            "select g.correlation from graphs g where g.run_id = ? and g.layer = ? and g.correlation is not null and "
            "g.created = (select max(created) from graphs h where h.run_id = g.run_id and h.layer = g.layer and "
            "h.neuron = g.neuron)", [run_id, layer])]
        if graphs:
            out["n2g_graph"] = graphs
        return out

    # ---- similarity / search / weights (issue 5)
    def _ensure_issue5_schema(self) -> None:
        """Tables of issue 5; called inside ``_ensure_schema``'s transaction. The FTS table and its triggers are
        written by hand because sqlite-utils' ``enable_fts`` uses ``executescript``, which would commit halfway."""
        db = self.db
        db["token_index"].create(
            {"model": str, "layer": int, "neuron": int, "kind": str, "token": str, "weight": float},
            pk=("model", "layer", "neuron", "kind", "token"), if_not_exists=True,
        )
        db["token_index"].create_index(["model", "kind", "token"], if_not_exists=True)
        db["indexed_graphs"].create(
            {"model": str, "layer": int, "neuron": int, "run_id": int, "config_hash": str, "created": float},
            pk=("model", "layer", "neuron"), if_not_exists=True,
        )
        db["similarities"].create(
            {"run_id": int, "layer": int, "neuron": int, "rank": int, "other_layer": int, "other_neuron": int,
             "similarity": float},
            pk=("run_id", "layer", "neuron", "rank"), foreign_keys=[("run_id", "runs", "id")], if_not_exists=True,
        )
        db["weights"].create(
            {"model": str, "layer": int, "neuron": int, "input_vector": str, "cos_in_out": float,
             "cos_gate_out": float, "top_tokens": str, "bottom_tokens": str, "created": float},
            pk=("model", "layer", "neuron"), if_not_exists=True,
        )
        if "explanations_fts" not in db.table_names():
            db.execute("create virtual table explanations_fts using fts5 (text, tokenize='porter', "
                       "content=explanations)")
            db.execute("insert into explanations_fts (explanations_fts) values ('rebuild')")
            db.execute("create trigger if not exists explanations_ai after insert on explanations begin "
                       "insert into explanations_fts (rowid, text) values (new.rowid, new.text); end")
            db.execute("create trigger if not exists explanations_ad after delete on explanations begin "
                       "insert into explanations_fts (explanations_fts, rowid, text) values "
                       "('delete', old.rowid, old.text); end")
            db.execute("create trigger if not exists explanations_au after update on explanations begin "
                       "insert into explanations_fts (explanations_fts, rowid, text) values "
                       "('delete', old.rowid, old.text); "
                       "insert into explanations_fts (rowid, text) values (new.rowid, new.text); end")

    _CURRENT_GRAPHS = (
        "select layer, neuron, run_id, config_hash, created from (select g.layer, g.neuron, g.run_id, g.config_hash, "
        "g.created, row_number() over (partition by g.layer, g.neuron order by g.created desc, g.run_id desc, "
        "g.config_hash desc) as rn from graphs g join runs r on r.id = g.run_id where r.model = ?) where rn = 1"
    )

    def graphs_to_index(self, model: str) -> list[dict[str, Any]]:
        """Neurons whose newest graph is not (or not yet) what ``token_index`` holds: ``[{layer, neuron, run_id,
        config_hash, created}]``."""
        sql = (f"select c.* from ({self._CURRENT_GRAPHS}) c left join indexed_graphs i on i.model = ? and "
               "i.layer = c.layer and i.neuron = c.neuron where i.created is null or i.created != c.created or "
               "i.run_id != c.run_id or i.config_hash != c.config_hash order by c.layer, c.neuron")
        return [dict(r) for r in self.db.query(sql, [model, model])]

    def graph_json(self, run_id: int, layer: int, neuron: int, config_hash: str) -> dict[str, Any]:
        row = self.db.execute("select graph from graphs where run_id = ? and layer = ? and neuron = ? and "
                              "config_hash = ?", [run_id, layer, neuron, config_hash]).fetchone()
        return json.loads(row[0])

    def save_token_index(self, model: str, items: Iterable[tuple[dict[str, Any], dict[str, dict[str, float]]]]
                         ) -> None:
        """Replace the token rows of some neurons (graph key, {kind: {token: weight}}) in one transaction."""
        with self.atomic():
            self._replace_token_rows(model, items)

    def _replace_token_rows(self, model: str, items: Iterable[tuple[dict[str, Any], dict[str, dict[str, float]]]]
                            ) -> None:
        db = self.db
        for key, tokens in items:
            layer, neuron = key["layer"], key["neuron"]
            db.execute("delete from token_index where model = ? and layer = ? and neuron = ?",
                       [model, layer, neuron])
            db.conn.executemany(
                "insert into token_index (model, layer, neuron, kind, token, weight) values (?, ?, ?, ?, ?, ?)",
                [(model, layer, neuron, kind, tok, w) for kind, ws in tokens.items() for tok, w in ws.items()],
            )
            db["indexed_graphs"].insert(
                {"model": model, "layer": layer, "neuron": neuron, "run_id": key["run_id"],
                 "config_hash": key["config_hash"], "created": key["created"]}, replace=True)

    def graph_token_sets(self, model: str) -> tuple[list[tuple[int, int]], list[Any]]:
        """Every indexed neuron of ``model`` (ordered by layer, neuron) and its :class:`TokenSets`."""
        from autointerp.similarity import TokenSets

        neurons = [(int(r[0]), int(r[1])) for r in self.db.execute(
            "select layer, neuron from indexed_graphs where model = ? order by layer, neuron", [model])]
        sets: dict[tuple[int, int], tuple[set[str], set[str]]] = {n: (set(), set()) for n in neurons}
        for layer, neuron, kind, token in self.db.execute(
                "select layer, neuron, kind, token from token_index where model = ?", [model]):
            sets[(layer, neuron)][0 if kind == "activating" else 1].add(token)
        return neurons, [TokenSets(frozenset(sets[n][0]), frozenset(sets[n][1])) for n in neurons]

    def graph_state(self, model: str) -> dict[str, Any]:
        """A fingerprint of the model's current graphs: similarities older than it are stale."""
        row = self.db.execute(f"select count(*), max(created) from ({self._CURRENT_GRAPHS})", [model]).fetchone()
        return {"graphs": int(row[0]), "created": row[1]}

    def save_similarities(self, model: str, config: dict[str, Any], state: dict[str, Any],
                          rows: Sequence[tuple[int, tuple[int, int], tuple[int, int], float]]) -> int:
        """Store a whole similarity result - (rank, (layer, neuron), (other_layer, other_neuron), similarity) rows -
        as a new complete ``similarity`` run, and drop the model's older ones; one transaction."""
        db = self.db
        with self.atomic():
            old = [r[0] for r in db.execute("select id from runs where model = ? and stage = 'similarity'", [model])]
            for run_id in old:
                db.execute("delete from similarities where run_id = ?", [run_id])
                db.execute("delete from runs where id = ?", [run_id])
            cfg = {**config, "graph_state": state}
            now = time.time()
            runs = db["runs"]
            runs.insert({
                "model": model, "stage": "similarity", "config": json.dumps(cfg, sort_keys=True),
                "config_hash": "", "shard_index": 0, "shard_count": 1, "status": "complete", "corpus": "{}",
                "contexts_done": 0, "tokens_done": 0, "created": now, "finished": now,
            })
            run_id = int(runs.last_pk)
            db.conn.executemany(
                "insert into similarities (run_id, layer, neuron, rank, other_layer, other_neuron, similarity) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                ((run_id, a[0], a[1], rank, b[0], b[1], sim) for rank, a, b, sim in rows),
            )
            kill_point("similarity")  # crash tests: killed here, the old result must still be there, whole
        return run_id

    def similarity_run(self, model: str) -> dict[str, Any] | None:
        row = next(self.db.query("select * from runs where model = ? and stage = 'similarity' and status = "
                                 "'complete' order by id desc limit 1", [model]), None)
        return _run_row(row) if row else None

    def similarity_stale(self, model: str, limit: int = 0) -> bool:
        """True when no similarity result exists, it keeps fewer than ``limit`` per neuron, or the graphs changed."""
        run = self.similarity_run(model)
        return (run is None or run["config"].get("limit", 0) < limit
                or run["config"].get("graph_state") != self.graph_state(model))

    def similar(self, model: str, layer: int, neuron: int, limit: int = 10) -> list[dict[str, Any]]:
        """The stored most similar neurons of ``layer/neuron``: ``[{"layer", "neuron", "similarity"}]``, most
        similar first (empty when nothing is stored; :func:`autointerp.similarity.similar` computes first)."""
        run = self.similarity_run(model)
        if run is None:
            return []
        return [dict(r) for r in self.db.query(
            "select other_layer as layer, other_neuron as neuron, similarity from similarities where run_id = ? "
            "and layer = ? and neuron = ? order by rank limit ?", [run["id"], layer, neuron, limit])]

    def token_search(self, model: str, terms: Sequence[tuple[Sequence[str], Sequence[str]]],
                     limit: int) -> list[dict[str, Any]]:
        """Neurons matching every term; a term is (kinds, tokens) and matches a neuron with any of its tokens as any
        of its kinds. Score = sum over terms of the best matching weight. Parameterised SQL only."""
        parts, params = [], []
        for i, (kinds, tokens) in enumerate(terms):
            parts.append(
                f"(select layer, neuron, max(weight) as w from token_index where model = ? and kind in "
                f"({','.join('?' * len(kinds))}) and token in ({','.join('?' * len(tokens))}) "
                f"group by layer, neuron) t{i}")
            params += [model, *kinds, *tokens]
        sql = f"select t0.layer, t0.neuron, {' + '.join(f't{i}.w' for i in range(len(terms)))} as score from {parts[0]}"
        for i in range(1, len(terms)):
            sql += f" join {parts[i]} on t{i}.layer = t0.layer and t{i}.neuron = t0.neuron"
        sql += " order by score desc, t0.layer, t0.neuron limit ?"
        return [dict(r) for r in self.db.query(sql, [*params, limit])]

    def neuron_tokens(self, model: str, layer: int, neuron: int, tokens: Sequence[str]) -> list[dict[str, Any]]:
        """Which of ``tokens`` the neuron's graph has, as which kind and with what weight."""
        return [dict(r) for r in self.db.query(
            f"select kind, token, weight from token_index where model = ? and layer = ? and neuron = ? and token in "
            f"({','.join('?' * len(tokens))}) order by weight desc", [model, layer, neuron, *tokens])]

    def explanation_search(self, model: str, fts_query: str, limit: int) -> list[dict[str, Any]]:
        """Ok explanations of ``model`` matching an FTS5 query (best bm25 rank first)."""
        return [dict(r) for r in self.db.query(
            "select e.layer, e.neuron, e.kind, e.text, e.run_id, bm25(explanations_fts) as rank "
            "from explanations_fts join explanations e on e.rowid = explanations_fts.rowid "
            "join runs r on r.id = e.run_id where explanations_fts match ? and r.model = ? and e.status = 'ok' "
            "order by rank, e.layer, e.neuron limit ?", [fts_query, model, limit])]

    def ok_explanations(self, model: str) -> list[dict[str, Any]]:
        """Every explanation of ``model`` with ``status = 'ok'``: ``[{layer, neuron, kind, text, run_id}]``."""
        return [dict(r) for r in self.db.query(
            "select e.layer, e.neuron, e.kind, e.text, e.run_id from explanations e join runs r on r.id = e.run_id "
            "where r.model = ? and e.status = 'ok' and e.text is not null order by e.layer, e.neuron, e.kind",
            [model])]

    def text_embeddings(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Stored vectors by key (missing keys are absent)."""
        out: dict[str, bytes] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.update({r[0]: r[1] for r in self.db.execute(
                f"select key, vector from text_embeddings where key in ({marks})", chunk)})
        return out

    def save_text_embeddings(self, embedder: str, vectors: dict[str, bytes]) -> None:
        """Store vectors in one transaction (a key already there is kept: same embedder, same text)."""
        now = time.time()
        with self.atomic():
            self.db["text_embeddings"].insert_all(
                ({"key": k, "embedder": embedder, "vector": v, "created": now} for k, v in vectors.items()),
                ignore=True, batch_size=500)

    def save_weight_facts(self, model: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace weight facts (one layer per call: one transaction)."""
        now = time.time()
        with self.atomic():
            self.db["weights"].insert_all(
                ({"model": model, **r, "top_tokens": json.dumps(r["top_tokens"]),
                  "bottom_tokens": json.dumps(r["bottom_tokens"]), "created": now} for r in rows),
                replace=True, batch_size=500)

    def weight_layers(self, model: str) -> set[int]:
        return {int(r[0]) for r in self.db.execute("select distinct layer from weights where model = ?", [model])}

    def weight_facts(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        """``{"layer", "neuron", "input_vector", "cos_in_out", "cos_gate_out", "top_tokens", "bottom_tokens"}`` or
        None; tokens are ``[{"token", "id", "logit"}]``."""
        row = next(self.db.query("select * from weights where model = ? and layer = ? and neuron = ?",
                                 [model, layer, neuron]), None)
        if row is None:
            return None
        out = {k: row[k] for k in ("layer", "neuron", "input_vector", "cos_in_out", "cos_gate_out")}
        out["top_tokens"] = json.loads(row["top_tokens"])
        out["bottom_tokens"] = json.loads(row["bottom_tokens"])
        return out


    # ---------------------------------------------------------------------------------------------- explanations
    def graph_for_run(self, run_id: int, layer: int, neuron: int) -> dict[str, Any] | None:
        """The newest N2G graph built from harvest ``run_id`` for a neuron (any N2G config)."""
        row = next(self.db.query("select * from graphs where run_id = ? and layer = ? and neuron = ? "
                                 "order by created desc limit 1", [run_id, layer, neuron]), None)
        if row is None:
            return None
        out = dict(row)
        out["graph"] = json.loads(row["graph"])
        return out


    def explain_state(self, run_id: int, layer: int, config_hash: str) -> dict[int, str]:
        """Neuron -> ``ok`` or ``failed`` (any failed row) for neurons already processed with this explain config."""
        state: dict[int, str] = {}
        for table in ("explanations", "scores"):
            for row in self.db.query(f"select neuron, status from {table} where run_id = ? and layer = ? and "
                                     "config_hash = ?", [run_id, layer, config_hash]):
                n = int(row["neuron"])
                if row["status"] == "failed":
                    state[n] = "failed"
                else:
                    state.setdefault(n, "ok")
        return state


    def save_explanation_results(self, run_id: int, layer: int, neuron: int, config_hash: str,
                                  explain_run_id: int, explanations: list[dict[str, Any]],
                                  scores: list[dict[str, Any]]) -> None:
        """Replace one neuron's explanations and scores for this config in one transaction (a redo of failed rows
        replaces them whole, so a neuron never mixes rows from two attempts)."""
        key = {"run_id": run_id, "layer": layer, "neuron": neuron, "config_hash": config_hash,
               "explain_run_id": explain_run_id}
        with self.atomic():
            for table in ("explanations", "scores"):
                self.db.execute(f"delete from {table} where run_id = ? and layer = ? and neuron = ? and "
                                "config_hash = ?", [run_id, layer, neuron, config_hash])
            self.db["explanations"].insert_all({**key, **r} for r in explanations)
            self.db["scores"].insert_all({**key, **r} for r in scores)


    def config_results(self, run_id: int, layer: int, neuron: int, config_hash: str
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(explanations by kind, scores by method) of one neuron under one explain config."""
        out = []
        for table, column in (("explanations", "kind"), ("scores", "method")):
            rows = self.db.query(f"select * from {table} where run_id = ? and layer = ? and "
                                 "neuron = ? and config_hash = ?",
                                 [run_id, layer, neuron, config_hash])
            out.append({r[column]: dict(r) for r in rows})
        return out[0], out[1]

    def firing_neurons(self, run_id: int, layer: int) -> list[int]:
        """Neurons of a harvested layer that fire at all (max activation > 0), in index order."""
        return [int(r["neuron"]) for r in self.db.query(
            "select neuron from neurons where run_id = ? and layer = ? and max > 0 order by neuron",
            [run_id, layer])]

    def explanation_summary(self, model: str, layer: int, neuron: int) -> dict[str, Any]:
        """The newest explanation of each kind and score of each method for a neuron (from the model's harvests)."""
        out: dict[str, Any] = {"explanations": {}, "scores": {}}
        for table, column in (("explanations", "kind"), ("scores", "method")):
            rows = self.db.query(
                f"select t.* from {table} t join runs r on r.id = t.run_id where r.model = ? and t.layer = ? and "
                f"t.neuron = ? order by t.created", [model, layer, neuron])
            for row in rows:
                out[table][row[column]] = dict(row)  # later rows win
        return out


def _run_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["config"] = json.loads(row["config"])
    out["corpus"] = json.loads(row["corpus"]) if row.get("corpus") else {}
    return out
