"""The command line as a user meets it: clear one-sentence errors, JSON shapes, and live vs
stored activations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from autointerp.cli import main
from autointerp.models import SubjectModel
from autointerp.store import Store


def _one_clear_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_every_subcommand() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("setup", "models", "harvest", "merge", "runs", "rank", "neuron", "activations"):
        assert cmd in proc.stdout
    harvest_help = run_cli("harvest", "--help").stdout
    assert "--shard" in harvest_help and "--layers" in harvest_help and "--tokens" in harvest_help


def test_every_help_page_reads_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    """No command's help shows argparse's escaping ("%%" where "%" was meant) or fails to build."""
    import importlib

    from autointerp.cli import COMMAND_MODULES

    names = [
        cmd.name
        for module in COMMAND_MODULES
        for cmd in importlib.import_module(f"autointerp.cli.{module}").commands
    ]
    assert len(names) > 15
    for name in names:
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "%%" not in out and f"autointerp {name}" in out, name


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("gpt2-smal", "gpt2-small"), ("solu-11", "solu-1l"), ("smollm-135m", "smollm2-135m")],
)
def test_misspelt_model_gets_did_you_mean(
    name: str, suggestion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["harvest", "--model", name, "--db", str(tmp_path / "x.db"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Did you mean" in err and repr(suggestion) in err
    assert not (tmp_path / "x.db").exists()


def test_tl_model_without_weights_fails_with_one_sentence(tmp_path: Path) -> None:
    proc = run_cli("harvest", "--model", "gpt2-small", "--db", str(tmp_path / "x.db"), timeout=120)
    _one_clear_error(proc, "not available offline", "smollm2-135m")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
def test_bad_layer_bad_corpus_and_bad_lengths_write_nothing(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    short = tmp_path / "short.txt"
    short.write_text("hi")
    cases = [
        (["--layers", "99"], ("Layer 99 is out of range", "0-29")),
        (["--layers", "two"], ("Layers must look like",)),
        (["--corpus", str(empty)], ("has no text",)),
        (["--corpus", str(latin1)], ("not UTF-8",)),
        (["--corpus", str(short)], ("fewer tokens than one context",)),
        (["--corpus", str(tmp_path / "missing.txt")], ("neither a file",)),
        (["--ctx-len", "100000"], ("longer than",)),
        (["--shard", "3/2"], ("impossible",)),
        (["--bottom-k", "-1"], ("--bottom-k must be at least 0",)),
    ]
    for extra, needles in cases:
        proc = run_cli(
            "harvest", "--model", "smollm2-135m", "--db", str(db), "--no-progress", *extra
        )
        _one_clear_error(proc, *needles)
        assert not db.exists(), extra


def test_neuron_query_errors_are_clear(tmp_path: Path) -> None:
    proc = run_cli("neuron", "smollm2-135m", "1/2", "--db", str(tmp_path / "none.db"))
    _one_clear_error(proc, "No database")
    proc = run_cli("neuron", "smollm2-135m", "one/two", "--db", str(tmp_path / "none.db"))
    _one_clear_error(proc, "L/N")


@pytest.mark.slow
def test_neuron_json_and_live_activations_agree(smol: SubjectModel, tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    proc = run_cli(
        "harvest",
        "--model",
        "smollm2-135m",
        "--layers",
        "3",
        "--tokens",
        "1024",
        "--ctx-len",
        "32",
        "--per-document",
        "0",  # no cap: a 1024-token harvest of a few documents keeps every context as a top one
        "--db",
        str(db),
        "--no-progress",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "complete" and summary["tokens"] == 1024

    proc = run_cli("neuron", "smollm2-135m", "3/100", "--db", str(db), "--json", "--limit", "0")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert (record["model"], record["layer"], record["neuron"]) == ("smollm2-135m", 3, 100)
    assert set(record["stats"]) >= {"mean", "variance", "max", "min", "frac_positive", "hist"}
    top = [e for e in record["examples"] if e["kind"] == "top"]
    assert (
        len(top) == 32
    )  # 1024 tokens are 32 contexts, fewer than the default top-k of 40: all of them
    first = top[0]
    assert first["max_activation"] == pytest.approx(record["stats"]["max"])
    assert first["activations"][first["peak_index"]] == pytest.approx(first["max_activation"])
    assert len(first["tokens"]) == len(first["activations"]) == 32

    # The stored activations of a context equal a fresh forward pass over the same token ids.
    live = smol.feature_activation(torch.tensor([first["token_ids"]]), 3, 100)[0].tolist()
    assert live == pytest.approx(first["activations"], abs=1e-5)

    # The CLI's live neuroscope agrees with the library on arbitrary text.
    text = "The capital of France is Paris."
    proc = run_cli("activations", "smollm2-135m", "3/100", "--text", text, "--json")
    assert proc.returncode == 0, proc.stderr
    live_json = json.loads(proc.stdout)
    ids, _ = smol.encode(text)
    ref = smol.feature_activation(torch.tensor([ids]), 3, 100)[0, 1:].tolist()
    assert "".join(live_json["tokens"]) == text
    assert live_json["activations"] == pytest.approx(ref, abs=1e-5)

    ranked = json.loads(
        run_cli("rank", "smollm2-135m", "--db", str(db), "--json", "--limit", "5").stdout
    )
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert ranked[0]["score"] == max(s["max"] for s in Store(db).db["neurons"].rows)

    runs = json.loads(run_cli("runs", "--db", str(db), "--json").stdout)
    assert runs[0]["config"]["layers"] == [3] and runs[0]["status"] == "complete"
    assert Store(db).model_info("smollm2-135m")["provenance"]["source_sha256"]


@pytest.mark.slow
def test_live_commands_draw_no_library_loading_bars() -> None:
    """`fire` (like `compare`, `harvest`, `graph`) loads a real model: transformers' "Loading
    weights" bar is not the user's business, and nothing else is printed to stderr."""
    proc = run_cli("fire", "smollm2-135m", "--layer", "1", "--text", "Monday and Tuesday")
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and proc.stderr.strip() == "", proc.stderr
    assert "1/" in proc.stdout


def test_the_loading_bar_is_off_once_autointerp_loads(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A real transformers load of a small saved model draws no "Loading weights" bar once the
    model loader has set the libraries up, and other transformers bars are left alone."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from autointerp.models import load_tokenizer

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    load_tokenizer("smollm2-135m")  # sets the libraries up, as every model load does
    capfd.readouterr()
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    assert "Loading weights" not in capfd.readouterr().err
    bar = hf_logging.tqdm(range(3), desc="other work", disable=False)
    list(bar)
    bar.close()
    assert "other work" in capfd.readouterr().err
