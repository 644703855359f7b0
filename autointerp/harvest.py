"""Harvest: one pass over a corpus that keeps, for every neuron of the chosen layers, its most
activating contexts and its activation statistics - without ever holding the full activation matrix.

Design notes (why it is built this way):

* **Exact and mergeable.** Every quantity is a commutative, associative reduction: counts, sums,
  min/max, fixed-edge histograms, and "keep the K largest keys" sets. So ``--shard i/n`` runs can be
  merged into exactly what one unsharded run would have produced (sums up to float64 rounding).
* **Unique keys, deterministic ties.** Top-k ranks contexts by a 64-bit integer key: the float32
  activation mapped to an order-preserving int32 in the high half, the context id in the low half
  (lower id wins a tie). Duplicate text (common in code) therefore ranks identically in a sharded
  and an unsharded run.
* **Random and quantile samples by hashed keys.** Each context gets ``blake2b(seed, context_id)``;
  the random sample is the ``random_k`` contexts with the smallest hashes (a bottom-k sketch:
  uniform, deterministic, mergeable). The quantile samples keep, per neuron and per fixed log-spaced
  activation bin, the context with the smallest hash; at the end up to ``quantile_per_interval`` of
  them are shown per interval of the neuron's max (0-25%, ... 75-100%).
* **Flat memory.** State per layer is ``d_mlp x (top_k + bottom_k + bins) x ctx_len`` floats plus
  ``random_k x ctx_len x d_mlp``, independent of corpus size. Only slots that actually change are
  written.
* **Resumable.** The state is checkpointed into the store every ``checkpoint_seconds`` (one
  transaction, after whole batches); a restarted run loads it and skips the contexts already seen.
  Result rows are written once, in one transaction, at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autointerp.config import check_int, check_number, config_identity, identity_hash
from autointerp.corpus import Context, Document, corpus_fingerprint, iter_contexts, load_documents
from autointerp.errors import UserError
from autointerp.histogram import (
    HIST_BINS,
    HIST_HI,
    HIST_LO,
)
from autointerp.models import SubjectModel
from autointerp.store import Store, encode_acts

HARVEST_VERSION = 1
#: : Train/valid/test assignment by rank within a kind, interleaved so every split sees the whole
#: activation range.
SPLIT_PATTERN = ("train", "valid", "train", "test")
#: With the default cadence checkpoints are at least this many seconds apart ...
CHECKPOINT_MIN_SECONDS = 120.0
#: ... and further apart when writing one takes long, so that the loop spends at most about this
#: share of its time on them. A whole-model state is large (gemma-3-270m, 18 layers: ~1.8 GB,
#: seconds to serialise and commit), and at a fixed 120 s that alone cost several percent of a
#: full-corpus harvest; at 2% a crash loses at most ~50 checkpoint-writes' worth of work.
CHECKPOINT_SHARE = 0.02
#: Before the first write has been timed, its duration is estimated from the state's size at this
#: rate (bytes/s): the faster of the two CPUs measured (a whole-model gemma-3-270m state, 1.75 GB,
#: took 11-15 s on a 2-core Xeon and 19-29 s on a 2-core AVX2 EPYC). Without it, the first
#: checkpoint came after the fixed minimum, and a short whole-model harvest paid one full write
#: (0.10x of a bare pass over 131k tokens) to protect two minutes of work.
CHECKPOINT_BYTES_PER_SECOND = 150e6
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
LOW32 = 0xFFFFFFFF


@dataclass
class HarvestConfig:
    """Everything that determines a harvest's results. Saved as JSON with the run; its hash
    identifies the run."""

    model: str
    corpus: str = "default"
    layers: list[int] | None = None  # None: all layers
    ctx_len: int = 64
    n_tokens: int | None = None  # None: the whole corpus
    top_k: int = 40  # 20 train + 10 valid + 10 test with SPLIT_PATTERN
    bottom_k: int | None = None  # None: top_k for gated (signed) MLPs, else 0
    random_k: int = 40
    quantile_intervals: int = 4
    quantile_per_interval: int = 4
    hist_sample: int = (
        4  # the token histogram counts contexts whose hash is 0 mod this (1: every context)
    )
    seed: int = 0
    corpus_fingerprint: str | None = (
        None  # filled in by harvest(): a changed corpus is a different run
    )
    # Not part of the result's identity:
    batch_size: int = field(default=16, metadata={"hashed": False})
    shard: tuple[int, int] = field(default=(0, 1), metadata={"hashed": False})
    # None: at least CHECKPOINT_MIN_SECONDS apart and further when writing one takes long (see
    # CHECKPOINT_SHARE); a number: exactly that spacing (0: after every batch, as the crash tests
    # use).
    checkpoint_seconds: float | None = field(default=None, metadata={"hashed": False})
    # The subject model's dtype. float32 runs keep the identity they always had; a half-precision
    # run is a different result (activations differ in the third significant digit), so it gets its
    # own identity.
    dtype: str = field(default="float32", metadata={"hashed": False})

    def __post_init__(self) -> None:
        check_int(self.ctx_len, "--ctx-len", 2)
        if self.n_tokens is not None:
            check_int(self.n_tokens, "--tokens", 1)
        check_int(self.top_k, "--top-k", 1)  # 0 would leave nothing to explain or graph
        if self.bottom_k is not None:
            check_int(self.bottom_k, "--bottom-k", 0)
        check_int(self.random_k, "--random-k", 0)
        check_int(self.quantile_intervals, "quantile_intervals", 1)
        check_int(self.quantile_per_interval, "quantile_per_interval", 0)
        check_int(self.hist_sample, "hist_sample", 1)
        check_int(self.seed, "--seed", 0)
        check_int(self.batch_size, "--batch-size", 1)
        if self.checkpoint_seconds is not None:
            # 0 is meaningful: a checkpoint after every batch (the crash tests use it)
            check_number(self.checkpoint_seconds, "--checkpoint-seconds", 0.0, finite=False)

    def identity(self) -> dict[str, Any]:
        """The fields that change results (shard, batch size and checkpoint cadence do not)."""
        half = {"dtype": self.dtype} if self.dtype != "float32" else {}
        return config_identity(
            self,
            harvest_version=HARVEST_VERSION,
            hist=[HIST_LO, HIST_HI, HIST_BINS],
            split_pattern=list(SPLIT_PATTERN),
            **half,
        )

    def config_hash(self) -> str:
        return identity_hash(self.identity())


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise UserError(f"--shard takes i/n, e.g. 0/4, not {text!r}.") from exc
    if n < 1 or not 0 <= i < n:
        raise UserError(f"Shard {text} is impossible: need 0 <= i < n.")
    return (i, n)


# --------------------------------------------------------------------------------------------------
# Keys


def _ordered(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 whose integer order equals the float order (sign-magnitude to two's
    complement)."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _unordered(keys_hi: torch.Tensor) -> torch.Tensor:
    bits = torch.where(keys_hi < 0, keys_hi ^ 0x7FFFFFFF, keys_hi)
    return bits.to(torch.int32).view(torch.float32)


def rank_keys(values: torch.Tensor, ctx_ids: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys ordering by value, then by lower context id. ``values`` [..., B]
    float32, ``ctx_ids`` [B]."""
    return (_ordered(values) << 32) | (LOW32 - ctx_ids)


def key_values(keys: torch.Tensor) -> torch.Tensor:
    return _unordered(keys >> 32)


def key_contexts(keys: torch.Tensor) -> torch.Tensor:
    return LOW32 - (keys & LOW32)


def hash_keys(ctx_ids: Iterable[int], seed: int) -> torch.Tensor:
    """Pseudo-random but reproducible key per context (hash in the high 31 bits, context id in
    the low 32)."""
    out = []
    for c in ctx_ids:
        h = (
            int.from_bytes(
                hashlib.blake2b(f"{seed}:{c}".encode(), digest_size=4).digest(), "little"
            )
            >> 1
        )
        out.append((h << 32) | int(c))
    return torch.tensor(out, dtype=torch.int64)


def hist_bins(x: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Bin index of each value on :data:`HIST_EDGES` (values beyond the ends go into the end
    bins), plus ``offsets`` (float32, broadcast over the last axis) if given. The harvest passes
    ``n * HIST_BINS`` for neuron ``n`` so one bincount fills every neuron's histogram; adding them
    before the one conversion to integers saves a pass over an int64 copy, and is exact while the
    offsets stay below 2**24 (:class:`LayerState` checks)."""
    u = torch.log1p(x.abs()).copysign_(x)
    u.sub_(HIST_LO).mul_(HIST_BINS / (HIST_HI - HIST_LO)).floor_().clamp_(0, HIST_BINS - 1)
    if offsets is not None:
        u.add_(offsets)
    return u.long()


def _replacements(
    buf: torch.Tensor, cand: torch.Tensor, largest: bool
) -> tuple[tuple[torch.Tensor, ...] | None, torch.Tensor]:
    """Which slots of ``buf`` [N, K] are taken over by which entries of ``cand`` [N, B] when keeping
    the K largest (or smallest) keys of both. Returns ((row, slot, row, cand_col) index tensors, or
    None if nothing moves) and each row's new K-th key (the threshold a later candidate must beat).

    The B entries that drop out are the B smallest (or largest) of the K + B, and the next one is
    the new K-th key: one top-(B + 1) from the other end gives both, cheaper than a top-K (B = 16
    contexts, K = 40 by default). Keys are unique, so the kept set is exact; evicted slots and
    incoming candidates pair up row by row because ``nonzero`` lists them in row-major order and
    each row has as many of one as of the other.
    """
    k, b = buf.shape[1], cand.shape[1]
    both = torch.cat([buf, cand], dim=1)
    out = both.topk(b + 1, dim=1, largest=not largest, sorted=True)
    keep = torch.ones_like(both, dtype=torch.bool).scatter_(1, out.indices[:, :b], False)
    kth = out.values[:, b]
    incoming = keep[:, k:]
    if not bool(incoming.any()):
        return None, kth
    ev_r, ev_c = (~keep[:, :k]).nonzero(as_tuple=True)
    in_r, in_c = incoming.nonzero(as_tuple=True)
    return (ev_r, ev_c, in_r, in_c), kth


# --------------------------------------------------------------------------------------------------
# Accumulators


class LayerState:
    """Streaming statistics and example buffers for all neurons of one layer."""

    def __init__(
        self,
        d_mlp: int,
        ctx_len: int,
        top_k: int,
        bottom_k: int,
        random_k: int,
        hist_sample: int = 1,
    ):
        d, t, nb = d_mlp, ctx_len, HIST_BINS
        self.hist_sample = hist_sample
        self.t: dict[str, torch.Tensor] = {
            "count": torch.zeros((), dtype=torch.int64),
            "sum": torch.zeros(d, dtype=torch.float64),
            "sum_sq": torch.zeros(d, dtype=torch.float64),
            "max": torch.full((d,), -math.inf),
            "min": torch.full((d,), math.inf),
            "n_pos": torch.zeros(d, dtype=torch.int64),
            "hist": torch.zeros(d * nb, dtype=torch.int64),
            "ctx_hist": torch.zeros(d * nb, dtype=torch.int64),
            "top_key": torch.full((d, top_k), INT64_MIN, dtype=torch.int64),
            "top_acts": torch.zeros(d, top_k, t),
            "bot_key": torch.full((d, bottom_k), INT64_MIN, dtype=torch.int64),
            "bot_acts": torch.zeros(d, bottom_k, t),
            "q_key": torch.full((d * nb,), INT64_MAX, dtype=torch.int64),
            "q_val": torch.zeros(d * nb),
            "q_acts": torch.zeros(d * nb, t),
            "rand_key": torch.full((1, random_k), INT64_MAX, dtype=torch.int64),
            "rand_acts": torch.zeros(random_k, t, d),
        }
        if d * nb >= 2**24:
            raise ValueError(f"d_mlp {d} is too large for exact float32 histogram offsets")
        self._offsets = torch.arange(d, dtype=torch.float32) * nb
        self._weight_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._thr: dict[str, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of state (what a checkpoint writes, less the serialisation's few headers)."""
        return sum(t.nbytes for t in self.t.values())

    def _weights(self, b: int, t: int) -> torch.Tensor:
        key = (b, t)
        if key not in self._weight_cache:
            w = torch.ones(b, t)
            w[:, 0] = 0.0
            self._weight_cache[key] = w.view(-1)
        return self._weight_cache[key]

    # --------------------------------------------------------------------------------------------
    # update
    def update(self, acts: torch.Tensor, ctx_ids: torch.Tensor, hkeys: torch.Tensor) -> None:
        """Fold one batch ``acts`` [B, T, d] (position 0 is BOS and is ignored) into the state.

        This runs once per layer per batch, so it is written for speed (the harvest should cost
        little more than the forward pass, and the harvest calls it during the pass, while the
        batch is still in the CPU's cache): the per-context extremes give the global ones, the sums
        come from one matrix-vector product each, the token histogram is counted on a fixed hashed
        sample of contexts with numpy's bincount (several times faster than torch's on CPU), and
        the top-k and sample buffers first check which neurons have any candidate that beats their
        current threshold (after the first batches, few do).
        """
        s = self.t
        x = acts[:, 1:, :]
        b, t1, d = x.shape
        flat = acts.reshape(b * (t1 + 1), d)
        weights = self._weights(
            b, t1 + 1
        )  # 1 for every token, 0 for BOS: exact sums without BOS, by GEMV
        s["count"] += b * t1
        s["sum"] += (weights @ flat).double()
        s["sum_sq"] += (weights @ (flat * flat)).double()
        # sign() clamped at 0 is 1 exactly where an activation is positive: an elementwise float op,
        # about twice as fast here as turning the boolean ``flat > 0`` into floats.
        s["n_pos"] += (weights @ torch.sign(flat).clamp_(min=0)).long()
        # Two reductions over the token axis, not ``torch.aminmax(x, dim=1)``: on this layout (d
        # contiguous) the fused op takes ~10x as long as amax and amin together (torch 2.13, CPU).
        ctx_max, ctx_min = x.amax(dim=1), x.amin(dim=1)  # [B, d] each
        torch.maximum(s["max"], ctx_max.amax(dim=0), out=s["max"])
        torch.minimum(s["min"], ctx_min.amin(dim=0), out=s["min"])
        sampled = ((hkeys >> 32) % self.hist_sample == 0).nonzero().squeeze(1)
        if sampled.numel():
            bins = hist_bins(x[sampled], self._offsets)
            s["hist"] += torch.from_numpy(
                np.bincount(bins.view(-1).numpy(), minlength=d * HIST_BINS)
            )

        ctx_bins = hist_bins(ctx_max, self._offsets)  # [B, d]
        s["ctx_hist"] += torch.from_numpy(
            np.bincount(ctx_bins.view(-1).numpy(), minlength=d * HIST_BINS)
        )

        self._topk("top", rank_keys(ctx_max.T, ctx_ids), acts)
        if s["bot_key"].shape[1]:
            self._topk("bot", rank_keys(-ctx_min.T + 0.0, ctx_ids), acts)
        self._quantile(ctx_bins, ctx_max, hkeys, acts)
        self._random(hkeys, acts)

    def _topk(self, prefix: str, cand: torch.Tensor, acts: torch.Tensor) -> None:
        """Keep the K largest keys per neuron. ``self._thr[prefix]`` caches each neuron's K-th key,
        so most batches cost one comparison; rows that change gather their per-token activations
        straight from the batch (a strided gather of a few thousand rows takes a tenth of what a
        transposed copy of the whole batch did)."""
        keys, buf = self.t[f"{prefix}_key"], self.t[f"{prefix}_acts"]
        if keys.shape[1] == 0:
            return
        thr = self._thr.get(prefix)
        if thr is None:
            thr = self._thr[prefix] = keys.amin(dim=1)
        rows = (cand > thr[:, None]).any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        moved, kth = _replacements(keys[rows], cand[rows], largest=True)
        if moved is None:
            return
        ev_r, ev_c, in_r, in_c = moved
        neuron = rows[ev_r]
        keys[neuron, ev_c] = cand[rows[in_r], in_c]
        buf[neuron, ev_c] = acts[in_c, :, neuron]
        thr[rows] = kth

    def _quantile(
        self, ctx_bins: torch.Tensor, ctx_max: torch.Tensor, hkeys: torch.Tensor, acts: torch.Tensor
    ) -> None:
        s = self.t
        b, d = ctx_max.shape
        cand = hkeys[:, None].expand(b, d)
        wins = cand < s["q_key"][ctx_bins]  # [B, d]: this context beats the slot's current sample
        if not bool(wins.any()):
            return
        rows, neurons = wins.nonzero(as_tuple=True)
        slots = ctx_bins[rows, neurons]
        keys = hkeys[rows]
        s["q_key"].scatter_reduce_(
            0, slots, keys, "amin"
        )  # several winners for one slot: the smallest key
        took = s["q_key"][slots] == keys
        rows, neurons, slots = rows[took], neurons[took], slots[took]
        s["q_val"][slots] = ctx_max[rows, neurons]
        s["q_acts"][slots] = acts[rows, :, neurons]

    def _random(self, hkeys: torch.Tensor, acts: torch.Tensor) -> None:
        s = self.t
        if s["rand_key"].shape[1] == 0:
            return
        moved, _ = _replacements(s["rand_key"], hkeys[None, :], largest=False)
        if moved is None:
            return
        _, ev_c, _, in_c = moved
        s["rand_key"][0, ev_c] = hkeys[in_c]
        s["rand_acts"][ev_c] = acts[in_c]

    # --------------------------------------------------------------------------------------------
    # merge
    def merge(self, other: LayerState) -> None:
        """Fold another shard's state into this one (exact: every part is a mergeable reduction)."""
        s, o = self.t, other.t
        self._thr = {}  # derived from the key buffers, which change here
        for key in ("count", "sum", "sum_sq", "n_pos", "hist", "ctx_hist"):
            s[key] = s[key] + o[key]
        s["max"] = torch.maximum(s["max"], o["max"])
        s["min"] = torch.minimum(s["min"], o["min"])
        for prefix in ("top", "bot"):
            keys = torch.cat([s[f"{prefix}_key"], o[f"{prefix}_key"]], 1)
            acts = torch.cat([s[f"{prefix}_acts"], o[f"{prefix}_acts"]], 1)
            idx = keys.topk(s[f"{prefix}_key"].shape[1], dim=1).indices
            s[f"{prefix}_key"] = keys.gather(1, idx)
            s[f"{prefix}_acts"] = acts.gather(1, idx[:, :, None].expand(-1, -1, acts.shape[2]))
        take = o["q_key"] < s["q_key"]
        for key in ("q_key", "q_val", "q_acts"):
            s[key] = torch.where(take.view(-1, *[1] * (s[key].dim() - 1)), o[key], s[key])
        keys = torch.cat([s["rand_key"], o["rand_key"]], 1)
        acts = torch.cat([s["rand_acts"], o["rand_acts"]], 0)
        idx = keys[0].topk(s["rand_key"].shape[1], largest=False).indices
        s["rand_key"] = keys[:, idx]
        s["rand_acts"] = acts[idx]

    # --------------------------------------------------------------------------------------------
    # io
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.t, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, hist_sample: int = 1) -> LayerState:
        obj = cls.__new__(cls)
        obj.t = torch.load(io.BytesIO(blob), weights_only=True)
        d = obj.t["sum"].shape[0]
        obj.hist_sample = hist_sample
        obj._offsets = torch.arange(d, dtype=torch.float32) * HIST_BINS
        obj._weight_cache = {}
        obj._thr = {}
        return obj

    def context_ids(self) -> set[int]:
        """Every context some buffer refers to (these must be stored so the state can be
        finalised or merged)."""
        s = self.t
        ids: set[int] = set()
        for keys in (s["top_key"], s["bot_key"]):
            valid = keys != INT64_MIN
            ids.update(key_contexts(keys[valid]).tolist())
        ids.update((s["q_key"][s["q_key"] != INT64_MAX] & LOW32).tolist())
        ids.update((s["rand_key"][s["rand_key"] != INT64_MAX] & LOW32).tolist())
        return ids

    # --------------------------------------------------------------------------------------------
    # results
    def neuron_rows(self, layer: int) -> Iterator[dict[str, Any]]:
        s = self.t
        count = int(s["count"])
        mean = (s["sum"] / max(count, 1)).tolist()
        var = (s["sum_sq"] / max(count, 1) - (s["sum"] / max(count, 1)) ** 2).clamp(min=0).tolist()
        hist = s["hist"].view(-1, HIST_BINS).tolist()
        ctx_hist = s["ctx_hist"].view(-1, HIST_BINS).tolist()
        mx, mn, npos = s["max"].tolist(), s["min"].tolist(), s["n_pos"].tolist()
        ssum, ssq = s["sum"].tolist(), s["sum_sq"].tolist()
        for n in range(len(mean)):
            yield {
                "layer": layer,
                "neuron": n,
                "count": count,
                "mean": mean[n],
                "variance": var[n],
                "max": mx[n],
                "min": mn[n],
                "frac_positive": npos[n] / max(count, 1),
                "sum": ssum[n],
                "sum_sq": ssq[n],
                "n_positive": npos[n],
                "hist": json.dumps(hist[n]),
                "ctx_max_hist": json.dumps(ctx_hist[n]),
            }

    def example_rows(
        self, layer: int, intervals: int, per_interval: int
    ) -> Iterator[tuple[Any, ...]]:
        """Result rows in :data:`autointerp.store.EXAMPLE_COLUMNS` order, neuron by neuron (top,
        bottom, random, quantile). A full Gemma harvest writes millions of rows, so per-row Python
        work matters: each kind's contexts, extremes, peaks and activation bytes are computed for
        every neuron at once (:func:`_measures`, :meth:`_quantile_blocks`), and the loop below only
        assembles tuples."""
        s = self.t
        d = s["top_key"].shape[0]
        fixed: list[tuple[str, list[list[int]], list[int], _Measures]] = []
        for kind, prefix, sign in (("top", "top", 1.0), ("bottom", "bot", -1.0)):
            order = s[f"{prefix}_key"].argsort(dim=1, descending=True)
            keys = s[f"{prefix}_key"].gather(1, order)  # empty slots (INT64_MIN) sort last
            acts = s[f"{prefix}_acts"][torch.arange(d)[:, None], order]  # [d, K, T]
            fixed.append(
                (
                    kind,
                    key_contexts(keys).tolist(),
                    (keys != INT64_MIN).sum(dim=1).tolist(),
                    _measures(acts.numpy(), sign),
                )
            )
        rand_order = s["rand_key"][0].argsort()
        rand_keys = s["rand_key"][0, rand_order]
        rand_valid = rand_keys != INT64_MAX
        rand_ctx = (rand_keys[rand_valid] & LOW32).tolist()
        if rand_ctx:
            rand_acts = s["rand_acts"][rand_order[rand_valid]].permute(2, 0, 1)  # [d, R, T]
            measures = _measures(rand_acts.numpy(), 1.0)
            fixed.append(("random", [rand_ctx] * d, [len(rand_ctx)] * d, measures))
        quantile = self._quantile_blocks(intervals, per_interval)
        for n in range(d):
            for kind, ctxs, counts, measures in fixed:
                if counts[n]:
                    yield from _block(layer, n, kind, ctxs[n][: counts[n]], measures.of(n))
            for i, ctxs, counts, measures in quantile:
                if counts[n]:
                    yield from _block(
                        layer,
                        n,
                        "quantile",
                        ctxs[n][: counts[n]],
                        measures.of(n),
                        interval=i,
                        per_interval=per_interval,
                    )

    def _quantile_blocks(
        self, intervals: int, per_interval: int
    ) -> list[tuple[int, list[list[int]], list[int], _Measures]]:
        """Per interval ``i`` of ``(0, max]`` cut in ``intervals``: each neuron's contexts (up to
        ``per_interval``, smallest sample key first) whose peak falls in it, their count, and their
        measures. Computed for every neuron at once; the bounds are computed in float64 from the
        neuron's max and compared in float32, exactly as a per-neuron torch comparison with a Python
        float does, so the chosen contexts are the same."""
        s = self.t
        if not (intervals and per_interval):
            return []
        key = s["q_key"].view(-1, HIST_BINS).numpy()
        val = s["q_val"].view(-1, HIST_BINS).numpy()
        acts = s["q_acts"].view(-1, HIST_BINS, s["q_acts"].shape[-1]).numpy()
        d = key.shape[0]
        top = s["max"].double().numpy()
        usable = (key != INT64_MAX) & (top > 0)[:, None]
        take = min(per_interval, HIST_BINS)
        out = []
        for i in range(intervals):
            lo = (top * i / intervals).astype(np.float32)[:, None]
            hi = (top * (i + 1) / intervals).astype(np.float32)[:, None]
            inside = usable & (val > lo) & (val <= hi)
            bins = np.argsort(np.where(inside, key, INT64_MAX), axis=1, kind="stable")[:, :take]
            ctxs = (np.take_along_axis(key, bins, axis=1) & LOW32).tolist()
            counts = np.minimum(inside.sum(axis=1), take).tolist()
            out.append((i, ctxs, counts, _measures(acts[np.arange(d)[:, None], bins], 1.0)))
        return out


@dataclass
class _Measures:
    """What every example row stores besides its keys, for a block of neurons x ranks: maxima,
    minima, peak positions ([neuron][rank] lists) and each row's activation bytes (flat,
    neuron-major)."""

    maxima: list[list[float]]
    minima: list[list[float]]
    peaks: list[list[int]]
    blobs: list[bytes]
    ranks: int

    def of(self, n: int) -> tuple[list[float], list[float], list[int], list[bytes]]:
        r = self.ranks
        return self.maxima[n], self.minima[n], self.peaks[n], self.blobs[n * r : (n + 1) * r]


def _measures(values: np.ndarray, sign: float) -> _Measures:
    """Measures of ``values`` [neurons, ranks, ctx_len] (BOS at position 0, left out of extremes and
    peaks; ``sign`` -1 finds the most negative token as the peak). The bytes are one
    :func:`~autointerp.store.codec.encode_acts` of the whole block cut into rows: the same bytes as
    encoding each row, without a numpy call per row."""
    body = values[..., 1:]
    ranks, width = values.shape[1], values.shape[2] * 4
    raw = encode_acts(values)
    return _Measures(
        maxima=body.max(axis=2).tolist(),
        minima=body.min(axis=2).tolist(),
        peaks=(np.argmax(body * sign, axis=2) + 1).tolist(),
        blobs=[raw[i : i + width] for i in range(0, len(raw), width)],
        ranks=ranks,
    )


def _block(
    layer: int,
    neuron: int,
    kind: str,
    ctxs: list[int],
    measures: tuple[list[float], list[float], list[int], list[bytes]],
    interval: int | None = None,
    per_interval: int = 0,
) -> Iterator[tuple[Any, ...]]:
    """Rows for consecutive ranks of one kind of one neuron (the first ``len(ctxs)`` ranks)."""
    maxima, minima, peaks, blobs = measures
    base = interval * per_interval if interval is not None else 0
    for j, ctx in enumerate(ctxs):
        yield (
            layer,
            neuron,
            kind,
            base + j,
            SPLIT_PATTERN[j % len(SPLIT_PATTERN)],
            int(ctx),
            maxima[j],
            minima[j],
            peaks[j],
            interval,
            blobs[j],
        )


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class HarvestResult:
    run_id: int
    status: str  # "complete" (just now), "already complete"
    contexts: int
    tokens: int
    seconds: float


def _resolve(cfg: HarvestConfig, model: SubjectModel) -> HarvestConfig:
    layers = cfg.layers if cfg.layers is not None else list(range(model.n_layers))
    model.check_layers(layers)
    if cfg.ctx_len > model.n_ctx:
        raise UserError(
            f"Contexts of {cfg.ctx_len} tokens are longer than {model.name} allows ({model.n_ctx})."
        )
    if cfg.ctx_len < 2:
        raise UserError("--ctx-len must be at least 2 (BOS plus one token).")
    for name in ("top_k", "bottom_k", "random_k"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative.")
    if cfg.batch_size < 1 or cfg.hist_sample < 1:
        raise UserError("--batch-size and hist_sample must be at least 1.")
    if cfg.n_tokens is not None and cfg.n_tokens < cfg.ctx_len:
        raise UserError(
            f"--tokens {cfg.n_tokens} is less than one context of {cfg.ctx_len} tokens."
        )
    bottom = cfg.bottom_k if cfg.bottom_k is not None else (cfg.top_k if model.gated else 0)
    out = HarvestConfig(
        **{
            **asdict(cfg),
            "layers": sorted(set(layers)),
            "bottom_k": bottom,
            "model": model.name,
            "dtype": model.dtype_name,
        }
    )
    out.shard = tuple(cfg.shard)  # type: ignore[assignment]
    return out


def completed_run(db: str | os.PathLike[str], config: HarvestConfig) -> dict[str, Any] | None:
    """The complete run ``config`` names in ``db``, found without loading the model (its facts are
    stored with its runs), so rerunning a finished harvest costs a corpus read, not a model load.
    None when there is none."""
    if not os.path.exists(db):
        return None
    store = Store(db, create=False)
    info = store.model_info(config.model)
    if not info:
        return None
    layers = config.layers if config.layers is not None else list(range(int(info["n_layers"])))
    bottom = (
        config.bottom_k
        if config.bottom_k is not None
        else (config.top_k if info.get("gated_mlp") else 0)
    )
    cfg = HarvestConfig(**{**asdict(config), "layers": sorted(set(layers)), "bottom_k": bottom})
    cfg.corpus_fingerprint = corpus_fingerprint(load_documents(cfg.corpus, cfg.seed))
    shard: tuple[int, int] = tuple(config.shard)  # type: ignore[assignment]
    run = store.find_run(config.model, "harvest", cfg.config_hash(), shard)
    return run if run and run["status"] == "complete" else None


def _context_rows(model: SubjectModel, contexts: Iterable[Context]) -> Iterator[dict[str, Any]]:
    for c in contexts:
        yield {
            "context_id": c.context_id,
            "tokens": json.dumps(c.tokens.tolist()),
            "str_tokens": json.dumps(model.str_tokens(c.tokens.tolist())),
            "doc_index": json.dumps(c.doc_index.tolist()),
            "offsets": json.dumps(c.offsets.tolist()),
        }


def _fault_point(checkpoints_written: int) -> None:
    """Fault injection for the resume tests: ``AUTOINTERP_KILL_AFTER_CHECKPOINTS=N`` SIGKILLs this
    process right after its N-th checkpoint, exactly as an out-of-memory kill or a pulled plug
    would."""
    limit = os.environ.get("AUTOINTERP_KILL_AFTER_CHECKPOINTS")
    if limit and checkpoints_written >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def plan_harvest(
    model: SubjectModel, config: HarvestConfig
) -> tuple[HarvestConfig, list[Document]]:
    """The resolved config (layers, bottom_k, the corpus fingerprint that is part of a run's
    identity, so only the same text resumes) and the corpus's documents; every check that can fail
    on user input, before any database is opened."""
    cfg = _resolve(config, model)
    docs = load_documents(cfg.corpus, cfg.seed)
    if (
        next(iter_contexts(docs, model.tokenizer, cfg.ctx_len, model.bos_id, model.sep_id, 1), None)
        is None
    ):
        raise UserError(
            f"The corpus {cfg.corpus!r} has fewer tokens than one context of {cfg.ctx_len}."
        )
    cfg.corpus_fingerprint = corpus_fingerprint(docs)
    return cfg, docs


def harvest(
    model: SubjectModel,
    store: Store | str | os.PathLike[str],
    config: HarvestConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    write_examples: bool = True,
) -> HarvestResult:
    """Run (or resume, or recognise as done) one harvest and write its results to ``store``.

    Everything the user can get wrong (layers, lengths, an empty or unreadable corpus) is checked
    before the database is opened, so a bad invocation writes nothing. ``store`` may be a path for
    exactly that reason. ``write_examples=False`` (a Ray shard task, whose driver merges the final
    states) leaves out the neuron and example rows: the run is its states, contexts and documents.
    """
    started = time.time()
    cfg, docs = plan_harvest(model, config)
    max_contexts = cfg.n_tokens // cfg.ctx_len if cfg.n_tokens else None
    if not isinstance(store, Store):
        store = Store(store)
    corpus_info = {
        "spec": cfg.corpus,
        "documents": len(docs),
        "fingerprint": cfg.corpus_fingerprint,
    }
    identity = cfg.identity()
    config_hash = cfg.config_hash()
    shard = tuple(cfg.shard)
    run = store.find_run(model.name, "harvest", config_hash, shard)  # type: ignore[arg-type]
    if run and run["status"] == "complete":
        log(f"Harvest run {run['id']} with this config is already complete; nothing to do.")
        return HarvestResult(
            run["id"], "already complete", run["contexts_done"], run["tokens_done"], 0.0
        )
    store.upsert_model(model.info())
    layers = cfg.layers or []
    start_ctx = tokens_done = 0
    if run:
        run_id = run["id"]
        start_ctx, blobs = store.load_checkpoint(run_id)
        tokens_done = run["tokens_done"]
        states = (
            {layer: LayerState.from_bytes(blobs[layer], cfg.hist_sample) for layer in layers}
            if blobs
            else {}
        )
        if states:
            log(f"Resuming harvest run {run_id} at context {start_ctx}.")
    else:
        full = {
            **identity,
            "batch_size": cfg.batch_size,
            "shard": list(shard),
            "device": str(model.device),
        }
        run_id = store.create_run(model.name, "harvest", full, config_hash, shard, corpus_info)  # type: ignore[arg-type]
        states = {}
    if not states:
        start_ctx = tokens_done = 0
        states = {
            layer: LayerState(
                model.d_mlp,
                cfg.ctx_len,
                cfg.top_k,
                cfg.bottom_k or 0,
                cfg.random_k,
                cfg.hist_sample,
            )
            for layer in layers
        }

    contexts_done = start_ctx
    total = max_contexts * cfg.ctx_len if max_contexts else None
    bar = tqdm(
        total=total,
        initial=start_ctx * cfg.ctx_len,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"harvest {model.name} L{layers[0]}-{layers[-1]}",
        dynamic_ncols=True,
    )
    last_checkpoint = time.time()
    spacing = checkpoint_spacing(
        cfg.checkpoint_seconds,
        estimated_write_seconds(sum(st.nbytes for st in states.values())),
    )
    checkpoints = 0
    batch: list[Context] = []

    def run_batch() -> None:
        tokens = torch.from_numpy(np.stack([c.tokens for c in batch]))
        ids = torch.tensor([c.context_id for c in batch], dtype=torch.int64)
        hkeys = hash_keys(ids.tolist(), cfg.seed)
        model.each_mlp_activation(
            tokens, layers, lambda layer, acts: states[layer].update(acts, ids, hkeys)
        )

    stream = iter_contexts(
        docs, model.tokenizer, cfg.ctx_len, model.bos_id, model.sep_id, max_contexts
    )
    last: Context | None = None
    for ctx in stream:
        last = ctx
        if ctx.context_id < start_ctx:
            continue
        if ctx.context_id % shard[1] == shard[0]:
            batch.append(ctx)
        contexts_done = ctx.context_id + 1
        bar.update(cfg.ctx_len)
        if len(batch) == cfg.batch_size:
            run_batch()
            tokens_done += len(batch) * cfg.ctx_len
            batch = []
            if time.time() - last_checkpoint >= spacing:
                began = time.time()
                store.save_checkpoint(
                    run_id,
                    contexts_done,
                    tokens_done,
                    ((layer, st.to_bytes()) for layer, st in states.items()),
                )
                last_checkpoint = time.time()
                spacing = checkpoint_spacing(cfg.checkpoint_seconds, last_checkpoint - began)
                checkpoints += 1
                _fault_point(checkpoints)
    if batch:
        run_batch()
        tokens_done += len(batch) * cfg.ctx_len
    bar.close()

    needed: set[int] = set().union(*(st.context_ids() for st in states.values()))
    picked = [
        c
        for c in iter_contexts(
            docs,
            model.tokenizer,
            cfg.ctx_len,
            model.bos_id,
            model.sep_id,
            max(needed) + 1 if needed else 0,
        )
        if c.context_id in needed
    ]
    doc_indices = sorted({int(i) for c in picked for i in c.doc_index if i >= 0})
    cut = _stream_end(last)
    log(f"Writing results for {len(layers)} layer(s) x {model.d_mlp} neurons ...")
    store.finish_run(
        run_id,
        documents=(_document_row(i, docs[i], cut) for i in doc_indices),
        contexts=_context_rows(model, picked),
        neurons=(
            row for layer in layers if write_examples for row in states[layer].neuron_rows(layer)
        ),
        examples=_example_rows_with_progress(
            {layer: states[layer] for layer in layers if write_examples},
            cfg,
            disable=not progress,
        ),
        states={layer: st.to_bytes() for layer, st in states.items()} if shard[1] > 1 else None,
        contexts_done=contexts_done,
        tokens_done=tokens_done,
    )
    return HarvestResult(run_id, "complete", contexts_done, tokens_done, time.time() - started)


def _example_rows_with_progress(
    states: dict[int, LayerState], cfg: HarvestConfig, disable: bool
) -> Iterator[tuple[Any, ...]]:
    """Every layer's example rows, with a bar that moves a layer at a time as the store consumes
    them: a whole model's ~4.6M rows take a minute or more to write (BENCHMARKS.md), which a user
    otherwise watches in silence after the harvest's own bar has finished."""
    with tqdm(
        total=len(states), unit="layer", desc="write results", disable=disable or not states
    ) as bar:
        for layer, state in states.items():
            yield from state.example_rows(layer, cfg.quantile_intervals, cfg.quantile_per_interval)
            bar.update(1)


def checkpoint_spacing(configured: float | None, last_write_seconds: float) -> float:
    """Seconds from one checkpoint to the next: ``configured`` exactly when the user set it, else at
    least :data:`CHECKPOINT_MIN_SECONDS` and long enough that the last write's duration (before the
    first: :func:`estimated_write_seconds`) is at most :data:`CHECKPOINT_SHARE` of the spacing."""
    if configured is not None:
        return configured
    return max(CHECKPOINT_MIN_SECONDS, last_write_seconds / CHECKPOINT_SHARE)


def estimated_write_seconds(state_bytes: int) -> float:
    """How long a checkpoint of ``state_bytes`` will take before one has been timed (see
    :data:`CHECKPOINT_BYTES_PER_SECOND`): a whole-model gemma-3-270m state waits ~10 minutes for its
    first checkpoint, a few small layers the minimum."""
    return state_bytes / CHECKPOINT_BYTES_PER_SECOND


def _stream_end(last: Context | None) -> tuple[int, int] | None:
    """``(document, character)`` where the token stream stopped inside a document (the token budget
    ran out before its end), or None when it stopped between documents. Only the text before that
    point is stored: a 45 MB document of which 2,000 tokens were read stores a few kilobytes."""
    if last is None or last.doc_index[-1] < 0:
        return None
    return int(last.doc_index[-1]), int(last.offsets[-1, 1])


def _document_row(index: int, doc: Document, cut: tuple[int, int] | None = None) -> dict[str, Any]:
    text = doc.text[: cut[1]] if cut is not None and cut[0] == index else doc.text
    return {"doc_index": index, "doc_id": doc.doc_id, "source": doc.source, "text": text}


# --------------------------------------------------------------------------------------------------
# Merge


def merge(
    out: Store | str | os.PathLike[str],
    inputs: list[Store],
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    only: tuple[str, str, int] | None = None,
) -> list[int]:
    """Combine complete shard runs found in ``inputs`` into unsharded runs in ``out``; return the
    new run ids.

    Runs are grouped by (model, config hash - which covers the corpus fingerprint -, shard count);
    every shard 0..n-1 must be present exactly once. ``out`` is opened only once the shards check
    out, so a failed merge creates no file.
    """
    groups: dict[tuple[str, str, int], dict[int, tuple[Store, dict[str, Any]]]] = {}
    for store in inputs:
        for run in store.runs():
            if run["stage"] != "harvest" or run["status"] != "complete" or run["shard_count"] < 2:
                continue
            if only is not None and (run["model"], run["config_hash"], run["shard_count"]) != only:
                continue  # the Ray driver merges its own shards, whatever else the database holds
            group = groups.setdefault((run["model"], run["config_hash"], run["shard_count"]), {})
            if run["shard_index"] in group:
                raise UserError(
                    f"Shard {run['shard_index']}/{run['shard_count']} of {run['model']} appears"
                    f" twice ({group[run['shard_index']][0].path} and {store.path})."
                )
            group[run["shard_index"]] = (store, run)
    if not groups:
        raise UserError(
            "No complete sharded harvest runs in the given databases (harvest with --shard i/n"
            " first)."
        )
    for (model_name, _, count), shards in sorted(groups.items()):
        missing = sorted(set(range(count)) - set(shards))
        if missing:
            raise UserError(
                f"Cannot merge {model_name}: shard(s) {', '.join(f'{m}/{count}' for m in missing)} "
                "are missing."
            )
    if not isinstance(out, Store):
        out = Store(out)
    made = []
    for (model_name, config_hash, count), shards in sorted(groups.items()):
        first_store, first_run = shards[0]
        config = dict(first_run["config"])
        layers = config["layers"]
        states: dict[int, LayerState] = {}
        for index in range(count):
            store, run = shards[index]
            blobs = store.final_states(run["id"])
            for layer in layers:
                st = LayerState.from_bytes(blobs[layer])
                if layer in states:
                    states[layer].merge(st)
                else:
                    states[layer] = st
        needed: set[int] = set().union(*(st.context_ids() for st in states.values()))
        contexts: dict[int, dict[str, Any]] = {}
        documents: dict[int, dict[str, Any]] = {}
        for index in range(count):
            store, run = shards[index]
            rows = store.context_rows(run["id"], needed - set(contexts))
            contexts.update(rows)
            doc_ids = {i for r in rows.values() for i in json.loads(r["doc_index"]) if i >= 0}
            documents.update(store.document_rows(run["id"], doc_ids - set(documents)))
        lost = needed - set(contexts)
        if lost:
            raise UserError(
                f"The shard databases lack {len(lost)} context(s) the merge needs (e.g."
                f" {min(lost)})."
            )
        info = first_store.model_info(model_name)
        if info:
            out.upsert_model(info)
        config["shard"] = [0, 1]
        config["merged_from"] = [str(shards[i][0].path) for i in range(count)]
        corpus = first_run["corpus"]
        existing = out.find_run(model_name, "harvest", config_hash, (0, 1))
        run_id = (
            existing["id"]
            if existing
            else out.create_run(model_name, "harvest", config, config_hash, (0, 1), corpus)
        )
        contexts_done = max(shards[i][1]["contexts_done"] for i in range(count))
        tokens_done = sum(shards[i][1]["tokens_done"] for i in range(count))
        strip = ("run_id",)
        out.finish_run(
            run_id,
            documents=({k: v for k, v in r.items() if k not in strip} for r in documents.values()),
            contexts=({k: v for k, v in r.items() if k not in strip} for r in contexts.values()),
            neurons=(row for layer in layers for row in states[layer].neuron_rows(layer)),
            examples=(
                row
                for layer in layers
                for row in states[layer].example_rows(
                    layer, config["quantile_intervals"], config["quantile_per_interval"]
                )
            ),
            states=None,
            contexts_done=contexts_done,
            tokens_done=tokens_done,
        )
        log(f"Merged {count} shards of {model_name} into run {run_id}.")
        made.append(run_id)
    return made
