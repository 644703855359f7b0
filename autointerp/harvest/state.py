"""The state a harvest accumulates for one layer (:class:`LayerState`): streaming statistics and
example buffers for all of its neurons, folded in batch by batch, merged shard by shard, and
serialised for checkpoints and shard runs.

Design notes (why it is built this way):

* **Exact and mergeable.** Every quantity is a commutative, associative reduction: counts, sums,
  min/max, fixed-edge histograms, and "keep the K largest keys" sets (:mod:`.keys`). So
  ``--shard i/n`` runs merge (:meth:`LayerState.merge`) into exactly what one unsharded run would
  have produced (sums up to float64 rounding).
* **Random and quantile samples by hashed keys.** The random sample is the ``random_k`` contexts
  with the smallest hash keys (a bottom-k sketch: uniform, deterministic, mergeable). The quantile
  samples keep, per neuron and per fixed log-spaced activation bin, the context with the smallest
  hash.
* **Flat memory.** State per layer is ``d_mlp x (top_k + bottom_k + bins) x ctx_len`` floats plus
  ``random_k x ctx_len x d_mlp``, independent of corpus size. Only slots that actually change are
  written.

Turning a finished state into result rows is :mod:`autointerp.harvest.rows`; the state only
accumulates.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from autointerp.harvest.keys import (
    INT64_MAX,
    INT64_MIN,
    LOW32,
    hist_bins,
    key_contexts,
    rank_keys,
    replacements,
)
from autointerp.histogram import HIST_BINS


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
        moved, kth = replacements(keys[rows], cand[rows], largest=True)
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
        moved, _ = replacements(s["rand_key"], hkeys[None, :], largest=False)
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
