"""``eval --control random-init``: the randomly initialised control (:mod:`autointerp.random_init`)
has the subject's architecture and tokenizer and other, seeded weights; its harvest is the trained
model's harvest config for config; and ``eval`` reports the control's summaries and how far the
trained model's scores stand above them (:mod:`autointerp.eval.control`). The LLM is the fault
server; the fast tests use the tiny model (TransformerLens' init), the slow ones SmolLM2 (the
architecture's own Hugging Face init) through the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import copy_store, fault_config, llm_client, run_cli
from llmfaults import is_simulation

from autointerp.errors import UserError
from autointerp.eval.control import ControlSpec, control_harvests, harvest_control
from autointerp.eval.control_run import evaluate_control, plan_control
from autointerp.eval.evaluate import EvalConfig, evaluate, sample_neurons
from autointerp.eval.stats import difference_of_means
from autointerp.explain.prompts import load_templates
from autointerp.model_names import (
    canonical_model_name,
    parse_random_init_name,
    random_init_name,
)
from autointerp.models import SubjectModel
from autointerp.n2g.build import N2GConfig
from autointerp.n2g.run import graph_layers
from autointerp.random_init import random_init_like
from autointerp.store import Store

#: the tiny fixture model is itself TransformerLens' init under seed 0, so its seed-0 control
#: would be the fixture again: the tests draw the control with another seed
SEED = 7
CONTROL = random_init_name("tiny-gated", SEED)


def _weights(model: SubjectModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def test_control_names_carry_the_architecture_and_the_seed() -> None:
    assert random_init_name("gemma-3-270m", 0) == "gemma-3-270m+random-init-0"
    assert parse_random_init_name("gemma-3-270m+random-init-12") == ("gemma-3-270m", 12)
    assert parse_random_init_name("gemma-3-270m") is None
    assert parse_random_init_name("gemma-3-270m+known-1234abcd") is None
    assert canonical_model_name("SmolLM2+random-init-3") == "smollm2-135m+random-init-3"
    assert canonical_model_name("tiny-gated+random-init-3") == "tiny-gated+random-init-3"
    with pytest.raises(UserError, match="--control-seed must be at least 0"):
        ControlSpec(seed=-1)
    with pytest.raises(UserError, match="--control must be random-init"):
        ControlSpec(kind="shuffled-weights")


def test_random_init_control_has_the_architecture_and_tokenizer_and_seeded_weights(
    tiny_gated: SubjectModel,
) -> None:
    state = torch.random.get_rng_state()
    control = random_init_like(tiny_gated, SEED)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is kept
    assert control.name == CONTROL and control.provenance["random_init"]["seed"] == SEED
    assert control.model.cfg.to_dict() | {"seed": None} == tiny_gated.model.cfg.to_dict() | {
        "seed": None
    }
    assert control.tokenizer is tiny_gated.tokenizer
    mine, theirs = _weights(control), _weights(tiny_gated)
    assert mine.keys() == theirs.keys()
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    assert not torch.equal(mine["blocks.1.mlp.W_in"], theirs["blocks.1.mlp.W_in"])
    again = _weights(random_init_like(tiny_gated, SEED))
    assert all(torch.equal(mine[k], again[k]) for k in mine)  # deterministic for a seed
    other = _weights(random_init_like(tiny_gated, SEED + 1))
    assert not torch.equal(mine["blocks.1.mlp.W_in"], other["blocks.1.mlp.W_in"])


def _harvest_control(store: Store, tiny_gated: SubjectModel) -> SubjectModel:
    control = random_init_like(tiny_gated, SEED)
    missing = control_harvests(store, "tiny-gated", CONTROL, [1])
    harvest_control(store, missing, lambda dtype: control, progress=False, log=lambda m: None)
    return control


def test_the_control_is_harvested_as_the_trained_model_was(
    small_db: Path, tmp_path: Path, tiny_gated: SubjectModel
) -> None:
    store = copy_store(small_db, tmp_path)
    trained = store.harvest_run("tiny-gated", 1)
    (wanted,) = control_harvests(store, "tiny-gated", CONTROL, [1])
    assert wanted.model == CONTROL and wanted.layers == [1]
    _harvest_control(store, tiny_gated)
    run = store.harvest_run(CONTROL, 1)
    assert run["id"] != trained["id"] and run["status"] == "complete"
    same = ("model", "layers", "shard", "device")
    assert {k: v for k, v in run["config"].items() if k not in same} == {
        k: v for k, v in trained["config"].items() if k not in same
    }  # corpus, its fingerprint, tokens, ctx_len, top_k, seeds ...
    assert run["tokens_done"] == trained["tokens_done"]
    assert control_harvests(store, "tiny-gated", CONTROL, [1]) == []  # a rerun harvests nothing
    info = store.model_info(CONTROL)
    assert info and info["provenance"]["random_init"]["architecture"] == "tiny-gated"
    maxima = [store.neuron(run["id"], 1, n)["max"] for n in range(4)]
    assert maxima != [store.neuron(trained["id"], 1, n)["max"] for n in range(4)]


def test_a_changed_corpus_is_refused_before_the_control_is_harvested(
    tiny_gated: SubjectModel, text_corpus: Path, tmp_path: Path
) -> None:
    from autointerp.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(model="tiny-gated", corpus=str(text_corpus), layers=[0], ctx_len=16)
    harvest(tiny_gated, tmp_path / "db.db", cfg, progress=False, log=lambda m: None)
    store = Store(tmp_path / "db.db")
    text_corpus.write_text(json.dumps({"text": "Something else entirely. " * 40}) + "\n")
    missing = control_harvests(store, "tiny-gated", CONTROL, [0])

    def never(dtype: str) -> Any:
        raise AssertionError("the control was built for a corpus it must not read")

    with pytest.raises(UserError, match="fingerprint has changed"):
        harvest_control(store, missing, never, progress=False, log=lambda m: None)
    assert store.latest_complete_run(CONTROL, 0) is None


def _scores(result: dict[str, Any], method: str) -> list[float]:
    return [n["scores"][method] for n in result["neurons"] if n["status"][method] == "ok"]


def test_eval_with_the_random_init_control_reports_it_and_the_difference(
    small_db: Path, tmp_path: Path, tiny_gated: SubjectModel, fault_server: Any
) -> None:
    store = copy_store(small_db, tmp_path)
    control = random_init_like(tiny_gated, SEED)
    built: list[str] = []

    def load(dtype: str) -> SubjectModel:
        built.append(dtype)
        return control

    def graphs(model: SubjectModel):  # type: ignore[no-untyped-def]
        def build(layer: int, neurons: list[int]) -> None:
            spec = ",".join(map(str, neurons))
            graph_layers(model, store, [layer], spec, N2GConfig(), progress=False)

        return build

    server = fault_server("keyword")
    cfg, explain_cfg = EvalConfig(layers=[1], sample=4, seed=3), fault_config()
    spec = ControlSpec(seed=SEED)

    def run() -> dict[str, Any]:
        planned = plan_control(store, "tiny-gated", spec, cfg, explain_cfg, load)
        client, templates = llm_client(server.url), load_templates()
        done = evaluate_control(store, planned, client, templates, graphs(control), progress=False)
        from autointerp.eval.evaluate import plan_eval

        plan = plan_eval(store, "tiny-gated", cfg, explain_cfg)
        return evaluate(
            store, plan, client, templates, graphs(tiny_gated), progress=False, control=done
        )

    out = run()
    assert built == ["float32"]  # built once, to harvest
    section = out["control"]
    assert section["model"] == CONTROL and section["seed"] == SEED
    assert section["provenance"]["random_init"]["seed"] == SEED
    # the control's sample: its own firing neurons, drawn as the trained model's were
    assert [n for _, n in section["neurons"]] == sample_neurons(store, CONTROL, 1, 4, 3)
    stored = store.latest_evaluation(CONTROL, "eval")
    assert stored and stored["run_id"] == section["eval_run_id"]
    for method in ("explanation", "baseline", "n2g", "shuffled"):
        assert section["methods"][method] == stored["result"]["methods"][method]
        d = section["trained_minus_control"][method]
        mine, theirs = _scores(out, method), _scores(stored["result"], method)
        assert d["n"] == [len(mine), len(theirs)]
        if mine and theirs:
            assert d["mean"] == pytest.approx(np.mean(mine) - np.mean(theirs))
    assert any(section["trained_minus_control"][m]["mean"] is not None for m in ("baseline", "n2g"))
    trained = store.latest_evaluation("tiny-gated", "eval")
    assert trained and trained["config"]["control"] == {"kind": "random-init", "seed": SEED}
    assert trained["result"]["control"] == section
    # the trained model's own sections are what eval reports without a control
    assert out["neurons"] and [n["neuron"] for n in out["neurons"]] == sample_neurons(
        store, "tiny-gated", 1, 4, 3
    )
    # a rerun builds nothing and writes no explanation again: only the shuffled controls (never
    # stored) are simulated again
    asked = len(server.bodies)
    again = run()
    assert built == ["float32"] and all(map(is_simulation, server.bodies[asked:]))
    assert again["control"]["trained_minus_control"] == section["trained_minus_control"]


def test_difference_of_means_is_unpaired_with_a_seeded_interval() -> None:
    d = difference_of_means([0.5, 0.7, 0.9], [0.1, 0.3], seed=1)
    assert d["n"] == [3, 2] and d["mean"] == pytest.approx(0.5)
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert difference_of_means([0.5, 0.7, 0.9], [0.1, 0.3], seed=1) == d
    assert difference_of_means([0.5], [0.1, 0.2])["ci95"] is None
    assert difference_of_means([], [0.1])["mean"] is None


def test_eval_command_prints_and_returns_the_control_section(
    small_db: Path, tmp_path: Path, tiny_gated: SubjectModel, fault_server: Any
) -> None:
    store = copy_store(small_db, tmp_path)
    _harvest_control(store, tiny_gated)  # the tiny model has no name to build it by
    server = fault_server("keyword")
    args = ["eval", "tiny-gated", "--layers", "1", "--sample", "3", "--base-url", server.url]
    args += ["--explainer-model", "fault-model", "--simulator-mode", "echo", "--sim-top", "2"]
    args += ["--sim-random", "2", "--no-graphs", "--no-progress", "--db", str(store.path)]
    args += ["--control", "random-init", "--control-seed", str(SEED)]
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    section = out["control"]
    assert section["model"] == CONTROL and len(section["neurons"]) == 3
    assert set(section["trained_minus_control"]) == set(section["methods"])
    assert {"explanation", "baseline", "shuffled"} <= set(section["methods"])
    assert store.latest_evaluation(CONTROL, "eval")
    text = run_cli(*args)
    assert text.returncode == 0, text.stderr
    assert f"random-init control {CONTROL}" in text.stdout and "trained - control" in text.stdout
    bad = run_cli(*args[:-1], "-1")
    assert bad.returncode == 2 and "--control-seed must be at least 0" in bad.stderr
    assert "Traceback" not in bad.stderr
    twice = run_cli(*args[:1], CONTROL, *args[2:])
    assert twice.returncode == 2 and "is itself a random-init control" in twice.stderr
    assert "Traceback" not in twice.stderr


@pytest.mark.slow  # builds SmolLM2-135M's control twice (~15 s each)
def test_smollm2_control_is_its_architecture_and_tokenizer_with_seeded_hf_init_weights(
    smol: SubjectModel,
) -> None:
    from autointerp.random_init import load_subject

    control = load_subject("smollm2+random-init-0", progress=False, device="cpu")
    assert control.name == "smollm2-135m+random-init-0"
    assert control.model.cfg.to_dict() == smol.model.cfg.to_dict()
    assert control.tokenizer.get_vocab() == smol.tokenizer.get_vocab()
    text = "def add(a, b):\n    return a + b  # The capital of France"
    assert control.encode(text) == smol.encode(text)
    provenance = control.provenance["random_init"]
    assert provenance["architecture_class"] == "LlamaForCausalLM" and provenance["seed"] == 0
    mine, theirs = _weights(control), _weights(smol)
    assert mine.keys() == theirs.keys()
    w = "blocks.3.mlp.W_in"
    assert not torch.equal(mine[w], theirs[w])
    assert mine[w].std().item() == pytest.approx(0.02, rel=0.05)  # Llama's normal(0, 0.02)
    again = _weights(load_subject("smollm2-135m+random-init-0", progress=False, device="cpu"))
    assert all(torch.equal(mine[k], again[k]) for k in mine)
    ids = torch.tensor([control.encode(text)[0]])
    acts = control.mlp_activations(ids, [3])[3]
    assert acts.shape == smol.mlp_activations(ids, [3])[3].shape and (acts != 0).any()


@pytest.mark.slow  # harvests, graphs and explains SmolLM2 and its control through the command
def test_eval_command_with_the_random_init_control_on_smollm2(
    tmp_path: Path, text_corpus: Path, fault_server: Any
) -> None:
    db = str(tmp_path / "db.db")
    proc = run_cli(
        *("harvest", "--model", "smollm2-135m", "--layers", "3", "--corpus", str(text_corpus)),
        *("--ctx-len", "32", "--tokens", "1024", "--device", "cpu", "--no-progress"),
        *("--db", db),
    )
    assert proc.returncode == 0, proc.stderr
    server = fault_server("keyword")
    args = ["eval", "smollm2-135m", "--layers", "3", "--sample", "2", "--base-url", server.url]
    args += ["--explainer-model", "fault-model", "--no-progress", "--db", db]
    proc = run_cli(*args, "--control", "random-init", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    section = out["control"]
    control = "smollm2-135m+random-init-0"
    assert section["model"] == control and len(section["neurons"]) == 2
    assert section["provenance"]["random_init"]["architecture_class"] == "LlamaForCausalLM"
    assert {"explanation", "baseline", "n2g", "shuffled"} <= set(section["trained_minus_control"])
    store = Store(db)
    trained, theirs = store.harvest_run("smollm2-135m", 3), store.harvest_run(control, 3)
    same = ("model", "layers", "shard", "device")
    assert {k: v for k, v in theirs["config"].items() if k not in same} == {
        k: v for k, v in trained["config"].items() if k not in same
    }
    stored = store.latest_evaluation(control, "eval")
    assert stored and [n["neuron"] for n in stored["result"]["neurons"]] == sample_neurons(
        store, control, 3, 2, 0
    )
    assert all(n["status"]["n2g"] in ("ok", "undefined") for n in stored["result"]["neurons"])
    # a rerun finds the control's harvest and graphs: it builds no model
    again = run_cli(*args, "--control", "random-init")
    assert again.returncode == 0, again.stderr
    assert "Harvesting the random-init control" not in again.stderr
    assert f"random-init control {control}" in again.stdout
