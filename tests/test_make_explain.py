"""`make explain` end to end, as the README tells people to run it: on the packaged SmolLM2-135M,
and on GPT-2 small loaded by its official TransformerLens name from a Hugging Face cache with no hub
(random weights, real architecture, GPT-2's own tokenizer; see gpt2_checkpoint.py). Small settings;
the real local LLM (0.5B)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import networkx as nx
import pytest
from helpers import REPO, run_cli

from autointerp.store import Store

SMALL = ["NEURONS=top:1", "EXPLAIN_NEURONS=top:1", "LLM=qwen2.5-coder-0.5b"]


def make(
    *args: str, env: dict[str, str] | None = None, timeout: float = 2400
) -> subprocess.CompletedProcess:
    """Run a make target in its own process group: on a timeout the whole group is stopped (make
    and the autointerp stage it runs, which stops its LLM server on SIGTERM), not just make."""
    proc = subprocess.Popen(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _check_outputs(
    proc: subprocess.CompletedProcess, db: Path, graphs: Path, model: str, layers: list[int]
) -> Store:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = Store(db, create=False)
    assert sorted(store.harvested_layers(model)) == layers
    files = sorted(graphs.glob("*.graphml"))
    assert sorted(int(f.name.split("_")[0]) for f in files) == layers  # top:1 of each layer
    for f in files:
        assert f.with_suffix(".svg").is_file()
        g = nx.read_graphml(f)
        layer, neuron = (int(x) for x in f.stem.split("_"))
        assert (g.graph["model"], g.graph["layer"], g.graph["neuron"]) == (model, layer, neuron)
        kinds = {a["kind"] for _, a in g.nodes(data=True)}
        assert "activating" in kinds and "end" in kinds
        for _, a in g.nodes(data=True):
            assert (
                isinstance(a["depth"], int)
                and isinstance(a["count"], int)
                and isinstance(a["token"], str)
            )
            assert "activation" not in a or isinstance(a["activation"], float)
    # similar neurons by graph overlap, computed for exactly these graphs
    run = store.similarity_run(model)
    assert run is not None and run["config"]["graph_state"] == store.graph_state(model)
    assert run["config"]["graph_state"]["graphs"] == len(files)
    # one explanation attempt per layer, each ok or a recorded failure, never a half row
    rows = list(
        store.db.query(
            "select e.layer, e.status, s.status as score_status, s.score from explanations e "
            "join scores s on s.run_id = e.run_id and s.layer = e.layer and s.neuron = e.neuron "
            "and s.config_hash = e.config_hash and s.method = 'explanation' where e.kind = 'llm'"
        )
    )
    assert sorted(r["layer"] for r in rows) == layers
    assert all(
        r["status"] in ("ok", "failed") and (r["score"] is None) == (r["score_status"] != "ok")
        for r in rows
    )
    # the closing report and the hint
    out = proc.stdout
    assert f"== {model}: layers {','.join(map(str, layers))}, " in out
    assert f"GraphML + SVG of {len(files)} graphs in {graphs}/" in out
    assert f"autointerp serve --db {db}" in out
    report = json.loads(run_cli("report", model, "--db", str(db), "--json").stdout)
    for n in report["neurons"]:
        assert n["similar"] == store.similar(model, n["layer"], n["neuron"], 3)
    return store


@pytest.mark.slow
def test_make_explain_on_smollm2_leaves_graphml_similar_neurons_and_a_report(
    tmp_path: Path,
) -> None:
    db, graphs = tmp_path / "explain.db", tmp_path / "graphs"
    proc = make(
        "explain", "MODEL=smollm2-135m", "TOKENS=4096", *SMALL, f"DB={db}", f"GRAPHS={graphs}"
    )
    _check_outputs(
        proc, db, graphs, "smollm2-135m", [5, 15, 25]
    )  # LAYERS empty: auto from 30 layers

    bad = make("explain", "MODEL=smollm2-135m", "LAYERS=3,40", f"DB={tmp_path / 'bad.db'}")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode != 0 and errors == [
        "error: Layer 40 is out of range: smollm2-135m has layers 0-29."
    ]
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.db").exists()


@pytest.fixture(scope="module")
def gpt2_hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    from gpt2_checkpoint import build_random_gpt2_cache

    root = tmp_path_factory.mktemp("gpt2")
    built = build_random_gpt2_cache(root / "hub")
    env = {
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return env, built


@pytest.mark.slow
def test_make_explain_gpt2_small_through_transformer_lens(
    tmp_path: Path, gpt2_hub: tuple[dict[str, str], dict[str, str]]
) -> None:
    env, built = gpt2_hub
    db, graphs = tmp_path / "gpt2.db", tmp_path / "graphs"
    proc = make(
        "explain",
        "MODEL=gpt2-small",
        "LAYERS=2,6",
        "TOKENS=2048",
        *SMALL,
        f"DB={db}",
        f"GRAPHS={graphs}",
        env=env,
    )
    store = _check_outputs(proc, db, graphs, "gpt2-small", [2, 6])

    # stored under the canonical name with the weights' revision and checksum; aliases find it
    info = store.model_info("gpt2-small")
    assert info is not None and (info["n_layers"], info["d_mlp"], info["gated_mlp"]) == (
        12,
        3072,
        False,
    )
    prov = info["provenance"]
    assert (prov["hf_repo"], prov["revision"], prov["source_sha256"]) == (
        "gpt2",
        built["revision"],
        built["sha256"],
    )
    assert {r["model"] for r in store.runs()} == {"gpt2-small"}
    ranked = json.loads(run_cli("rank", "gpt2", "--db", str(db), "--json", env=env).stdout)
    assert ranked and {r["model"] for r in ranked} == {"gpt2-small"}

    # GELU (non-gated) neurons: no bottom examples, no negative side, weight facts from W_in alone
    neuron = ranked[0]
    record = json.loads(
        run_cli(
            "neuron",
            "gpt2",
            f"{neuron['layer']}/{neuron['neuron']}",
            "--db",
            str(db),
            "--json",
            "--limit",
            "0",
        ).stdout
    )
    kinds = {e["kind"] for e in record["examples"]}
    assert "bottom" not in kinds and {"top", "random"} <= kinds
    assert record["stats"]["min"] >= -0.2  # GELU's minimum is -0.17
    weights = run_cli(
        "weights", "gpt2-small", "--layers", "6", "--db", str(db), "--no-progress", env=env
    )
    assert weights.returncode == 0, weights.stderr[-2000:]
    facts = store.weight_facts("gpt2-small", 6, 0)
    assert facts is not None and facts["input_vector"] == "W_in" and facts["cos_gate_out"] is None
    assert -1 <= facts["cos_in_out"] <= 1 and len(facts["top_tokens"]) == 10
    shown = run_cli("neuron", "gpt2-small", "6/0", "--db", str(db), "--limit", "1")
    assert (
        shown.returncode == 0
        and "cos(W_in, w_out)" in shown.stdout
        and "W_gate" not in shown.stdout
    )
    negative = run_cli(
        "explain",
        "gpt2-small",
        "--negative",
        "--layers",
        "9",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--explainer-model",
        "x",
        "--db",
        str(db),
    )
    assert (
        "--negative does nothing for gpt2-small: its MLP is not gated (gelu_new)" in negative.stderr
    )
