"""``--neurons best:K`` on a real harvest: a small model with one neuron made dense by its bias, and
a corpus where one long document fills many contexts. Each rule of :mod:`autointerp.selection` is
checked against the stored examples read back independently, and every rule has to fire."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import PARAGRAPHS

from autointerp.errors import UserError
from autointerp.models import SubjectModel
from autointerp.selection import best_neurons, select_neurons
from autointerp.store import Store

DENSE = 3  # the neuron whose bias makes it fire on every token
LAYER = 1


@pytest.fixture(scope="module")
def best_db(tiny: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autointerp.harvest import HarvestConfig, harvest

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():  # GELU(x + 50) is positive, and near its max, on every token
        model.blocks[LAYER].mlp.b_in[DENSE] += 50.0
    subject = SubjectModel(
        "tiny-best", model, tiny.tokenizer, {**tiny.provenance, "model": "tiny-best"}
    )
    folder = tmp_path_factory.mktemp("best")
    # one long document (most of the contexts) and the short paragraphs
    long_doc = "".join(f"value_{i} = compute({i}, step={i % 7})\n" for i in range(60))
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in [long_doc, *PARAGRAPHS * 4]))
    db = folder / "best.db"
    cfg = HarvestConfig(
        model=subject.name,
        corpus=str(corpus),
        layers=[LAYER],
        ctx_len=24,
        top_k=8,
        random_k=8,
        batch_size=8,
        checkpoint_seconds=1e9,
        # uncapped, as --per-document 0 or a harvest made before the cap: the long document can
        # fill a neuron's top examples, which is what the one-document rule is there for
        per_document=0,
    )
    harvest(subject, db, cfg, progress=False, log=lambda m: None)
    return db


def _top_examples(store: Store, run_id: int, neuron: int) -> list[dict]:
    return list(store.examples(run_id, LAYER, neuron, kinds=["top"]))


def _document(store: Store, run_id: int, ex: dict) -> str:
    doc = ex["doc_index"][ex["peak_index"]]
    if doc < 0:
        return "separator"
    return re.sub(r"#\d+$", "", store.document(run_id, doc)["doc_id"])


def _one_document_share(store: Store, run_id: int, top: list[dict]) -> float:
    """The largest share of the top examples in one document: of all of them, or of those at or
    above half the strongest (when two or more are)."""
    docs = [_document(store, run_id, ex) for ex in top]
    share = Counter(docs).most_common(1)[0][1] / len(top)
    strongest = max(ex["max_activation"] for ex in top)
    near = [d for d, ex in zip(docs, top, strict=True) if ex["max_activation"] >= strongest / 2]
    if len(near) >= 2:
        share = max(share, Counter(near).most_common(1)[0][1] / len(near))
    return share


def test_best_takes_the_strongest_neurons_that_pass_every_rule(best_db: Path) -> None:
    store = Store(best_db, create=False)
    run_id = store.latest_complete_run("tiny-best", LAYER)["id"]
    stats = {
        r["neuron"]: r for r in store.db.query("select * from neurons where run_id = ?", [run_id])
    }
    pick = best_neurons(store, run_id, LAYER, len(stats))

    # every rule fired on this harvest, and the dense neuron was passed over as dense
    reasons = Counter(r.split(" as ")[0] for r in pick.skipped.values())
    assert reasons["dense"] >= 1 and reasons["one document"] >= 1, pick.skipped
    assert reasons["same top context"] >= 1, pick.skipped
    assert pick.skipped[DENSE] == "dense" and stats[DENSE]["frac_positive"] > 0.99

    # what was taken passes the rules, read back from the stored examples
    seen_contexts: set[int] = set()
    seen_peaks: set[tuple[str, str]] = set()
    for neuron in pick.chosen:
        assert stats[neuron]["frac_positive"] <= 0.9
        top = _top_examples(store, run_id, neuron)
        assert _one_document_share(store, run_id, top) <= 0.5, neuron
        first = top[0]
        peak = (_document(store, run_id, first), first["str_tokens"][first["peak_index"]].strip())
        assert first["context_id"] not in seen_contexts and peak not in seen_peaks
        seen_contexts.add(first["context_id"])
        seen_peaks.add(peak)
    # strongest first, and no neuron stronger than the last pick was left without a reason
    maxima = [stats[n]["max"] for n in pick.chosen]
    assert maxima == sorted(maxima, reverse=True)
    stronger = {n for n, r in stats.items() if r["max"] > maxima[-1]}
    assert stronger <= set(pick.chosen) | set(pick.skipped)
    # the one-document neurons really are: their top examples mostly peak in the long document
    for neuron, why in pick.skipped.items():
        if why == "one document":
            assert _one_document_share(store, run_id, _top_examples(store, run_id, neuron)) > 0.5


def test_best_k_is_a_prefix_and_top_k_is_unchanged(best_db: Path) -> None:
    store = Store(best_db, create=False)
    run_id = store.latest_complete_run("tiny-best", LAYER)["id"]
    order = best_neurons(store, run_id, LAYER, 24).chosen
    for k in (1, 2, 4):
        assert select_neurons(store, "tiny-best", LAYER, f"best:{k}", 24) == sorted(order[:k])
    top = select_neurons(store, "tiny-best", LAYER, "top:2", 24)
    strongest = store.rank_neurons("tiny-best", "max", LAYER, 2)
    assert top == sorted(r["neuron"] for r in strongest) and DENSE in top
    assert DENSE not in select_neurons(store, "tiny-best", LAYER, "best:24", 24)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("best:0", "K >= 1"), ("best:x", "needs a number"), ("BEST:-2", "K >= 1")],
)
def test_a_bad_best_spec_is_one_sentence(best_db: Path, spec: str, message: str) -> None:
    store = Store(best_db, create=False)
    with pytest.raises(UserError, match=message):
        select_neurons(store, "tiny-best", LAYER, spec, 24)
    with pytest.raises(UserError, match="has not been harvested"):
        select_neurons(store, "tiny-best", 0, "best:2", 24)
