"""The subject model on a CUDA device gives the results it gives on the CPU: the same harvest
(float32: the same top-k contexts, statistics to float32 rounding), the same N2G graphs (the same
nodes and edges; importances and activations, stored to 6 decimals, to float32 rounding), the same
live activations.
Skipped, with the reason printed, where there is no CUDA device; ``bench/gpu_check.sh`` runs these
first on a GPU machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import clear_tables

from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import load_model
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.run import graph_layers
from autointerp.store import Store

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


# The default subject model: the one the GPU benchmark (bench/gpu_check.sh) measures, so a GPU
# machine needs only its packages.
MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def on_cpu():  # type: ignore[no-untyped-def]
    return load_model(MODEL, progress=False, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def on_gpu():  # type: ignore[no-untyped-def]
    return load_model(MODEL, progress=False, device="cuda", dtype="float32")


def _harvest(model, corpus, db):  # type: ignore[no-untyped-def]
    cfg = HarvestConfig(
        model=model.name,
        corpus=str(corpus),
        layers=[2, 5],
        ctx_len=32,
        top_k=10,
        random_k=4,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    return harvest(model, db, cfg, progress=False, log=lambda m: None)


def test_cuda_harvest_equals_cpu_harvest(on_cpu, on_gpu, text_corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cpu_db, gpu_db = tmp_path / "cpu.db", tmp_path / "gpu.db"
    _harvest(on_cpu, text_corpus, cpu_db)
    _harvest(on_gpu, text_corpus, gpu_db)
    a, b = Store(cpu_db), Store(gpu_db)
    top = (
        "select layer, neuron, kind, rank, context_id from examples order by layer, neuron, kind,"
        " rank"
    )
    assert list(a.db.query(top)) == list(b.db.query(top))  # the same contexts, in the same order
    stats = (
        "select layer, neuron, max, min, mean, frac_positive from neurons order by layer, neuron"
    )
    for x, y in zip(a.db.query(stats), b.db.query(stats), strict=True):
        assert (x["layer"], x["neuron"]) == (y["layer"], y["neuron"])
        np.testing.assert_allclose(
            [x["max"], x["min"], x["mean"]], [y["max"], y["min"], y["mean"]], rtol=1e-3, atol=1e-4
        )


def test_cuda_graphs_equal_cpu_graphs(on_cpu, on_gpu, text_corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "g.db"
    _harvest(on_cpu, text_corpus, db)
    store = Store(db)
    graph_layers(on_cpu, store, [2], "0-7", N2GConfig(), progress=False)
    cpu = {r["neuron"]: r["graph"] for r in store.db.query("select neuron, graph from graphs")}
    clear_tables(store, "graphs")
    graph_layers(on_gpu, store, [2], "0-7", N2GConfig(), progress=False)
    gpu = {r["neuron"]: r["graph"] for r in store.db.query("select neuron, graph from graphs")}
    assert cpu.keys() == gpu.keys()
    # Measured on an H200 (48 gemma-3-270m graphs): the same structure everywhere, numbers apart by
    # at most 1.6e-5 in the sixth decimal, so the strings cannot be compared whole.
    for neuron in cpu:
        a, b = json.loads(cpu[neuron]), json.loads(gpu[neuron])
        numbers = ("importance", "activation")
        assert _without(a, numbers) == _without(b, numbers), neuron
        for x, y in zip(a["nodes"], b["nodes"], strict=True):
            for key in numbers:
                assert (x[key] is None) == (y[key] is None), (neuron, x["id"], key)
                if x[key] is not None:
                    assert abs(x[key] - y[key]) <= 1e-4, (neuron, x["id"], key)


def _without(graph: dict, keys: tuple[str, ...]) -> dict:  # type: ignore[type-arg]
    """The graph with the given node fields dropped: its tokens, kinds, depths, counts, edges."""
    return {
        **graph,
        "nodes": [{k: v for k, v in n.items() if k not in keys} for n in graph["nodes"]],
    }


def test_cuda_live_activations_equal_cpu(on_cpu, on_gpu) -> None:  # type: ignore[no-untyped-def]
    ids, _ = on_cpu.encode("def add(a, b):\n    return a + b  # Paris is the capital of France")
    tokens = torch.tensor([ids])
    a = on_cpu.mlp_activations(tokens, [0, 4, 9])
    b = on_gpu.mlp_activations(tokens, [0, 4, 9])
    for layer in a:
        assert b[layer].device.type == "cpu" and b[layer].dtype == torch.float32
        torch.testing.assert_close(a[layer], b[layer], rtol=1e-3, atol=1e-4)
