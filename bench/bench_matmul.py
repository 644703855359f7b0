#!/usr/bin/env python
"""How close a subject model's forward pass runs to this CPU's matrix-product rate.

N2G's seconds per neuron and the harvest's bare pass differ by more than 2x between the CPUs this
project has been measured on, with the same code. This script tells the two possible causes
apart: a CPU whose matrix products are slow, or time spent outside them. It measures

1. the rate (GFLOP/s) of float32 matrix products of the model's own projection shapes (query,
   key, value, output, and the MLP's in/gate/out) on ``--rows`` rows, the size of the forward
   passes N2G runs on a CPU (1,024 padded tokens);
2. a bare forward pass through every layer (``stop_at_layer=n_layers``, no hooks, no unembedding,
   as the harvest's reference pass) of ``--batch`` contexts of ``--ctx-len`` tokens, and the rate
   its matrix products alone would need to fit in that time.

Their ratio is the share of the forward pass's time that the matrix products would take at the
measured rate: the rest (norms, rotary embedding, softmax, hooks, Python) is all that any change
other than running fewer or cheaper products could save. Run from the repository root on a quiet
machine::

    .venv/bin/python bench/bench_matmul.py --out bench/results/matmul.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from bench_harvest import command_line, emit, machine_line

from autointerp.models import load_model


def _best_seconds(fn, calls: int) -> float:  # type: ignore[no-untyped-def]
    """Shortest wall time of ``calls`` calls after one warm-up call: the least disturbed one
    (this machine is shared and its speed drifts; a product of a few ms is easily interrupted)."""
    fn()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--rows", type=int, default=1024, help="rows of each timed matrix product")
    p.add_argument("--batch", type=int, default=16, help="contexts in the timed forward pass")
    p.add_argument("--ctx-len", type=int, default=64, help="tokens per context")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds, each timing every product and the forward pass once (best of 5 and 3 calls)",
    )
    p.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    a = p.parse_args(argv)
    command = command_line()

    model = load_model(a.model, progress=False, device="cpu")
    cfg = model.model.cfg
    d_model, d_mlp, n_layers = cfg.d_model, cfg.d_mlp, cfg.n_layers
    q_width = cfg.n_heads * cfg.d_head
    kv_width = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    gated = bool(cfg.gated_mlp)
    # (name, inputs, outputs, how many of it per block)
    shapes = [
        ("attention query", d_model, q_width, 1),
        ("attention key + value", d_model, kv_width, 2),
        ("attention output", q_width, d_model, 1),
        ("MLP in" + (" + gate" if gated else ""), d_model, d_mlp, 2 if gated else 1),
        ("MLP out", d_mlp, d_model, 1),
    ]
    operands = [
        (torch.randn(a.rows, n_in), torch.randn(n_in, n_out)) for _, n_in, n_out, _ in shapes
    ]
    tokens = torch.randint(0, cfg.d_vocab, (a.batch, a.ctx_len))
    if model.bos_id is not None:
        tokens[:, 0] = model.bos_id
    # The products and the forward pass are timed in the same rounds, one after the other, so a
    # drift of the machine's speed moves both; each round gives one share, and the median is kept.
    product_seconds: list[list[float]] = []  # [round][shape]
    forward_seconds: list[float] = []
    with torch.inference_mode():
        for _ in range(a.rounds):
            product_seconds.append([_best_seconds(lambda x=x, w=w: x @ w, 5) for x, w in operands])
            forward_seconds.append(
                _best_seconds(lambda: model.model(tokens, stop_at_layer=n_layers), 3)
            )
    block_flop_per_token = sum(2 * n_in * n_out * count for _, n_in, n_out, count in shapes)
    rows_out = []
    for k, (name, n_in, n_out, _count) in enumerate(shapes):
        sec = statistics.median(r[k] for r in product_seconds)
        rows_out.append(
            (name, f"{a.rows} x {n_in} @ {n_in} x {n_out}", 2 * a.rows * n_in * n_out / sec / 1e9)
        )
    gemm_rates = [  # the block's mix of shapes, per round (FLOP/s)
        block_flop_per_token
        / sum(c * s / a.rows for (_, _, _, c), s in zip(shapes, r, strict=True))
        for r in product_seconds
    ]
    n_tokens = a.batch * a.ctx_len
    # attention scores and their weighted sum: two products of ctx_len per token, head and layer
    attention_flop = 2 * 2 * a.ctx_len * q_width
    forward_flop = n_tokens * n_layers * (block_flop_per_token + attention_flop)
    shares = sorted(forward_flop / f / g for f, g in zip(forward_seconds, gemm_rates, strict=True))
    share = statistics.median(shares)
    forward = statistics.median(forward_seconds)
    forward_rate = forward_flop / forward / 1e9
    gemm_rate = statistics.median(gemm_rates)
    lines = [
        f"### Matrix products and the forward pass: {model.name} on {_cpu_name()}",
        "",
        f"Command: `{command}`",
        "",
        f"{machine_line()}; float32; medians over {a.rounds} rounds (each the best of"
        f" 5 calls of every product and 3 forward passes).",
        "",
        "| matrix product | shape | GFLOP/s |",
        "|---|---|---:|",
        *(f"| {name} | {shape} | {rate:.1f} |" for name, shape, rate in rows_out),
        f"| **a block's mix of them** | | **{gemm_rate / 1e9:.1f}** |",
        "",
        f"- Bare forward pass, {a.batch} x {a.ctx_len} tokens through all {n_layers} layers:"
        f" {forward * 1e3:.0f} ms ({n_tokens / forward:.0f} tokens/s); its matrix products"
        f" ({forward_flop / 1e9:.1f} GFLOP) at {forward_rate:.1f} GFLOP/s.",
        f"- **The matrix products alone would take {share:.0%} of the forward pass's time** at the"
        f" rate measured in the same round (median; rounds {shares[0]:.0%}-{shares[-1]:.0%});"
        f" everything else in it (norms, rotary embedding, softmax, hooks, Python) is the other"
        f" {1 - share:.0%}, so no change short of fewer or cheaper products"
        f" can make the pass more than {1 / share:.2f}x faster.",
        "",
    ]
    text = "\n".join(lines)
    emit(text, a.out)


if __name__ == "__main__":
    main()
