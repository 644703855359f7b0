"""Shared fixtures: a tiny random-init model for fast unit tests, the real SmolLM2-135M for the
tests that claim a feature works, small corpora and databases, fake LLM endpoints. Helpers that are
not fixtures (the brute-force reference harvest, running the CLI, copying a database) are in
helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PARAGRAPHS

from autointerp.models import SubjectModel, load_model
from autointerp.packaged import packaged_model_dir


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
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=24,
        n_ctx=128,
        d_vocab=len(tokenizer),
        act_fn="silu" if gated else "gelu",
        gated_mlp=gated,
        normalization_type="LN",
        seed=0,
    )
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.eval()
    name = "tiny-gated" if gated else "tiny-gelu"
    return SubjectModel(
        name, model, tokenizer, {"model": name, "source": "random init", "dtype": "float32"}
    )


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


@pytest.fixture(scope="session")
def small_db(tmp_path_factory, tiny_gated) -> Path:  # type: ignore[no-untyped-def]
    """A real harvest of the tiny gated model (layer 1): enough train/test examples to explain and
    score. Tests that write copy it first (:func:`copy_db`)."""
    import json

    from autointerp.harvest import HarvestConfig, harvest

    folder = tmp_path_factory.mktemp("explain")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS * 4))
    db = folder / "base.db"
    cfg = HarvestConfig(
        model=tiny_gated.name,
        corpus=str(corpus),
        layers=[1],
        ctx_len=24,
        top_k=8,
        random_k=8,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    harvest(tiny_gated, db, cfg, progress=False, log=lambda m: None)
    return db


@pytest.fixture
def fault_server():  # type: ignore[no-untyped-def]
    """Start fake LLM endpoints (:class:`llmfaults.FaultServer`) in a mode; all are shut down
    after the test."""
    from llmfaults import FaultServer

    servers: list[FaultServer] = []

    def start(mode: str) -> FaultServer:
        servers.append(FaultServer(mode))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
