"""The connection every part of the store shares: one SQLite file through sqlite-utils.

WAL mode (readers never block the writer), foreign keys on, and every unit of work in one
transaction (:meth:`StoreCore.atomic`: ``BEGIN IMMEDIATE``, so the write lock is taken before the
first read of the unit and a concurrent writer makes it wait, never fail), so a crash leaves either
the whole unit or none of it. Opening a database checks that it is ours and of a schema version we
understand, and upgrades an older one in place (:mod:`autointerp.store.schema`).

Also here, because every owner's queries use them: :func:`newest_row`, the one definition of "the
newest row" of a neuron (or of any group of rows), and :func:`run_row`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

import autointerp.store.schema as schema
from autointerp.errors import UserError
from autointerp.store.schema import SCHEMA_VERSION

DEFAULT_DB = "autointerp.db"
#: Tables every autointerp database has had since the first schema version (with ``meta``).
OWN_TABLES = frozenset({"models", "runs"})


def default_db_path() -> str:
    return os.environ.get("AUTOINTERP_DB", DEFAULT_DB)


def _write_refused(exc: sqlite3.OperationalError) -> bool:
    """SQLite's ways of saying the file or its folder cannot be written (read-only media,
    permissions).
    """
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def newest_first(alias: str) -> str:
    """ORDER BY terms that put the newest row of ``alias`` first: the latest ``created``, and of
    rows created at the same moment the one written last."""
    return f"{alias}.created desc, {alias}.rowid desc"


def newest_row(
    table: str, alias: str, per: Sequence[str], where: str = "", every_group: bool = False
) -> str:
    """SQL condition: row ``alias`` of ``table`` is the newest (:func:`newest_first`) of the rows
    with its ``per`` columns that satisfy ``where`` (written over the alias ``h``). The one
    definition of "a neuron's newest graph / explanation / score" in the store.

    Two plans, one meaning. By default a lookup for each row of ``alias`` (``per`` should lead an
    index): cheap when the query reads a page of rows or joins row by row. With ``every_group``,
    the newest row of every group is found once by a window function: for a query that reads
    every group (all of a model's graphs); ``where`` may then not refer to ``alias``."""
    if every_group:
        partition = ", ".join(f"h.{column}" for column in per)
        condition = f" where {where}" if where else ""
        return (
            f"{alias}.rowid in (select newest_rowid from (select h.rowid as newest_rowid, "
            f"row_number() over (partition by {partition} order by {newest_first('h')}) "
            f"as newest_rank from {table} h{condition}) where newest_rank = 1)"
        )
    match = " and ".join(
        [*(f"h.{column} = {alias}.{column}" for column in per), *([where] if where else [])]
    )
    return (
        f"{alias}.rowid = (select h.rowid from {table} h where {match} "
        f"order by {newest_first('h')} limit 1)"
    )


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``runs`` row with its JSON columns decoded."""
    out = dict(row)
    out["config"] = json.loads(row["config"])
    out["corpus"] = json.loads(row["corpus"]) if row.get("corpus") else {}
    return out


class StoreCore:
    """The connection, its transactions and the schema check; :class:`autointerp.store.Store`
    adds each stage's tables on top."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(
                f"{self.path} is a folder, not a database file; pass --db with a file name."
            )
        if not create and not self.path.exists():
            raise UserError(
                f"No database at {self.path}; run `autointerp harvest` first or pass --db."
            )
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
                # reading it immutable is exact for a published database (checkpointed, no -wal
                # file beside it). An immutable read ignores a -wal file, whose changes would then
                # be silently missing: that is refused.
                self.db.close()
                self._refuse_unreadable_wal()
                self.db = sqlite_utils.Database(
                    sqlite3.connect(
                        f"{self.path.resolve().as_uri()}?immutable=1", uri=True, timeout=30.0
                    )
                )
                self.read_only = True
                self._check_owner()
            self.db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise UserError(
                f"{self.path} cannot be read as an autointerp database ({exc}); give "
                "another --db or restore the file."
            ) from exc
        self._ensure_schema()

    def _refuse_unreadable_wal(self) -> None:
        """One sentence for a database on read-only media beside a non-empty ``-wal`` file: SQLite
        can read those changes only where it can write a ``-shm`` file too."""
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise UserError(
                f"The database {self.path} is on read-only media beside {wal.name}, whose changes"
                " SQLite cannot read there; copy both files to a writable folder and give that"
                " --db (or publish the database checkpointed, without its -wal file)."
            )

    def _check_owner(self) -> None:
        """Refuse another program's SQLite file before anything changes it (not even WAL mode):
        creating our tables in it would change someone else's data. Ours has a ``meta`` table
        whose ``schema_version`` is a whole number, and the ``models`` and ``runs`` tables every
        version of autointerp created; another program may well have a ``meta(key, value)`` table
        of its own, even with a ``schema_version`` in it."""
        tables = set(self.db.table_names())
        if not tables:
            return
        columns = {c.name for c in self.db["meta"].columns} if "meta" in tables else set()
        row = (
            self.db.execute("select value from meta where key = 'schema_version'").fetchone()
            if {"key", "value"} <= columns
            else None
        )
        if row is None or not OWN_TABLES <= tables:
            some = ", ".join(sorted(tables)[:4])
            raise UserError(
                f"{self.path} is an SQLite database of another program (tables: "
                f"{some}), not an autointerp database; give another --db."
            )
        version = row[0]
        if not isinstance(version, int) and not (
            isinstance(version, str) and re.fullmatch("[0-9]+", version)
        ):
            raise UserError(
                f"{self.path} has schema_version {version!r} in its meta table, not a whole "
                "number: it is damaged or not an autointerp database; give another --db."
            )

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One unit of work in one transaction. ``BEGIN IMMEDIATE`` takes the write lock up front: a
        deferred transaction that reads first and writes later fails at once with "database is
        locked" when another connection committed in between (SQLite cannot upgrade a stale
        snapshot), whereas waiting for the lock here goes through ``busy_timeout``. Nested calls
        become savepoints."""
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

    def _ensure_schema(self) -> None:
        """Refuse a newer schema; create or upgrade an older or new one (one transaction)."""
        db = self.db
        if "meta" in db.table_names():
            row = db.execute("select value from meta where key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"The database {self.path} has schema version {version}, newer than this"
                    f" autointerp understands ({SCHEMA_VERSION}); upgrade autointerp."
                )
            if version == SCHEMA_VERSION and schema.is_current(db):
                # opening a current database writes nothing, so readers never wait for a writer
                return
        if self.read_only:
            raise UserError(
                f"The database {self.path} is read-only and was written by an older "
                "autointerp; copy it somewhere writable once so it can be upgraded."
            )
        with self.atomic():
            schema.create_or_upgrade(db)
