"""The LLM response cache: every request and its answer in the results file's ``llm_cache`` table.

It lives with the LLM client, not with the results store, so the client depends on nothing above it:
the table is created by the store's schema (one schema, one version), and this class only reads and
writes its rows, on its own connection, because LLM calls run in worker threads while the main
thread writes results.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

#: an ``llm_cache`` row: key, model, endpoint kind, request JSON, response JSON, prompt tokens,
#: completion tokens, created (a Unix time)
CacheEntry = tuple[str, str, str, str, str, int, int, float]


class LLMCache:
    """The ``llm_cache`` table, shared by worker threads: its own connection, one lock around every
    access.

    Kept apart from :class:`Store` because LLM calls run in a thread pool while the main thread
    writes results; sqlite connections must not be shared across threads without a lock.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), check_same_thread=False, timeout=30.0
        )
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            text = self._stored(key)
        return json.loads(text) if text else None

    def _stored(self, key: str) -> str | None:
        """The response JSON stored under ``key`` (called with the lock held)."""
        if self.conn is None:
            return None
        row = self.conn.execute("select response from llm_cache where key = ?", [key]).fetchone()
        return row[0] if row else None

    def put(
        self,
        key: str,
        model: str,
        endpoint: str,
        request: dict[str, Any],
        response: dict[str, Any],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        entry = (
            key,
            model,
            endpoint,
            json.dumps(request, ensure_ascii=False),
            json.dumps(response),
            prompt_tokens,
            completion_tokens,
            time.time(),
        )
        with self.lock:
            self._save([entry])

    def save_entries(self, entries: list[CacheEntry]) -> None:
        """Rows another cache collected (:meth:`DeferredCache.new_entries`), written as they are."""
        with self.lock:
            self._save(entries)

    def _save(self, entries: list[CacheEntry]) -> None:
        """Write rows (called with the lock held)."""
        assert self.conn is not None
        with self.conn:
            self.conn.executemany(
                "insert or replace into llm_cache (key, model, endpoint_kind, request, response,"
                " prompt_tokens, completion_tokens, created) values (?, ?, ?, ?, ?, ?, ?, ?)",
                entries,
            )

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()


class DeferredCache(LLMCache):
    """The cache as a Ray worker uses it: answers are read from the result file when this machine
    has it (read-only: only the driver writes SQLite), and new responses are kept in memory and
    handed back with the task's rows (:meth:`new_entries`), for the driver to write with them. On a
    machine without the file every request is asked afresh, as with no cache."""

    def __init__(self, path: str | Path | None):
        self.path = str(path) if path else ""
        self.lock = threading.Lock()
        self.conn = None
        if path and Path(path).is_file():
            try:
                uri = Path(path).resolve().as_uri() + "?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30.0)
                self.conn.execute("select 1 from llm_cache limit 1")
            except sqlite3.Error:
                self.conn = None
        self._new: dict[str, CacheEntry] = {}

    def _stored(self, key: str) -> str | None:
        if key in self._new:
            return self._new[key][4]
        return super()._stored(key)

    def _save(self, entries: list[CacheEntry]) -> None:
        self._new.update((entry[0], entry) for entry in entries)

    def new_entries(self) -> list[CacheEntry]:
        """The responses received since this cache was made, as ``llm_cache`` rows."""
        with self.lock:
            return list(self._new.values())
