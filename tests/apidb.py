"""A real results database for the API and browser tests: a real harvest of the tiny gated model on
a small corpus, real N2G graphs for a few neurons, and explanation/score rows written the way the
explain stage
writes them (the explanations and scores tables), including a failure that must never show as a
score."""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import PARAGRAPHS

from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import SubjectModel
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.run import graph_layers
from autointerp.store import Store

GRAPHED = (0, 1, 2)  # layer 1 neurons with N2G graphs
EXPLAINED = 0  # layer 1 neuron with an explanation, a baseline and their scores
FAILED = 1  # layer 1 neuron whose explanation failed
WEIGHTS = 0  # layer 1 neuron with weight facts


def build_api_db(model: SubjectModel, folder: Path) -> Path:
    corpus = folder / "corpus.jsonl"
    with corpus.open("w") as f:
        for i, p in enumerate(PARAGRAPHS * 3):
            f.write(json.dumps({"id": i, "text": p}) + "\n")
    db = folder / "api.db"
    cfg = HarvestConfig(
        model=model.name,
        corpus=str(corpus),
        layers=[0, 1],
        ctx_len=24,
        top_k=8,
        random_k=4,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    harvest(model, db, cfg, progress=False, log=lambda m: None)
    store = Store(db)
    graph_layers(model, store, [1], ",".join(map(str, GRAPHED)), N2GConfig(), progress=False)
    from autointerp.similarity import compute_similarities

    try:
        compute_similarities(store, model.name, progress=False)
    except Exception as exc:  # then the similar-neuron test skips, saying why
        (folder / "similarity_failed.txt").write_text(repr(exc))
    from autointerp.token_index import ensure_harvest_index

    ensure_harvest_index(store, model.name)  # as `make explain` does: search sees every neuron
    store.save_weight_facts(
        model.name,
        [
            {
                "layer": 1,
                "neuron": WEIGHTS,
                "input_vector": "mlp.W_in",
                "cos_in_out": 0.12,
                "cos_gate_out": -0.05,
                "top_tokens": [{"token": " Paris", "id": 7042, "logit": 1.5}],
                "bottom_tokens": [{"token": " the", "id": 260, "logit": -1.2}],
            }
        ],
    )
    run_id = store.latest_complete_run(model.name, 1)["id"]
    now = time.time()
    base = {"run_id": run_id, "layer": 1, "config_hash": "test", "created": now}
    store.db["explanations"].insert_all(
        [
            {
                **base,
                "neuron": EXPLAINED,
                "kind": "llm",
                "status": "ok",
                "text": "the word <b>capital</b> & cities",
                "prompt_version": "v1",
                "prompt_hash": "p1",
                "model": "test-llm",
            },
            {
                **base,
                "neuron": EXPLAINED,
                "kind": "baseline",
                "status": "ok",
                "text": "tokens: capital, Paris",
                "prompt_version": None,
                "model": None,
            },
            {
                **base,
                "neuron": FAILED,
                "kind": "llm",
                "status": "failed",
                "text": None,
                "error": "HTTP 500 after 3 tries",
                "model": "test-llm",
            },
        ]
    )
    store.db["scores"].insert_all(
        [
            {
                **base,
                "neuron": EXPLAINED,
                "method": "explanation",
                "status": "ok",
                "score": 0.61,
                "score_top": 0.55,
                "score_random": 0.4,
                "n_tokens": 300,
                "simulator_model": "test-sim",
                "simulator_mode": "logprobs",
            },
            {
                **base,
                "neuron": EXPLAINED,
                "method": "baseline",
                "status": "ok",
                "score": 0.22,
                "score_top": 0.2,
                "score_random": 0.1,
                "n_tokens": 300,
            },
            {
                **base,
                "neuron": FAILED,
                "method": "explanation",
                "status": "failed",
                "score": None,
                "error": "simulator timed out",
            },
        ]
    )
    return db
