"""The check that harvest statistics computed on a device equal the CPU's: the same activations
folded into :class:`LayerState` s on the CPU and on the device (straight through, resumed from a
checkpoint, and as shards merged on the host), every tensor compared. ``tests/test_harvest.py``
runs it with the CPU standing in for the device (the state's code is the same torch code on every
device), ``tests/test_gpu.py`` with CUDA."""

from __future__ import annotations

import numpy as np
import torch

from autointerp.corpus import iter_contexts, load_documents
from autointerp.harvest import LayerState, hash_keys
from autointerp.harvest.documents import token_documents
from autointerp.models import SubjectModel

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

#: What a device computes exactly as the CPU does: integer counts and extremes (and every
#: key-chosen buffer, compared in key order below).
EXACT = ("count", "n_pos", "max", "min")


def model_batches(
    model: SubjectModel, corpus: str, layer: int, ctx_len: int, batch_size: int, n_batches: int
) -> list[Batch]:
    """Batches as a harvest makes them: host float32 activations of ``layer`` [B, T, d], context
    ids, hash keys (seed 0) and each token's document."""
    docs = load_documents(corpus, 0)
    contexts = list(
        iter_contexts(
            docs, model.tokenizer, ctx_len, model.bos_id, model.sep_id, batch_size * n_batches
        )
    )
    out = []
    for i in range(0, len(contexts), batch_size):
        part = contexts[i : i + batch_size]
        tokens = torch.from_numpy(np.stack([c.tokens for c in part]))
        ids = torch.tensor([c.context_id for c in part], dtype=torch.int64)
        acts = model.mlp_activations(tokens, [layer])[layer].cpu()
        doc_index = token_documents(np.stack([c.doc_index for c in part]))
        out.append((acts, ids, hash_keys(ids.tolist(), 0), torch.from_numpy(doc_index)))
    return out


def fold(
    batches: list[Batch],
    device: str,
    resume_at: int | None = None,
    resume_on: str | None = None,
) -> LayerState:
    """The batches folded into a state on ``device`` (checkpointed after batch ``resume_at`` and
    resumed on ``resume_on``), returned on the host as a run's final write reads it."""
    acts = batches[0][0]
    state = LayerState(
        acts.shape[2],
        acts.shape[1],
        top_k=8,
        bottom_k=8,
        random_k=4,
        hist_sample=2,
        per_document=2,
        device=device,
    )
    with torch.inference_mode():  # as in the forward pass
        for i, batch in enumerate(batches):
            state.update(*(x.to(state.device) for x in batch))
            if i == resume_at:
                state = LayerState.from_bytes(state.to_bytes(), 2, resume_on or device)
    return state.to("cpu")


def _by_key(state: LayerState, prefix: str) -> dict[str, torch.Tensor]:
    """The ``prefix`` buffers in key order (slots are filled in arrival order, which a merge or
    another device's choice among empty slots may change; the rows are read in key order)."""
    keys = state.t[f"{prefix}_key"]
    order = keys.argsort(dim=1, descending=True)
    rows = torch.arange(keys.shape[0])[:, None]
    return {part: state.t[f"{prefix}_{part}"][rows, order] for part in ("key", "doc", "acts")}


def assert_same_state(a: LayerState, b: LayerState, edge_share: float = 0.0) -> None:
    """Every tensor of ``a`` and ``b`` equal: exactly, but for float64 sums to float32 rounding of
    a batch's partial sums and, with ``edge_share`` > 0, histogram bins (and the quantile samples
    kept per bin) for that share of values, those within rounding of a bin edge (another device's
    log1p may round them the other way)."""
    for key in EXACT:
        assert torch.equal(a.t[key], b.t[key]), key
    for prefix in ("top", "bot"):
        x, y = _by_key(a, prefix), _by_key(b, prefix)
        for part in x:
            assert torch.equal(x[part], y[part]), (prefix, part)
    ra, rb = a.t["rand_key"][0].argsort(), b.t["rand_key"][0].argsort()
    assert torch.equal(a.t["rand_key"][0, ra], b.t["rand_key"][0, rb])
    assert torch.equal(a.t["rand_acts"][ra], b.t["rand_acts"][rb])
    for key in ("sum", "sum_sq"):
        torch.testing.assert_close(a.t[key], b.t[key], rtol=1e-5, atol=1e-3)
    for key in ("hist", "ctx_hist"):
        assert int(a.t[key].sum()) == int(b.t[key].sum()), key
        moved = int((a.t[key] - b.t[key]).abs().sum())
        assert moved <= edge_share * int(a.t[key].sum()), (key, moved)
    same = a.t["q_key"] == b.t["q_key"]
    assert (~same).float().mean() <= edge_share * 64, int((~same).sum())
    assert torch.equal(a.t["q_val"][same], b.t["q_val"][same])
    assert torch.equal(a.t["q_acts"][same], b.t["q_acts"][same])


def check_device_statistics(batches: list[Batch], device: str, edge_share: float = 0.0) -> None:
    """States made on ``device`` equal the CPU's: straight through, checkpointed and resumed (on
    the device, and on the CPU), and as two shards (one made on the device) merged on the host."""
    host = fold(batches, "cpu")
    assert_same_state(host, fold(batches, device), edge_share)
    assert_same_state(host, fold(batches, device, resume_at=1), edge_share)
    assert_same_state(host, fold(batches, device, resume_at=1, resume_on="cpu"), edge_share)
    merged = fold(batches[0::2], device)
    merged.merge(fold(batches[1::2], "cpu"))
    assert_same_state(host, merged, edge_share)
