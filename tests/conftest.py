"""Shared fixtures: a tiny random-init model for fast unit tests, the real SmolLM2-135M for the tests that claim a
feature works, small corpora, and a brute-force reference harvest to compare against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autointerp.corpus import iter_contexts, load_documents
from autointerp.models import SubjectModel, load_model, packaged_model_dir

REPO = Path(__file__).resolve().parents[1]

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. Foxes are small omnivorous mammals.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
    "In 1905 Albert Einstein published four papers; in 1915 he completed general relativity.",
    "for i in range(10):\n    if i % 2 == 0:\n        continue\n    print(i)\n",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.",
    "import os\nimport sys\n\nPATH = os.path.join(sys.prefix, 'lib')\n",
]


@pytest.fixture(scope="session")
def smol() -> SubjectModel:
    """The real packaged SmolLM2-135M (converted by `make setup`, or here on first use)."""
    return load_model("smollm2-135m", progress=False)


def _tiny(gated: bool) -> SubjectModel:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    path = packaged_model_dir("smollm2-135m")
    if not path.exists():
        load_model("smollm2-135m", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=24, n_ctx=128, d_vocab=len(tokenizer),
        act_fn="silu" if gated else "gelu", gated_mlp=gated, normalization_type="LN", seed=0,
    )
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.eval()
    name = "tiny-gated" if gated else "tiny-gelu"
    return SubjectModel(name, model, tokenizer, {"model": name, "source": "random init", "dtype": "float32"})


@pytest.fixture(scope="session")
def tiny() -> SubjectModel:
    """A 2-layer random-init model (GELU) sharing SmolLM2's tokenizer: fast, for unit tests only."""
    return _tiny(gated=False)


@pytest.fixture(scope="session")
def tiny_gated() -> SubjectModel:
    return _tiny(gated=True)


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    import json

    with path.open("w") as f:
        for i, p in enumerate(PARAGRAPHS * 3):
            f.write(json.dumps({"id": i, "text": p}) + "\n")
    return path


def brute_force(model: SubjectModel, corpus: str, layers: list[int], ctx_len: int, n_tokens: int | None,
                seed: int = 0) -> dict[str, Any]:
    """Every activation of every context, computed one context at a time: the reference a harvest must equal."""
    docs = load_documents(corpus, seed)
    max_contexts = n_tokens // ctx_len if n_tokens else None
    contexts = list(iter_contexts(docs, model.tokenizer, ctx_len, model.bos_id, model.sep_id, max_contexts))
    acts: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for c in contexts:
        out = model.mlp_activations(torch.from_numpy(c.tokens)[None], layers)
        for layer in layers:
            acts[layer].append(out[layer][0].numpy())
    return {"contexts": contexts, "acts": {layer: np.stack(a) for layer, a in acts.items()}}  # [C, T, d]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `autointerp` entry point in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "autointerp", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def small_db(tmp_path_factory, tiny_gated) -> Path:  # type: ignore[no-untyped-def]
    """A real harvest of the tiny gated model (layer 1): enough train/test examples to explain and score.
    Tests that write copy it first (:func:`copy_db`)."""
    import json

    from autointerp.harvest import HarvestConfig, harvest

    folder = tmp_path_factory.mktemp("explain")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS * 4))
    db = folder / "base.db"
    cfg = HarvestConfig(model=tiny_gated.name, corpus=str(corpus), layers=[1], ctx_len=24, top_k=8, random_k=8,
                        batch_size=8, checkpoint_seconds=1e9)
    harvest(tiny_gated, db, cfg, progress=False, log=lambda m: None)
    return db


def copy_db(db: Path, target: Path) -> Path:
    """A consistent copy of a WAL-mode database (the file alone may not hold the latest pages)."""
    import sqlite3

    with sqlite3.connect(db) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def run_rows(db: Any, run_id: int) -> tuple[list[tuple], list[tuple], np.ndarray]:
    """A harvest run's examples and neuron statistics, and separately the neurons' float64 sums: activations of
    the same contexts in different forward batches (shards, another executor) differ in the last float32 bits, so
    sums are compared with a tolerance (:func:`assert_same_harvest`) and everything else exactly."""
    ex = [
        (r["layer"], r["neuron"], r["kind"], r["rank"], r["split"], r["context_id"], r["peak_index"],
         r["interval"], tuple(np.round(np.frombuffer(r["activations"], dtype="<f4"), 4)))
        for r in db.db.query("select * from examples where run_id = ? order by layer, neuron, kind, rank", [run_id])
    ]
    rows = list(db.db.query("select * from neurons where run_id = ? order by layer, neuron", [run_id]))
    ne = [(r["layer"], r["neuron"], r["count"], round(r["max"], 5), round(r["min"], 5), r["n_positive"], r["hist"],
           r["ctx_max_hist"]) for r in rows]
    return ex, ne, np.array([r["sum"] for r in rows])


def assert_same_harvest(a: Any, run_a: int, b: Any, run_b: int) -> None:
    """Two harvest runs hold the same examples and statistics (sums to 1e-5 relative)."""
    ex_a, ne_a, sums_a = run_rows(a, run_a)
    ex_b, ne_b, sums_b = run_rows(b, run_b)
    assert ex_a == ex_b
    assert ne_a == ne_b
    np.testing.assert_allclose(sums_a, sums_b, rtol=1e-5, atol=1e-4)


@pytest.fixture
def fault_server():  # type: ignore[no-untyped-def]
    """Start fake LLM endpoints (:class:`llmfaults.FaultServer`) in a mode; all are shut down after the test."""
    from llmfaults import FaultServer

    servers: list[FaultServer] = []

    def start(mode: str) -> FaultServer:
        servers.append(FaultServer(mode))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
