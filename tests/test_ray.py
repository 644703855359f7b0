"""Harvest and N2G graphs on a local Ray cluster (``--executor ray:local``), through the real CLI
and the real SmolLM2-135M: a Ray harvest equals the in-process harvest row for row, a worker killed
mid-task is retried and changes nothing, and a driver killed after a shard resumes with the shards
it had; Ray graphs equal the in-process graphs neuron for neuron, and a driver killed after a chunk
resumes with the chunks it had. The graph runs reuse the harvest's small database and build few
graphs (top 2 of two layers: two chunk tasks), so the Ray tests stay short."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_same_harvest, copy_db, run_cli

from autointerp.errors import UserError
from autointerp.executors import Executor
from autointerp.n2g.run import GraphChunk, LayerPlan, graph_chunks
from autointerp.store import Store

pytest.importorskip("ray", reason="Ray is installed by `make setup` (the autointerp[ray] extra)")

COMMON = [
    "--model",
    "smollm2-135m",
    "--layers",
    "1,3",
    "--tokens",
    "1536",
    "--ctx-len",
    "32",
    "--top-k",
    "6",
    "--random-k",
    "4",
    "--no-progress",
]
RAY = ["--executor", "ray:local", "--workers", "2"]


def test_executor_specs() -> None:
    assert Executor.parse(None) == Executor("local") and Executor.parse("ray") == Executor(
        "ray", "auto"
    )
    assert Executor.parse("ray:local").address == "local"
    assert Executor.parse("ray:10.0.0.5:6379").address == "10.0.0.5:6379"
    with pytest.raises(UserError, match="--executor must be"):
        Executor.parse("dask")


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Store:  # type: ignore[no-untyped-def]
    db = tmp_path_factory.mktemp("ray") / "local.db"
    proc = run_cli("harvest", *COMMON, "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    return Store(db)


def _only_run(store: Store) -> int:
    [run] = store.runs()  # the shard runs are gone once merged
    assert run["status"] == "complete" and run["shard_count"] == 1
    return int(run["id"])


@pytest.mark.slow
def test_ray_harvest_equals_the_in_process_harvest(in_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "ray.db"
    proc = run_cli("harvest", *COMMON, *RAY, "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    store = Store(db)
    assert_same_harvest(store, _only_run(store), in_process, _only_run(in_process))
    assert (
        store.runs()[0]["config_hash"] == in_process.runs()[0]["config_hash"]
    )  # the same result, same name
    again = run_cli("harvest", *COMMON, *RAY, "--db", str(db))
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_retried_with_identical_rows(
    in_process, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "killed-once"
    db = tmp_path / "ray.db"
    proc = run_cli(
        "harvest",
        *COMMON,
        *RAY,
        "--db",
        str(db),
        env={"AUTOINTERP_KILL_RAY_WORKER_ONCE": str(marker)},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        marker.exists()
    )  # a worker really died (SIGKILL after its first checkpoint) and Ray retried its shard
    store = Store(db)
    assert_same_harvest(store, _only_run(store), in_process, _only_run(in_process))


@pytest.mark.slow
def test_a_killed_driver_resumes_by_shard(in_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "ray.db"
    killed = run_cli(
        "harvest", *COMMON, *RAY, "--db", str(db), env={"AUTOINTERP_KILL_AFTER": "ray-harvest:1"}
    )
    assert killed.returncode == -9
    runs = Store(db).runs()
    assert [(r["shard_count"], r["status"]) for r in runs] == [(2, "complete")]  # one shard, whole
    resumed = run_cli("harvest", *COMMON, *RAY, "--db", str(db))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming: 1 of 2 shards" in resumed.stderr
    store = Store(db)
    assert_same_harvest(store, _only_run(store), in_process, _only_run(in_process))


def test_graph_chunks_cut_each_layers_todo_in_order() -> None:
    layers = [
        LayerPlan(1, 7, neurons=list(range(40)), todo=[n for n in range(40) if n not in (3, 4)]),
        LayerPlan(3, 8, neurons=[5, 9], todo=[]),  # all stored: no task
        LayerPlan(5, 8, neurons=[2, 0, 1], todo=[2, 0, 1]),
    ]
    chunks = graph_chunks(layers, chunk=16)
    assert [(c.layer, c.run_id, len(c.neurons)) for c in chunks] == [
        (1, 7, 16),
        (1, 7, 16),
        (1, 7, 6),
        (5, 8, 3),
    ]
    assert [n for c in chunks if c.layer == 1 for n in c.neurons] == layers[0].todo
    assert chunks[-1] == GraphChunk(5, 8, (2, 0, 1))  # the selection's order, never across layers
    assert graph_chunks([LayerPlan(0, 1, [0], [])]) == []


GRAPH = ["graph", "smollm2-135m", "--layers", "1,3", "--neurons", "top:2", "--no-progress"]
GRAPH_COLUMNS = (
    "layer, neuron, config_hash, graph, n_nodes, precision, recall, f1, correlation, n_tokens,"
    " n_true_firing, f1_top, correlation_top, f1_random, correlation_random"
)


Graphs = tuple[list[tuple], list[tuple]]
"""The graphs rows a test compares and their token-index rows."""


def _graphs(db: Path) -> Graphs:
    store = Store(db)
    graphs = store.db.execute(f"select {GRAPH_COLUMNS} from graphs order by layer, neuron")
    index = store.db.execute(
        "select model, layer, neuron, kind, token, weight from token_index"
        " order by layer, neuron, kind, token"
    )
    return [tuple(r) for r in graphs.fetchall()], [tuple(r) for r in index.fetchall()]


@pytest.fixture(scope="module")
def in_process_graphs(in_process: Store, tmp_path_factory: pytest.TempPathFactory) -> Graphs:
    db = copy_db(in_process.path, tmp_path_factory.mktemp("graphs") / "local.db")
    # Ray runs a one-CPU task with one BLAS thread; float sums over another thread count may differ
    # in the last digit a graph stores, so the reference uses one thread too
    proc = run_cli(*GRAPH, "--db", str(db), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    graphs, index = _graphs(db)
    assert len(graphs) == 4 and index  # top 2 of layers 1 and 3, searchable
    return graphs, index


@pytest.mark.slow
def test_ray_graphs_equal_the_in_process_graphs(
    in_process: Store, in_process_graphs: Graphs, tmp_path: Path
) -> None:
    db = copy_db(in_process.path, tmp_path / "ray.db")
    proc = run_cli(*GRAPH, *RAY, "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert "layer 1: built 2 graphs" in proc.stdout and "layer 3: built 2 graphs" in proc.stdout
    assert _graphs(db) == in_process_graphs  # graph JSON, scores and token-index rows
    assert [r["status"] for r in Store(db).runs() if r["stage"] == "n2g"] == ["complete"]


@pytest.mark.slow
def test_a_killed_graph_driver_resumes_by_chunk(
    in_process: Store, in_process_graphs: Graphs, tmp_path: Path
) -> None:
    db = copy_db(in_process.path, tmp_path / "ray.db")
    killed = run_cli(*GRAPH, *RAY, "--db", str(db), env={"AUTOINTERP_KILL_AFTER": "graph:1"})
    assert killed.returncode == -9
    graphs, _ = _graphs(db)
    assert len(graphs) == 2 and len({g[0] for g in graphs}) == 1  # one chunk, whole
    resumed = run_cli(*GRAPH, *RAY, "--db", str(db))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming: 2 of 4 neurons" in resumed.stderr
    assert "built 0 graphs (2 already done)" in resumed.stdout
    assert _graphs(db) == in_process_graphs
