"""Helpers shared by the tests (fixtures stay in conftest.py): the test corpus, running the real
CLI, copying a database, a free port, the brute-force reference a harvest must equal, and the
changes tests make to a database that no Store method makes (clearing a stage's rows, holding the
write lock, renaming a model, turning a current database into one an older autointerp wrote): kept
in one place, so a test says what state it wants rather than writing SQL into the schema."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.corpus import iter_contexts, load_documents
from autointerp.explain.config import ExplainConfig
from autointerp.llm.client import LLMClient, LLMSettings
from autointerp.models import SubjectModel
from autointerp.store import Store

REPO = Path(__file__).resolve().parents[1]

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. Foxes are small omnivorous mammals.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    (
        "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of"
        " Italy."
    ),
    "In 1905 Albert Einstein published four papers; in 1915 he completed general relativity.",
    "for i in range(10):\n    if i % 2 == 0:\n        continue\n    print(i)\n",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.",
    "import os\nimport sys\n\nPATH = os.path.join(sys.prefix, 'lib')\n",
]


#: A sentence as tokens, and the tokens an "animals" feature fires on: a known answer for the
#: real-LLM tests of explanation and simulation.
ANIMALS = (
    [
        " We",
        " saw",
        " a",
        " cat",
        " and",
        " two",
        " dogs",
        " near",
        " the",
        " old",
        " barn",
        ",",
        " then",
        " a",
        " horse",
        " ran",
        " past",
        ".",
    ],
    {" cat", " dogs", " horse"},
)


def brute_force(
    model: SubjectModel,
    corpus: str,
    layers: list[int],
    ctx_len: int,
    n_tokens: int | None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every activation of every context, computed one context at a time: the reference a harvest
    must equal."""
    docs = load_documents(corpus, seed)
    max_contexts = n_tokens // ctx_len if n_tokens else None
    contexts = list(
        iter_contexts(docs, model.tokenizer, ctx_len, model.bos_id, model.sep_id, max_contexts)
    )
    acts: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for c in contexts:
        out = model.mlp_activations(torch.from_numpy(c.tokens)[None], layers)
        for layer in layers:
            acts[layer].append(out[layer][0].numpy())
    return {
        "contexts": contexts,
        "acts": {layer: np.stack(a) for layer, a in acts.items()},
    }  # [C, T, d]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the real `autointerp` entry point in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "autointerp", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def copy_db(db: Path, target: Path) -> Path:
    """A consistent copy of a WAL-mode database (the file alone may not hold the latest pages)."""
    with sqlite3.connect(db) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def llm_client(url: str, timeout: float = 10.0) -> LLMClient:
    """A client for one (fake or local) LLM endpoint: no response cache, two attempts, and a short
    backoff, so a failure shows within the test's time."""
    return LLMClient(
        LLMSettings(base_url=url, max_attempts=2, backoff=0.01, timeout=timeout), None, url
    )


def copy_store(db: Path, tmp_path: Path) -> Store:
    """A writable :class:`Store` on a consistent copy of ``db`` (``tmp_path/run.db``)."""
    return Store(copy_db(db, tmp_path / "run.db"))


def fault_config(**kw: Any) -> ExplainConfig:
    """An explain configuration for the fake LLM endpoints (conftest's ``fault_server``): small
    record counts, echo simulation, one model name for both roles; ``kw`` overrides any field."""
    base: dict[str, Any] = dict(
        explainer_model="fault-model",
        simulator_model="fault-model",
        prompt_version="test",
        simulator_mode="echo",
        sim_top=2,
        sim_random=2,
        explain_records=3,
    )
    return ExplainConfig(**{**base, **kw})


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_rows(db: Any, run_id: int) -> tuple[list[tuple], list[tuple], np.ndarray]:
    """A harvest run's examples and neuron statistics, and separately the neurons' float64 sums:
    activations of the same contexts in different forward batches (shards, another executor) differ
    in the last
    float32 bits, so sums are compared with a tolerance (:func:`assert_same_harvest`) and everything
    else exactly."""
    ex = [
        (
            r["layer"],
            r["neuron"],
            r["kind"],
            r["rank"],
            r["split"],
            r["context_id"],
            r["peak_index"],
            r["interval"],
            tuple(np.round(np.frombuffer(r["activations"], dtype="<f4"), 4)),
        )
        for r in db.db.query(
            "select * from examples where run_id = ? order by layer, neuron, kind, rank", [run_id]
        )
    ]
    rows = list(
        db.db.query("select * from neurons where run_id = ? order by layer, neuron", [run_id])
    )
    ne = [
        (
            r["layer"],
            r["neuron"],
            r["count"],
            round(r["max"], 5),
            round(r["min"], 5),
            r["n_positive"],
            r["hist"],
            r["ctx_max_hist"],
        )
        for r in rows
    ]
    return ex, ne, np.array([r["sum"] for r in rows])


def assert_same_harvest(a: Any, run_a: int, b: Any, run_b: int) -> None:
    """Two harvest runs hold the same examples and statistics (sums to 1e-5 relative)."""
    ex_a, ne_a, sums_a = run_rows(a, run_a)
    ex_b, ne_b, sums_b = run_rows(b, run_b)
    assert ex_a == ex_b
    assert ne_a == ne_b
    np.testing.assert_allclose(sums_a, sums_b, rtol=1e-5, atol=1e-4)


# ---- database states no Store method makes
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


def as_older_database(
    db: Path,
    drop_columns: dict[str, Iterable[str]] | None = None,
    drop_tables: Iterable[str] = (),
    version: int | None = None,
) -> None:
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
