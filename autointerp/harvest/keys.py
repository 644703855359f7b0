"""The integer keys the harvest ranks and samples contexts by, and the histogram bins it counts in.

Every buffer of the harvest keeps "the K largest (or smallest) keys", so the keys carry the whole
ordering and ties never depend on arrival order:

* **Rank keys** (:func:`rank_keys`): the float32 activation mapped to an order-preserving int32 in
  the high half, the context id in the low half (lower id wins a tie). Duplicate text (common in
  code) therefore ranks identically in a sharded and an unsharded run.
* **Hash keys** (:func:`hash_keys`): ``blake2b(seed, context_id)`` in the high half: a pseudo-random
  but reproducible order, for the random sample (a bottom-k sketch) and the quantile samples.

:func:`replacements` is the one "keep the K best of K + B" step all those buffers share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

from autointerp.histogram import HIST_BINS, HIST_HI, HIST_LO

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
LOW32 = 0xFFFFFFFF


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


def replacements(
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
