"""Harvest on a local Ray cluster (``--executor ray:local``), through the real CLI and the real
SmolLM2-135M: the result equals the in-process harvest row for row, a worker killed mid-task is
retried and changes nothing, and a driver killed after a shard resumes with the shards it had."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_same_harvest, run_cli

from autointerp.errors import UserError
from autointerp.executors import Executor
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
