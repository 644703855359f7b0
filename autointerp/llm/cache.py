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


class LLMCache:
    """The ``llm_cache`` table, shared by worker threads: its own connection, one lock around every
    access.

    Kept apart from :class:`Store` because LLM calls run in a thread pool while the main thread
    writes results; sqlite connections must not be shared across threads without a lock.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.conn.execute(
                "select response from llm_cache where key = ?", [key]
            ).fetchone()
        return json.loads(row[0]) if row else None

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
        with self.lock, self.conn:
            self.conn.execute(
                "insert or replace into llm_cache (key, model, endpoint_kind, request, response,"
                " prompt_tokens, completion_tokens, created) values (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    key,
                    model,
                    endpoint,
                    json.dumps(request, ensure_ascii=False),
                    json.dumps(response),
                    prompt_tokens,
                    completion_tokens,
                    time.time(),
                ],
            )

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class DeferredCache(LLMCache):
    """The cache as a Ray worker uses it: answers are read from the result file when this machine
    has it (read-only: only the driver writes SQLite), and new responses are kept in memory and
    handed back with the task's rows (:meth:`new_entries`), for the driver to write with them. On a
    machine without the file every request is asked afresh, as with no cache."""

    def __init__(self, path: str | Path | None):
        self.path = str(path) if path else ""
        self.lock = threading.Lock()
        self.conn = None  # type: ignore[assignment]
        if path and Path(path).is_file():
            try:
                uri = Path(path).resolve().as_uri() + "?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30.0)
                self.conn.execute("select 1 from llm_cache limit 1")
            except sqlite3.Error:
                self.conn = None  # type: ignore[assignment]
        self._new: dict[str, tuple[Any, ...]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            if key in self._new:
                return self._new[key][4]  # type: ignore[no-any-return]
            if self.conn is None:
                return None
            row = self.conn.execute(
                "select response from llm_cache where key = ?", [key]
            ).fetchone()
        return json.loads(row[0]) if row else None

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
        with self.lock:
            self._new[key] = (
                key,
                model,
                endpoint,
                request,
                response,
                prompt_tokens,
                completion_tokens,
            )

    def new_entries(self) -> list[tuple[Any, ...]]:
        """The responses received since this cache was made: :meth:`LLMCache.put`'s arguments."""
        with self.lock:
            return list(self._new.values())

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
