"""Top examples from many documents: at most ``per_document`` of a neuron's top (and bottom)
examples come from one document, so one repeated file cannot fill a neuron's examples.

Design notes (why it is built this way):

* **An example's document is where the neuron peaks.** A context is a window of packed documents;
  the top-k ranks contexts by their maximum activation, so the document that counts is the one of
  the token where the neuron reaches that maximum (the first such token; for the bottom examples,
  the first token of the minimum). A separator between documents counts with the document it ends
  (the nearest document token before it in the context), or with the next one when the context
  starts with it (:func:`token_documents`).
* **Exact and streaming.** "The K largest keys, at most C from one document" is the greedy choice
  on a matroid (a per-document limit under a size limit), so keeping, after every batch, the capped
  top-K of everything seen gives exactly the capped top-K of the whole stream: an example dropped
  once can never re-enter. Merging two capped states and capping the union is exact for the same
  reason, so shards merge into what one run keeps, bit for bit (ties are broken by the same unique
  64-bit keys as without a cap).
* **Vectorised over neurons.** :func:`capped_keep` decides, for many neurons at once, which of
  their current examples and candidates stay: two sorts and a cumulative sum, the same torch code
  on the CPU and on CUDA.
"""

from __future__ import annotations

import numpy as np
import torch

#: Document of a slot without one (an empty buffer slot, a candidate that cannot enter): every such
#: entry is made a document of its own when the cap is applied.
NO_DOCUMENT = -1
#: :func:`context_documents` of a context whose tokens come from more than one document.
MIXED = -2


def token_documents(doc_index: np.ndarray) -> np.ndarray:
    """Each token's document in a batch of contexts ``doc_index`` [B, T] (-1 at BOS and between
    documents): a separator takes the document of the nearest document token before it in its
    context, or, with none before it, the one after it; BOS likewise (it never peaks: positions 0
    are left out of every ranking). A context without any document token keeps -1."""
    b, t = doc_index.shape
    pos = np.broadcast_to(np.arange(t), (b, t))
    has = doc_index >= 0
    before = np.maximum.accumulate(np.where(has, pos, -1), axis=1)
    after = np.minimum.accumulate(np.where(has, pos, t)[:, ::-1], axis=1)[:, ::-1]
    src = np.where(before >= 0, before, np.minimum(after, t - 1))
    out = np.take_along_axis(doc_index, src, axis=1).astype(np.int64)
    out[~has.any(axis=1)] = NO_DOCUMENT
    return out


def context_documents(docs: torch.Tensor) -> torch.Tensor:
    """The document of each context of ``docs`` [B, T] (:func:`token_documents`) whose tokens after
    BOS all come from one, else :data:`MIXED`: for most contexts the peak's document is known
    without finding the peak."""
    first = docs[:, 1]
    return torch.where((docs[:, 1:] == first[:, None]).all(dim=1), first, MIXED)


#: Above this share of a batch's (mixed context, neuron) pairs asked for, :class:`PeakDocuments`
#: finds the peaks of every neuron of the mixed contexts at once (a few passes over them) instead
#: of gathering each pair's activations (a strided read of T - 1 values, ~10x the cost per pair).
WHOLE_BATCH_SHARE = 1 / 8


class PeakDocuments:
    """The document where a neuron peaks in a context, for one batch: ``acts`` [B, T, d], ``docs``
    [B, T] (:func:`token_documents`) and each context's maximum and minimum [B, d] (BOS left out).

    Read from the context where its tokens lie in one document (most contexts); else the
    activations say where the first maximum (or minimum) is: gathered pair by pair when a few
    pairs are asked for (after the first batches), or found for every neuron of those contexts at
    once when many are (the first batches), and then kept for the batch."""

    def __init__(
        self, acts: torch.Tensor, docs: torch.Tensor, ctx_max: torch.Tensor, ctx_min: torch.Tensor
    ):
        self.acts, self.docs = acts, docs
        self.context = context_documents(docs)
        self.mixed = (self.context == MIXED).nonzero().squeeze(1)
        self.extremes = {True: ctx_max, False: ctx_min}
        self._tables: dict[bool, torch.Tensor] = {}

    def of(
        self,
        contexts: torch.Tensor,
        neurons: torch.Tensor,
        largest: bool,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The documents of the pairs (``contexts`` [P] batch positions, ``neurons`` [P]) at the
        first maximum (``largest``) or minimum. ``rows`` [P, T]: the pairs' activations, when the
        caller has gathered them already."""
        out = self.context[contexts]
        mixed = (out == MIXED).nonzero().squeeze(1)
        if not mixed.numel():
            return out
        c, n = contexts[mixed], neurons[mixed]
        many = mixed.numel() > WHOLE_BATCH_SHARE * self.mixed.numel() * self.acts.shape[2]
        if largest in self._tables or (many and rows is None):
            out[mixed] = self._table(largest)[c, n]
        else:
            body = rows[mixed, 1:] if rows is not None else self.acts[c, 1:, n]  # [M, T-1]
            peak = (body.argmax(dim=1) if largest else body.argmin(dim=1)) + 1
            out[mixed] = self.docs[c, peak]
        return out

    def _table(self, largest: bool) -> torch.Tensor:
        """[B, d]: the peak's document of every neuron in every mixed context (elsewhere
        :data:`NO_DOCUMENT`). The first token equal to the extreme is the one with the largest
        weight ``T - 1 - t``: three elementwise passes and a maximum, each fast on this layout
        (an argmax over the token axis is not)."""
        if largest not in self._tables:
            m = self.mixed
            x = self.acts[m, 1:, :]  # [M, T-1, d]
            t1 = x.shape[1]
            weight = torch.arange(t1, 0, -1, dtype=x.dtype, device=x.device)[None, :, None]
            hit = x == self.extremes[largest][m][:, None, :]
            first = t1 - (hit * weight).amax(dim=1).long()  # [M, d], 0-based after BOS
            table = torch.full(self.extremes[largest].shape, NO_DOCUMENT, device=x.device)
            table[m] = self.docs[m].gather(1, first + 1)
            self._tables[largest] = table
        return self._tables[largest]


def capped_keep(keys: torch.Tensor, docs: torch.Tensor, k: int, cap: int) -> torch.Tensor:
    """Which entries of each row to keep: the ``k`` largest ``keys`` [R, M] with at most ``cap``
    from one document (``docs`` [R, M]; a negative document is an entry's own). Returns a boolean
    mask [R, M] with exactly ``k`` entries per row when the first ``k`` columns are a capped set
    (a buffer: an empty slot has the smallest key and a negative document) and the rest are
    candidates; the entries kept among equal keys are the earliest columns (so an empty buffer slot
    is never traded for an equal one).

    Greedy by key is optimal here (a matroid), so: rank every entry among the entries of its
    document with larger keys; those ranked below ``cap`` are eligible, and the ``k`` largest
    eligible ones are kept. Why exactly ``k``: each document has at least as many eligible entries
    as the buffer holds of it, and empty slots are documents of their own."""
    r, m = keys.shape
    own = -1 - torch.arange(m, device=docs.device)  # distinct negative documents per column
    docs = torch.where(docs < 0, own, docs)
    order = keys.argsort(dim=1, descending=True, stable=True)
    by_key = docs.gather(1, order)
    # rank within the document: group equal documents (stably: larger keys first within a group),
    # then each entry's distance from its group's first entry
    group = by_key.argsort(dim=1, stable=True)
    grouped = by_key.gather(1, group)
    pos = torch.arange(m, device=keys.device).expand(r, m)
    starts = torch.ones_like(grouped, dtype=torch.bool)
    starts[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    rank = torch.empty_like(first).scatter_(1, group, pos - first)
    eligible = rank < cap
    kept = eligible & (eligible.cumsum(dim=1) <= k)
    return torch.zeros_like(kept).scatter_(1, order, kept)
