"""The database schema, declared once: every table, index and the FTS index in creation order, and
the in-place upgrade of older databases.

:data:`SCHEMA` is read by :func:`ensure_schema` both to create a new database and to upgrade an
older one (``create table if not exists``, then the columns of :data:`ADDED_COLUMNS` it lacks): an
upgrade adds tables and columns only and rewrites no row. The order of :data:`SCHEMA` is the order
of ``sqlite3 DB .schema``, so a new database reads the same as one made by earlier versions.

Tables (also in docs/database.md):

* ``meta(key, value)`` - ``schema_version``.
* ``models(name, info, provenance)`` - architecture facts and where the weights came from (file
  sha256, dtype).
* ``runs(id, model, stage, config, config_hash, shard_index, shard_count, status, corpus, ...)`` -
  one row per harvest run; ``config`` is the full typed config as JSON, saved beside the results.
* ``checkpoints(run_id, layer, contexts_done, final, state)`` - resumable accumulator state
  (torch.save bytes); kept after a sharded run finishes (``final=1``) so ``merge`` can combine
  shards exactly.
* ``documents(run_id, doc_index, doc_id, source, text)`` and ``contexts(run_id, context_id, tokens,
  str_tokens, doc_index, offsets)`` - only those referenced by some example.
* ``neurons(run_id, layer, neuron, count, mean, variance, max, min, frac_positive, sum, sum_sq,
  n_positive, hist, ctx_max_hist)`` - per-neuron statistics; histograms use
  :data:`autointerp.harvest.HIST_EDGES`.
* ``examples(run_id, layer, neuron, kind, rank, split, context_id, max_activation, min_activation,
  peak_index, interval, activations)`` - kind is top/bottom/random/quantile; ``activations`` is
  little-endian float32 bytes, one value per context token (index 0 is BOS and is never counted in
  statistics).
* ``graphs(run_id, layer, neuron, config_hash, graph, n_nodes, precision, recall, f1, correlation,
  ...)`` - N2G graphs (JSON nodes/edges) built from harvest ``run_id`` with the N2G config whose
  hash is ``config_hash`` (the config itself is the ``runs`` row ``n2g_run_id``), and their
  held-out scores.
* ``explanations(run_id, layer, neuron, kind, config_hash, status, text, error, prompt_version,
  prompt_hash, model, candidates, origin, explain_run_id, prompt_tokens, completion_tokens,
  cost_usd, seconds, created)`` - kind is ``llm`` (the positive side), ``llm_negative`` (the
  negative side of a gated neuron), ``baseline`` (token lookup, no LLM) or ``user`` (a description a
  person scored with ``autointerp score --save``; ``config_hash`` is then a hash of the text and of
  the explain config whose held-out records scored it, one row per text); status is ``ok`` or
  ``failed`` (then ``text`` is null and ``error`` says why: a failure is never stored as a result).
  ``candidates`` lists every candidate explanation with its origin and its score on the validation
  records, as JSON; ``origin`` says who wrote the kept one (``llm``, ``revision``,
  ``graph-summary``, ``graph``, ``tokens`` or ``template``).
* ``scores(run_id, layer, neuron, method, config_hash, status, score, score_top, score_random,
  auprc, r2, n_tokens, simulator_model, simulator_mode, simulation, error, prompt_tokens,
  completion_tokens, cost_usd, explain_run_id, created)`` - method is ``explanation``,
  ``baseline``, ``n2g``, ``explanation_first`` (the first LLM explanation alone) or ``user`` (the
  score of a ``user`` explanation, same key); ``simulation``
  is the JSON rule the ``rule`` simulator compiled the explanation into; ``score`` is the Pearson
  correlation pooled over the held-out top and random records (``score_top``/``score_random`` per
  subset); ``auprc`` the average precision of the simulation against "the neuron fires" (>= half
  its max) over every held-out record, quantile ones included. A failed simulation is
  ``status='failed'`` with a null score.
* ``llm_cache(key, model, endpoint_kind, request, response, prompt_tokens, completion_tokens,
  created)`` - every LLM request/response keyed by (model, prompt hash, params), so reruns cost
  nothing (read and written by :class:`autointerp.llm.cache.LLMCache`).
* ``explanations_fts`` - SQLite FTS5 index (porter stemming) over ``explanations.text``, external
  content kept in step by triggers: ``autointerp search --explanations``.
* ``token_index(model, layer, neuron, kind, token, weight)`` - the tokens of each neuron's newest
  N2G graph: kind ``activating`` (weight = highest normalised activation on that token) or
  ``context`` (weight = highest importance); the inverted index behind token search and graph
  similarity. ``indexed_graphs(model, layer, neuron, run_id, config_hash, created)`` says which
  graph each neuron's rows came from (rebuilt when a newer graph appears).
* ``harvest_token_index(model, layer, neuron, token, weight, run_id)`` - the tokens every harvested
  neuron peaks on in its top examples (weight = the highest normalised activation there), from
  the newest harvest ``run_id`` of the layer: token search answers from it for neurons without a
  graph. Optional (rebuilt from the harvest by ``autointerp index``).
* ``similarities(run_id, layer, neuron, rank, other_layer, other_neuron, similarity)`` - the top
  similar neurons of every neuron by graph overlap (:mod:`autointerp.similarity`), from the
  ``runs`` row of stage ``similarity`` whose config holds the limit, stop-token cap, weight and the
  graphs' fingerprint.
* ``answers(run_id, layer, neuron, service, body)`` - the server's default ``neuroscope`` answer of
  every neuron of a complete harvest run, zlib-compressed JSON, written by ``autointerp harvest``/
  ``merge`` with ``--answers`` so that the first request for a neuron costs a read instead of
  assembling ~60 KB of JSON (:mod:`autointerp.api.fastpath`). Optional: without rows the server
  assembles the answer itself.
* ``weights(model, layer, neuron, input_vector, cos_in_out, cos_gate_out, top_tokens,
  bottom_tokens, created)`` - facts from the weights alone (:mod:`autointerp.weights`): cosine of
  the input and output vectors and the direct logit effect (top/bottom tokens of w_out · W_U as
  JSON lists).
* ``text_embeddings(key, embedder, vector, created)`` - sentence embeddings of explanation texts,
  keyed by a hash of (embedder, text): computed once.
* ``evaluations(run_id, model, kind, result, created)`` - the stored results of ``eval`` and
  ``calibrate`` runs (their config is the ``runs`` row).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

#: 3: ``scores.score_raw`` (correlation with the raw activation) and the ``evaluations`` table.
#: 4: ``scores.simulation`` (the matching rule an explanation was compiled into) and
#: ``explanations.candidates`` (best-of-n: every candidate with its validation score).
#: 5: ``scores.auprc`` (the simulation's average precision against "the neuron fires") and
#: ``explanations.origin`` (who wrote the kept explanation: the LLM, a revision, the graph, ...).
#: Older databases are upgraded in place when opened (new tables and columns only; no row is
#: rewritten).
SCHEMA_VERSION = 5


@dataclass(frozen=True)
class Table:
    """One table as sqlite-utils creates it."""

    name: str
    columns: dict[str, type]
    pk: str | tuple[str, ...]
    foreign_keys: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Index:
    """An index on ``columns`` of ``table`` (sqlite-utils names it)."""

    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class FullTextIndex:
    """An FTS5 index over ``table.column`` (porter stemming, external content), kept in step by
    triggers. Written by hand because sqlite-utils' ``enable_fts`` uses ``executescript``, which
    would commit halfway through the schema's transaction."""

    name: str
    table: str
    column: str


_RUN = ("run_id", "runs", "id")

#: : Nullable columns added after a table first shipped: a database that lacks them gets them when :
#: opened (older rows read NULL there; older code ignores them). ``scores.score_raw`` came with :
#: schema 3, ``scores.simulation`` and ``explanations.candidates`` with 4, ``scores.auprc`` and
#: ``explanations.origin`` with 5; the ``graphs`` columns came without a version bump.
ADDED_COLUMNS: dict[str, dict[str, type]] = {
    "graphs": {
        "f1_top": float,
        "correlation_top": float,
        "f1_random": float,
        "correlation_random": float,
    },
    "scores": {"score_raw": float, "simulation": str, "auprc": float},
    "explanations": {"candidates": str, "origin": str},
}

#: Every table, index and full-text index, in creation order.
SCHEMA: tuple[Table | Index | FullTextIndex, ...] = (
    Table("meta", {"key": str, "value": str}, "key"),
    Table("models", {"name": str, "info": str, "provenance": str, "updated": float}, "name"),
    Table(
        "runs",
        {
            "id": int,
            "model": str,
            "stage": str,
            "config": str,
            "config_hash": str,
            "shard_index": int,
            "shard_count": int,
            "status": str,
            "corpus": str,
            "contexts_done": int,
            "tokens_done": int,
            "created": float,
            "finished": float,
        },
        "id",
        (("model", "models", "name"),),
    ),
    Table(
        "checkpoints",
        {"run_id": int, "layer": int, "contexts_done": int, "final": int, "state": bytes},
        ("run_id", "layer"),
        (_RUN,),
    ),
    Table(
        "documents",
        {"run_id": int, "doc_index": int, "doc_id": str, "source": str, "text": str},
        ("run_id", "doc_index"),
        (_RUN,),
    ),
    Table(
        "contexts",
        {
            "run_id": int,
            "context_id": int,
            "tokens": str,
            "str_tokens": str,
            "doc_index": str,
            "offsets": str,
        },
        ("run_id", "context_id"),
        (_RUN,),
    ),
    Table(
        "neurons",
        {
            "run_id": int,
            "layer": int,
            "neuron": int,
            "count": int,
            "mean": float,
            "variance": float,
            "max": float,
            "min": float,
            "frac_positive": float,
            "sum": float,
            "sum_sq": float,
            "n_positive": int,
            "hist": str,
            "ctx_max_hist": str,
        },
        ("run_id", "layer", "neuron"),
        (_RUN,),
    ),
    Table(
        "examples",
        {
            "run_id": int,
            "layer": int,
            "neuron": int,
            "kind": str,
            "rank": int,
            "split": str,
            "context_id": int,
            "max_activation": float,
            "min_activation": float,
            "peak_index": int,
            "interval": int,
            "activations": bytes,
        },
        ("run_id", "layer", "neuron", "kind", "rank"),
        (_RUN,),
    ),
    Table(
        "graphs",
        {
            "run_id": int,
            "layer": int,
            "neuron": int,
            "config_hash": str,
            "graph": str,
            "n_nodes": int,
            "precision": float,
            "recall": float,
            "f1": float,
            "correlation": float,
            "n_tokens": int,
            "n_true_firing": int,
            "n2g_run_id": int,
            "seconds": float,
            "created": float,
            **ADDED_COLUMNS["graphs"],
        },
        ("run_id", "layer", "neuron", "config_hash"),
        (_RUN, ("n2g_run_id", "runs", "id")),
    ),
    Table(
        "explanations",
        {
            "run_id": int,
            "layer": int,
            "neuron": int,
            "kind": str,
            "config_hash": str,
            "status": str,
            "text": str,
            "error": str,
            "prompt_version": str,
            "prompt_hash": str,
            "model": str,
            "candidates": str,
            "origin": str,
            "explain_run_id": int,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cost_usd": float,
            "seconds": float,
            "created": float,
        },
        ("run_id", "layer", "neuron", "kind", "config_hash"),
        (_RUN, ("explain_run_id", "runs", "id")),
    ),
    Table(
        "scores",
        {
            "run_id": int,
            "layer": int,
            "neuron": int,
            "method": str,
            "config_hash": str,
            "status": str,
            "score": float,
            "score_raw": float,
            "score_top": float,
            "score_random": float,
            "auprc": float,
            "r2": float,
            "n_tokens": int,
            "simulator_model": str,
            "simulator_mode": str,
            "simulation": str,
            "error": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cost_usd": float,
            "explain_run_id": int,
            "created": float,
        },
        ("run_id", "layer", "neuron", "method", "config_hash"),
        (_RUN, ("explain_run_id", "runs", "id")),
    ),
    Table(
        "llm_cache",
        {
            "key": str,
            "model": str,
            "endpoint_kind": str,
            "request": str,
            "response": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "created": float,
        },
        "key",
    ),
    Index("runs", ("model", "status")),
    # the search index, similarity and weight facts
    Table(
        "token_index",
        {"model": str, "layer": int, "neuron": int, "kind": str, "token": str, "weight": float},
        ("model", "layer", "neuron", "kind", "token"),
    ),
    Index("token_index", ("model", "kind", "token")),
    Table(
        "harvest_token_index",
        {
            "model": str,
            "layer": int,
            "neuron": int,
            "token": str,
            "weight": float,
            "run_id": int,
        },
        ("model", "layer", "neuron", "token"),
    ),
    Index("harvest_token_index", ("model", "token")),
    Table(
        "indexed_graphs",
        {
            "model": str,
            "layer": int,
            "neuron": int,
            "run_id": int,
            "config_hash": str,
            "created": float,
        },
        ("model", "layer", "neuron"),
    ),
    Table(
        "similarities",
        {
            "run_id": int,
            "layer": int,
            "neuron": int,
            "rank": int,
            "other_layer": int,
            "other_neuron": int,
            "similarity": float,
        },
        ("run_id", "layer", "neuron", "rank"),
        (_RUN,),
    ),
    Table(
        "weights",
        {
            "model": str,
            "layer": int,
            "neuron": int,
            "input_vector": str,
            "cos_in_out": float,
            "cos_gate_out": float,
            "top_tokens": str,
            "bottom_tokens": str,
            "created": float,
        },
        ("model", "layer", "neuron"),
    ),
    FullTextIndex("explanations_fts", "explanations", "text"),
    # search by meaning; evaluation results
    Table(
        "text_embeddings", {"key": str, "embedder": str, "vector": bytes, "created": float}, "key"
    ),
    Table(
        "evaluations",
        {"run_id": int, "model": str, "kind": str, "result": str, "created": float},
        "run_id",
        (_RUN,),
    ),
    # answers encoded once, after a harvest run is complete (a complete run never changes)
    Table(
        "answers",
        {"run_id": int, "layer": int, "neuron": int, "service": str, "body": bytes},
        ("run_id", "layer", "neuron", "service"),
        (_RUN,),
    ),
)

#: Every table a current database has (checked when it is opened).
TABLES = tuple(item.name for item in SCHEMA if not isinstance(item, Index))
#: Tables a database may lack and still be current: what they hold can be rebuilt, and requiring
#: them would make every read-only database written before they existed unreadable. Created when
#: first written (:func:`create_table`); readers treat a missing one as empty.
OPTIONAL_TABLES = ("answers", "harvest_token_index")


def missing_columns(db: sqlite_utils.Database) -> list[tuple[str, str, type]]:
    """The :data:`ADDED_COLUMNS` that tables of ``db`` lack."""
    tables = set(db.table_names())
    return [
        (table, column, kind)
        for table, columns in ADDED_COLUMNS.items()
        if table in tables
        for column, kind in columns.items()
        if column not in db[table].columns_dict
    ]


def is_current(db: sqlite_utils.Database) -> bool:
    """Whether ``db`` (of :data:`SCHEMA_VERSION`) has every table and column."""
    required = set(TABLES) - set(OPTIONAL_TABLES)
    return required <= set(db.table_names()) and not missing_columns(db)


def create_table(db: sqlite_utils.Database, name: str) -> None:
    """Create the :data:`SCHEMA` table ``name`` and its indexes if ``db`` lacks them (an optional
    one, before its first write)."""
    item = next(t for t in SCHEMA if isinstance(t, Table) and t.name == name)
    db[item.name].create(
        item.columns, pk=item.pk, foreign_keys=list(item.foreign_keys) or None, if_not_exists=True
    )
    for index in SCHEMA:
        if isinstance(index, Index) and index.table == name:
            db[name].create_index(list(index.columns), if_not_exists=True)


def create_or_upgrade(db: sqlite_utils.Database) -> None:
    """Create what :data:`SCHEMA` declares and ``db`` lacks, and record :data:`SCHEMA_VERSION`;
    call it inside a transaction (plain SQL only: nothing here commits)."""
    db["meta"].insert(
        {"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key", replace=True
    )
    for item in SCHEMA:
        if isinstance(item, Table):
            # an older table keeps its columns: the missing ones are added below
            db[item.name].create(
                item.columns,
                pk=item.pk,
                foreign_keys=list(item.foreign_keys) or None,
                if_not_exists=True,
            )
        elif isinstance(item, Index):
            db[item.table].create_index(list(item.columns), if_not_exists=True)
        elif item.name not in db.table_names():
            _create_fts(db, item)
    for table, column, kind in missing_columns(db):
        sql_type = {float: "FLOAT", int: "INTEGER", str: "TEXT"}[kind]
        db.execute(f"alter table [{table}] add column [{column}] {sql_type}")


def _create_fts(db: sqlite_utils.Database, fts: FullTextIndex) -> None:
    name, table, column = fts.name, fts.table, fts.column
    db.execute(
        f"create virtual table {name} using fts5 ({column}, tokenize='porter', content={table})"
    )
    db.execute(f"insert into {name} ({name}) values ('rebuild')")
    delete = (
        f"insert into {name} ({name}, rowid, {column}) values ('delete', old.rowid, old.{column});"
    )
    insert = f"insert into {name} (rowid, {column}) values (new.rowid, new.{column});"
    trigger = (
        "create trigger if not exists {table}_{suffix} after {event} on {table} begin {body} end"
    )
    db.execute(trigger.format(table=table, suffix="ai", event="insert", body=insert))
    db.execute(trigger.format(table=table, suffix="ad", event="delete", body=delete))
    db.execute(trigger.format(table=table, suffix="au", event="update", body=f"{delete} {insert}"))
