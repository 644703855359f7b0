"""Changes the tests make to a database that no Store method makes: clearing a stage's rows, holding
the write lock, renaming a model, and turning a current database into one an older autointerp
wrote. Kept here, in one place, so a test says what state it wants rather than writing SQL into
the schema."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from autointerp.store import Store

Database = Store | Path | sqlite3.Connection


@contextlib.contextmanager
def _connection(db: Database) -> Iterator[sqlite3.Connection]:
    """The connection to write through, committed at the end (a path is opened and closed here)."""
    if isinstance(db, Store):
        yield db.db.conn
        db.db.conn.commit()
    elif isinstance(db, sqlite3.Connection):
        yield db
        db.commit()
    else:
        conn = sqlite3.connect(db)
        try:
            with conn:
                yield conn
        finally:
            conn.close()


def clear_tables(db: Database, *tables: str) -> None:
    """Delete every row of ``tables`` (e.g. a stage's results, so it runs again from scratch)."""
    with _connection(db) as conn:
        for table in tables:
            conn.execute(f"delete from [{table}]")


@contextlib.contextmanager
def write_lock_held(db: Path, key: str) -> Iterator[None]:
    """Another connection in the middle of a write transaction (as a pipeline writing results)
    for the duration of the block; rolled back at the end."""
    holder = sqlite3.connect(db, timeout=1)
    try:
        holder.execute("begin immediate")
        holder.execute("insert into meta (key, value) values (?, '1')", [key])
        yield
    finally:
        holder.rollback()
        holder.close()


def rename_model(db: Path, old: str, new: str) -> None:
    """Store the results of model ``old`` under the name ``new`` (foreign keys off while the
    ``models`` row and the rows that name it change together)."""
    with _connection(db) as conn:
        conn.execute("pragma foreign_keys=off")
        for table in ("models", "runs", "token_index", "indexed_graphs", "weights"):
            column = "name" if table == "models" else "model"
            conn.execute(f"update {table} set {column} = ? where {column} = ?", [new, old])


def set_schema_version(db: Path, version: int) -> None:
    """Record another schema version in ``meta`` (as a newer or older autointerp would)."""
    with _connection(db) as conn:
        conn.execute("update meta set value = ? where key = 'schema_version'", [str(version)])


def as_older_database(db: Path, drop_columns: dict[str, Iterable[str]] | None = None,
                      drop_tables: Iterable[str] = (), version: int | None = None) -> None:
    """Make ``db`` look like a database an older autointerp wrote: without ``drop_columns``
    (table -> columns) and ``drop_tables``, and at schema ``version`` when given."""
    with _connection(db) as conn:
        for table, columns in (drop_columns or {}).items():
            for column in columns:
                conn.execute(f"alter table [{table}] drop column [{column}]")
        for table in drop_tables:
            conn.execute(f"drop table [{table}]")
    if version is not None:
        set_schema_version(db, version)


def drop_explanation_index(store: Store) -> None:
    """Remove the FTS index over explanation texts and its triggers (as in a database written
    before it existed)."""
    for name in ("explanations_ai", "explanations_ad", "explanations_au"):
        store.db.execute(f"drop trigger {name}")
    store.db.execute("drop table explanations_fts")
    store.db.conn.commit()
