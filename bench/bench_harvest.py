#!/usr/bin/env python
"""Benchmark ``autointerp.harvest``: throughput, overhead over a bare forward pass, final-write time, peak memory.

Run from the repository root::

    .venv/bin/python bench/bench_harvest.py                      # gemma-3-270m, defaults printed at the start
    .venv/bin/python bench/bench_harvest.py --quick              # smollm2-135m, tiny sizes: a smoke check
    .venv/bin/python bench/bench_harvest.py --out bench/harvest.md

What it measures, and why it is measured this way:

1. **Overhead ratio** = (harvest time) / (bare forward time) over the same batches of the same model. This machine
   is noisy (shared CPU cores, clocks that drift by tens of percent over minutes), so the two are never measured in
   separate runs or separate phases: every batch is run *bare* and *harvested* back to back in one process, and the
   order alternates from batch to batch (bare first, then harvest first) so neither side systematically gets the
   warmer cache or the quieter moment. The headline ratio is the median of the per-batch ratios, which shrugs off
   a batch that a neighbour's burst slowed down; total times and the ratio of totals are reported beside it.
   "Harvest" is exactly what ``harvest()``'s ``run_batch`` does (hash keys, ``mlp_activations``, then
   ``LayerState.update`` for every layer), on batches built exactly as ``harvest()`` builds them (the real corpus,
   ``iter_contexts``, ``ctx_len`` 64, batch size 16), with fresh states so the top-k fill-up phase is included as in
   a real run. "Bare" is ``model.model(tokens, stop_at_layer=max(layers) + 1)`` under ``inference_mode`` with no
   hooks.
2. **End-to-end time and peak memory** of the real ``harvest()`` (corpus loading, the loop, picking contexts, and
   the final write ``Store.finish_run`` into a temporary SQLite file), at two corpus sizes. Each size runs in a
   fresh subprocess, because ``ru_maxrss`` is a high-water mark that never goes down inside one process. Loading a
   model briefly holds two copies of its weights, which would hide the harvest's own peak, so the child also resets
   the kernel's high-water mark after loading (``/proc/self/clear_refs``) and reports the peak *during* the harvest
   separately from the whole-process peak. The harvest state is fixed-size, so the harvest peak should be flat
   across sizes.
3. Optionally (``--profile``, on by default) a breakdown of ``LayerState.update`` into its parts, timed with
   ``perf_counter`` around each helper (wrapped only inside this process, never edited), to show what dominates when
   the ratio is high.

The result is a Markdown section on stdout (and in ``--out FILE``) that includes the exact command that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import autointerp.harvest as harvest_mod
from autointerp.corpus import Context, iter_contexts, load_documents
from autointerp.harvest import HarvestConfig, LayerState, hash_keys, parse_layers
from autointerp.models import SubjectModel, load_model
from autointerp.store import Store

TARGET_RATIO = 1.15  # from the issue: harvesting may cost at most 15% over the bare forward pass
MB = 1024.0 * 1024.0


# ----------------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Everything one benchmark run depends on; printed at the start so a reader knows what the numbers mean."""

    model: str = "gemma-3-270m"
    layers: str = "all"
    tokens: int = 8192  # for the interleaved ratio: 8 batches of 16 x 64 tokens, about 1.5 minutes on 2 cores
    batch_size: int = 16
    ctx_len: int = 64
    corpus: str = "default"
    seed: int = 0
    mem_tokens: tuple[int, int] = (1024, 4096)
    # Not "all": on gemma-3-270m the final write of 18 layers x 2048 neurons is ~5M example rows per run, minutes
    # each, and the state of 18 layers is ~1.8 GB; 6 layers show flatness just as well. ``--mem-layers all`` works.
    mem_layers: str = "0-5"
    profile: bool = True
    torch_profile: bool = False

    @classmethod
    def quick(cls) -> Settings:
        """Small enough for a smoke check (about a minute): the small model, few layers, few batches."""
        return cls(model="smollm2-135m", layers="0-3", tokens=3072, mem_tokens=(1024, 2048), mem_layers="0-1")


# ----------------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One harvest batch, prepared the way ``harvest()``'s ``run_batch`` prepares it."""

    tokens: torch.Tensor  # int64 [B, ctx_len]
    ids: torch.Tensor  # int64 [B] context ids


def build_batches(model: SubjectModel, s: Settings) -> list[Batch]:
    """Real corpus contexts, cut and batched exactly as ``harvest()`` does (unsharded), ``s.tokens`` worth."""
    docs = load_documents(s.corpus, s.seed)
    max_contexts = s.tokens // s.ctx_len
    contexts: list[Context] = list(
        iter_contexts(docs, model.tokenizer, s.ctx_len, model.bos_id, model.sep_id, max_contexts)
    )
    batches = []
    for start in range(0, len(contexts), s.batch_size):
        chunk = contexts[start:start + s.batch_size]
        batches.append(Batch(torch.from_numpy(np.stack([c.tokens for c in chunk])),
                             torch.tensor([c.context_id for c in chunk], dtype=torch.int64)))
    return batches


def fresh_states(model: SubjectModel, layers: Sequence[int], s: Settings) -> dict[int, LayerState]:
    """States with ``HarvestConfig``'s defaults (top/bottom/random k), as a default ``harvest()`` would allocate."""
    cfg = HarvestConfig(model=model.name)
    bottom = cfg.bottom_k if cfg.bottom_k is not None else (cfg.top_k if model.gated else 0)
    return {layer: LayerState(model.d_mlp, s.ctx_len, cfg.top_k, bottom, cfg.random_k) for layer in layers}


# ----------------------------------------------------------------------------------------------------- timing
def time_bare(model: SubjectModel, layers: Sequence[int], batch: Batch) -> float:
    """One hook-free forward pass that stops where the harvest's does (after the last requested layer)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.model(batch.tokens, stop_at_layer=max(layers) + 1)
    return time.perf_counter() - t0


def time_harvest(model: SubjectModel, layers: Sequence[int], states: dict[int, LayerState], batch: Batch,
                 seed: int) -> tuple[float, float]:
    """One ``run_batch`` of ``harvest()``; returns (hash keys + hooked forward, updates of every layer) seconds."""
    t0 = time.perf_counter()
    hkeys = hash_keys(batch.ids.tolist(), seed)
    acts = model.mlp_activations(batch.tokens, layers)
    t1 = time.perf_counter()
    for layer in layers:
        states[layer].update(acts[layer], batch.ids, hkeys)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


@dataclass
class RatioResult:
    bare: list[float] = field(default_factory=list)  # seconds per batch
    forward: list[float] = field(default_factory=list)  # harvest: hooked forward (+ hash keys) per batch
    update: list[float] = field(default_factory=list)  # harvest: LayerState.update of all layers per batch
    tokens_per_batch: list[int] = field(default_factory=list)

    @property
    def harvest(self) -> list[float]:
        return [f + u for f, u in zip(self.forward, self.update, strict=True)]

    @property
    def ratios(self) -> list[float]:
        return [h / b for h, b in zip(self.harvest, self.bare, strict=True)]

    @property
    def tokens(self) -> int:
        return sum(self.tokens_per_batch)


def measure_ratio(model: SubjectModel, layers: Sequence[int], batches: list[Batch], s: Settings) -> RatioResult:
    """Interleaved bare/harvest timing over ``batches``.

    Warm-up: the first batch once each way on throw-away states (first calls allocate, fault pages in, and pick
    kernels). Then, per batch, bare and harvest back to back, alternating which goes first. The measured states start
    empty, as in a real run, so the top-k fill-up of the first contexts is part of the harvest cost.
    """
    time_bare(model, layers, batches[0])
    time_harvest(model, layers, fresh_states(model, layers, s), batches[0], s.seed)
    gc.collect()
    states = fresh_states(model, layers, s)
    out = RatioResult()
    for i, batch in enumerate(batches):
        if i % 2 == 0:
            bare = time_bare(model, layers, batch)
            fwd, upd = time_harvest(model, layers, states, batch, s.seed)
        else:
            fwd, upd = time_harvest(model, layers, states, batch, s.seed)
            bare = time_bare(model, layers, batch)
        out.bare.append(bare)
        out.forward.append(fwd)
        out.update.append(upd)
        out.tokens_per_batch.append(int(batch.tokens.numel()))
        print(f"  batch {i + 1}/{len(batches)}: bare {bare:.3f}s  harvest {fwd + upd:.3f}s "
              f"(forward {fwd:.3f} + update {upd:.3f})  ratio {(fwd + upd) / bare:.3f}", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------------- profile
class PartTimer:
    """Exclusive wall time per part of ``LayerState.update``, by wrapping the helpers it calls.

    Labels nest (``update/_topk[top]/_replacements``); each label's time excludes its children, so the parts add up
    to the total and ``update`` alone is the inline reductions (count, sum, sum_sq, min/max, n_pos, bincounts).
    """

    def __init__(self) -> None:
        self.exclusive: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [label, start, child seconds]
        self._topk_calls = 0

    def wrap(self, name: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            label = name if isinstance(name, str) else name()
            if label == "update":
                self._topk_calls = 0
            full = "/".join([*(f[0] for f in self._stack[-1:]), label]) if self._stack else label
            frame = [full, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.exclusive[full] += elapsed - frame[2]
                self.calls[full] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed

        return wrapper

    def topk_label(self) -> str:
        """``update`` calls ``_topk`` for the top buffers first, then for the bottom ones."""
        self._topk_calls += 1
        return "_topk[top]" if self._topk_calls == 1 else "_topk[bottom]"

    @contextlib.contextmanager
    def installed(self) -> Iterator[PartTimer]:
        """Wrap the helpers for the duration of the block and restore the originals afterwards."""
        saved_cls = {n: LayerState.__dict__[n] for n in ("update", "_topk", "_quantile", "_random")}
        saved_mod = {n: getattr(harvest_mod, n) for n in ("_replacements", "hist_bins", "rank_keys")}
        try:
            LayerState.update = self.wrap("update", saved_cls["update"])  # type: ignore[method-assign]
            LayerState._topk = staticmethod(self.wrap(self.topk_label, saved_cls["_topk"].__func__))  # type: ignore
            LayerState._quantile = self.wrap("_quantile", saved_cls["_quantile"])  # type: ignore[method-assign]
            LayerState._random = self.wrap("_random", saved_cls["_random"])  # type: ignore[method-assign]
            for n, fn in saved_mod.items():
                setattr(harvest_mod, n, self.wrap(n, fn))
            yield self
        finally:
            for n, fn in saved_cls.items():
                setattr(LayerState, n, fn)
            for n, fn in saved_mod.items():
                setattr(harvest_mod, n, fn)


def profile_update(model: SubjectModel, layers: Sequence[int], batches: list[Batch], s: Settings
                   ) -> tuple[PartTimer, str | None]:
    """A second pass over the same batches with fresh states: only the updates are timed, part by part."""
    states = fresh_states(model, layers, s)
    timer = PartTimer()
    table = None
    for i, batch in enumerate(batches):
        hkeys = hash_keys(batch.ids.tolist(), s.seed)
        acts = model.mlp_activations(batch.tokens, layers)
        if s.torch_profile and i == len(batches) - 1:
            from torch.profiler import profile

            with profile() as prof:
                for layer in layers:
                    states[layer].update(acts[layer], batch.ids, hkeys)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
            continue
        with timer.installed():
            for layer in layers:
                states[layer].update(acts[layer], batch.ids, hkeys)
    return timer, table


# ----------------------------------------------------------------------------------------------------- memory child
class TimedStore(Store):
    """A real :class:`Store` that notes when ``harvest()`` creates its run (the loop starts right after) and how long
    ``finish_run`` (result rows generated and written in one transaction) takes."""

    created_at: float | None = None
    finish_seconds: float = 0.0

    def create_run(self, *args: Any, **kwargs: Any) -> int:
        run_id = super().create_run(*args, **kwargs)
        self.created_at = time.perf_counter()
        return run_id

    def finish_run(self, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        super().finish_run(*args, **kwargs)
        self.finish_seconds = time.perf_counter() - t0


def _vm_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0), so ``ru_maxrss`` covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_child(argv: Sequence[str]) -> None:
    """Subcommand ``memory-child``: one real ``harvest()`` in this fresh process; prints one JSON line."""
    p = argparse.ArgumentParser(prog="bench_harvest.py memory-child")
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--layers", default="all")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ctx-len", type=int, default=64)
    p.add_argument("--corpus", default="default")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    model = load_model(a.model, progress=False)
    gc.collect()
    load_s = time.perf_counter() - t_start
    maxrss_load_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_after_load_kb = _vm_kb("VmRSS")
    reset = _reset_peak_rss()
    marks: dict[str, float] = {}

    def log(message: str) -> None:
        if message.startswith("Writing results"):
            marks["write"] = time.perf_counter()

    cfg = HarvestConfig(model=model.name, corpus=a.corpus, layers=parse_layers(a.layers, model.n_layers),
                        ctx_len=a.ctx_len, n_tokens=a.tokens, batch_size=a.batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-harvest-") as tmp:
        db_path = Path(tmp) / "bench.db"
        store = TimedStore(db_path)
        t0 = time.perf_counter()
        result = harvest_mod.harvest(model, store, cfg, progress=False, log=log)
        total = time.perf_counter() - t0
        maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = store.db.execute("select count(*) from examples").fetchone()[0]
        store.db.conn.close()
        db_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
    loop_start = store.created_at or t0
    write_mark = marks.get("write", loop_start)
    print(json.dumps({
        "model": model.name, "layers": a.layers, "n_layers": len(cfg.layers or range(model.n_layers)),
        "tokens": result.tokens, "contexts": result.contexts, "load_s": load_s, "total_s": total,
        "setup_s": loop_start - t0, "loop_s": write_mark - loop_start, "finish_run_s": store.finish_seconds,
        "example_rows": rows, "db_mb": db_bytes / MB, "hwm_reset": reset,
        "maxrss_load_mb": maxrss_load_kb / 1024, "rss_after_load_mb": (rss_after_load_kb or 0) / 1024,
        "maxrss_harvest_mb": maxrss_kb / 1024 if reset else None,
        "maxrss_process_mb": max(maxrss_kb, maxrss_load_kb) / 1024,
    }))


def run_memory_child(s: Settings, tokens: int) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter so its ``ru_maxrss`` is its own."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "memory-child", "--model", s.model, "--tokens",
           str(tokens), "--layers", s.mem_layers, "--batch-size", str(s.batch_size), "--ctx-len", str(s.ctx_len),
           "--corpus", s.corpus]
    print(f"  memory run at {tokens} tokens, layers {s.mem_layers} (fresh process) ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- report
def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def state_mb(model: SubjectModel, layers: Sequence[int], s: Settings) -> float:
    """Bytes of harvest state for ``layers`` (what should dominate the harvest's own memory)."""
    one = fresh_states(model, layers[:1], s)[layers[0]]
    return sum(t.numel() * t.element_size() for t in one.t.values()) * len(layers) / MB


def report(s: Settings, command: str, model: SubjectModel, layers: Sequence[int], r: RatioResult,
           mem: list[dict[str, Any]], timer: PartTimer | None, torch_table: str | None) -> str:
    """The Markdown section: the headline table first, then the details a reviewer needs to trust it."""
    harvest_total, bare_total = sum(r.harvest), sum(r.bare)
    median_ratio = statistics.median(r.ratios)
    tok = r.tokens
    layer_text = s.layers if s.layers != "all" else f"all ({len(layers)})"
    mem_a = mem[0]["maxrss_harvest_mb"] or mem[0]["maxrss_process_mb"] if mem else None
    mem_b = mem[1]["maxrss_harvest_mb"] or mem[1]["maxrss_process_mb"] if len(mem) > 1 else None
    verdict = "meets" if median_ratio <= TARGET_RATIO else "misses"
    lines = [
        f"### Harvest benchmark: {model.name}",
        "",
        f"Command: `{command}`",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python {platform.python_version()}.",
        "",
        "| model | layers | tokens | batch | harvest tok/s | bare tok/s | ratio (median) "
        f"| peak RSS @ {s.mem_tokens[0]} tok | peak RSS @ {s.mem_tokens[1]} tok |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {model.name} | {layer_text} | {tok} | {s.batch_size}x{s.ctx_len} | {tok / harvest_total:,.0f} "
        f"| {tok / bare_total:,.0f} | {median_ratio:.3f}x | {_mb(mem_a)} | {_mb(mem_b)} |",
        "",
        f"- Ratio target <= {TARGET_RATIO}x: **{verdict}** it (median of {len(r.ratios)} per-batch ratios, bare and "
        "harvest interleaved in one process, order alternating).",
        f"- Totals over {tok} tokens: harvest {harvest_total:.2f}s (hooked forward {sum(r.forward):.2f}s + "
        f"`LayerState.update` {sum(r.update):.2f}s), bare {bare_total:.2f}s; ratio of totals "
        f"{harvest_total / bare_total:.3f}x; hooked forward alone / bare (median) "
        f"{statistics.median(f / b for f, b in zip(r.forward, r.bare, strict=True)):.3f}x.",
        f"- Per-batch ratios: {', '.join(f'{x:.2f}' for x in r.ratios)}.",
    ]
    if mem:
        lines += [
            "",
            f"End-to-end `harvest()` into a temporary SQLite file, layers {s.mem_layers}, each in a fresh process "
            f"(state of these layers: {state_mb(model, parse_layers(s.mem_layers, model.n_layers) or layers, s):,.0f}"
            " MB):",
            "",
            "| tokens | total s | setup s | loop s | finish_run s | end-to-end tok/s | loop tok/s | example rows "
            "| db | peak RSS during harvest | peak RSS of process | RSS after model load |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in mem:
            lines.append(
                f"| {m['tokens']} | {m['total_s']:.1f} | {m['setup_s']:.1f} | {m['loop_s']:.1f} "
                f"| {m['finish_run_s']:.1f} | {m['tokens'] / m['total_s']:,.0f} "
                f"| {m['tokens'] / max(m['loop_s'], 1e-9):,.0f} | {m['example_rows']:,} | {m['db_mb']:,.0f} MB "
                f"| {_mb(m['maxrss_harvest_mb'])} | {_mb(m['maxrss_process_mb'])} | {_mb(m['rss_after_load_mb'])} |"
            )
        if len(mem) > 1 and mem[0]["maxrss_harvest_mb"] and mem[1]["maxrss_harvest_mb"]:
            grow = mem[1]["maxrss_harvest_mb"] - mem[0]["maxrss_harvest_mb"]
            lines += ["", f"- Harvest peak grows by {grow:+,.0f} MB ({grow / mem[0]['maxrss_harvest_mb']:+.1%}) "
                          f"from {mem[0]['tokens']} to {mem[1]['tokens']} tokens (flat is the goal)."]
        lines += ["- setup = corpus load and fingerprint; loop = state allocation, batches, and picking the needed "
                  "contexts; finish_run = result rows generated and written in one transaction. The process peak "
                  "includes model loading, which briefly holds two copies of the weights."]
    if timer is not None and timer.exclusive:
        total = sum(timer.exclusive.values())
        lines += ["", f"`LayerState.update` breakdown (second pass over the same {tok} tokens, fresh states, "
                      "exclusive wall time; `update` alone = its inline reductions):", "",
                  "| part | seconds | share | calls |", "|---|---:|---:|---:|"]
        for label, sec in sorted(timer.exclusive.items(), key=lambda kv: -kv[1]):
            lines.append(f"| `{label}` | {sec:.2f} | {sec / total:.0%} | {timer.calls[label]} |")
        lines.append(f"| total | {total:.2f} | 100% | |")
    if torch_table:
        lines += ["", "torch.profiler, updates of the last batch (self CPU time):", "", "```", torch_table, "```"]
    return "\n".join(lines) + "\n"


def command_line() -> str:
    """The command as typed from the repository root (relative paths where possible)."""
    def rel(path: str) -> str:
        try:
            return os.path.relpath(path)
        except ValueError:
            return path

    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *sys.argv[1:]])


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str]) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smollm2-135m and tiny sizes (smoke check)")
    p.add_argument("--model", help="model name (default gemma-3-270m; smollm2-135m with --quick)")
    p.add_argument("--layers", help="layers for the ratio: all, 0-5, 0,3,5 (default all)")
    p.add_argument("--tokens", type=int, help="tokens for the interleaved ratio measurement (default 8192)")
    p.add_argument("--batch-size", type=int, help="contexts per batch (default 16, as harvest)")
    p.add_argument("--ctx-len", type=int, help="tokens per context (default 64, as harvest)")
    p.add_argument("--mem-tokens", help="the two corpus sizes of the memory runs, A,B (default 1024,4096)")
    p.add_argument("--mem-layers", help="layers for the end-to-end/memory runs (default 0-5; 'all' is slow)")
    p.add_argument("--no-memory", action="store_true", help="skip the end-to-end/memory subprocess runs")
    p.add_argument("--no-profile", action="store_true", help="skip the LayerState.update breakdown")
    p.add_argument("--torch-profile", action="store_true", help="also print a torch.profiler op table")
    p.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    a = p.parse_args(argv)
    s = Settings.quick() if a.quick else Settings()
    for name in ("model", "layers", "tokens", "batch_size", "ctx_len", "mem_layers"):
        if getattr(a, name) is not None:
            setattr(s, name, getattr(a, name))
    if a.mem_tokens:
        sizes = tuple(int(x) for x in a.mem_tokens.split(","))
        if len(sizes) != 2:
            p.error("--mem-tokens takes two sizes, e.g. 1024,4096")
        s.mem_tokens = sizes  # type: ignore[assignment]
    s.profile = not a.no_profile
    s.torch_profile = a.torch_profile
    if s.tokens < s.batch_size * s.ctx_len:
        p.error(f"--tokens must cover at least one batch ({s.batch_size * s.ctx_len})")
    return s, a


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["memory-child"]:
        memory_child(argv[1:])
        return
    s, a = parse_args(argv)
    command = command_line()
    print(f"settings: {json.dumps(asdict(s))}", file=sys.stderr)
    t_start = time.perf_counter()
    model = load_model(s.model, progress=False)
    layers = parse_layers(s.layers, model.n_layers) or list(range(model.n_layers))
    model.check_layers(layers)
    batches = build_batches(model, s)
    print(f"{model.name}: {len(layers)} layers, {len(batches)} batches of {s.batch_size}x{s.ctx_len} tokens; "
          "interleaved bare/harvest ...", file=sys.stderr)
    ratio = measure_ratio(model, layers, batches, s)
    timer, table = None, None
    if s.profile:
        print("  profiling LayerState.update ...", file=sys.stderr)
        timer, table = profile_update(model, layers, batches, s)
    mem = [] if a.no_memory else [run_memory_child(s, n) for n in s.mem_tokens]
    text = report(s, command, model, layers, ratio, mem, timer, table)
    print(f"(bench took {time.perf_counter() - t_start:.0f}s)", file=sys.stderr)
    sys.stdout.write(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
