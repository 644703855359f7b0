"""What the local server's logprob-free mode buys the ``rule`` simulator: the same requests, in the
order ``explain`` sends them (per neuron: its explanation, then one rule for the explanation and one
for the token baseline), against a server started with prompt logprobs (``logits_all``, no prompt
cache: what every mode needed before) and one started without (no ``logits_all``, a RAM cache of
evaluated prompts). No response cache, so every request reaches the server. The neurons are the
first ``--neurons`` of a layer with a harvest in ``--db``, in index order: nothing is picked.

    python bench/bench_rule_server.py --db eval.db --model gemma-3-270m --layer 9 [--neurons 4]
"""

from __future__ import annotations

import argparse
import time

from autointerp.explain.baseline import baseline_explanation
from autointerp.explain.config import ExplainConfig
from autointerp.explain.explainer import explain_messages
from autointerp.explain.prompts import load_templates
from autointerp.explain.records import explain_records
from autointerp.explain.simulate import Simulator
from autointerp.llm.client import LLMClient, LLMSettings, Usage
from autointerp.llm.local_server import local_server
from autointerp.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--neurons", type=int, default=4)
    ap.add_argument("--llm", default="qwen2.5-coder-1.5b")
    args = ap.parse_args()
    store = Store(args.db, create=False)
    run = store.latest_complete_run(args.model, args.layer)
    assert run is not None, "harvest the layer first"
    cfg = ExplainConfig()
    templates = load_templates()
    prompts = []
    for n in range(args.neurons):
        records = explain_records(store, run["id"], args.layer, n, cfg)
        top = float(store.neuron(run["id"], args.layer, n)["max"])
        prompts.append(
            (
                explain_messages(cfg, templates, records, top, None),
                baseline_explanation(records, top),
            )
        )
    for prompt_logprobs in (True, False):
        with local_server(args.llm, prompt_logprobs=prompt_logprobs) as (url, model):
            client = LLMClient(LLMSettings(base_url=url, timeout=900), None, url)
            sim = Simulator(client, model, templates, "rule")
            explain_s = rule_s = 0.0
            usage = Usage()
            for messages, baseline in prompts:
                t0 = time.perf_counter()
                text, used = client.call(
                    "chat",
                    model,
                    {"messages": messages, "max_tokens": 60, "temperature": 0},
                    lambda r: r["choices"][0]["message"]["content"].strip(),
                )
                usage.add(used)
                t1 = time.perf_counter()
                for explanation in (text, baseline):
                    _, used = sim.compile_rule(explanation)
                    usage.add(used)
                t2 = time.perf_counter()
                explain_s += t1 - t0
                rule_s += t2 - t1
            n = len(prompts)
            print(
                f"prompt_logprobs={prompt_logprobs}: {(explain_s + rule_s) / n:.1f} s per neuron "
                f"(explain {explain_s / n:.1f} s, two rules {rule_s / n:.1f} s; "
                f"{usage.prompt_tokens / n:.0f} prompt tokens per neuron)",
                flush=True,
            )


if __name__ == "__main__":
    main()
