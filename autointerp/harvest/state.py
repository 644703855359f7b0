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
* **On the device the activations are on.** Every tensor of the state lives on one device (the
  model's, on CUDA: the activations never cross to the host batch by batch), and the update is the
  same torch code there as on the CPU: float64 accumulators, int64 keys (so the same examples, ties
  broken alike), integer histograms and samples. The one branch is the histogram's counting
  (numpy's bincount on the CPU, several times faster there than torch's; torch's elsewhere), which
  counts the same integers. What another device can change is float32 rounding: a batch's partial
  sums, and the bin of a value within rounding of a histogram edge. Only checkpoints and the final
  rows move to the host (:meth:`LayerState.to_bytes`, :meth:`LayerState.to`).
* **At most ``per_document`` top (and bottom) examples from one document** when that is set
  (:mod:`.documents`: the rule, and why capping a stream batch by batch is exact).

Turning a finished state into result rows is :mod:`autointerp.harvest.rows`; the state only
accumulates.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from autointerp.harvest.documents import NO_DOCUMENT, PeakDocuments, capped_keep
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
    """Streaming statistics and example buffers for all neurons of one layer, on one device."""

    def __init__(
        self,
        d_mlp: int,
        ctx_len: int,
        top_k: int,
        bottom_k: int,
        random_k: int,
        hist_sample: int = 1,
        per_document: int = 0,
        device: torch.device | str = "cpu",
    ):
        d, t, nb = d_mlp, ctx_len, HIST_BINS
        dev = torch.device(device)
        self.hist_sample = hist_sample
        self.per_document = per_document

        def full(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full(shape, value, dtype=dtype, device=dev)

        i64, f32, f64 = torch.int64, torch.float32, torch.float64
        self.t: dict[str, torch.Tensor] = {
            "count": full((), 0, i64),
            "sum": full((d,), 0, f64),
            "sum_sq": full((d,), 0, f64),
            "max": full((d,), -math.inf, f32),
            "min": full((d,), math.inf, f32),
            "n_pos": full((d,), 0, i64),
            "hist": full((d * nb,), 0, i64),
            "ctx_hist": full((d * nb,), 0, i64),
            "top_key": full((d, top_k), INT64_MIN, i64),
            "top_acts": full((d, top_k, t), 0, f32),
            "bot_key": full((d, bottom_k), INT64_MIN, i64),
            "bot_acts": full((d, bottom_k, t), 0, f32),
            "q_key": full((d * nb,), INT64_MAX, i64),
            "q_val": full((d * nb,), 0, f32),
            "q_acts": full((d * nb, t), 0, f32),
            "rand_key": full((1, random_k), INT64_MAX, i64),
            "rand_acts": full((random_k, t, d), 0, f32),
        }
        if per_document:  # each top and bottom slot's document (absent without a cap, as before)
            self.t["top_doc"] = full((d, top_k), NO_DOCUMENT, i64)
            self.t["bot_doc"] = full((d, bottom_k), NO_DOCUMENT, i64)
        if d * nb >= 2**24:
            raise ValueError(f"d_mlp {d} is too large for exact float32 histogram offsets")
        self._derived()

    def _derived(self) -> None:
        """What is derived from the tensors (their device, the histogram offsets) and the caches
        that go with them."""
        self.device = self.t["sum"].device
        d = self.t["sum"].shape[0]
        self._offsets = torch.arange(d, dtype=torch.float32, device=self.device) * HIST_BINS
        self._weight_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._thr: dict[str, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of state (what a checkpoint writes, less the serialisation's few headers)."""
        return sum(t.nbytes for t in self.t.values())

    def to(self, device: torch.device | str) -> LayerState:
        """This state with its tensors on ``device`` (itself, moved; a no-op where they are)."""
        if torch.device(device) != self.device:
            self.t = {k: v.to(device) for k, v in self.t.items()}
            self._derived()
        return self

    def _weights(self, b: int, t: int) -> torch.Tensor:
        key = (b, t)
        if key not in self._weight_cache:
            w = torch.ones(b, t, device=self.device)
            w[:, 0] = 0.0
            self._weight_cache[key] = w.view(-1)
        return self._weight_cache[key]

    def _bincount(self, bins: torch.Tensor) -> torch.Tensor:
        """Counts of ``bins`` (flat neuron-and-bin indices) over every neuron's bins: numpy's
        bincount on the CPU (5x torch's there), torch's on another device; the same integers."""
        n = self.t["hist"].shape[0]
        if self.device.type == "cpu":
            return torch.from_numpy(np.bincount(bins.view(-1).numpy(), minlength=n))
        return torch.bincount(bins.view(-1), minlength=n)

    # --------------------------------------------------------------------------------------------
    # update
    def update(
        self,
        acts: torch.Tensor,
        ctx_ids: torch.Tensor,
        hkeys: torch.Tensor,
        docs: torch.Tensor | None = None,
    ) -> None:
        """Fold one batch ``acts`` [B, T, d] (position 0 is BOS and is ignored) into the state.
        ``ctx_ids`` and ``hkeys`` [B] are the contexts' ids and hash keys; ``docs`` [B, T] each
        token's document (:func:`~autointerp.harvest.documents.token_documents`), needed with a
        per-document cap. All on the state's device.

        This runs once per layer per batch, so it is written for speed (the harvest should cost
        little more than the forward pass, and the harvest calls it during the pass, while the
        batch is still in the CPU's cache): the per-context extremes give the global ones, the sums
        come from one matrix-vector product each, the token histogram is counted on a fixed hashed
        sample of contexts, and the top-k and sample buffers first check which neurons have any
        candidate that beats their current threshold (after the first batches, few do).
        """
        if self.per_document and docs is None:
            raise ValueError("a per-document cap needs each token's document")
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
            s["hist"] += self._bincount(hist_bins(x[sampled], self._offsets))

        ctx_bins = hist_bins(ctx_max, self._offsets)  # [B, d]
        s["ctx_hist"] += self._bincount(ctx_bins)

        where = PeakDocuments(acts, docs, ctx_max, ctx_min) if docs is not None else None
        self._topk("top", rank_keys(ctx_max.T, ctx_ids), acts, where)
        if s["bot_key"].shape[1]:
            self._topk("bot", rank_keys(-ctx_min.T + 0.0, ctx_ids), acts, where)
        self._quantile(ctx_bins, ctx_max, hkeys, acts)
        self._random(hkeys, acts)

    def _topk(
        self,
        prefix: str,
        cand: torch.Tensor,
        acts: torch.Tensor,
        docs: PeakDocuments | None,
    ) -> None:
        """Keep the K largest keys per neuron (at most ``per_document`` from one document, when
        set). ``self._thr[prefix]`` caches each neuron's K-th key, so most batches cost one
        comparison; rows that change gather their per-token activations straight from the batch
        (a strided gather of a few thousand rows takes a tenth of what a transposed copy of the
        whole batch did).

        With a cap, the uncapped choice is made first: where it keeps no more than the cap from
        any document it is also the capped choice (greedy by key accepts every entry), and only
        the neurons where it does not (a few per batch, but for the first batches) take the
        capped selection of :meth:`_capped`. So the documents of most candidates are never
        looked up."""
        keys, buf = self.t[f"{prefix}_key"], self.t[f"{prefix}_acts"]
        if keys.shape[1] == 0:
            return
        thr = self._thr.get(prefix)
        if thr is None:
            thr = self._thr[prefix] = keys.amin(dim=1)
        beats = cand > thr[:, None]
        rows = beats.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        moved, kth = replacements(keys[rows], cand[rows], largest=True)
        if moved is None:
            return
        ev_r, ev_c, in_r, in_c = moved
        incoming = acts[in_c, :, rows[in_r]]  # [I, T]; ev_r and in_r name the same row at each i
        if self.per_document:
            assert docs is not None
            in_docs = docs.of(in_c, rows[in_r], prefix == "top", incoming)
            over = self._over_cap(prefix, rows, ev_r, ev_c, in_docs)
            if bool(over.any()):
                self._capped(prefix, rows[over], cand[rows[over]], beats[rows[over]], acts, docs)
                fits = ~over[ev_r]
                ev_r, ev_c, in_r, in_c, in_docs, incoming = (
                    x[fits] for x in (ev_r, ev_c, in_r, in_c, in_docs, incoming)
                )
                rows, kth = rows[~over], kth[~over]
                # rows of the kept moves, renumbered among the rows that fit
                renumber = torch.cumsum(~over, dim=0) - 1
                ev_r, in_r = renumber[ev_r], renumber[in_r]
            self.t[f"{prefix}_doc"][rows[ev_r], ev_c] = in_docs
        neuron = rows[ev_r]
        keys[neuron, ev_c] = cand[rows[in_r], in_c]
        buf[neuron, ev_c] = incoming
        thr[rows] = kth

    def _over_cap(
        self,
        prefix: str,
        rows: torch.Tensor,
        ev_r: torch.Tensor,
        ev_c: torch.Tensor,
        in_docs: torch.Tensor,
    ) -> torch.Tensor:
        """Which of ``rows`` the uncapped moves (slots ``ev_r, ev_c`` taken over by candidates of
        documents ``in_docs``) would leave with more than ``per_document`` examples of one
        document. Only an incoming example can break the cap: the buffer kept it."""
        after = self.t[f"{prefix}_doc"][rows]  # a copy
        after[ev_r, ev_c] = in_docs
        counts = (after[ev_r] == in_docs[:, None]).sum(dim=1)
        over = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        over[ev_r[(counts > self.per_document) & (in_docs >= 0)]] = True
        return over

    def _capped(
        self,
        prefix: str,
        rows: torch.Tensor,
        cand: torch.Tensor,
        beats: torch.Tensor,
        acts: torch.Tensor,
        docs: PeakDocuments,
    ) -> None:
        """:meth:`_topk` under the per-document cap, for the neurons ``rows`` and their candidates
        ``cand`` [R, B] (``beats``: those above the neuron's threshold, the only ones that can
        enter); ``docs`` finds the candidates' documents.

        A candidate's document is the one of the token where the neuron peaks in that context (the
        maximum for the top examples, the minimum for the bottom ones), found only for the
        candidates that can enter, and read from the context where it lies in one document."""
        keys, buf = self.t[f"{prefix}_key"], self.t[f"{prefix}_acts"]
        slot_docs, thr = self.t[f"{prefix}_doc"], self._thr[prefix]
        k = keys.shape[1]
        pair_r, pair_c = beats.nonzero(as_tuple=True)
        cand_docs = torch.full_like(cand, NO_DOCUMENT)
        cand_docs[pair_r, pair_c] = docs.of(pair_c, rows[pair_r], largest=prefix == "top")
        both = torch.cat([keys[rows], cand], dim=1)
        keep = capped_keep(both, torch.cat([slot_docs[rows], cand_docs], 1), k, self.per_document)
        thr[rows] = torch.where(keep, both, INT64_MAX).amin(dim=1)
        incoming = keep[:, k:]
        if not bool(incoming.any()):
            return
        # evicted slots and incoming candidates pair up row by row (see replacements)
        ev_r, ev_c = (~keep[:, :k]).nonzero(as_tuple=True)
        in_r, in_c = incoming.nonzero(as_tuple=True)
        neuron = rows[ev_r]
        keys[neuron, ev_c] = cand[in_r, in_c]
        slot_docs[neuron, ev_c] = cand_docs[in_r, in_c]
        buf[neuron, ev_c] = acts[in_c, :, neuron]

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
        """Fold another shard's state into this one (exact: every part is a mergeable reduction;
        the per-document cap too, see :mod:`.documents`)."""
        s, o = self.t, other.t
        self._thr = {}  # derived from the key buffers, which change here
        for key in ("count", "sum", "sum_sq", "n_pos", "hist", "ctx_hist"):
            s[key] = s[key] + o[key]
        s["max"] = torch.maximum(s["max"], o["max"])
        s["min"] = torch.minimum(s["min"], o["min"])
        for prefix in ("top", "bot"):
            self._merge_examples(prefix, o)
        take = o["q_key"] < s["q_key"]
        for key in ("q_key", "q_val", "q_acts"):
            s[key] = torch.where(take.view(-1, *[1] * (s[key].dim() - 1)), o[key], s[key])
        keys = torch.cat([s["rand_key"], o["rand_key"]], 1)
        acts = torch.cat([s["rand_acts"], o["rand_acts"]], 0)
        idx = keys[0].topk(s["rand_key"].shape[1], largest=False).indices
        s["rand_key"] = keys[:, idx]
        s["rand_acts"] = acts[idx]

    def _merge_examples(self, prefix: str, o: dict[str, torch.Tensor]) -> None:
        """The K largest of both states' ``prefix`` examples (at most ``per_document`` from one
        document, when set)."""
        s = self.t
        k = s[f"{prefix}_key"].shape[1]
        if k == 0:  # no bottom examples (a model whose MLP is not gated)
            return
        keys = torch.cat([s[f"{prefix}_key"], o[f"{prefix}_key"]], 1)
        acts = torch.cat([s[f"{prefix}_acts"], o[f"{prefix}_acts"]], 1)
        if self.per_document:
            docs = torch.cat([s[f"{prefix}_doc"], o[f"{prefix}_doc"]], 1)
            keep = capped_keep(keys, docs, k, self.per_document)
            idx = keep.nonzero(as_tuple=True)[1].view(-1, k)  # exactly k per row, in column order
            s[f"{prefix}_doc"] = docs.gather(1, idx)
        else:
            idx = keys.topk(k, dim=1).indices
        s[f"{prefix}_key"] = keys.gather(1, idx)
        s[f"{prefix}_acts"] = acts.gather(1, idx[:, :, None].expand(-1, -1, acts.shape[2]))

    # --------------------------------------------------------------------------------------------
    # io
    def to_bytes(self) -> bytes:
        """The state on the host, serialised (a state without a cap is what it always was)."""
        out = {k: v.cpu() for k, v in self.t.items()}
        if self.per_document:
            out["per_document"] = torch.tensor(self.per_document)
        buf = io.BytesIO()
        torch.save(out, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(
        cls, blob: bytes, hist_sample: int = 1, device: torch.device | str = "cpu"
    ) -> LayerState:
        """A state :meth:`to_bytes` wrote, on ``device``."""
        obj = cls.__new__(cls)
        obj.t = torch.load(io.BytesIO(blob), weights_only=True, map_location=torch.device(device))
        cap = obj.t.pop("per_document", None)
        obj.per_document = int(cap) if cap is not None else 0
        obj.hist_sample = hist_sample
        obj._derived()
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
