"""Cross-model comparison: which neurons of model B behave like a neuron of model A on the same
texts.

Two tokenizers split the same text differently (Gemma's SentencePiece and SmolLM2's byte-level BPE
disagree on numbers, rare words, whitespace runs), so the i-th token of one is not the i-th token of
the other and index-based alignment compares unrelated positions. We align by **character offsets**
instead: a *common boundary* is a character position where a token of A and a token of B both end.
At such a position both models have read exactly the same prefix of the text, so we compare A's
activation at its token ending there with B's activations at its token ending there (the last token
ending there, if several do, e.g. the byte pieces of one character). Positions inside a word that
only one tokenizer splits are skipped.

Over all common boundaries of all texts, B's neurons (of the chosen layers) are ranked by their
Pearson correlation with A's neuron; the work is one forward pass per text and model, and one
vectorised correlation per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from autointerp.errors import UserError


def align_offsets(
    offsets_a: Sequence[tuple[int, int]], offsets_b: Sequence[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """Token index pairs ``(i_a, i_b, end)`` of the two tokenizations that end at the same character
    ``end``, in text order. Empty spans (BOS, special tokens) are ignored."""

    def last_by_end(offsets: Sequence[tuple[int, int]]) -> dict[int, int]:
        out: dict[int, int] = {}
        for i, (start, end) in enumerate(offsets):
            if end > start:
                out[int(end)] = (
                    i  # later tokens win: the last piece of a character split into several bytes
                )
        return out

    a, b = last_by_end(offsets_a), last_by_end(offsets_b)
    return [(a[end], b[end], end) for end in sorted(a.keys() & b.keys())]


def example_texts(store: Any, model: str, layer: int, neuron: int, n: int = 20) -> list[str]:
    """Texts to compare on when none are given: the neuron's stored top and random examples (decoded
    tokens joined), so the neuron both fires and stays quiet in them."""
    run = store.latest_complete_run(model, layer)
    if run is None:
        raise UserError(
            f"Give texts with --text: layer {layer} of {model} has no stored examples to use."
        )
    texts, seen = [], set()
    for kind in ("top", "random"):
        for ex in store.examples(run["id"], layer, neuron, kinds=[kind]):
            text = "".join(ex["str_tokens"][1:])
            if text.strip() and text not in seen:
                seen.add(text)
                texts.append(text)
            if len(texts) >= n * (1 if kind == "top" else 2):
                break
    if not texts:
        raise UserError(f"Give texts with --text: {model} {layer}/{neuron} has no stored examples.")
    return texts


@torch.inference_mode()
def compare_neuron(
    subject_a: Any,
    layer: int,
    neuron: int,
    subject_b: Any,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    limit: int = 10,
) -> dict[str, Any]:
    """Neurons of ``subject_b`` whose activations correlate best with ``subject_a``'s
    ``layer/neuron`` on ``texts``, aligned by character offsets.

    Returns ``{"model_a", "layer", "neuron", "model_b", "layers", "texts", "positions", "neurons":
    [{"layer", "neuron", "correlation"}]}`` with the highest correlation first.
    """
    subject_a.check_neuron(layer, neuron)
    b_layers = list(range(subject_b.n_layers)) if layers is None else sorted(set(layers))
    subject_b.check_layers(b_layers)
    if not texts or not any(t.strip() for t in texts):
        raise UserError("Give at least one non-empty text to compare on (--text).")
    if limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    a_values: list[torch.Tensor] = []
    b_values: dict[int, list[torch.Tensor]] = {lay: [] for lay in b_layers}
    for text in texts:
        ids_a, off_a = subject_a.encode(text)
        ids_b, off_b = subject_b.encode(text)
        pairs = align_offsets(off_a, off_b)
        if not pairs:
            continue
        ia = torch.tensor([p[0] for p in pairs])
        ib = torch.tensor([p[1] for p in pairs])
        acts_a = subject_a.feature_activation(torch.tensor([ids_a]), layer, neuron)[0]
        a_values.append(acts_a[ia].float())
        acts_b = subject_b.mlp_activations(torch.tensor([ids_b]), b_layers)
        for lay in b_layers:
            b_values[lay].append(acts_b[lay][0, ib].float())
    if not a_values or sum(len(v) for v in a_values) < 3:
        raise UserError(
            "The texts are too short to compare: fewer than 3 positions where both tokenizers end a"
            " token."
        )
    a = torch.cat(a_values)
    a = a - a.mean()
    if float(a.norm()) < 1e-8:
        raise UserError(
            f"{subject_a.name} {layer}/{neuron} has the same activation everywhere on these texts; "
            "give texts where it fires."
        )
    scored: list[tuple[float, int, int]] = []
    for lay in b_layers:
        b = torch.cat(b_values[lay])  # [P, d_mlp]
        b = b - b.mean(dim=0, keepdim=True)
        denom = b.norm(dim=0) * a.norm()
        r = torch.where(denom > 1e-8, (a @ b) / denom.clamp_min(1e-12), torch.zeros_like(denom))
        k = min(limit, r.numel())
        top_v, top_i = r.topk(k)
        scored += [(float(v), lay, int(i)) for v, i in zip(top_v, top_i, strict=True)]
    scored.sort(key=lambda s: (-s[0], s[1], s[2]))
    return {
        "model_a": subject_a.name,
        "layer": layer,
        "neuron": neuron,
        "model_b": subject_b.name,
        "layers": b_layers,
        "texts": len(texts),
        "positions": int(a.numel()),
        "neurons": [
            {"layer": lay, "neuron": n, "correlation": round(v, 6)} for v, lay, n in scored[:limit]
        ],
    }
