"""The model side of N2G graph building: the forward passes (:func:`run_readouts`) and the subject
they run on (:class:`GraphSubject`; :class:`ModelLayerSubject` for a layer of a real model).

All model work is forward passes of short token sequences that only need one neuron's activation at
one position. :func:`run_readouts` batches them across examples *and neurons of the same layer*:
sequences are sorted by length, packed into batches of about ``batch_tokens`` tokens, right-padded
(harmless: attention is causal and we read at or before the last real token) and run with the model
stopped after the neuron's layer. Identical sequences run once. Saliency and augmentation variants
change one token of a pruned context, so everything before that token is the unchanged context's:
with ``reuse_prefix`` (and a subject that can reuse attention keys/values, as
:class:`ModelLayerSubject` can), the unchanged context runs once and each variant runs only from the
changed token on. That is about half the tokens, but it is **off by default**: measured on a quiet
2-core CPU (``bench/bench_n2g.py``) it was 0.67-0.94x the speed of running every variant in full,
because variants must be batched by their shared prefix length (many small, padded forward passes
instead of a few large ones) and the cached keys/values are copied per batch. ``naive=True`` runs
every readout alone and in full, as the original N2G code did; a test checks that both paths build
the same graph.

Substitutes (augmentation) are embedding-space neighbours: a cosine score against the whole
vocabulary per token. Gemma's vocabulary has 262k tokens, so one matrix-vector product per token
cost ~30 ms and a quarter of a layer-9 graph's time; they are computed for all of a build's tokens
at once, in blocks (:meth:`ModelLayerSubject.prefetch_substitutes`), one matrix product per block.

Kept apart from the graph-building steps (:mod:`autointerp.n2g.build`), which only ask for
activations through :func:`run_readouts` and never see how they are batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch

from autointerp.models import SubjectModel


class GraphSubject(Protocol):
    """What graph building needs from a model layer (the N2G fork's ``feature_activation`` seam):
    activations of every neuron of one layer for a batch of token ids, token strings, and plausible
    substitutes for a token."""

    bos_id: int
    pad_id: int

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, d]
        ...

    def str_tokens(self, ids: Sequence[int]) -> list[str]: ...

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]: ...


def neutral_token(model: SubjectModel) -> int:
    """The token that "removes" a token in saliency: the tokenizer's pad or unk token when it is
    distinct from BOS/EOS, else the token for a single space.

    The original N2G used id 1 for every model, which in GPT-2 is the ``"`` character - a real token
    with its own effects. Gemma: ``<pad>`` (0); SmolLM2: ``<|endoftext|>`` (0, its unk); GPT-2: ``"
    "`` (220).
    """
    tok = model.tokenizer
    special = {tok.bos_token_id, tok.eos_token_id}
    for candidate in (tok.pad_token_id, tok.unk_token_id):
        if candidate is not None and candidate not in special:
            return int(candidate)
    ids = tok(" ", add_special_tokens=False)["input_ids"]
    return int(ids[-1]) if ids else 0


@dataclass
class Readout:
    """Run ``tokens`` and read neuron ``neuron`` at position ``position`` (``-1``: the last token).

    ``base``/``shared``: the first ``shared`` tokens equal those of the sequence ``base`` (a variant
    of it), so a subject that can reuse attention keys/values runs ``base`` once and this readout
    only from token ``shared`` on.
    """

    tokens: list[int]
    neuron: int
    position: int = -1
    base: tuple[int, ...] | None = None
    shared: int = 0


class PrefixReuse(Protocol):
    """What a subject offers to run variants of a sequence from the changed token on
    (see :class:`ModelLayerSubject`)."""

    pad_id: int

    def prefix_states(self, tokens: torch.Tensor) -> Any:
        """Run ``tokens`` [B, T]; keep what later positions need (attention keys/values)."""
        ...

    def activations_after(
        self, states: Sequence[tuple[Any, int]], shared: int, tokens: torch.Tensor
    ) -> torch.Tensor:
        """Activations [B, S, d] of ``tokens`` [B, S] continuing, row by row, the first ``shared``
        tokens of the sequences behind ``states`` (a ``prefix_states`` result and a row of it)."""
        ...


CPU_BATCH_TOKENS = 1024
ACCELERATOR_BATCH_TOKENS = 4096


def default_batch_tokens(subject: GraphSubject) -> int:
    """Padded tokens per forward pass when the config leaves it open: on a 2-core CPU, batches of
    1,024 tokens built the same graphs in 13-22% less time than batches of 4,096 at Gemma layers
    3, 9 and 15 (``bench/bench_n2g.py --versus batch``); a GPU wants large batches. Subjects
    without a model (the tests' rule subjects) count as CPU."""
    model = getattr(subject, "model", None)
    device = model.device if isinstance(model, SubjectModel) else torch.device("cpu")
    return CPU_BATCH_TOKENS if device.type == "cpu" else ACCELERATOR_BATCH_TOKENS


def _pack(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into chunks whose padded size (rows x longest) fits
    ``batch_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * lengths[order[end]] <= batch_tokens:
            end += 1
        chunks.append(order[start:end])
        start = end
    return chunks


def _padded(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    batch = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return batch


@torch.inference_mode()
def run_readouts(
    subject: GraphSubject,
    readouts: Sequence[Readout],
    batch_tokens: int = 4096,
    naive: bool = False,
    reuse_prefix: bool = True,
) -> np.ndarray:
    """Activation of each readout's neuron at its position: batched by length, identical sequences
    once, variants from their changed token on where the subject can and ``reuse_prefix`` asks (or
    one full sequence at a time if ``naive``)."""
    out = np.zeros(len(readouts), dtype=np.float32)
    if not readouts:
        return out
    if naive:
        for i, r in enumerate(readouts):
            acts = subject.activations(torch.tensor([r.tokens]))
            out[i] = float(acts[0, r.position, r.neuron])
        return out
    reuse = (
        reuse_prefix and hasattr(subject, "prefix_states") and hasattr(subject, "activations_after")
    )
    full: dict[tuple[int, ...], list[int]] = {}  # sequence -> readouts that read it
    variants: dict[tuple[int, ...], list[int]] = {}  # base -> readouts that are its variants
    for i, r in enumerate(readouts):
        position = r.position if r.position >= 0 else len(r.tokens) + r.position
        if reuse and r.base is not None and 0 < r.shared <= position:
            variants.setdefault(r.base, []).append(i)
        else:
            full.setdefault(tuple(r.tokens), []).append(i)
    sequences = list(full)
    for chunk in _pack([len(t) for t in sequences], batch_tokens):
        acts = subject.activations(_padded([sequences[c] for c in chunk], subject.pad_id))
        for row, c in enumerate(chunk):
            for i in full[sequences[c]]:
                r = readouts[i]
                position = r.position if r.position >= 0 else len(r.tokens) + r.position
                out[i] = float(acts[row, position, r.neuron])
    if variants:
        _run_variants(cast(PrefixReuse, subject), readouts, variants, batch_tokens, out)
    return out


def _run_variants(
    subject: PrefixReuse,
    readouts: Sequence[Readout],
    variants: dict[tuple[int, ...], list[int]],
    batch_tokens: int,
    out: np.ndarray,
) -> None:
    """Run each base once (keeping its attention keys/values), then its variants from their first
    changed token on, grouped by that position (a batch needs one prefix length). Bases are taken a
    few thousand tokens at a time so the kept keys/values stay small."""
    bases = sorted(variants, key=len)
    group: list[tuple[int, ...]] = []
    size = 0
    for k, base in enumerate(bases):
        group.append(base)
        size += len(base)
        if size < batch_tokens and k + 1 < len(bases):
            continue
        states: dict[tuple[int, ...], Any] = {}
        for chunk in _pack([len(b) for b in group], batch_tokens):
            batch_states = subject.prefix_states(_padded([group[c] for c in chunk], subject.pad_id))
            for row, c in enumerate(chunk):
                states[group[c]] = (batch_states, row)
        by_shared: dict[int, list[int]] = {}
        for base in group:
            for i in variants[base]:
                by_shared.setdefault(readouts[i].shared, []).append(i)
        for shared, idx in sorted(by_shared.items()):
            tails = [readouts[i].tokens[shared:] for i in idx]
            for chunk in _pack([len(t) + shared for t in tails], batch_tokens):
                rows = [idx[c] for c in chunk]
                prefixes = [states[cast(tuple, readouts[i].base)] for i in rows]
                acts = subject.activations_after(
                    prefixes, shared, _padded([tails[c] for c in chunk], subject.pad_id)
                )
                for row, i in enumerate(rows):
                    r = readouts[i]
                    position = r.position if r.position >= 0 else len(r.tokens) + r.position
                    out[i] = float(acts[row, position - shared, r.neuron])
        group, size = [], 0


class ModelLayerSubject:
    """One layer of a :class:`SubjectModel` as a :class:`GraphSubject` (the protocol graph building
    reads): forward passes stop after ``layer``; substitutes are embedding-space neighbours (the
    subject model's own idea of what could stand in a token's place, so no extra model is
    downloaded, unlike the original's DistilBERT; and no unembedding is run)."""

    def __init__(self, model: SubjectModel, layer: int):
        self.model = model
        self.layer = layer
        self.bos_id = model.bos_id
        self.pad_id = neutral_token(model)
        # on the host in float32 whatever the model runs in: the same neighbours on every device and
        # dtype
        self._w = model.model.W_E.detach().to("cpu", torch.float32)
        self._norms = self._w.norm(dim=1).clamp_min(1e-8)
        self._special = set(model.tokenizer.all_special_ids or [])
        self._cache: dict[tuple[int, int], list[int]] = {}

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.mlp_activations(tokens, [self.layer])[self.layer]

    # Prefix reuse through TransformerLens's key/value cache. Every call passes an explicit all-ones
    # attention mask: without one TransformerLens derives the mask from pad tokens, and the neutral
    # token of saliency *is* the pad token in Gemma and SmolLM2 (it must be attended to, as in a
    # plain forward pass). Keys are cached before the rotary embedding, which is applied to the
    # whole key sequence at the right positions on every call.
    def prefix_states(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        hooked = self.model.model
        tokens = tokens.to(
            self.model.device
        )  # the cached keys and values stay on the model's device
        cache = TransformerLensKeyValueCache.init_cache(hooked.cfg, tokens.device, tokens.shape[0])
        hooked(
            tokens,
            attention_mask=torch.ones_like(tokens),
            past_kv_cache=cache,
            stop_at_layer=self.layer + 1,
        )
        return [(e.past_keys, e.past_values) for e in cache.entries[: self.layer + 1]]

    def activations_after(
        self, states: Sequence[tuple[Any, int]], shared: int, tokens: torch.Tensor
    ) -> torch.Tensor:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        entries = []
        for layer in range(self.layer + 1):
            keys = torch.stack([layers[layer][0][row, :shared] for layers, row in states])
            values = torch.stack([layers[layer][1][row, :shared] for layers, row in states])
            entries.append(TransformerLensKeyValueCacheEntry(keys, values, frozen=True))
        tokens = tokens.to(self.model.device)
        mask = torch.ones(len(states), shared, dtype=torch.long, device=tokens.device)
        cache = TransformerLensKeyValueCache(entries, mask, frozen=True)
        out: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> None:
            out["act"] = act

        self.model.model.run_with_hooks(
            tokens,
            attention_mask=torch.ones_like(tokens),
            past_kv_cache=cache,
            stop_at_layer=self.layer + 1,
            fwd_hooks=[(self.model.hook_name(self.layer), keep)],
        )
        return out["act"].to("cpu", torch.float32)  # as SubjectModel.mlp_activations: host float32

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.model.str_tokens(ids)

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        if k <= 0:  # no augmentation (the loop below checks the count only after its first pick)
            return []
        if (token, k) not in self._cache:
            self.prefetch_substitutes([token], k, norm)
        return self._cache[(token, k)]

    #: tokens scored against the vocabulary per matrix product (Gemma: 262k x 128 floats, 134 MB)
    SUBSTITUTE_BLOCK = 128

    def prefetch_substitutes(
        self, tokens: Sequence[int], k: int, norm: Callable[[str], str]
    ) -> None:
        """Compute the substitutes of many tokens at once: one matrix product per block of tokens
        reads the embedding matrix once per block instead of once per token."""
        if k <= 0:
            return
        todo = sorted({t for t in tokens if (t, k) not in self._cache})
        decode = self.model.tokenizer.decode
        wanted = min(self._w.shape[0], 8 * k + 8)
        for start in range(0, len(todo), self.SUBSTITUTE_BLOCK):
            block = todo[start : start + self.SUBSTITUTE_BLOCK]
            scores = (self._w @ self._w[block].T) / self._norms[:, None]  # (vocabulary, block)
            ranked = scores.topk(wanted, dim=0).indices.T.tolist()
            for token, candidates in zip(block, ranked, strict=True):
                seen = {norm(decode([token]))}
                picked: list[int] = []
                for cand in candidates:
                    if cand == token or cand in self._special:
                        continue
                    key = norm(decode([cand]))
                    if key in seen or not key.strip():
                        continue
                    seen.add(key)
                    picked.append(cand)
                    if len(picked) == k:
                        break
                self._cache[(token, k)] = picked
