"""Known-answer features: a regular expression over decoded text plus its true description.

"What is explained" is a seam: a feature is a function from token ids to per-token activations. MLP
neurons are one kind (:class:`autointerp.models.SubjectModel`); known-answer features are another,
built only from the model's tokenizer - no forward pass. A feature fires (1.0) on every token whose
characters overlap a match of its pattern, 0 elsewhere: character overlap rather than token index,
because the same text is cut into different tokens by different tokenizers and a match may start or
end inside a token.

:class:`KnownFeatureModel` presents a feature set as a one-layer "model" (layer 0, one "neuron" per
feature), so the unchanged harvest -> N2G -> explain -> simulate -> score code runs on it;
:class:`RegexSubject` is the N2G ``feature_activation`` for their variants, computed from the
tokenizer. Because the true description is known, the simulator's score for it is the ceiling the
pipeline could reach on that feature, and the explainer's score says how much of it was recovered.

Texts are decoded one token at a time (as the harvest shows tokens) and concatenated; special tokens
(BOS, the EOS between packed documents, padding) contribute no text and split the stream, so no
match spans two documents. Zero-width matches cover no character and fire nothing. Features need not
be causal (a pattern may look ahead); N2G, which prunes context from the left, then simply predicts
them less well - part of what calibration shows.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.errors import UserError
from autointerp.models import SubjectModel

DEFAULT_FEATURES = "known_features.json"


@dataclass(frozen=True)
class RegexFeature:
    """A known-answer feature: ``pattern`` (Python ``re`` syntax) and the description that is its
    true answer."""

    name: str
    pattern: str
    description: str
    kind: str = (
        ""  # what sort of feature it is (closed word class, number format, ...): for reports only
    )

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.pattern)


_COMPILED: dict[str, re.Pattern[str]] = {}


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern not in _COMPILED:
        _COMPILED[pattern] = re.compile(pattern)
    return _COMPILED[pattern]


def load_features(path: str | Path | None = None) -> list[RegexFeature]:
    """Features from a JSON file ``[{"name", "pattern", "description"}]`` (``kind`` optional), or
    the packaged default set. Every problem is one :class:`UserError` sentence naming the entry."""
    if path is None:
        text = (
            resources.files("autointerp.eval")
            .joinpath(DEFAULT_FEATURES)
            .read_text(encoding="utf-8")
        )
        where = f"the packaged {DEFAULT_FEATURES}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"Cannot read the features file {path}: {exc}") from exc
        where = str(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise UserError(
            f'{where} must be a non-empty JSON list of {{"name", "pattern", "description"}}.'
        )
    out: list[RegexFeature] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) and item.get(k).strip()
            for k in ("name", "pattern", "description")
        ):
            raise UserError(
                f'Entry {i} of {where} needs non-empty strings "name", "pattern" and "description".'
            )
        if item["name"] in seen:
            raise UserError(f"Entry {i} of {where} repeats the name {item['name']!r}.")
        seen.add(item["name"])
        try:
            _compile(item["pattern"])
        except re.error as exc:
            raise UserError(
                f"The pattern of {item['name']!r} in {where} is not a valid regular expression: "
                f"{exc}"
            ) from exc
        out.append(
            RegexFeature(
                item["name"],
                item["pattern"],
                item["description"].strip(),
                str(item.get("kind", "")),
            )
        )
    return out


def features_hash(features: Sequence[RegexFeature]) -> str:
    """Identity of a feature set: a changed pattern or description is a different set (stored
    apart)."""
    blob = json.dumps([[f.name, f.pattern, f.description] for f in features], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TokenText:
    """Decoded text of token ids, one token at a time (cached), with special tokens as empty
    boundaries."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = {int(i) for i in tokenizer.all_special_ids or []}
        self._cache: dict[int, str] = {}

    def text(self, token: int) -> str | None:
        """The token's text, or None for a special token (a boundary)."""
        if token in self.special:
            return None
        if token not in self._cache:
            self._cache[token] = self.tokenizer.decode([token])
        return self._cache[token]


def regex_activations(
    features: Sequence[RegexFeature], text_of: TokenText, ids: Sequence[int]
) -> np.ndarray:
    """``[len(ids), len(features)]``: 1.0 where a token's characters overlap a match of the
    feature's pattern."""
    out = np.zeros((len(ids), len(features)), dtype=np.float32)
    segment: list[int] = []  # positions of the current run of non-special tokens

    def flush() -> None:
        if not segment:
            return
        starts, text = [], []
        length = 0
        for pos in segment:
            starts.append(length)
            piece = text_of.text(int(ids[pos])) or ""
            text.append(piece)
            length += len(piece)
        ends = [s + len(t) for s, t in zip(starts, text, strict=True)]
        joined = "".join(text)
        for j, feature in enumerate(features):
            for match in feature.regex.finditer(joined):
                lo, hi = match.span()
                if hi <= lo:
                    continue  # zero-width: no character to overlap
                # tokens with start < hi and end > lo
                first = bisect.bisect_right(ends, lo)
                last = bisect.bisect_left(starts, hi)
                for k in range(first, last):
                    if ends[k] > starts[k]:
                        out[segment[k], j] = 1.0
        segment.clear()

    for pos, token in enumerate(ids):
        if text_of.text(int(token)) is None:
            flush()
        else:
            segment.append(pos)
    flush()
    return out


def batch_activations(
    features: Sequence[RegexFeature], text_of: TokenText, tokens: torch.Tensor
) -> torch.Tensor:
    """``[B, T] -> [B, T, n_features]`` float32."""
    rows = [regex_activations(features, text_of, row) for row in tokens.tolist()]
    return (
        torch.from_numpy(np.stack(rows))
        if rows
        else torch.zeros((0, tokens.shape[1], len(features)))
    )


class KnownFeatureModel(SubjectModel):
    """A feature set presented as a one-layer model (layer 0, neuron i = feature i), stored under
    its own name ``<model>+known-<hash>`` so its rows never mix with the model's neurons. Only the
    tokenizer is used."""

    def __init__(
        self, base_model: str, tokenizer: Any, features: Sequence[RegexFeature], n_ctx: int = 8192
    ):
        digest = features_hash(features)
        super().__init__(
            f"{base_model}+known-{digest[:8]}",
            None,
            tokenizer,
            {
                "model": base_model,
                "source": "known-answer regex features",
                "features_sha256": digest,
                "dtype": "float32",
            },
        )
        self.base_model = base_model
        self.features = list(features)
        self.text_of = TokenText(tokenizer)
        self._n_ctx = n_ctx

    @property
    def n_layers(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # a regular expression over the text: no weights, no accelerator

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def d_mlp(self) -> int:
        return len(self.features)

    @property
    def gated(self) -> bool:
        return False  # activations are 0 or 1: there is no negative side to harvest

    @property
    def act_fn(self) -> str:
        return "regex"

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_layers": 1,
            "d_mlp": self.d_mlp,
            "d_model": 0,
            "act_fn": "regex",
            "gated_mlp": False,
            "n_ctx": self.n_ctx,
            "d_vocab": len(self.tokenizer),
            "provenance": self.provenance,
            "known_features": [f.name for f in self.features],
        }

    def each_mlp_activation(
        self,
        tokens: torch.Tensor,
        layers: Sequence[int],
        fold: Callable[[int, torch.Tensor], None],
    ) -> None:
        acts = batch_activations(self.features, self.text_of, tokens)
        for layer in sorted(set(layers)):
            fold(layer, acts)

    def feature_activation(self, tokens: torch.Tensor, layer: int, neuron: int) -> torch.Tensor:
        return self.mlp_activations(tokens, [layer])[layer][..., neuron]


class RegexSubject:
    """The N2G :class:`~autointerp.n2g.readouts.GraphSubject` of a :class:`KnownFeatureModel`:
    activations from the tokenizer, no forward pass.

    There are no substitutes for augmentation: without the model's embedding, the tokenizer alone
    has no notion of which tokens could stand in for each other (so the graphs hold only tokens seen
    in training examples)."""

    def __init__(self, model: KnownFeatureModel):
        from autointerp.n2g.readouts import neutral_token

        self.model = model
        self.bos_id = model.bos_id
        self.pad_id = neutral_token(model)

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        return batch_activations(self.model.features, self.model.text_of, tokens)

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.model.str_tokens(ids)

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        return []
