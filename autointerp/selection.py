"""Which neurons of a layer a stage works on: ``best:K`` (strong neurons worth reading), ``top:K``
by max activation, ranges, or all.

The graph stage (:mod:`autointerp.n2g.run`), the explain stage (:mod:`autointerp.explain.plan`) and
the export command choose neurons with the same ``--neurons`` spec; it lives here, below the stages,
so that choosing neurons for explanations does not import the graph stage's driver.

**Why ``best:K`` exists.** The strongest neurons by max activation are often not the ones worth
reading first: on a fresh Gemma harvest all four ``top:4`` neurons of a layer peaked on the same
doctest line of one standard-library file, and the explained ones fired on 99.9-100% of tokens.
``best:K`` walks the layer's firing neurons in the ``top:K`` order (highest max activation first)
and takes a neuron unless

1. it is **dense**: positive on more than :data:`DENSE_FRAC_POSITIVE` (90%) of the harvested
   tokens, or at or above half its max on at least :data:`DENSE_NEAR_MAX_SHARE` (10%) of them (the
   harvest's histogram, counting only bins that lie wholly above half the max);
2. its top examples come **mostly from one document**: more than :data:`ONE_DOCUMENT_SHARE` (50%) of
   its top examples peak in the same source document, or more than half of those at or above half
   its max do (when at least two are: its max is then made by one document). The chunks
   ``file.py#3``, ``file.py#4`` of a code file count as one document, and a separator between
   documents as one of its own;
3. it **shares its top context** with a neuron already taken from the layer: the same context as
   its rank-0 top example, or a rank-0 peak on the same (normalised) token in the same source
   document.

It stops at K neurons (fewer when fewer qualify). The picks of ``best:1`` are the first pick of
``best:4``, so the neuron `make explain` explains is one of those it graphs. Everything is read from
the harvest's stored statistics and top examples; nothing runs the model.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autointerp.errors import UserError
from autointerp.histogram import HIST_EDGES
from autointerp.ranges import bounded_index, parse_ranges

if TYPE_CHECKING:
    from autointerp.store import Store

#: best:K skips a neuron positive on more than this share of tokens.
DENSE_FRAC_POSITIVE = 0.9
#: ... or at or above half its max on at least this share of (histogram-sampled) tokens.
DENSE_NEAR_MAX_SHARE = 0.1
#: best:K skips a neuron when more than this share of its top examples peak in one document.
ONE_DOCUMENT_SHARE = 0.5
#: The document key of a peak on a separator between documents.
SEPARATOR = "(separator)"


def parse_neurons(text: str | None, d_mlp: int) -> list[int]:
    """``"0-15,100"`` -> neuron list; ``None``/``"all"`` -> every neuron of the layer."""
    parsed = parse_ranges(text, "Neurons", "0-15,100")
    if parsed is None:
        return list(range(d_mlp))
    bad = [n for n in parsed if not 0 <= n < d_mlp]
    if bad:
        raise UserError(f"Neuron {bad[0]} is out of range: layers have neurons 0-{d_mlp - 1}.")
    return sorted(parsed)


def _count(spec: str, kind: str) -> int:
    try:
        k = int(spec.split(":", 1)[1])
    except ValueError as exc:
        raise UserError(f"--neurons {kind}:K needs a number, not {spec!r}.") from exc
    if k < 1:
        raise UserError(f"--neurons {kind}:K needs K >= 1, not {k}.")
    return bounded_index(k, f"--neurons {kind}:K", spec)


def spec_size(spec: str | None, d_mlp: int | None) -> int | None:
    """How many neurons ``spec`` picks in a layer of ``d_mlp`` (at most K for ``best:K`` and
    ``top:K``), checked as :func:`select_neurons` checks it but with no harvest to read: a plan made
    before the harvest. None when that needs ``d_mlp`` and it is not known yet (all neurons)."""
    kind = spec.strip().lower().split(":", 1)[0] if spec and ":" in spec else None
    if kind in ("top", "best"):
        k = _count(spec, kind)  # type: ignore[arg-type]
        return k if d_mlp is None else min(k, d_mlp)
    if d_mlp is not None:
        return len(parse_neurons(spec, d_mlp))
    parsed = parse_ranges(spec, "Neurons", "0-15,100")
    return None if parsed is None else len(set(parsed))


def select_neurons(store: Store, model: str, layer: int, spec: str | None, d_mlp: int) -> list[int]:
    """``best:K`` (:func:`best_neurons`, the module docstring's rule), ``top:K`` (the K neurons
    with the highest max activation in the layer's harvest), ranges, or all; sorted."""
    kind = spec.strip().lower().split(":", 1)[0] if spec and ":" in spec else None
    if kind == "top":
        k = _count(spec, "top")  # type: ignore[arg-type]
        return sorted(r["neuron"] for r in store.rank_neurons(model, "max", layer, k))
    if kind == "best":
        k = _count(spec, "best")  # type: ignore[arg-type]
        run = store.harvest_run(model, layer)
        return sorted(best_neurons(store, int(run["id"]), layer, k).chosen)
    return parse_neurons(spec, d_mlp)


@dataclass
class BestPick:
    """What ``best:K`` chose in a layer (in pick order) and why it passed over the stronger neurons
    it did not take (neuron -> ``dense``, ``one document`` or ``same top context as L/N``)."""

    chosen: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


def near_max_share(hist: list[int], top: float) -> float:
    """The share of a neuron's histogram-sampled tokens at or above half its max activation ``top``
    (bins that lie wholly above half the max: a lower bound)."""
    total = sum(hist)
    if not total or top <= 0:
        return 0.0
    near = sum(c for c, lo in zip(hist, HIST_EDGES[:-1], strict=True) if lo >= top / 2)
    return near / total


def is_dense(row: dict[str, Any]) -> bool:
    """Rule 1 of ``best:K`` on a :meth:`~autointerp.store.Store.neurons_by_max` row."""
    return (
        row["frac_positive"] > DENSE_FRAC_POSITIVE
        or near_max_share(row["hist"], row["max"]) >= DENSE_NEAR_MAX_SHARE
    )


def source_document(doc_id: str) -> str:
    """The document a corpus item belongs to: a code file's chunks (``code:x.py#3``) are one."""
    return re.sub(r"#\d+$", "", doc_id)


class _Peaks:
    """The documents and tokens that a layer's top examples peak on, read once per context."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id
        self.contexts: dict[int, tuple[list[int], list[str]]] = {}
        self.documents: dict[int, str] = {}

    def load(self, context_ids: list[int]) -> None:
        wanted = [c for c in set(context_ids) if c not in self.contexts]
        for cid, row in self.store.context_rows(self.run_id, wanted).items():
            self.contexts[cid] = (json.loads(row["doc_index"]), json.loads(row["str_tokens"]))
        docs = {
            d
            for c in context_ids
            for d in self.contexts[c][0]
            if d >= 0 and d not in self.documents
        }
        for index, row in self.store.document_rows(self.run_id, docs).items():
            self.documents[index] = source_document(row["doc_id"])

    def document(self, context_id: int, peak: int) -> str:
        doc = self.contexts[context_id][0][peak]
        return SEPARATOR if doc < 0 else self.documents.get(doc, str(doc))

    def token(self, context_id: int, peak: int) -> str:
        return self.contexts[context_id][1][peak].strip().lower()


def one_document_share(peaks: _Peaks, top: list[tuple[int, int, float]]) -> float:
    """Rule 2 of ``best:K``: the largest share of a neuron's top examples ``(context, peak,
    activation)`` that peak in one document, among all of them or among those at or above half
    the neuron's max (when at least two are), whichever is larger. The second catches a neuron
    whose max is made by one document: on the default Gemma harvest, layer 3's strongest neurons
    had 8 of their 40 top examples in one doctest of the decimal module, at 14-38 against 1-10
    for the other 32."""
    documents = [peaks.document(context, peak) for context, peak, _ in top]
    share = Counter(documents).most_common(1)[0][1] / len(top)
    strongest = max(activation for _, _, activation in top)
    near_max = [d for d, (_, _, a) in zip(documents, top, strict=True) if a >= strongest / 2]
    if len(near_max) >= 2:
        share = max(share, Counter(near_max).most_common(1)[0][1] / len(near_max))
    return share


def best_neurons(store: Store, run_id: int, layer: int, k: int) -> BestPick:
    """The ``best:K`` neurons of one harvested layer (the rule is in the module docstring), in pick
    order, and the reasons the stronger neurons were passed over."""
    pick = BestPick()
    peaks = _Peaks(store, run_id)
    taken_contexts: dict[int, int] = {}  # rank-0 context -> the neuron that took it
    taken_peaks: dict[tuple[str, str], int] = {}  # (document, peak token) -> neuron
    for row in store.neurons_by_max(run_id, layer):
        if len(pick.chosen) >= k:
            break
        neuron = row["neuron"]
        if is_dense(row):
            pick.skipped[neuron] = "dense"
            continue
        top = store.top_peaks(run_id, layer, neuron)
        if not top:
            pick.skipped[neuron] = "no top examples"
            continue
        peaks.load([c for c, _, _ in top])
        if one_document_share(peaks, top) > ONE_DOCUMENT_SHARE:
            pick.skipped[neuron] = "one document"
            continue
        context, peak, _ = top[0]
        where = (peaks.document(context, peak), peaks.token(context, peak))
        other = taken_contexts.get(context, taken_peaks.get(where))
        if other is not None:
            pick.skipped[neuron] = f"same top context as {layer}/{other}"
            continue
        pick.chosen.append(neuron)
        taken_contexts[context] = neuron
        taken_peaks[where] = neuron
    return pick
