"""Benchmark graph similarity for a whole model: synthetic N2G token sets with a Zipfian token
distribution, timed at several sizes up to 36,864 graphs (gpt2-small's 12 x 3,072 MLP neurons), with
the growth exponent between sizes.

The synthetic graphs are shaped like the real Gemma-3-270M graphs in this repository (6-119
activating and 0-179 context tokens per graph): each graph draws Poisson(60)+1 activating and
Poisson(60) context tokens from a 50,000 token vocabulary with Zipf exponent 1.1, independently -
harder than real graphs, whose tokens cluster by topic. The stop-token cap is the default ``max(50,
ceil(2*sqrt(N)))``. A brute-force check on a small set runs first.

    .venv/bin/python bench/bench_similarity.py --out bench/results/similarity.md
    .venv/bin/python bench/bench_similarity.py --sizes 2304,9216 --quick        # smoke check
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from autointerp.similarity import (
    KINDS,
    TokenSets,
    brute_force_top,
    default_max_df,
    index_kind,
    top_similar,
)


def synthetic_sets(
    n: int, vocab: int = 50_000, zipf: float = 1.1, mean_tokens: int = 60, seed: int = 0
) -> list[TokenSets]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    p /= p.sum()
    n_act = rng.poisson(mean_tokens, n) + 1
    n_ctx = rng.poisson(mean_tokens, n)
    act = rng.choice(vocab, size=int(n_act.sum()), p=p)
    ctx = rng.choice(vocab, size=int(n_ctx.sum()), p=p)
    ia = np.concatenate([[0], np.cumsum(n_act)])
    ic = np.concatenate([[0], np.cumsum(n_ctx)])
    words = [f"w{i}" for i in range(vocab)]
    return [
        TokenSets(
            frozenset(words[t] for t in act[ia[i] : ia[i + 1]]),
            frozenset(words[t] for t in ctx[ic[i] : ic[i + 1]]),
        )
        for i in range(n)
    ]


def candidate_keys(sets: list[TokenSets], max_df: int) -> int:
    """(query, candidate, kind) triples the index emits: the sum over kept tokens of df², per
    kind."""
    total = 0
    for kind in KINDS:
        kd = index_kind([getattr(s, kind) for s in sets], max_df)
        df = np.diff(kd.t_ptr).astype(np.int64)
        total += int((df * (df - 1)).sum())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        default="9216,18432,36864",
        help="graph counts to time (default 9216,18432,36864)",
    )
    ap.add_argument(
        "--limit", type=int, default=20, help="similar neurons kept per neuron (default 20)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="skip nothing, but a smaller brute-force check"
    )
    ap.add_argument("--out", default=None, help="also write the Markdown section here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    check = synthetic_sets(150 if args.quick else 400, seed=1)
    for max_df in (10, default_max_df(len(check))):
        assert top_similar(check, args.limit, max_df) == brute_force_top(
            check, args.limit, max_df
        ), max_df
    lines = []
    rows = []
    for n in sizes:
        sets = synthetic_sets(n)
        max_df = default_max_df(n)
        keys = candidate_keys(sets, max_df)
        t0 = time.perf_counter()
        top = top_similar(sets, args.limit, max_df)
        seconds = time.perf_counter() - t0
        listed = sum(len(t) for t in top)
        rows.append((n, max_df, keys, seconds, listed))
        print(
            f"{n} graphs: {seconds:.1f}s, max_df {max_df}, {keys / n:.0f} candidate keys per graph "
            f"(all pairs would be {n - 1}), {listed} similar-neuron rows",
            flush=True,
        )
    lines.append(
        "| graphs | stop-token cap | candidate keys per graph | all pairs per graph | seconds |"
    )
    lines.append("|---:|---:|---:|---:|---:|")
    for n, max_df, keys, seconds, _ in rows:
        lines.append(f"| {n:,} | {max_df} | {keys / n:,.0f} | {n - 1:,} | {seconds:.1f} |")
    growth = []
    for (n1, _, _, t1, _), (n2, _, _, t2, _) in zip(rows, rows[1:], strict=False):
        growth.append(
            f"{n1:,} → {n2:,}: time × {t2 / t1:.2f} for graphs × {n2 / n1:.0f} "
            f"(exponent {math.log(t2 / t1) / math.log(n2 / n1):.2f}; quadratic would be 2)"
        )
    header = (
        f"Similarity benchmark ({platform.machine()}, torch {torch.__version__},"
        f" {torch.get_num_threads()} "
        f"threads, numpy {np.__version__}); top {args.limit} per graph; brute-force check"
        " passed on "
        f"{len(check)} graphs.\n\nCommand: `.venv/bin/python bench/bench_similarity.py"
        f"{' --sizes ' + args.sizes if args.sizes != '9216,18432,36864' else ''}`\n"
    )
    text = header + "\n" + "\n".join(lines) + "\n\n" + "\n".join(f"* {g}" for g in growth) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
