"""Harvest correctness: the streaming, sharded, resumable harvest must equal a brute-force
computation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_same_harvest, brute_force, run_cli

import autointerp.harvest.checkpoints as checkpoints_module
from autointerp.corpus import iter_contexts
from autointerp.harvest import (
    CHECKPOINT_MIN_SECONDS,
    CHECKPOINT_SHARE,
    INT64_MIN,
    SPLIT_PATTERN,
    HarvestConfig,
    LayerState,
    checkpoint_spacing,
    estimated_write_seconds,
    harvest,
    hash_keys,
    hist_bins,
    key_contexts,
    key_values,
    merge,
    rank_keys,
)
from autointerp.harvest.documents import PeakDocuments, capped_keep, token_documents
from autointerp.histogram import HIST_EDGES
from autointerp.models import SubjectModel
from autointerp.store import Store

# ------------------------------------------------------------------------------------------------
# keys and bins


def test_rank_keys_order_by_value_then_lower_context_id() -> None:
    values = torch.tensor(
        [0.5, -0.0, 0.0, -2.0, 3.0, 0.5, 1e-40, -1e-40, float("inf"), -3.5], dtype=torch.float32
    )
    ctx = torch.tensor([7, 3, 4, 1, 9, 2, 5, 6, 8, 0], dtype=torch.int64)
    keys = rank_keys(values, ctx)
    by_key = keys.argsort(descending=True).tolist()
    # Reference: sort by value descending, ties by context id ascending (-0.0 == 0.0 only in value,
    # so we treat it as a distinct, smaller float exactly as IEEE total order does).
    reference = sorted(
        range(len(values)),
        key=lambda i: (
            -values[i].item(),
            math.copysign(1, values[i].item()) < 0 and values[i].item() == 0,
            ctx[i].item(),
        ),
    )
    assert by_key == reference
    assert torch.equal(key_values(keys), values)
    assert torch.equal(key_contexts(keys), ctx)


def test_hist_bins_agree_with_edges() -> None:
    x = torch.randn(5000) * 20
    bins = hist_bins(x.clone()).numpy()
    ref = np.clip(
        np.searchsorted(np.array(HIST_EDGES), x.numpy(), side="right") - 1, 0, len(HIST_EDGES) - 2
    )
    # Values within float rounding of an edge may land either side; everything else must agree.
    near_edge = np.min(np.abs(x.numpy()[:, None] - np.array(HIST_EDGES)[None, :]), axis=1) < 1e-4
    assert (bins[~near_edge] == ref[~near_edge]).all()
    # Per-neuron offsets (one bincount for a whole layer) shift every bin exactly.
    per_neuron = x.view(1000, 5)
    offsets = torch.arange(5, dtype=torch.float32) * len(HIST_EDGES) * 1000
    shifted = hist_bins(per_neuron, offsets).view(-1).numpy()
    assert (shifted == bins + np.tile(offsets.long().numpy(), 1000)).all()


# ------------------------------------------------------------------------------------------------
# brute force


def _check_against_brute_force(
    model: SubjectModel, db: Store, run_id: int, ref: dict, cfg: HarvestConfig
) -> None:
    contexts = ref["contexts"]
    ctx_ids = np.array([c.context_id for c in contexts])
    for layer in cfg.layers:
        acts = ref["acts"][layer]  # [C, T, d]
        body = acts[:, 1:, :]
        d = acts.shape[2]
        for n in range(d):
            stats = db.neuron(run_id, layer, n)
            values = body[:, :, n].astype(np.float64)
            assert stats["count"] == values.size
            assert stats["max"] == pytest.approx(values.max(), abs=1e-6)
            assert stats["min"] == pytest.approx(values.min(), abs=1e-6)
            assert stats["mean"] == pytest.approx(values.mean(), rel=1e-5, abs=1e-7)
            assert stats["variance"] == pytest.approx(values.var(), rel=1e-4, abs=1e-8)
            assert stats["frac_positive"] == pytest.approx((values > 0).mean())
            sampled = (hash_keys(ctx_ids.tolist(), cfg.seed).numpy() >> 32) % cfg.hist_sample == 0
            expected_hist = np.bincount(
                hist_bins(torch.from_numpy(body[sampled][:, :, n])).view(-1).numpy(),
                minlength=len(HIST_EDGES) - 1,
            )
            assert stats["hist"] == expected_hist.tolist()
            assert sum(stats["hist"]) == sampled.sum() * body.shape[1] > 0

            examples = list(db.examples(run_id, layer, n))
            by_kind: dict[str, list[dict]] = {}
            for ex in examples:
                by_kind.setdefault(ex["kind"], []).append(ex)

            ctx_max = body[:, :, n].max(axis=1)
            peaks = body[:, :, n].argmax(axis=1) + 1
            order = _capped(np.lexsort((ctx_ids, -ctx_max)), contexts, peaks, cfg)
            top = by_kind["top"]
            assert [e["context_id"] for e in top] == ctx_ids[order].tolist()
            for ex, i in zip(top, order, strict=True):
                np.testing.assert_allclose(ex["activations"], acts[i, :, n], atol=1e-5)
                assert ex["peak_index"] == int(np.argmax(acts[i, 1:, n])) + 1
                assert ex["split"] == SPLIT_PATTERN[ex["rank"] % 4]

            if model.gated:
                ctx_min = body[:, :, n].min(axis=1)
                lows = body[:, :, n].argmin(axis=1) + 1
                order = _capped(np.lexsort((ctx_ids, ctx_min)), contexts, lows, cfg)
                assert [e["context_id"] for e in by_kind["bottom"]] == ctx_ids[order].tolist()
            else:
                assert "bottom" not in by_kind

            hk = hash_keys(ctx_ids.tolist(), cfg.seed).numpy()
            rand_ref = ctx_ids[np.argsort(hk)[: cfg.random_k]].tolist()
            assert [e["context_id"] for e in by_kind["random"]] == rand_ref

            for ex in by_kind.get("quantile", []):
                i, top_value = ex["interval"], stats["max"]
                assert top_value * i / 4 < ex["max_activation"] <= top_value * (i + 1) / 4 + 1e-6


def _peak_document(context: Any, position: int) -> int:
    """The document of token ``position`` of ``context`` (a :class:`Context` or its ``doc_index``
    list), by the rule docs/harvest.md states: a separator counts with the nearest document token
    before it in the context, else after it."""
    docs = context if isinstance(context, list) else context.doc_index.tolist()
    before = [d for d in docs[1 : position + 1] if d >= 0]
    after = [d for d in docs[position:] if d >= 0]
    return before[-1] if before else after[0]


def _capped(ranked: np.ndarray, contexts: list, peaks: np.ndarray, cfg: HarvestConfig) -> list:
    """The first ``top_k`` of the context indices ``ranked`` (best first) with at most
    ``cfg.per_document`` from one document (where each context peaks at ``peaks``): the greedy
    selection, by hand."""
    taken: dict[int, int] = {}
    out = []
    for i in ranked.tolist():
        doc = _peak_document(contexts[i], int(peaks[i]))
        if cfg.per_document and taken.get(doc, 0) >= cfg.per_document:
            continue
        taken[doc] = taken.get(doc, 0) + 1
        out.append(i)
        if len(out) == cfg.top_k:
            break
    return out


def test_capped_selection_is_the_greedy_one() -> None:
    """:func:`capped_keep` against the greedy choice written out (largest key first, skipping a
    document that already has ``cap``), on random rows with few documents so the cap binds."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, b, cap = int(rng.integers(1, 7)), int(rng.integers(1, 9)), int(rng.integers(1, 4))
        keys = rng.choice(np.arange(-1000, 1000), size=k + b, replace=False)
        docs = rng.integers(-1, 4, size=k + b)  # -1: an entry that is its own document
        kept = capped_keep(torch.from_numpy(keys)[None], torch.from_numpy(docs)[None], k, cap)[0]
        taken: dict[Any, int] = {}
        expected = set()
        for i in np.argsort(-keys).tolist():
            doc = int(docs[i]) if docs[i] >= 0 else ("own", i)
            if len(expected) < k and taken.get(doc, 0) < cap:
                expected.add(i)
                taken[doc] = taken.get(doc, 0) + 1
        assert set(kept.nonzero().flatten().tolist()) == expected


def test_a_separator_counts_with_the_document_it_ends() -> None:
    doc_index = np.array([[-1, 3, 3, -1, 4, 4], [-1, -1, 5, 5, -1, 6], [-1, -1, -1, -1, -1, -1]])
    assert token_documents(doc_index).tolist() == [
        [3, 3, 3, 3, 4, 4],
        [5, 5, 5, 5, 5, 6],
        [-1, -1, -1, -1, -1, -1],
    ]
    for row in doc_index[:2].tolist():  # the test's own statement of the rule agrees
        assert [_peak_document(row, i) for i in range(1, 6)] == token_documents(np.array([row]))[
            0, 1:
        ].tolist()


def test_peak_documents_by_gather_and_for_the_whole_batch_agree_with_argmax() -> None:
    """Where the neuron first reaches its maximum (or minimum) after BOS, and that token's
    document: asked for a few pairs (a gather per pair) and for every pair (the whole batch at
    once), against argmax by hand, with ties (activations in steps of 0.5)."""
    g = torch.Generator().manual_seed(1)
    acts = torch.randint(-3, 4, (6, 10, 7), generator=g).float() * 0.5
    doc_index = torch.randint(0, 4, (6, 10), generator=g).sort(dim=1).values.numpy()
    doc_index[:, 0] = -1
    doc_index[0, 1:] = 2  # one context in one document
    docs = torch.from_numpy(token_documents(doc_index))
    body = acts[:, 1:, :]
    for largest in (True, False):
        peaks = (body.argmax(dim=1) if largest else body.argmin(dim=1)) + 1  # [B, d]
        expected = docs.gather(1, peaks)
        pairs = torch.cartesian_prod(torch.arange(6), torch.arange(7))
        few = pairs[::9]
        for chosen in (few, pairs):  # a gather per pair; the whole batch at once
            found = PeakDocuments(acts, docs, body.amax(dim=1), body.amin(dim=1)).of(
                chosen[:, 0], chosen[:, 1], largest
            )
            assert found.tolist() == expected[chosen[:, 0], chosen[:, 1]].tolist()


def _random_batches(
    n: int, b: int, t: int, d: int, docs: int, seed: int = 0
) -> list[tuple[torch.Tensor, ...]]:
    """Batches of activations (with ties and repeated values), ids, hash keys and token documents
    drawn from few documents, so the cap binds often."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        acts = torch.randint(-4, 5, (b, t, d), generator=g).float() * 0.5
        ids = torch.arange(i * b, (i + 1) * b)
        doc_index = torch.randint(0, docs, (b, t), generator=g).sort(dim=1).values.numpy()
        doc_index[:, 0] = -1
        doc_index[doc_index == 2] = -1  # some separators
        docs_t = torch.from_numpy(token_documents(doc_index))
        out.append((acts, ids, hash_keys(ids.tolist(), 0), docs_t))
    return out


def _fold(
    batches: list[tuple[torch.Tensor, ...]], cap: int, resume_at: int = -1, bottom_k: int = 4
) -> LayerState:
    state = LayerState(
        5, 8, top_k=6, bottom_k=bottom_k, random_k=3, hist_sample=2, per_document=cap
    )
    for i, (acts, ids, hkeys, docs) in enumerate(batches):
        state.update(acts, ids, hkeys, docs)
        if i == resume_at:  # a checkpoint and a resumed run
            state = LayerState.from_bytes(state.to_bytes(), hist_sample=2)
    return state


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_capped_state_equals_the_capped_selection_of_everything(cap: int) -> None:
    """Streamed batch by batch, resumed from a checkpoint, or merged from shards, the capped top
    and bottom examples are the greedy capped selection over every context at once."""
    batches = _random_batches(n=9, b=4, t=8, d=5, docs=6)
    acts = torch.cat([a for a, *_ in batches])
    ids = torch.cat([i for _, i, *_ in batches])
    docs = torch.cat([d for *_, d in batches])
    body = acts[:, 1:, :]
    whole = _fold(batches, cap)
    resumed = _fold(batches, cap, resume_at=4)
    shards = [_fold(batches[i::3], cap) for i in range(3)]
    merged = shards[0]
    for other in shards[1:]:
        merged.merge(other)
    without_bottom = _fold(batches[0::2], cap, bottom_k=0)  # a model whose MLP is not gated
    without_bottom.merge(_fold(batches[1::2], cap, bottom_k=0))
    top_keys = [st.t["top_key"].sort(dim=1).values for st in (without_bottom, merged)]
    assert torch.equal(*top_keys)
    for state in (whole, resumed, merged):
        for prefix, extreme, k in (("top", 1.0, 6), ("bot", -1.0, 4)):
            for n in range(5):
                values = (body[:, :, n] * extreme).amax(dim=1)
                peaks = (body[:, :, n] * extreme).argmax(dim=1) + 1
                order = sorted(range(len(ids)), key=lambda c: (-values[c].item(), ids[c].item()))
                taken: dict[int, int] = {}
                expected = []
                for c in order:
                    doc = int(docs[c, peaks[c]])
                    if taken.get(doc, 0) < cap and len(expected) < k:
                        taken[doc] = taken.get(doc, 0) + 1
                        expected.append(int(ids[c]))
                got = state.t[f"{prefix}_key"][n].sort(descending=True).values
                got = got[got != INT64_MIN]  # empty slots: fewer documents than slots
                assert key_contexts(got).tolist() == expected, (prefix, n)
        assert torch.equal(state.t["count"], whole.t["count"])
    # the three ways agree on every tensor but the slot order of the example buffers
    for state in (resumed, merged):
        for prefix in ("top", "bot"):
            a, b = whole.t[f"{prefix}_key"], state.t[f"{prefix}_key"]
            ia, ib = a.argsort(dim=1), b.argsort(dim=1)
            assert torch.equal(a.gather(1, ia), b.gather(1, ib))
            for part in ("doc", "acts"):
                x, y = whole.t[f"{prefix}_{part}"], state.t[f"{prefix}_{part}"]
                assert torch.equal(x[torch.arange(5)[:, None], ia], y[torch.arange(5)[:, None], ib])


def test_one_repeated_document_cannot_fill_a_neurons_examples(
    tiny: SubjectModel, tmp_path: Path
) -> None:
    """A corpus that is mostly one long document of repeated doctest lines (as the standard
    library's decimal module once filled every graphed neuron's top examples): with the default
    cap no neuron has more than 2 top examples that peak in it; without a cap, many do."""
    from helpers import PARAGRAPHS

    doctest = "    >>> ExtendedContext.divide(Decimal('1'), Decimal('3'))\n    Decimal('0.333')\n"
    corpus = tmp_path / "repeated.jsonl"
    texts = [doctest * 60, *PARAGRAPHS]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    counts = {}
    for cap in (0, 2):
        cfg = HarvestConfig(
            model=tiny.name,
            corpus=str(corpus),
            layers=[1],
            ctx_len=16,
            top_k=6,
            random_k=2,
            per_document=cap,
            checkpoint_seconds=1e9,
        )
        result = harvest(tiny, tmp_path / f"c{cap}.db", cfg, progress=False, log=lambda m: None)
        store = Store(tmp_path / f"c{cap}.db")
        most = []
        for n in range(tiny.d_mlp):
            top = list(store.examples(result.run_id, 1, n, kinds=["top"]))
            assert len(top) == 6  # the short documents make up the rest
            per_doc: dict[int, int] = {}
            for ex in top:
                doc = _peak_document(ex["doc_index"], ex["peak_index"])
                per_doc[doc] = per_doc.get(doc, 0) + 1
            most.append(max(per_doc.values()))
        counts[cap] = most
    assert max(counts[2]) == 2
    assert sum(m > 2 for m in counts[0]) > tiny.d_mlp // 2  # the test can fail


def test_the_cap_is_part_of_the_config_hash() -> None:
    """The default cap changes results, so it gets a new hash; a harvest without a cap keeps the
    hash it had before the option existed."""
    assert HarvestConfig(model="m", per_document=0).config_hash() == "959d12b88d4ba391"
    assert HarvestConfig(model="m").config_hash() != "959d12b88d4ba391"
    assert HarvestConfig(model="m", per_document=3).config_hash() not in {
        HarvestConfig(model="m").config_hash(),
        "959d12b88d4ba391",
    }
    # where the statistics are computed is not part of it
    assert HarvestConfig(model="m", stats_device="cpu").config_hash() == (
        HarvestConfig(model="m").config_hash()
    )


@pytest.mark.parametrize("per_document", [0, 1, 2])
def test_tiny_model_harvest_equals_brute_force(
    tiny: SubjectModel, text_corpus: Path, tmp_path: Path, per_document: int
) -> None:
    cfg = HarvestConfig(
        model=tiny.name,
        corpus=str(text_corpus),
        layers=[0, 1],
        ctx_len=16,
        top_k=6,
        random_k=5,
        batch_size=3,
        checkpoint_seconds=1e9,
        per_document=per_document,
    )
    result = harvest(tiny, tmp_path / "h.db", cfg, progress=False, log=lambda m: None)
    ref = brute_force(tiny, str(text_corpus), [0, 1], 16, None)
    assert result.contexts == len(ref["contexts"]) > cfg.top_k
    _check_against_brute_force(tiny, Store(tmp_path / "h.db"), result.run_id, ref, cfg)


def test_tiny_gated_model_keeps_most_negative(
    tiny_gated: SubjectModel, text_corpus: Path, tmp_path: Path
) -> None:
    cfg = HarvestConfig(
        model=tiny_gated.name,
        corpus=str(text_corpus),
        layers=[1],
        ctx_len=12,
        top_k=4,
        random_k=3,
        batch_size=5,
        checkpoint_seconds=1e9,
    )
    result = harvest(tiny_gated, tmp_path / "g.db", cfg, progress=False, log=lambda m: None)
    ref = brute_force(tiny_gated, str(text_corpus), [1], 12, None)
    resolved = HarvestConfig(**{**cfg.__dict__, "bottom_k": 4})
    _check_against_brute_force(tiny_gated, Store(tmp_path / "g.db"), result.run_id, ref, resolved)


def test_rerun_of_a_complete_harvest_does_nothing(
    tiny: SubjectModel, text_corpus: Path, tmp_path: Path
) -> None:
    cfg = HarvestConfig(
        model=tiny.name, corpus=str(text_corpus), layers=[0], ctx_len=16, top_k=3, random_k=2
    )
    first = harvest(tiny, tmp_path / "h.db", cfg, progress=False, log=lambda m: None)
    rows = Store(tmp_path / "h.db").db["examples"].count
    again = harvest(tiny, tmp_path / "h.db", cfg, progress=False, log=lambda m: None)
    assert again.status == "already complete" and again.run_id == first.run_id
    reader = Store(tmp_path / "h.db")
    assert (
        reader.db.conn.total_changes == 0
    )  # opening a current database writes nothing (readers never block)
    assert reader.db["examples"].count == rows
    # The corpus fingerprint is part of the run's identity: edited text is a new run, never a
    # resumed old one.
    text_corpus.write_text(
        text_corpus.read_text() + '{"text": "One more document about foxes and dogs."}\n'
    )
    changed = harvest(tiny, tmp_path / "h.db", cfg, progress=False, log=lambda m: None)
    assert changed.status == "complete" and changed.run_id != first.run_id


def test_one_huge_document_is_read_only_as_far_as_the_budget_and_stores_only_that(
    tiny: SubjectModel, tmp_path: Path
) -> None:
    """A 4 MB single-line document with a budget of a few contexts: tokenized a piece at a time,
    stopped at the budget, and the stored document text is the part the contexts read - not 4 MB per
    run. (Peak memory at 5 and 45 MB is in BENCHMARKS.md: bench/bench_document_memory.py.)"""
    from autointerp.corpus import load_documents

    words = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun. "
    big = tmp_path / "big.txt"
    big.write_text(words * (4_000_000 // len(words)))
    cfg = HarvestConfig(
        model=tiny.name,
        corpus=str(big),
        layers=[0],
        ctx_len=16,
        n_tokens=16 * 40,
        top_k=4,
        random_k=4,
        checkpoint_seconds=1e9,
    )
    result = harvest(tiny, tmp_path / "big.db", cfg, progress=False, log=lambda m: None)
    assert result.contexts == 40
    store = Store(tmp_path / "big.db")
    (doc,) = list(store.db.query("select text from documents"))
    assert 0 < len(doc["text"]) < 40 * 16 * 10 and big.read_text().startswith(doc["text"])
    # provenance within the kept text
    for row in store.db.query("select tokens, doc_index, offsets from contexts"):
        ids, offsets = json.loads(row["tokens"]), json.loads(row["offsets"])
        for tok, (start, end) in zip(ids[1:], offsets[1:], strict=True):
            assert (
                end <= len(doc["text"]) and tiny.tokenizer.decode([tok]) == doc["text"][start:end]
            )
    # the same contexts as tokenizing the whole document at once
    whole = list(
        iter_contexts(
            load_documents(str(big), 0),
            tiny.tokenizer,
            16,
            tiny.bos_id,
            tiny.sep_id,
            40,
            piece_chars=10**9,
        )
    )
    ids = {
        r["context_id"]: json.loads(r["tokens"])
        for r in store.db.query("select context_id, tokens from contexts")
    }
    assert ids and all(whole[c].tokens.tolist() == t for c, t in ids.items())


def test_a_harvest_reads_the_corpus_only_as_far_as_its_token_budget(
    tiny: SubjectModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget reaches the corpus reader: a file longer than the budget's characters is read
    only that far (the least the reader takes is lowered here, so a small file shows it), and the
    run's fingerprint is that of the part read."""
    import autointerp.corpus as corpus

    monkeypatch.setattr(corpus, "MIN_READ_CHARS", 1000)
    words = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun. "
    big = tmp_path / "big.txt"
    big.write_text(words * 5000)  # 415,000 characters; the budget below reads 20,480
    cfg = HarvestConfig(
        model=tiny.name,
        corpus=str(big),
        layers=[0],
        ctx_len=16,
        n_tokens=16 * 20,
        top_k=4,
        random_k=4,
        checkpoint_seconds=1e9,
    )
    result = harvest(tiny, tmp_path / "h.db", cfg, progress=False, log=lambda m: None)
    assert result.contexts == 20
    (run,) = Store(tmp_path / "h.db").runs()
    read = corpus.load_documents(str(big), 0, 16 * 20)
    assert [len(d.text) for d in read] == [corpus.read_limit(16 * 20)] == [16 * 20 * 64]
    assert run["corpus"]["fingerprint"] == corpus.corpus_fingerprint(read)


_ENDLESS_HARVEST = """
import resource, sys, threading
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer
from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import SubjectModel
from autointerp.packaged import packaged_model_dir

spec, db = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir("smollm2-135m")))
shape = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=24, n_ctx=128)
config = HookedTransformerConfig(
    **shape, d_vocab=len(tokenizer), act_fn="gelu", normalization_type="LN", seed=0
)
net = HookedTransformer(config, tokenizer, move_to_device=False).eval()
model = SubjectModel("tiny-gelu", net, tokenizer, {{"model": "tiny-gelu", "dtype": "float32"}})


def write_forever():  # an endless source behind a named pipe
    chunk = ("The quick brown fox jumps over the lazy dog. " * 1000).encode()
    try:
        with open(spec, "wb") as f:
            while True:
                f.write(chunk)
    except OSError:
        pass  # the reader closed the pipe


threading.Thread(target=write_forever, daemon=True).start()
cfg = HarvestConfig(
    model="tiny-gelu", corpus=spec, layers=[0], ctx_len=16, n_tokens=16 * 20, top_k=4, random_k=4
)
result = harvest(model, db, cfg, progress=False, log=lambda m: None)
print(result.status, result.contexts)
"""


@pytest.mark.slow  # ~15 s, most of it importing torch and reading 64 MB through the pipe
def test_a_harvest_of_an_endless_pipe_stops_at_its_budget_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """A named pipe whose writer never stops, harvested with --tokens, in a process capped at
    8 GB of address space (torch alone maps ~2.7 GB): the harvest completes, reading only as far as
    the budget needs (before, it read until the memory ran out: 14.6 GB from /dev/zero)."""
    import subprocess
    import sys

    from helpers import REPO

    fifo = tmp_path / "endless.txt"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _ENDLESS_HARVEST.format(limit=8 << 30),
            str(fifo),
            str(tmp_path / "h.db"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["complete", "20"], proc.stderr[-800:]


@pytest.mark.parametrize("per_document", [0, 1])
def test_tiny_shards_merge_to_the_unsharded_result(
    tiny_gated: SubjectModel, text_corpus: Path, tmp_path: Path, per_document: int
) -> None:
    base = dict(
        model=tiny_gated.name,
        corpus=str(text_corpus),
        layers=[0, 1],
        ctx_len=12,
        top_k=5,
        random_k=4,
        batch_size=4,
        per_document=per_document,
    )
    whole = harvest(
        tiny_gated, tmp_path / "all.db", HarvestConfig(**base), progress=False, log=lambda m: None
    )
    for i in range(3):
        harvest(
            tiny_gated,
            tmp_path / f"s{i}.db",
            HarvestConfig(**base, shard=(i, 3)),
            progress=False,
            log=lambda m: None,
        )
    with pytest.raises(Exception, match="missing"):
        merge(
            tmp_path / "partial.db",
            [Store(tmp_path / "s0.db"), Store(tmp_path / "s2.db")],
            log=lambda m: None,
        )
    assert not (tmp_path / "partial.db").exists()  # a failed merge creates nothing
    [merged] = merge(
        Store(tmp_path / "merged.db"),
        [Store(tmp_path / f"s{i}.db") for i in range(3)],
        log=lambda m: None,
    )
    assert_same_harvest(
        Store(tmp_path / "merged.db"), merged, Store(tmp_path / "all.db"), whole.run_id
    )


# ------------------------------------------------------------------------------------------------
# real model


@pytest.mark.slow
def test_smollm2_harvest_equals_brute_force(smol: SubjectModel, tmp_path: Path) -> None:
    cfg = HarvestConfig(
        model=smol.name,
        corpus="default",
        layers=[0, 2],
        ctx_len=32,
        n_tokens=32 * 48,
        top_k=8,
        random_k=6,
        batch_size=8,
        checkpoint_seconds=1e9,
    )
    result = harvest(smol, tmp_path / "h.db", cfg, progress=False, log=lambda m: None)
    ref = brute_force(smol, "default", [0, 2], 32, 32 * 48)
    assert result.contexts == 48
    resolved = HarvestConfig(**{**cfg.__dict__, "bottom_k": 8})
    _check_against_brute_force(smol, Store(tmp_path / "h.db"), result.run_id, ref, resolved)


@pytest.mark.slow
def test_smollm2_shards_merge_exactly(tmp_path: Path) -> None:
    common = [
        "--model",
        "smollm2-135m",
        "--layers",
        "1,3",
        "--tokens",
        "2048",
        "--ctx-len",
        "32",
        "--top-k",
        "6",
        "--random-k",
        "4",
        "--no-progress",
    ]
    assert run_cli("harvest", *common, "--db", str(tmp_path / "all.db")).returncode == 0
    for i in range(2):
        proc = run_cli("harvest", *common, "--shard", f"{i}/2", "--db", str(tmp_path / f"s{i}.db"))
        assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "merge",
        str(tmp_path / "merged.db"),
        str(tmp_path / "s0.db"),
        str(tmp_path / "s1.db"),
        "--answers",
    )
    assert proc.returncode == 0, proc.stderr
    merged, whole = Store(tmp_path / "merged.db"), Store(tmp_path / "all.db")
    assert_same_harvest(merged, merged.runs()[0]["id"], whole, whole.runs()[0]["id"])
    # page answers: off by default; asked for on the finished harvest they are added, and the
    # merge wrote them too: equal but for the run id
    import zlib

    assert whole.answered_layers(whole.runs()[0]["id"], "neuroscope") == set()
    proc = run_cli("harvest", *common, "--db", str(tmp_path / "all.db"), "--answers", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "already complete"

    for layer in (1, 3):
        for n in (0, 777, 1535):
            pages = [
                json.loads(zlib.decompress(s.answer(s.runs()[0]["id"], layer, n, "neuroscope")))
                for s in (merged, whole)
            ]
            assert pages[0]["examples"] and pages[0]["neuron"] == n
            assert {**pages[0], "run_id": 0} == {**pages[1], "run_id": 0}
    assert Store(tmp_path / "s0.db").answered_layers(1, "neuroscope") == set()
    assert merged.answered_layers(merged.runs()[0]["id"], "neuroscope") == {1, 3}


@pytest.mark.slow
def test_smollm2_resume_after_sigkill_gives_identical_rows(tmp_path: Path) -> None:
    common = [
        "--model",
        "smollm2-135m",
        "--layers",
        "0,2",
        "--tokens",
        "3072",
        "--ctx-len",
        "32",
        "--top-k",
        "6",
        "--random-k",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    killed = run_cli(
        "harvest",
        *common,
        "--db",
        str(tmp_path / "r.db"),
        "--checkpoint-seconds",
        "0",
        env={"AUTOINTERP_KILL_AFTER_CHECKPOINTS": "5"},
    )
    assert killed.returncode == -9
    store = Store(tmp_path / "r.db")
    [run] = store.runs()
    assert run["status"] == "running" and 0 < run["contexts_done"] < 96
    assert store.db["examples"].count == 0  # results are written only when a run completes
    resumed = run_cli("harvest", *common, "--db", str(tmp_path / "r.db"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stderr
    assert run_cli("harvest", *common, "--db", str(tmp_path / "u.db")).returncode == 0
    a, b = Store(tmp_path / "r.db"), Store(tmp_path / "u.db")
    assert len(a.runs()) == 1 and a.runs()[0]["status"] == "complete"
    assert_same_harvest(a, a.runs()[0]["id"], b, b.runs()[0]["id"])


@pytest.mark.parametrize("with_answers", [True, False])
def test_deleting_runs_removes_everything_they_own(
    small_db: Path, tmp_path: Path, with_answers: bool
) -> None:
    """What the Ray driver does to its shard runs once merged: no row of theirs is left, whether or
    not the database has the optional answers table (an older one lacks it)."""
    from helpers import copy_store

    from autointerp.api.fastpath import store_default_answers

    store = copy_store(small_db, tmp_path)
    [run] = store.runs()
    if with_answers:
        assert store_default_answers(store, run["id"]) > 0
    else:
        store.db.execute("drop table answers")
    store.delete_runs([run["id"]])
    owned = ["examples", "neurons", "contexts", "documents", "checkpoints"]
    owned += ["answers"] if with_answers else []
    for table in owned:
        assert store.db.execute(f"select count(*) from {table}").fetchone()[0] == 0, table
    assert store.runs() == []


def test_checkpoints_keep_a_set_spacing_and_otherwise_cost_a_small_share_of_the_run() -> None:
    assert checkpoint_spacing(0.0, 30.0) == 0.0  # after every batch, however slow the write
    assert checkpoint_spacing(45.0, 30.0) == 45.0
    assert checkpoint_spacing(None, 0.0) == CHECKPOINT_MIN_SECONDS
    # a whole-model state that took 6 s to write: the next one waits 6 / share seconds
    assert checkpoint_spacing(None, 6.0) == pytest.approx(6.0 / CHECKPOINT_SHARE)
    assert 6.0 / checkpoint_spacing(None, 6.0) <= CHECKPOINT_SHARE < 0.05


def test_a_large_state_waits_longer_for_its_first_checkpoint() -> None:
    # the default config's state per layer of gemma-3-270m (d_mlp 2,048, gated: bottom_k = top_k)
    gemma_layer = LayerState(2048, 64, top_k=40, bottom_k=40, random_k=40)
    assert 0.99 < gemma_layer.nbytes / len(gemma_layer.to_bytes()) <= 1.0
    whole_model = checkpoint_spacing(None, estimated_write_seconds(18 * gemma_layer.nbytes))
    assert 5 * 60 < whole_model < 20 * 60  # not a full write two minutes into a short harvest
    few_layers = LayerState(64, 16, top_k=6, bottom_k=0, random_k=5)
    assert checkpoint_spacing(None, estimated_write_seconds(2 * few_layers.nbytes)) == (
        CHECKPOINT_MIN_SECONDS
    )


class CheckpointCountingStore(Store):
    """A real store that counts the checkpoints written."""

    checkpoints = 0

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self.checkpoints += 1
        super().save_checkpoint(*args, **kwargs)


def test_the_default_cadence_times_the_first_checkpoint_by_the_state_size(
    tiny: SubjectModel, text_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = HarvestConfig(
        model=tiny.name,
        corpus=str(text_corpus),
        layers=[0, 1],
        ctx_len=16,
        top_k=3,
        random_k=2,
        batch_size=2,
    )
    monkeypatch.setattr(checkpoints_module, "CHECKPOINT_MIN_SECONDS", 0.0)
    counted = {}
    for rate in (float("inf"), 1.0):  # bytes/s: an instant write, then one of hours
        monkeypatch.setattr(checkpoints_module, "CHECKPOINT_BYTES_PER_SECOND", rate)
        store = CheckpointCountingStore(tmp_path / f"{rate}.db")
        harvest(tiny, store, cfg, progress=False, log=lambda m: None)
        counted[rate] = store.checkpoints
    assert counted[float("inf")] >= 1 and counted[1.0] == 0


def test_writing_the_results_shows_its_progress_layer_by_layer(
    tiny: SubjectModel, text_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = HarvestConfig(
        model=tiny.name, corpus=str(text_corpus), layers=[0, 1], ctx_len=16, top_k=3, random_k=2
    )
    harvest(tiny, tmp_path / "shown.db", cfg, progress=True, log=lambda m: None)
    shown = capsys.readouterr().err
    assert "write results" in shown and "2/2" in shown
    harvest(tiny, tmp_path / "quiet.db", cfg, progress=False, log=lambda m: None)
    assert capsys.readouterr().err == ""


def test_the_final_write_reuses_the_pages_the_checkpoints_held(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.upsert_model({"name": "m"})
    run_id = store.create_run("m", "harvest", {"layers": [0]}, "h", (0, 1), {})
    store.save_checkpoint(run_id, 10, 640, [(0, os.urandom(2 << 20))])  # 2 MB of state
    examples = [
        (0, n, "top", 0, "train", n, 1.0, 0.0, 0, None, os.urandom(1024)) for n in range(3000)
    ]
    store.finish_run(run_id, [], [], [], examples, None, 10, 640)
    assert store.db["checkpoints"].count == 0 and store.db["examples"].count == 3000
    store.db.execute("pragma wal_checkpoint(truncate)")
    # 3 MB of rows written after 2 MB of states were freed in the same transaction: no page is
    # left free (deleted after the rows were written, the states' pages stayed free in the file:
    # 1.8 GB after a full-corpus Gemma harvest)
    assert store.db.execute("pragma freelist_count").fetchone()[0] == 0


def test_statistics_on_a_device_equal_the_host_ones(
    tiny_gated: SubjectModel, text_corpus: Path
) -> None:
    """The state's code is the same torch code on every device, so the check ``tests/test_gpu.py``
    runs with CUDA runs here with the CPU as the device: straight through, resumed from a
    checkpoint, and merged from shards, every tensor equal. A real harvest's activations reach the
    state on the device asked for, as float32."""
    from harvest_states import check_device_statistics, model_batches

    batches = model_batches(tiny_gated, str(text_corpus), 1, 12, 6, 5)
    check_device_statistics(batches, "cpu")
    seen = []
    tokens = torch.from_numpy(np.stack([np.arange(12)] * 2))
    tiny_gated.each_mlp_activation(
        tokens, [0], lambda _layer, acts: seen.append((acts.device, acts.dtype)), device="cpu"
    )
    assert seen == [(torch.device("cpu"), torch.float32)]
    with pytest.raises(Exception, match="not a device"):
        harvest(
            tiny_gated,
            Path(text_corpus).parent / "never.db",
            HarvestConfig(model=tiny_gated.name, corpus=str(text_corpus), stats_device="gpu0"),
            progress=False,
            log=lambda m: None,
        )
    assert not (Path(text_corpus).parent / "never.db").exists()
