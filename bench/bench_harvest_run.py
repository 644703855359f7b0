#!/usr/bin/env python
"""A real ``harvest()`` end to end against a bare forward pass over the very same tokens.

``bench_harvest.py`` measures the harvest *loop* batch by batch (bare and harvested back to back,
interleaved), which is the right tool for the per-batch cost but leaves out what only a whole run
has: checkpoints of the full state (seconds each for a whole model), the final write of every
example row, and the top-k churn falling as the corpus goes on. This script runs the real thing:

1. a bare forward pass (``model.model(tokens, stop_at_layer=max(layers) + 1)`` under
   ``inference_mode``, no hooks) over the contexts ``harvest()`` will read, batched as it batches;
2. ``harvest()`` itself with every default (checkpoint cadence included) into a temporary database,
   timing its checkpoints and its final write through a :class:`Store` subclass;
3. the bare pass again, so a drift of the machine's speed during the run shows up as a difference
   between the two bare passes (their mean is the reference).

It reports the end-to-end ratio (everything ``harvest()`` does, corpus loading included, over the
bare pass), the loop's ratio with and without its checkpoints, and the parts. Sequential, not
interleaved: run it on a quiet machine. Run from the repository root::

    .venv/bin/python bench/bench_harvest_run.py --tokens 131072 --out bench/results/harvest-run.md
    python3 bench/bench_harvest_run.py --device cuda --layers 3,9,15 --tokens 1048576  # on a GPU

On CUDA the batch size is what ``harvest`` picks there (``--batch-size`` overrides it), the
statistics stay on the device (as in a harvest), and every bare batch ends with a synchronize.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_harvest import (
    Batch,
    Settings,
    TimedStore,
    build_batches,
    command_line,
    emit,
    machine_line,
    time_bare,
)

from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import SubjectModel, load_model
from autointerp.ranges import parse_layers


class RunTimedStore(TimedStore):
    """``bench_harvest``'s timed store, which also notes when the final write starts (the loop
    ends there) and how long each checkpoint takes."""

    finish_started: float = 0.0
    checkpoint_seconds: list[float]

    def create_run(self, *args: Any, **kwargs: Any) -> int:
        self.checkpoint_seconds = []
        return super().create_run(*args, **kwargs)

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        super().save_checkpoint(*args, **kwargs)
        self.checkpoint_seconds.append(time.perf_counter() - t0)

    def finish_run(self, *args: Any, **kwargs: Any) -> None:
        self.finish_started = time.perf_counter()
        super().finish_run(*args, **kwargs)


def bare_pass(
    model: SubjectModel, batches: Sequence[Batch], layers: Sequence[int], every: int = 1
) -> float:
    """Seconds of a bare forward pass over all of ``batches``; with ``every`` > 1 only every
    ``every``-th batch runs (spread over the whole corpus) and the time is scaled up by contexts.

    Why a sample is enough: every batch has the same shape (``batch_size`` contexts of ``ctx_len``
    tokens, but the last), so a bare pass costs the same per context anywhere in the corpus, and a
    whole default-corpus bare pass would take another ~34 minutes twice."""
    sample = batches[::every]
    seconds = sum(time_bare(model, layers, batch) for batch in sample)
    return seconds * sum(len(b.ids) for b in batches) / sum(len(b.ids) for b in sample)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument(
        "--tokens",
        type=int,
        default=131072,
        help="tokens to harvest (default 131072; 0: the whole corpus, as a default harvest)",
    )
    p.add_argument(
        "--bare-every",
        type=int,
        default=1,
        help="time the bare passes on every K-th batch only, scaled up (default 1: all batches)",
    )
    p.add_argument("--layers", default="all", help="all (default), 0-5, 0,3,5")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--dtype", default="float32", help="the model's dtype (default float32)")
    p.add_argument(
        "--batch-size", type=int, help="contexts per batch (default: what harvest picks)"
    )
    p.add_argument("--per-document", type=int, help="the harvest's cap (default: its default)")
    p.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    a = p.parse_args(argv)
    command = command_line()

    model = load_model(a.model, progress=False, device=a.device, dtype=a.dtype)
    layers = parse_layers(a.layers) or list(range(model.n_layers))
    extra = {} if a.per_document is None else {"per_document": a.per_document}
    cfg = HarvestConfig(model=model.name, layers=layers, n_tokens=a.tokens or None, **extra)
    cfg.batch_size = a.batch_size or model.suggest_batch_size(cfg.ctx_len, layers)
    # the contexts harvest() will read, batched as it batches them
    settings = Settings(
        model=model.name,
        tokens=a.tokens or 2**40,  # 0: every context of the corpus
        batch_size=cfg.batch_size,
        ctx_len=cfg.ctx_len,
        corpus=cfg.corpus,
        seed=cfg.seed,
    )
    _, batches = build_batches(model, settings)
    contexts = sum(len(b.ids) for b in batches)
    print(f"{contexts} contexts, {len(layers)} layers: bare pass 1 ...", file=sys.stderr)
    bare_1 = bare_pass(model, batches, layers, a.bare_every)
    print("harvest ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-harvest-run-", dir=os.getcwd()) as tmp:
        store = RunTimedStore(Path(tmp) / "run.db")
        t0 = time.perf_counter()
        result = harvest(model, store, cfg, progress=False, log=lambda _m: None)
        total = time.perf_counter() - t0
        store.db.conn.close()  # folds the write-ahead log into the file: the size a user keeps
        db_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
    print("bare pass 2 ...", file=sys.stderr)
    bare_2 = bare_pass(model, batches, layers, a.bare_every)
    bare = (bare_1 + bare_2) / 2
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    sampled = (
        f" (1 batch in {a.bare_every} timed, scaled up by contexts)" if a.bare_every > 1 else ""
    )
    loop = store.finish_started - (store.created_at or t0)  # batches, checkpoints, picking contexts
    ckpt = sum(store.checkpoint_seconds)
    tokens = result.tokens
    rows = [
        ("bare forward (mean of the passes before and after)", bare, 1.0),
        ("harvest end to end (corpus, loop, checkpoints, final write)", total, total / bare),
        ("harvest loop incl. checkpoints", loop, loop / bare),
        ("harvest loop without checkpoints", loop - ckpt, (loop - ckpt) / bare),
        (f"checkpoints ({len(store.checkpoint_seconds)})", ckpt, ckpt / bare),
        ("final write", store.finish_seconds, store.finish_seconds / bare),
    ]
    lines = [
        f"### A real harvest end to end: {model.name}, {len(layers)} layers, {tokens:,} tokens",
        "",
        f"Command: `{command}`",
        "",
        f"{machine_line()}; model on {model.device} in {model.dtype_name}, batches of"
        f" {cfg.batch_size}, per-document cap {cfg.per_document}.",
        "",
        "| part | seconds | / bare forward |",
        "|---|---:|---:|",
        *(f"| {name} | {sec:.1f} | {ratio:.3f}x |" for name, sec, ratio in rows),
        "",
        f"- Bare passes {bare_1:.1f} s and {bare_2:.1f} s{sampled} (before and after the"
        f" harvest; they differ by {abs(bare_1 - bare_2) / bare:.1%}); harvest"
        f" {tokens / total:.0f} tokens/s end to end, the loop {tokens / (loop - ckpt):.0f}"
        f" tokens/s without checkpoints, bare {tokens / bare:.0f} tokens/s.",
        f"- Checkpoints: {', '.join(f'{s:.1f} s' for s in store.checkpoint_seconds) or 'none'};"
        f" database {db_mb:.0f} MB; peak RSS of the process {peak_rss_gb:.1f} GB.",
        "",
    ]
    text = "\n".join(lines)
    emit(text, a.out)


if __name__ == "__main__":
    main()
