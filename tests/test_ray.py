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


@pytest.mark.slow
def test_a_ray_harvest_refuses_bad_input_in_one_sentence(tmp_path: Path) -> None:
    """The driver does not load the model: the workers' planning tasks check the config against
    it, and their mistake reaches the user as the in-process harvest's sentence."""
    db = tmp_path / "ray.db"
    argv = ["--model", "smollm2-135m", "--layers", "99", "--tokens", "256", "--no-progress"]
    proc = run_cli("harvest", *argv, *RAY, "--db", str(db))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "Layer 99 is out of range" in proc.stderr and not db.exists()


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


@pytest.mark.slow
def test_a_graph_worker_killed_mid_task_is_retried_with_identical_graphs(
    in_process: Store, in_process_graphs: Graphs, tmp_path: Path
) -> None:
    db = copy_db(in_process.path, tmp_path / "ray.db")
    marker = tmp_path / "killed-once"
    proc = run_cli(
        *GRAPH, *RAY, "--db", str(db), env={"AUTOINTERP_KILL_RAY_WORKER_ONCE": str(marker)}
    )
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()  # a worker died with its chunk built but not returned; Ray reran it
    assert _graphs(db) == in_process_graphs


# --------------------------------------------------------------------------------------------------
# explanations: the tiny model's harvest (no subject model runs), a deterministic fake LLM endpoint
# answering both the explainer and the rule compiler, best-of-2 so every path of a neuron is used
EXPLAIN_NEURONS = 6  # two tasks of EXPLAIN_CHUNK (4) neurons: one whole, one short


@pytest.fixture(scope="module")
def llm_endpoint():  # type: ignore[no-untyped-def]
    from llmfaults import FaultServer

    server = FaultServer("candidates")
    yield server
    server.close()


def _explain(db: Path, url: str, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_cli(
        "explain",
        "tiny-gated",
        "--layers",
        "1",
        "--neurons",
        f"0-{EXPLAIN_NEURONS - 1}",
        "--candidates",
        "2",
        "--base-url",
        url,
        "--explainer-model",
        "fault-model",
        "--no-progress",
        "--json",
        "--db",
        str(db),
        *extra,
        env=env,
    )


Explained = tuple[list[tuple], list[tuple], int]
"""A database's explanation rows, score rows (what a run computed, not when) and cached LLM
responses."""


def _explained(db: Path) -> Explained:
    """Every stored row but its token counts, and how many responses the cache holds. Token
    counts are left out: a response the response cache answers costs nothing, and when two
    neurons ask the same question (the candidates' rules repeat across neurons) the sequential
    run pays once and answers the second from the cache, while two workers may both pay
    (:func:`_tokens` checks that side)."""
    store = Store(db)
    explanations = store.db.execute(
        "select layer, neuron, kind, status, text, error, prompt_hash, model, candidates"
        " from explanations order by layer, neuron, kind"
    ).fetchall()
    scores = store.db.execute(
        "select layer, neuron, method, status, score, score_raw, score_top, score_random, r2,"
        " n_tokens, simulator_mode, simulation, error from scores order by layer, neuron, method"
    ).fetchall()
    [(cached,)] = store.db.execute("select count(*) from llm_cache").fetchall()
    return [tuple(r) for r in explanations], [tuple(r) for r in scores], int(cached)


def _tokens(db: Path) -> int:
    """The prompt tokens every stored row says were paid for."""
    [(total,)] = (
        Store(db)
        .db.execute(
            "select (select coalesce(sum(prompt_tokens), 0) from explanations)"
            " + (select coalesce(sum(prompt_tokens), 0) from scores)"
        )
        .fetchall()
    )
    return int(total)


@pytest.fixture(scope="module")
def in_process_explained(small_db: Path, llm_endpoint, tmp_path_factory) -> Explained:  # type: ignore[no-untyped-def]
    db = copy_db(small_db, tmp_path_factory.mktemp("explain") / "local.db")
    proc = _explain(db, llm_endpoint.url)
    assert proc.returncode == 0, proc.stderr
    explained = _explained(db)
    assert len({r[:2] for r in explained[0]}) == EXPLAIN_NEURONS and explained[2] > 0
    return explained


@pytest.mark.slow
def test_ray_explanations_equal_the_in_process_ones(
    small_db: Path, llm_endpoint, in_process_explained: Explained, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json

    db = copy_db(small_db, tmp_path / "ray.db")
    proc = _explain(db, llm_endpoint.url, *RAY)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["explained"] == EXPLAIN_NEURONS and out["failed"] == 0
    # rows, scores and the workers' LLM responses, written by the driver into the cache
    assert _explained(db) == in_process_explained
    local = copy_db(small_db, tmp_path / "local.db")
    assert _explain(local, llm_endpoint.url).returncode == 0
    assert _tokens(db) >= _tokens(local) > 0  # workers may pay twice for one question, never less
    [endpoint] = out["endpoints"]  # the workers' calls are in the driver's ledger
    assert endpoint["calls"] == out["llm_calls"] > 0
    again = _explain(db, llm_endpoint.url, *RAY)
    assert json.loads(again.stdout)["already_done"] == EXPLAIN_NEURONS


@pytest.mark.slow
def test_an_explain_worker_killed_mid_task_is_retried_with_identical_rows(
    small_db: Path, llm_endpoint, in_process_explained: Explained, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    db = copy_db(small_db, tmp_path / "ray.db")
    marker = tmp_path / "killed-once"
    proc = _explain(
        db, llm_endpoint.url, *RAY, env={"AUTOINTERP_KILL_RAY_WORKER_ONCE": str(marker)}
    )
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()  # a worker died after its first neuron; Ray ran the task again
    assert _explained(db) == in_process_explained


@pytest.mark.slow
def test_a_killed_explain_driver_resumes_by_task(
    small_db: Path, llm_endpoint, in_process_explained: Explained, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json

    db = copy_db(small_db, tmp_path / "ray.db")
    killed = _explain(db, llm_endpoint.url, *RAY, env={"AUTOINTERP_KILL_AFTER": "explain:1"})
    assert killed.returncode == -9
    stored = {r[:2] for r in _explained(db)[0]}
    assert len(stored) in (4, EXPLAIN_NEURONS - 4)  # one task's neurons, whole
    resumed = _explain(db, llm_endpoint.url, *RAY)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["already_done"] == len(stored)
    assert _explained(db) == in_process_explained


@pytest.mark.slow
def test_eval_on_ray_reports_what_eval_in_process_reports(
    small_db: Path, llm_endpoint, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json

    common = ["--layers", "1", "--sample", "4", "--base-url", llm_endpoint.url]
    common += ["--explainer-model", "fault-model", "--no-graphs", "--no-progress", "--json"]
    reports = []
    for name, executor in (("local", []), ("ray", RAY)):
        db = copy_db(small_db, tmp_path / f"{name}.db")
        proc = run_cli("eval", "tiny-gated", *common, *executor, "--db", str(db))
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        reports.append({k: out[k] for k in ("neurons", "methods", "paired")})
    assert reports[0] == reports[1] and len(reports[0]["neurons"]) == 4
