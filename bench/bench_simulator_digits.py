"""How often the simulator's top logprobs hold no digit at an activation slot (echo mode, local
LLM).

Records are the first 32 tokens of seeded random documents of the default corpus (Gemma tokenizer),
simulated with a fixed list of explanations; nothing is picked by looking at results. Prints, per
prompt folder, the share of digit-less slots and how many records would fail the
MAX_DIGITLESS_FRACTION check.

    python bench/bench_simulator_digits.py --llm qwen2.5-coder-0.5b [--prompts DIR ...]
"""

from __future__ import annotations

import argparse
import random
import time

from autointerp.corpus import load_documents
from autointerp.explain.prompts import load_templates, simulation_prompt
from autointerp.explain.simulate import MAX_DIGITLESS_FRACTION, parse_echo_slots
from autointerp.llm.client import LLMClient, LLMSettings
from autointerp.llm.local_server import local_server
from autointerp.models import load_tokenizer

EXPLANATIONS = [
    "names of animals",
    'the word "the"',
    "punctuation at the end of a sentence",
    "numbers and years",
    "Python keywords",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="qwen2.5-coder-0.5b")
    ap.add_argument("--records", type=int, default=6)
    ap.add_argument("--prompts", nargs="*", default=[None])
    ap.add_argument("--top-logprobs", type=int, default=15)
    args = ap.parse_args()
    _, tok = load_tokenizer("gemma-3-270m", progress=False)
    docs = load_documents("default", 0)
    picked = random.Random(11).sample(range(len(docs)), args.records)
    ids = [tok(docs[d].text, add_special_tokens=False)["input_ids"][:32] for d in picked]
    records = [[tok.decode([i]) for i in row] for row in ids]
    with local_server(args.llm) as (url, model):
        client = LLMClient(LLMSettings(base_url=url, timeout=300), None, url)
        for folder in args.prompts:
            templates = load_templates(folder)
            missing = slots = failing = 0
            t0 = time.time()
            for explanation in EXPLANATIONS:
                for tokens in records:
                    prompt = simulation_prompt(explanation, tokens, templates)
                    body = {
                        "prompt": prompt.text,
                        "echo": True,
                        "logprobs": args.top_logprobs,
                        "max_tokens": 1,
                        "temperature": 0,
                    }
                    values, _ = client.call(
                        "completions",
                        model,
                        body,
                        lambda r, p=prompt: parse_echo_slots(r, p.slot_offsets, 0),
                    )
                    m = sum(v is None for v in values)
                    missing += m
                    slots += len(values)
                    failing += m > MAX_DIGITLESS_FRACTION * len(values)
            n = len(EXPLANATIONS) * len(records)
            print(
                f"{args.llm} prompts={folder or 'default'}: {missing}/{slots} slots digit-less "
                f"({100 * missing / slots:.1f}%), {failing}/{n} records over the threshold, "
                f"{time.time() - t0:.0f} s"
            )


if __name__ == "__main__":
    main()
