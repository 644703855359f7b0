#!/usr/bin/env python
"""Benchmark ``autointerp.harvest``: throughput, overhead over a bare forward pass, final-write
time, peak memory.

Run from the repository root::

    .venv/bin/python bench/bench_harvest.py               # gemma-3-270m, defaults printed first
    .venv/bin/python bench/bench_harvest.py --quick       # smollm2-135m, tiny sizes: a smoke check
    .venv/bin/python bench/bench_harvest.py --out bench/harvest.md
    .venv/bin/python bench/bench_harvest.py --per-document 0,2   # two harvests, interleaved
    python3 bench/bench_harvest.py --device cuda --batch-size 256 --layers 3,9,15 --no-memory

What it measures, and why it is measured this way:

1. **Overhead ratio** = (harvest time) / (bare forward time) over the same batches of the same
   model. This machine is noisy (two CPU cores shared with other jobs that come and go; wall times
   of the same batch swing by up to 10x within minutes), so the two are never measured in separate
   runs or separate phases: every batch is run *bare* and *harvested* back to back in one process,
   and the order alternates from batch to batch (bare first, then harvest first) so neither side
   systematically gets the warmer cache or the quieter moment. The headline ratio is the median of
   the per-batch ratios, which shrugs off a batch that a neighbour's burst slowed down; total times
   and the ratio of totals are reported beside it. "Harvest" is exactly what ``harvest()``'s
   ``_fold_batch`` does (hash keys, then ``each_mlp_activation`` folding every layer into its
   ``LayerState`` during the forward pass), on batches built exactly as ``harvest()`` builds them
   (the real corpus, ``iter_contexts``, ``ctx_len`` 64, batch size 16), with fresh states so the
   top-k fill-up phase is included as in a real run (``--prefill-tokens`` measures past that phase
   instead). "Bare" is ``model.model(tokens, stop_at_layer=max(layers) + 1)`` under
   ``inference_mode`` with no hooks. ``--rounds`` repeats the same batches on fresh copies of the
   states, for more pairs. ``--per-document 0,2`` harvests every batch once per cap (each with
   its own states), interleaved with the same bare pass, so the cap's cost is a ratio within one
   run; ``--device cuda`` runs the model and the statistics there (each timing ends with a
   ``torch.cuda.synchronize``). Two further estimates sit beside the median: the quietest-pair ratio
   (per batch, the round whose bare + harvest took least time, since contention only ever adds
   time) and the CPU-time ratio (``process_time``, less sensitive to being preempted by other
   processes).
2. **End-to-end time and peak memory** of the real ``harvest()`` (corpus loading, the loop, picking
   contexts, and the final write ``Store.finish_run`` into a temporary SQLite file), at two corpus
   sizes. Each size runs in a fresh subprocess, because ``ru_maxrss`` is a high-water mark that
   never goes down inside one process. Two traps are avoided: (a) at ``exec`` Linux folds the
   *spawning* process's high-water mark into the child's ``ru_maxrss``, so the children are spawned
   before this process loads its own model (otherwise every child reports the parent's peak,
   identical at both sizes - it happened); (b) loading a model briefly holds two copies of its
   weights, which hides the harvest's own peak, so the child resets its high-water mark after
   loading (``/proc/self/clear_refs``) and reports ``VmHWM`` *during* the harvest beside the
   whole-process ``ru_maxrss``. The harvest state is fixed-size, so the harvest peak should be flat
   across corpus sizes.
3. A breakdown (``--no-profile`` skips it) of ``LayerState.update`` into its parts, timed with
   ``perf_counter`` around each helper (wrapped only inside this process, never edited), to show
   what dominates when the ratio is high.

The result is a Markdown section on stdout (and in ``--out FILE``) that includes the exact command
that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
import autointerp.harvest.state as state_mod
from autointerp.corpus import Context, iter_contexts, load_documents
from autointerp.harvest import HarvestConfig, LayerState, hash_keys
from autointerp.harvest.documents import token_documents
from autointerp.models import SubjectModel, load_model
from autointerp.ranges import parse_layers
from autointerp.store import Store

TARGET_RATIO = 1.10  # harvesting may cost at most 10% over the bare forward pass (was 15% at first)
MB = 1024.0 * 1024.0


# --------------------------------------------------------------------------------------------------
# settings
@dataclass
class Settings:
    """Everything one benchmark run depends on; printed at the start so a reader knows what the
    numbers mean."""

    model: str = "gemma-3-270m"
    layers: str = "all"
    tokens: int = 4096  # for the interleaved ratio: 4 batches of 16 x 64 tokens per round
    # every round re-runs the same batches on fresh copies of the states: 12 bare/harvest pairs
    rounds: int = 3
    prefill_tokens: int = (
        0  # fed (untimed) to the states first, to measure past the top-k fill-up phase
    )
    batch_size: int = 16
    ctx_len: int = 64
    corpus: str = "default"
    seed: int = 0
    mem_tokens: tuple[int, int] = (1024, 4096)
    # Not "all": on gemma-3-270m the final write of 18 layers x 2048 neurons is ~5M example rows per
    # run, minutes each, and the state of 18 layers is ~1.8 GB; 6 layers show flatness just as well.
    # ``--mem-layers all`` works.
    mem_layers: str = "0-5"
    profile: bool = True
    torch_profile: bool = False
    # One harvest per cap, interleaved with the same bare passes (the first is the headline);
    # None: HarvestConfig's default.
    per_document: tuple[int, ...] | None = None
    device: str = "cpu"

    @classmethod
    def quick(cls) -> Settings:
        """Small enough for a smoke check (about a minute): the small model, few layers, few
        batches."""
        return cls(
            model="smollm2-135m",
            layers="0-3",
            tokens=2048,
            rounds=2,
            mem_tokens=(1024, 2048),
            mem_layers="0-1",
        )


# --------------------------------------------------------------------------------------------------
# batches
@dataclass
class Batch:
    """One harvest batch, prepared the way ``harvest()`` prepares it (``_fold_batch``)."""

    tokens: torch.Tensor  # int64 [B, ctx_len]
    ids: torch.Tensor  # int64 [B] context ids
    docs: torch.Tensor  # int64 [B, ctx_len] each token's document (token_documents)


def build_batches(model: SubjectModel, s: Settings) -> tuple[list[Batch], list[Batch]]:
    """Real corpus contexts, cut and batched exactly as ``harvest()`` does (unsharded): the first
    ``s.prefill_tokens`` worth (to prefill the states, untimed) and the next ``s.tokens`` worth
    (timed).
    """
    docs = load_documents(s.corpus, s.seed)
    n_prefill = s.prefill_tokens // s.ctx_len
    max_contexts = n_prefill + s.tokens // s.ctx_len
    contexts: list[Context] = list(
        iter_contexts(docs, model.tokenizer, s.ctx_len, model.bos_id, model.sep_id, max_contexts)
    )

    def batched(part: list[Context]) -> list[Batch]:
        return [
            Batch(
                torch.from_numpy(np.stack([c.tokens for c in part[i : i + s.batch_size]])),
                torch.tensor([c.context_id for c in part[i : i + s.batch_size]], dtype=torch.int64),
                torch.from_numpy(
                    token_documents(np.stack([c.doc_index for c in part[i : i + s.batch_size]]))
                ),
            )
            for i in range(0, len(part), s.batch_size)
        ]

    return batched(contexts[:n_prefill]), batched(contexts[n_prefill:])


def fresh_states(
    model: SubjectModel, layers: Sequence[int], s: Settings, per_document: int | None = None
) -> dict[int, LayerState]:
    """The states a default ``harvest()`` would allocate: ``HarvestConfig``'s defaults resolved by
    harvest's own ``resolve_config`` (bottom_k from the MLP's gating), and every other setting it
    passes (``hist_sample``, the per-document cap: ``per_document`` if given, where the statistics
    are computed)."""
    cap = {} if per_document is None else {"per_document": per_document}
    cfg = harvest_mod.resolve_config(
        HarvestConfig(model=model.name, layers=list(layers), ctx_len=s.ctx_len, **cap), model
    )
    device = harvest_mod.stats_device(cfg, model)
    return {
        layer: LayerState(
            model.d_mlp,
            cfg.ctx_len,
            cfg.top_k,
            cfg.bottom_k or 0,
            cfg.random_k,
            cfg.hist_sample,
            cfg.per_document,
            device,
        )
        for layer in layers
    }


def _sync(model: SubjectModel) -> None:
    """Wait for the device's queued work, so a timing covers it (a no-op on the CPU)."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


# --------------------------------------------------------------------------------------------------
# timing
def time_bare(model: SubjectModel, layers: Sequence[int], batch: Batch) -> float:
    """One hook-free forward pass that stops where the harvest's does (after the last requested
    layer)."""
    _sync(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.model(batch.tokens.to(model.device), stop_at_layer=max(layers) + 1)
    _sync(model)
    return time.perf_counter() - t0


def time_harvest(
    model: SubjectModel,
    layers: Sequence[int],
    states: dict[int, LayerState],
    batch: Batch,
    seed: int,
) -> tuple[float, float]:
    """One ``_fold_batch`` of ``harvest()`` (each layer folded in during the forward pass); returns
    (hash keys + hooked forward, updates of every layer) seconds. On CUDA the update's share is
    what it keeps the host waiting (its synchronising steps), not the device's time."""
    _sync(model)
    t0 = time.perf_counter()
    first = next(iter(states.values()))
    device = first.device
    hkeys = hash_keys(batch.ids.tolist(), seed).to(device)
    ids = batch.ids.to(device)
    docs = batch.docs.to(device) if first.per_document else None
    spent = 0.0

    def fold(layer: int, acts: torch.Tensor) -> None:
        nonlocal spent
        u = time.perf_counter()
        states[layer].update(acts, ids, hkeys, docs)
        spent += time.perf_counter() - u

    where = {} if device.type == "cpu" else {"device": device}
    model.each_mlp_activation(batch.tokens, layers, fold, **where)
    _sync(model)
    return time.perf_counter() - t0 - spent, spent


@dataclass
class Pair:
    """One batch measured both ways, back to back."""

    round: int
    batch: int
    tokens: int
    bare: float
    forward: float  # harvest: hash keys + hooked forward
    update: float  # harvest: LayerState.update of every layer
    bare_cpu: float  # CPU seconds of this process (all threads) for the bare pass ...
    harvest_cpu: (
        float  # ... and for the harvest pass: a second estimate, less sensitive to being preempted
    )

    @property
    def harvest(self) -> float:
        return self.forward + self.update

    @property
    def ratio(self) -> float:
        return self.harvest / self.bare


@dataclass
class RatioResult:
    pairs: list[Pair] = field(default_factory=list)
    rounds: int = 1

    @property
    def tokens(self) -> int:
        """Tokens of one round (every round runs the same batches)."""
        return sum(p.tokens for p in self.pairs if p.round == 0)

    def total(self, what: str) -> float:
        """Seconds per round (mean over rounds) of ``bare``, ``forward``, ``update`` or
        ``harvest``."""
        return sum(getattr(p, what) for p in self.pairs) / self.rounds

    @property
    def median_ratio(self) -> float:
        return statistics.median(p.ratio for p in self.pairs)

    @property
    def cpu_ratio(self) -> float:
        """Median over pairs of harvest CPU time / bare CPU time."""
        return statistics.median(p.harvest_cpu / p.bare_cpu for p in self.pairs)

    @property
    def quietest_ratio(self) -> float:
        """For each batch the round whose pair took least time in all (contention only ever adds
        time, so that is the quietest moment), then sum of those harvests / sum of those bares.
        Pairs stay pairs:
        taking the two minima from different rounds would compare a quiet bare with a busy harvest.
        """
        best: dict[int, Pair] = {}
        for p in self.pairs:
            if (
                p.batch not in best
                or p.harvest + p.bare < best[p.batch].harvest + best[p.batch].bare
            ):
                best[p.batch] = p
        return sum(p.harvest for p in best.values()) / sum(p.bare for p in best.values())


def measure_ratio(
    model: SubjectModel,
    layers: Sequence[int],
    prefill: list[Batch],
    batches: list[Batch],
    s: Settings,
) -> list[RatioResult]:
    """Interleaved bare/harvest timing over ``batches``, ``s.rounds`` times: one result per cap of
    ``s.per_document`` (each harvest with its own states, all against the same bare passes).

    The states are prefilled (untimed) with ``prefill`` and copied fresh for every round, so each
    round does the same work; with no prefill they start empty, as in a real run, and the top-k
    fill-up of the first contexts is part of the harvest cost. Warm-up: the first batch once each
    way on throw-away states (first calls allocate, fault pages in, and pick kernels). Then, per
    batch, the bare pass and each harvest back to back, the order rotating from batch to batch (and
    starting elsewhere in each round), so no side systematically runs first.
    """
    caps = s.per_document or (None,)
    bases = []
    for cap in caps:
        base = fresh_states(model, layers, s, cap)
        for batch in prefill:
            time_harvest(model, layers, base, batch, s.seed)
        time_harvest(model, layers, copy.deepcopy(base), batches[0], s.seed)
        bases.append(base)
    time_bare(model, layers, batches[0])
    out = [RatioResult(rounds=s.rounds) for _ in caps]
    for r in range(s.rounds):
        states = [copy.deepcopy(base) for base in bases]
        gc.collect()
        for i, batch in enumerate(batches):
            steps = [-1, *range(len(caps))]  # -1: the bare pass
            shift = (i + r) % len(steps)
            bare = bare_cpu = 0.0
            timed: dict[int, tuple[float, float, float]] = {}
            for step in steps[shift:] + steps[:shift]:
                c0 = time.process_time()
                if step < 0:
                    bare = time_bare(model, layers, batch)
                    bare_cpu = time.process_time() - c0
                else:
                    fwd, upd = time_harvest(model, layers, states[step], batch, s.seed)
                    timed[step] = (fwd, upd, time.process_time() - c0)
            for v, (fwd, upd, cpu) in sorted(timed.items()):
                pair = Pair(r, i, int(batch.tokens.numel()), bare, fwd, upd, bare_cpu, cpu)
                out[v].pairs.append(pair)
            print(
                f"  round {r + 1}/{s.rounds} batch {i + 1}/{len(batches)}: bare {bare:.3f}s "
                + "  ".join(
                    f" harvest{'' if caps[v] is None else f' C={caps[v]}'} {p[0] + p[1]:.3f}s"
                    f" (forward {p[0]:.3f} + update {p[1]:.3f}) ratio {(p[0] + p[1]) / bare:.3f}"
                    for v, p in sorted(timed.items())
                ),
                file=sys.stderr,
            )
    return out


# --------------------------------------------------------------------------------------------------
# profile
class PartTimer:
    """Exclusive wall time per part of ``LayerState.update``, by wrapping the helpers it calls.

    Labels nest (``update/_topk[top]/replacements``); each label's time excludes its children, so
    the parts add up to the total and ``update`` alone is the inline reductions (count, sum, sum_sq,
    min/max, n_pos, bincounts).
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
        names = ("update", "_topk", "_capped", "_quantile", "_random")
        saved_cls = {n: LayerState.__dict__[n] for n in names}
        saved_mod = {
            n: getattr(state_mod, n)
            for n in ("replacements", "hist_bins", "rank_keys", "capped_keep")
        }
        try:
            LayerState.update = self.wrap("update", saved_cls["update"])  # type: ignore[method-assign]
            LayerState._topk = self.wrap(self.topk_label, saved_cls["_topk"])  # type: ignore[method-assign]
            LayerState._quantile = self.wrap("_quantile", saved_cls["_quantile"])  # type: ignore[method-assign]
            LayerState._random = self.wrap("_random", saved_cls["_random"])  # type: ignore[method-assign]
            LayerState._capped = self.wrap("_capped", saved_cls["_capped"])  # type: ignore[method-assign]
            for n, fn in saved_mod.items():
                setattr(state_mod, n, self.wrap(n, fn))
            yield self
        finally:
            for n, fn in saved_cls.items():
                setattr(LayerState, n, fn)
            for n, fn in saved_mod.items():
                setattr(state_mod, n, fn)


def profile_update(
    model: SubjectModel,
    layers: Sequence[int],
    prefill: list[Batch],
    batches: list[Batch],
    s: Settings,
) -> tuple[PartTimer, str | None]:
    """One more pass over the same batches (states prefilled the same way, with the first cap of
    ``s.per_document``): only the updates are timed, by part."""
    states = fresh_states(model, layers, s, (s.per_document or (None,))[0])
    for batch in prefill:
        time_harvest(model, layers, states, batch, s.seed)
    timer = PartTimer()
    table = None
    for i, batch in enumerate(batches):
        if s.torch_profile and i == len(batches) - 1:
            from torch.profiler import profile

            # After the pass, so the table holds the updates' operators only (their inputs are no
            # longer in the cache, so each operator takes somewhat longer than during the pass).
            hkeys = hash_keys(batch.ids.tolist(), s.seed)
            acts = model.mlp_activations(batch.tokens, layers)
            # under inference_mode as in the pass: its tensors cannot be updated in place outside
            with profile() as prof, torch.inference_mode():
                for layer in layers:
                    states[layer].update(acts[layer], batch.ids, hkeys, batch.docs)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
            continue
        with timer.installed():
            time_harvest(model, layers, states, batch, s.seed)
    return timer, table


# --------------------------------------------------------------------------------------------------
# memory child
class TimedStore(Store):
    """A real :class:`Store` that notes when ``harvest()`` creates its run (the loop starts right
    after) and how long ``finish_run`` (result rows generated and written in one transaction) takes.
    """

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
    """Reset the kernel's RSS high-water mark (Linux >= 4.0), so ``ru_maxrss`` covers only what
    follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_child(argv: Sequence[str]) -> None:
    """Subcommand ``memory-child``: one real ``harvest()`` in this fresh process; prints one JSON
    line."""
    p = argparse.ArgumentParser(prog="bench_harvest.py memory-child")
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--layers", default="all")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ctx-len", type=int, default=64)
    p.add_argument("--corpus", default="default")
    a = p.parse_args(argv)
    inherited_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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

    cfg = HarvestConfig(
        model=model.name,
        corpus=a.corpus,
        layers=parse_layers(a.layers),
        ctx_len=a.ctx_len,
        n_tokens=a.tokens,
        batch_size=a.batch_size,
    )
    with tempfile.TemporaryDirectory(prefix="bench-harvest-") as tmp:
        db_path = Path(tmp) / "bench.db"
        store = TimedStore(db_path)
        t0 = time.perf_counter()
        result = harvest_mod.harvest(model, store, cfg, progress=False, log=log)
        total = time.perf_counter() - t0
        maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm_kb = _vm_kb("VmHWM")
        rows = store.db.execute("select count(*) from examples").fetchone()[0]
        store.db.conn.close()
        db_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
    loop_start = store.created_at or t0
    write_mark = marks.get("write", loop_start)
    print(
        json.dumps(
            {
                "model": model.name,
                "layers": a.layers,
                "n_layers": len(cfg.layers or range(model.n_layers)),
                "tokens": result.tokens,
                "contexts": result.contexts,
                "load_s": load_s,
                "total_s": total,
                "setup_s": loop_start - t0,
                "loop_s": write_mark - loop_start,
                "finish_run_s": store.finish_seconds,
                "example_rows": rows,
                "db_mb": db_bytes / MB,
                "hwm_reset": reset,
                "maxrss_at_start_mb": inherited_kb / 1024,
                "maxrss_load_mb": maxrss_load_kb / 1024,
                "rss_after_load_mb": (rss_after_load_kb or 0) / 1024,
                "peak_harvest_mb": hwm_kb / 1024 if reset and hwm_kb else None,
                "maxrss_process_mb": max(maxrss_kb, maxrss_load_kb) / 1024,
            }
        )
    )


def run_memory_child(s: Settings, tokens: int) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter so its ``ru_maxrss`` is its own."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "memory-child",
        "--model",
        s.model,
        "--tokens",
        str(tokens),
        "--layers",
        s.mem_layers,
        "--batch-size",
        str(s.batch_size),
        "--ctx-len",
        str(s.ctx_len),
        "--corpus",
        s.corpus,
    ]
    print(
        f"  memory run at {tokens} tokens, layers {s.mem_layers} (fresh process) ...",
        file=sys.stderr,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# report
def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def _rss_cell(mem: list[dict[str, Any]], i: int) -> str:
    if len(mem) <= i:
        return "skipped"
    return f"{_mb(mem[i]['peak_harvest_mb'])} / {_mb(mem[i]['maxrss_process_mb'])}"


def state_mb(model: SubjectModel, layers: Sequence[int], s: Settings) -> float:
    """Bytes of harvest state for ``layers`` (what should dominate the harvest's own memory)."""
    one = fresh_states(model, layers[:1], s)[layers[0]]
    return sum(t.numel() * t.element_size() for t in one.t.values()) * len(layers) / MB


def report(
    s: Settings,
    command: str,
    model: SubjectModel,
    layers: Sequence[int],
    results: list[RatioResult],
    mem: list[dict[str, Any]],
    timer: PartTimer | None,
    torch_table: str | None,
) -> str:
    """The Markdown section: the headline table first (the first cap of ``--per-document``), then
    each cap against the same bare passes, then the details a reviewer needs to trust it."""
    r = results[0]
    harvest_total, bare_total = r.total("harvest"), r.total("bare")
    median_ratio = r.median_ratio
    start_state = (
        f"prefilled with {s.prefill_tokens} tokens"
        if s.prefill_tokens
        else "empty at the start, as in a real run"
    )
    tok = r.tokens
    layer_text = s.layers if s.layers != "all" else f"all ({len(layers)})"
    verdict = "meets" if median_ratio <= TARGET_RATIO else "misses"
    lines = [
        f"### Harvest benchmark: {model.name}",
        "",
        f"Command: `{command}`",
        "",
        f"{machine_line()}; model and statistics on {model.device}.",
        "",
        (
            "| model | layers | tokens | batch | harvest tok/s | bare tok/s | ratio (median) "
            f"| peak RSS @ {s.mem_tokens[0]} tok | peak RSS @ {s.mem_tokens[1]} tok |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        (
            f"| {model.name} | {layer_text} | {tok} | {s.batch_size}x{s.ctx_len} |"
            f" {tok / harvest_total:,.0f} | {tok / bare_total:,.0f} | {median_ratio:.3f}x |"
            f" {_rss_cell(mem, 0)} | {_rss_cell(mem, 1)} |"
        ),
        "",
        (
            "Peak RSS cells are *during harvest / whole process* (`ru_maxrss`), layers"
            f" {s.mem_layers}, each size a full `harvest()` in a fresh process."
        ),
        "",
        (
            f"- Ratio target <= {TARGET_RATIO}x: **{verdict}** it (median of {len(r.pairs)}"
            f" per-batch ratios: {r.rounds} round(s) x {len(r.pairs) // r.rounds} batches, bare and"
            f" harvest back to back in one process, order alternating; states {start_state})."
        ),
        (
            f"- Per round of {tok} tokens (mean over rounds): harvest {harvest_total:.2f}s (hooked"
            f" forward {r.total('forward'):.2f}s + `LayerState.update` {r.total('update'):.2f}s),"
            f" bare {bare_total:.2f}s. Ratio of totals {harvest_total / bare_total:.3f}x;"
            f" quietest-pair ratio {r.quietest_ratio:.3f}x; CPU-time ratio (median)"
            f" {r.cpu_ratio:.3f}x; hooked forward alone / bare (median)"
            f" {statistics.median(p.forward / p.bare for p in r.pairs):.3f}x; update / bare"
            f" (median) {statistics.median(p.update / p.bare for p in r.pairs):.3f}x."
        ),
        "- Per-batch ratios by round: "
        + "; ".join(
            ", ".join(f"{p.ratio:.2f}" for p in r.pairs if p.round == k) for k in range(r.rounds)
        )
        + f". Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (the"
        " machine is shared).",
    ]
    if len(results) > 1:
        lines += _caps_table(s, results)
    if mem:
        lines += [
            "",
            (
                f"End-to-end `harvest()` into a temporary SQLite file, layers {s.mem_layers}, each"
                " in a fresh process (state of these layers:"
                f" {state_mb(model, parse_layers(s.mem_layers) or layers, s):,.0f} MB):"
            ),
            "",
            (
                "| tokens | total s | setup s | loop s | finish_run s | end-to-end tok/s | loop"
                " tok/s | example rows | db | peak RSS during harvest | peak RSS of process | RSS"
                " after model load | ru_maxrss at start |"
            ),
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in mem:
            lines.append(
                f"| {m['tokens']} | {m['total_s']:.1f} | {m['setup_s']:.1f} | {m['loop_s']:.1f} |"
                f" {m['finish_run_s']:.1f} | {m['tokens'] / m['total_s']:,.0f} |"
                f" {m['tokens'] / max(m['loop_s'], 1e-9):,.0f} | {m['example_rows']:,} |"
                f" {m['db_mb']:,.0f} MB | {_mb(m['peak_harvest_mb'])} |"
                f" {_mb(m['maxrss_process_mb'])} | {_mb(m['rss_after_load_mb'])} |"
                f" {_mb(m['maxrss_at_start_mb'])} |"
            )
        if len(mem) > 1 and mem[0]["peak_harvest_mb"] and mem[1]["peak_harvest_mb"]:
            grow = mem[1]["peak_harvest_mb"] - mem[0]["peak_harvest_mb"]
            lines += [
                "",
                (
                    f"- Harvest peak grows by {grow:+,.0f} MB"
                    f" ({grow / mem[0]['peak_harvest_mb']:+.1%}) from {mem[0]['tokens']} to"
                    f" {mem[1]['tokens']} tokens (flat is the goal)."
                ),
            ]
        lines += [
            "- setup = corpus load and fingerprint; loop = state allocation, batches, and picking"
            " the needed contexts; finish_run = result rows generated and written in one"
            " transaction. The process peak includes model loading, which briefly holds two copies"
            " of the weights."
        ]
    if timer is not None and timer.exclusive:
        total = sum(timer.exclusive.values())
        profiled = f"{tok - s.batch_size * s.ctx_len} of the" if s.torch_profile else "the same"
        lines += [
            "",
            (
                f"`LayerState.update` breakdown (one more pass over {profiled} {tok} tokens, states"
                f" {start_state}; exclusive wall time, so the parts add up; `update` alone = its"
                " inline reductions: count, sum, sum_sq, min/max, ctx max/min, n_pos, bincounts):"
            ),
            "",
            "| part | seconds | share | calls |",
            "|---|---:|---:|---:|",
        ]
        for label, sec in sorted(timer.exclusive.items(), key=lambda kv: -kv[1]):
            lines.append(f"| `{label}` | {sec:.2f} | {sec / total:.0%} | {timer.calls[label]} |")
        lines.append(f"| total | {total:.2f} | 100% | |")
    if torch_table:
        lines += [
            "",
            "torch.profiler, updates of the last batch (self CPU time):",
            "",
            "```",
            torch_table,
            "```",
        ]
    return "\n".join(lines) + "\n"


def _caps_table(s: Settings, results: list[RatioResult]) -> list[str]:
    """Each cap's harvest against the same bare passes (interleaved in one run)."""
    lines = [
        "",
        "Per-document caps, each harvest interleaved with the same bare passes:",
        "",
        "| --per-document | harvest tok/s | ratio (median) | ratio of totals | update / bare"
        " (median) | update s per round | / first cap's update |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first = results[0].total("update")
    for cap, res in zip(s.per_document or (), results, strict=True):
        upd = res.total("update")
        lines.append(
            f"| {cap} | {res.tokens / res.total('harvest'):,.0f} | {res.median_ratio:.3f}x |"
            f" {res.total('harvest') / res.total('bare'):.3f}x |"
            f" {statistics.median(p.update / p.bare for p in res.pairs):.3f}x | {upd:.2f} |"
            f" {upd / first:.2f}x |"
        )
    return lines


def command_line() -> str:
    """The command as typed from the repository root (relative paths where possible)."""

    def rel(path: str) -> str:
        try:
            return os.path.relpath(path)
        except ValueError:
            return path

    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *sys.argv[1:]])


def machine_line() -> str:
    """When and on what a section was measured: the date, torch, its threads, the CPUs, Python."""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
        f" ({platform.processor() or platform.machine()}), Python {platform.python_version()}"
    )


def emit(text: str, out: Path | None) -> None:
    """Print a Markdown section, and also write it to ``out`` when given (``--out``)."""
    sys.stdout.write(text)
    if out:
        out.write_text(text)


# --------------------------------------------------------------------------------------------------
# main
def parse_args(argv: Sequence[str]) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smollm2-135m and tiny sizes (smoke check)")
    p.add_argument("--model", help="model name (default gemma-3-270m; smollm2-135m with --quick)")
    p.add_argument("--layers", help="layers for the ratio: all, 0-5, 0,3,5 (default all)")
    p.add_argument(
        "--tokens",
        type=int,
        help="tokens per round of the interleaved ratio measurement (default 4096)",
    )
    p.add_argument(
        "--rounds", type=int, help="rounds over the same tokens, fresh states each (default 3)"
    )
    p.add_argument(
        "--prefill-tokens",
        type=int,
        help=(
            "tokens fed to the states untimed before measuring (default 0: measure from empty"
            " states)"
        ),
    )
    p.add_argument("--batch-size", type=int, help="contexts per batch (default 16, as harvest)")
    p.add_argument("--ctx-len", type=int, help="tokens per context (default 64, as harvest)")
    p.add_argument(
        "--mem-tokens", help="the two corpus sizes of the memory runs, A,B (default 1024,4096)"
    )
    p.add_argument(
        "--mem-layers", help="layers for the end-to-end/memory runs (default 0-5; 'all' is slow)"
    )
    p.add_argument(
        "--no-memory", action="store_true", help="skip the end-to-end/memory subprocess runs"
    )
    p.add_argument("--no-profile", action="store_true", help="skip the LayerState.update breakdown")
    p.add_argument(
        "--torch-profile", action="store_true", help="also print a torch.profiler op table"
    )
    p.add_argument(
        "--per-document",
        help="caps to harvest with, each against the same bare passes, e.g. 0,2 (default: the"
        " harvest's default)",
    )
    p.add_argument("--device", help="where the model and the statistics run (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's; 1 is steadier on a machine shared with others)",
    )
    p.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    a = p.parse_args(argv)
    s = Settings.quick() if a.quick else Settings()
    if a.per_document:
        s.per_document = tuple(int(x) for x in a.per_document.split(","))
    if a.device:
        s.device = a.device
    if a.threads:
        torch.set_num_threads(a.threads)
    for name in (
        "model",
        "layers",
        "tokens",
        "rounds",
        "prefill_tokens",
        "batch_size",
        "ctx_len",
        "mem_layers",
    ):
        if getattr(a, name) is not None:
            setattr(s, name, getattr(a, name))
    if a.mem_tokens:
        sizes = tuple(int(x) for x in a.mem_tokens.split(","))
        if len(sizes) != 2:
            p.error("--mem-tokens takes two sizes, e.g. 1024,4096")
        s.mem_tokens = sizes  # type: ignore[assignment]
    s.profile = not a.no_profile
    s.torch_profile = a.torch_profile
    if s.rounds < 1:
        p.error("--rounds must be at least 1")
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
    # Memory children first, while this process is still small: a child's ru_maxrss starts at its
    # spawner's peak.
    mem = [] if a.no_memory else [run_memory_child(s, n) for n in s.mem_tokens]
    model = load_model(s.model, progress=False, device=s.device)
    layers = parse_layers(s.layers) or list(range(model.n_layers))
    model.check_layers(layers)
    prefill, batches = build_batches(model, s)
    print(
        f"{model.name}: {len(layers)} layers, {len(batches)} batches of {s.batch_size}x{s.ctx_len}"
        f" tokens x {s.rounds} rounds (prefill {len(prefill)} batches); interleaved"
        " bare/harvest ...",
        file=sys.stderr,
    )
    results = measure_ratio(model, layers, prefill, batches, s)
    timer, table = None, None
    if s.profile:
        print("  profiling LayerState.update ...", file=sys.stderr)
        timer, table = profile_update(model, layers, prefill, batches, s)
    text = report(s, command, model, layers, results, mem, timer, table)
    print(f"(bench took {time.perf_counter() - t_start:.0f}s)", file=sys.stderr)
    emit(text, a.out)


if __name__ == "__main__":
    main()
