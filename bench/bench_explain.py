"""Explain + simulate cost per neuron with the default local LLM, and the echo fast path against
stock llama.cpp.

    .venv/bin/python bench/bench_explain.py --db autointerp.db --model gemma-3-270m --layers 3,9
    --neurons top:2 \
        --out bench/results/explain.md

Uses a copy of a database that already has a harvest (and graphs) of the model, and no response
cache, so every call is real. Reports seconds and tokens per neuron for the explanation call and for
simulation (all held-out records of the LLM explanation and of the baseline). ``--echo-compare``
also times one simulation prompt on llama-cpp-python's stock server (``python -m llama_cpp.server
--logits_all true``) against ``autointerp.llm.echo_server``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from autointerp.explain.config import ExplainConfig
from autointerp.explain.plan import plan_explain
from autointerp.explain.prompts import load_templates, simulation_prompt
from autointerp.explain.run import explain_layers
from autointerp.llm.client import LLMClient, LLMSettings
from autointerp.llm.local_server import free_port, local_gguf, local_server, resolve_local_llm
from autointerp.ranges import parse_layers
from autointerp.store import Store


def explain_cost(db: str, model: str, layers: list[int], neurons: str, llm: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bench.db"
        with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        store = Store(copy)
        store.db.execute("delete from scores")
        store.db.execute("delete from explanations")
        store.db.conn.commit()
        templates = load_templates()
        with local_server(llm) as (url, served):
            client = LLMClient(LLMSettings(), None, url)
            cfg = ExplainConfig(
                explainer_model=served, simulator_model=served, prompt_version=templates.version
            )
            t0 = time.time()
            plan = plan_explain(store, model, layers, cfg, neurons)
            summary = explain_layers(store, plan, client, templates, progress=True)
            wall = time.time() - t0
        expl = list(store.db.query("select * from explanations where kind = 'llm'"))
        scores = list(
            store.db.query("select * from scores where method in ('explanation', 'baseline')")
        )
        n = max(1, summary.explained + summary.failed)
        explain_s = sum(r["seconds"] or 0 for r in expl) / n
        return {
            "llm": served,
            "neurons": n,
            "failed": summary.failed,
            "wall_s_per_neuron": wall / n,
            "explain_s_per_neuron": explain_s,
            "simulate_s_per_neuron": wall / n - explain_s,
            "explain_prompt_tokens": statistics.mean(r["prompt_tokens"] or 0 for r in expl),
            "explain_completion_tokens": statistics.mean(r["completion_tokens"] or 0 for r in expl),
            "simulate_prompt_tokens_per_neuron": sum(r["prompt_tokens"] or 0 for r in scores) / n,
            "records_per_explanation": cfg.sim_top + cfg.sim_random,
            "scores": {
                m: [
                    r["score"]
                    for r in store.db.query("select score from scores where method = ?", [m])
                ]
                for m in ("explanation", "baseline", "n2g")
            },
        }


def _post(url: str, body: dict) -> tuple[float, dict]:
    req = urllib.request.Request(
        url + "/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=600) as resp:
        out = json.load(resp)
    return time.time() - t0, out


def echo_compare(llm: str) -> dict:
    """One 32-token simulation prompt, first call and repeated, on the stock server and on ours."""
    tokens = [f" word{i}" for i in range(32)]
    prompt = simulation_prompt("days of the week", tokens, load_templates()).text
    body = {
        "prompt": prompt,
        "echo": True,
        "logprobs": 15,
        "max_tokens": 1,
        "temperature": 0,
        "model": resolve_local_llm(llm).name,
    }
    out = {}
    with local_server(llm) as (url, _):
        out["autointerp.llm.echo_server"] = [round(_post(url, body)[0], 2) for _ in range(2)]
    port = free_port()
    gguf = local_gguf(resolve_local_llm(llm))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            resolve_local_llm(llm).name,
            "--port",
            str(port),
            "--n_ctx",
            "3072",
            "--logits_all",
            "true",
            "--n_threads",
            str(os.cpu_count()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        out["llama_cpp.server (stock)"] = [round(_post(url, body)[0], 2) for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="autointerp.db")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--layers", default="3,9")
    p.add_argument("--neurons", default="top:2")
    p.add_argument("--llm", default="qwen2.5-coder-1.5b")
    p.add_argument("--echo-compare", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cost = explain_cost(args.db, args.model, parse_layers(args.layers), args.neurons, args.llm)
    lines = [
        f"## Explain and simulate per neuron ({cost['llm']}, local llama.cpp server, 2 CPU cores)",
        "",
        f"Command: `.venv/bin/python bench/bench_explain.py {' '.join(sys.argv[1:])}`",
        "",
        (
            f"{cost['neurons']} neurons of {args.model} layers {args.layers} ({args.neurons} each),"
            f" {cost['records_per_explanation']} held-out records simulated per explanation (LLM +"
            f" baseline), no response cache. Failed neurons: {cost['failed']}."
        ),
        "",
        "| per neuron | seconds | prompt tokens | completion tokens |",
        "|---|---|---|---|",
        (
            f"| explanation (1 call) | {cost['explain_s_per_neuron']:.1f} |"
            f" {cost['explain_prompt_tokens']:.0f} | {cost['explain_completion_tokens']:.0f} |"
        ),
        (
            f"| simulation (2 x {cost['records_per_explanation']} calls) |"
            f" {cost['simulate_s_per_neuron']:.1f} |"
            f" {cost['simulate_prompt_tokens_per_neuron']:.0f} | 0 |"
        ),
        f"| total | {cost['wall_s_per_neuron']:.1f} | | |",
        "",
    ]
    for method, values in cost["scores"].items():
        shown = ", ".join("-" if v is None else f"{v:.2f}" for v in values)
        lines.append(f"- {method} scores: {shown}")
    if args.echo_compare:
        cmp_ = echo_compare(args.llm)
        lines += [
            "",
            (
                f"### One 32-token simulation prompt, echo + logprobs=15 ({args.llm}): first call,"
                " repeat"
            ),
            "",
            "| server | seconds |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v[0]} , {v[1]} |" for k, v in cmp_.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
