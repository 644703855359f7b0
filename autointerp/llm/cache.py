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
