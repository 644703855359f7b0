"""The subject model on a CUDA device gives the results it gives on the CPU: the same harvest
(float32: the same top-k contexts, statistics to float32 rounding), the same N2G graphs (the same
nodes and edges; importances and activations, stored to 6 decimals, to float32 rounding), the same
live activations; and the harvest's statistics, computed on the GPU, are the ones the CPU computes
from the same activations.
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


def _harvest(model, corpus, db, **settings):  # type: ignore[no-untyped-def]
    cfg = HarvestConfig(
        model=model.name,
        corpus=str(corpus),
        layers=[2, 5],
        ctx_len=32,
        top_k=10,
        random_k=4,
        batch_size=8,
        checkpoint_seconds=1e9,
        **settings,
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


def test_cuda_resident_statistics_equal_cpu_statistics(on_gpu, text_corpus) -> None:  # type: ignore[no-untyped-def]
    """The same activations (the model's on the GPU) folded into states on the GPU and on the CPU:
    straight through, checkpointed and resumed, and as shards merged on the host. Keys, examples,
    documents, counts and extremes equal exactly; sums to float32 rounding of a batch's partial
    sums; histogram bins (and the quantile samples kept per bin) but for values within rounding of
    a bin edge, where CUDA's log1p may round the other way (allowed: 1 in 10,000)."""
    from harvest_states import check_device_statistics, model_batches

    batches = model_batches(on_gpu, str(text_corpus), 5, 32, 8, 6)
    check_device_statistics(batches, "cuda", edge_share=1e-4)


def test_cuda_harvest_keeps_its_statistics_on_the_gpu(on_gpu, text_corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A harvest on CUDA computes its statistics there by default, and its rows are the rows the
    same activations give with the statistics on the host."""
    _harvest(on_gpu, text_corpus, tmp_path / "gpu.db")
    _harvest(on_gpu, text_corpus, tmp_path / "host.db", stats_device="cpu")
    a, b = Store(tmp_path / "gpu.db"), Store(tmp_path / "host.db")
    assert a.runs()[0]["config"]["stats_device"].startswith("cuda")
    assert b.runs()[0]["config"]["stats_device"] == "cpu"
    assert a.runs()[0]["config_hash"] == b.runs()[0]["config_hash"]
    examples = (
        "select layer, neuron, kind, rank, context_id, max_activation, min_activation, peak_index"
        " from examples where kind != 'quantile' order by layer, neuron, kind, rank"
    )
    assert list(a.db.query(examples)) == list(b.db.query(examples))
    stats = "select layer, neuron, count, max, min, n_positive from neurons order by layer, neuron"
    assert list(a.db.query(stats)) == list(b.db.query(stats))
    sums = "select sum, sum_sq from neurons order by layer, neuron"
    np.testing.assert_allclose(
        [list(r.values()) for r in a.db.query(sums)],
        [list(r.values()) for r in b.db.query(sums)],
        rtol=1e-5,
        atol=1e-3,
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
