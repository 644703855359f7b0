"""Building N2G graphs from a neuron's training examples: prune, saliency, augmentation, trie and
calibration.

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

Top examples alone give graphs that fire off-distribution (Foote et al.'s graphs and ours both had
F1 ~ 0 on random held-out text), so the training split's random and quantile examples are used too:
their firing tokens become activating tokens like the top examples' (paths the top examples never
showed), and every path's activation is calibrated on all training text (see :func:`calibrate`), so
a path that also matches where the neuron stays quiet predicts what the neuron does there on
average.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch

from autointerp.config import check_int, check_number, config_identity, identity_hash
from autointerp.errors import UserError
from autointerp.models import SubjectModel
from autointerp.n2g.graph import NeuronGraph, Node, PathExample

N2G_VERSION = 2  # 2: firing tokens of training random/quantile examples too; calibrated paths


@dataclass
class N2GConfig:
    """Every threshold of graph building (defaults from Foote et al. 2023 where the paper gives
    one)."""

    train_examples: int = 20  # top training examples used (split "train")
    activating_threshold: float = (
        0.75  # extra activating tokens in an example: >= this x neuron max
    )
    max_activating_per_example: int = 2
    prune_keep: float = 0.5  # shortest context that keeps >= this x the token's activation
    # Context lengths tried, shortest first, each only for the activating tokens that no shorter
    # one kept. Capped at 32 tokens (the original stopped at 30).
    prune_lengths: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    importance_threshold: float = (
        0.5  # saliency at or above this makes a context token concrete, else wildcard
    )
    augmentations: int = 5  # embedding-neighbour substitutes tried per important token
    augment_positions: int = (
        3  # only the most important context positions are varied (plus the activating token)
    )
    fire_threshold: float = (
        0.5  # for evaluation: a token "fires" at >= this x max (true and predicted)
    )
    case_sensitive: bool = False
    strip_space: bool = True
    # Beyond the top examples (all from the training split): the kinds whose tokens at >=
    # extra_threshold x max become activating tokens too (the top examples miss what the neuron does
    # elsewhere), and whether every path's activation is calibrated on all training text (a path
    # that also matches where the neuron is quiet is lowered to the neuron's mean activation over
    # its matches). Empty / False give the version-1 graphs.
    extra_kinds: tuple[str, ...] = ("random", "quantile")
    extra_threshold: float = 0.5
    calibrate: bool = True
    #: padded tokens per forward pass; None: 1,024 on a CPU (measured faster there than 4,096,
    #: whose activations no longer fit the cache), 4,096 on an accelerator
    batch_tokens: int | None = field(default=None, metadata={"hashed": False})
    naive: bool = field(default=False, metadata={"hashed": False})
    #: run variants from their changed token on, reusing the unchanged prefix's keys/values: the
    #: same graphs, but slower on CPU when measured (see the module docstring)
    reuse_prefix: bool = field(default=False, metadata={"hashed": False})
    dtype: str = field(
        default="float32", metadata={"hashed": False}
    )  # the subject model's (see HarvestConfig)

    def __post_init__(self) -> None:
        check_int(self.train_examples, "--train-examples", 1)  # 0: an empty graph would be stored
        check_int(self.max_activating_per_example, "max_activating_per_example", 1)
        check_int(self.augmentations, "--augmentations", 0)  # 0 turns augmentation off
        check_int(self.augment_positions, "augment_positions", 0)
        if self.batch_tokens is not None:
            check_int(self.batch_tokens, "batch_tokens", 1)
        for name in ("activating_threshold", "prune_keep", "fire_threshold"):
            check_number(getattr(self, name), name, 0.0, 1.0, low_open=True)
        check_number(self.importance_threshold, "--importance-threshold", 0.0, 1.0)
        if not self.prune_lengths or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.prune_lengths
        ):
            raise UserError(
                f"prune_lengths must be positive token counts, not {self.prune_lengths!r}."
            )

    def identity(self) -> dict[str, Any]:
        half = {"dtype": self.dtype} if self.dtype != "float32" else {}
        return config_identity(self, n2g_version=N2G_VERSION, **half)

    def config_hash(self) -> str:
        return identity_hash(self.identity())


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


def _varied_positions(item: _Item, cfg: N2GConfig) -> list[int]:
    """The positions of a pruned context that augmentation varies: the activating token (always
    worth varying) and the most important context tokens, in order."""
    last = len(item.pruned) - 1
    context = [i for i in range(last) if item.importance[i] >= cfg.importance_threshold]
    context = sorted(context, key=lambda i: (-item.importance[i], -i))[: cfg.augment_positions]
    return [last, *sorted(context)]


@dataclass
class Example:
    """A training example as the harvest stored it: token ids (BOS first), strings, activations
    (raw)."""

    tokens: list[int]
    str_tokens: list[str]
    activations: list[float]


@dataclass
class _Item:
    """Work on one activating token of one example of one neuron, carried through the stages."""

    neuron: int
    tokens: list[int]  # BOS + context up to and including the activating token
    target: float  # its activation in the full context
    pruned: list[int] = field(
        default_factory=list
    )  # context tokens (no BOS) ending at the activating token
    pruned_act: float = 0.0
    importance: list[float] = field(default_factory=list)


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


def build_graphs(
    subject: GraphSubject,
    examples: dict[int, list[Example]],
    maxima: dict[int, float],
    cfg: N2GConfig,
    extra: dict[int, list[Example]] | None = None,
) -> dict[int, NeuronGraph]:
    """Build one graph per neuron of a layer from its training examples; all neurons' work is
    batched together.

    ``examples`` are each neuron's top training examples; ``extra`` its other training examples
    (random and quantile), whose tokens at >= ``extra_threshold`` x max become activating tokens too
    and on which, with the top examples, the paths are calibrated. ``maxima`` are the neurons' max
    activations over the harvest (activations are normalised by them).
    """
    bos = subject.bos_id
    pad = subject.pad_id
    extra = extra or {}
    graphs = {n: NeuronGraph(cfg.case_sensitive, cfg.strip_space) for n in examples}

    # Activating tokens: each top example's peak, plus other tokens >= activating_threshold x max;
    # in the extra examples, the tokens >= extra_threshold x max (most random contexts have none).
    items: list[_Item] = []
    used: set[tuple[int, tuple[int, ...]]] = set()  # (neuron, tokens up to an activating one)
    for n, exs in examples.items():
        top = maxima[n]
        if top <= 0:
            continue
        sources = [(ex, cfg.activating_threshold, True) for ex in exs[: cfg.train_examples]]
        sources += [(ex, cfg.extra_threshold, False) for ex in extra.get(n, [])]
        for ex, threshold, with_peak in sources:
            acts = np.asarray(ex.activations[1:])
            order = np.argsort(-acts, kind="stable")
            chosen = [
                int(j) + 1
                for k, j in enumerate(order)
                if (k == 0 and with_peak) or acts[j] >= threshold * top
            ]
            for j in chosen[: cfg.max_activating_per_example]:
                key = (n, tuple(ex.tokens[: j + 1]))  # a random context can also be a top one
                if ex.activations[j] > 0 and key not in used:
                    items.append(_Item(n, list(ex.tokens[: j + 1]), float(ex.activations[j])))
                    used.add(key)

    batch_tokens = cfg.batch_tokens or default_batch_tokens(subject)

    def run(readouts: list[Readout]) -> np.ndarray:
        return run_readouts(subject, readouts, batch_tokens, cfg.naive, cfg.reuse_prefix)

    # 1. Prune: the shortest suffix (ending at the activating token) that keeps >= prune_keep of the
    # activation. Lengths go shortest first, one length per forward round, and a token stops at the
    # first length that keeps: a token that keeps at a short length never runs the longer ones, and
    # the first length that keeps is the shortest that would have kept had every length run.
    # The whole context is the example itself, whose activation is known: it is never run again.
    best: dict[int, tuple[int, float]] = {}
    longest: dict[int, tuple[int, float]] = {}  # fallback: the longest length tried
    for wanted in sorted(set(cfg.prune_lengths)):
        readouts, owners, known = [], [], []
        for k, it in enumerate(items):
            body = it.tokens[1:]
            length = min(wanted, len(body))
            if k in best or (k in longest and longest[k][0] == length):
                continue  # kept already, or its whole context was tried at a shorter `wanted`
            if length == len(body):
                known.append(((k, length), it.target))
            else:
                readouts.append(Readout([bos] + body[-length:], it.neuron))
                owners.append((k, length))
        for (k, length), value in [*zip(owners, run(readouts).tolist(), strict=True), *known]:
            if value >= cfg.prune_keep * items[k].target:
                best[k] = (length, float(value))
            longest[k] = (length, float(value))  # lengths only grow
        if len(best) == len(items):
            break
    for k, it in enumerate(items):
        length, value = best.get(k) or longest[k]  # nothing kept enough: the longest context tried
        it.pruned = it.tokens[1:][-length:]
        it.pruned_act = value

    # 2. Saliency: replace each token of the pruned context with the neutral token; relative drop =
    # importance.
    readouts, owners = [], []
    for k, it in enumerate(items):
        base = (bos, *it.pruned)
        for i in range(len(it.pruned)):
            masked = list(it.pruned)
            masked[i] = pad
            readouts.append(Readout([bos] + masked, it.neuron, base=base, shared=i + 1))
            owners.append(k)
    values = run(readouts)
    for it in items:
        it.importance = []
    for k, value in zip(owners, values, strict=True):
        it = items[k]
        drop = (it.pruned_act - float(value)) / it.pruned_act if it.pruned_act > 0 else 0.0
        it.importance.append(float(min(max(drop, 0.0), 1.0)))

    # 3. Paths from the activating token back to the earliest important token; then augmentation
    # variants.
    variants: list[tuple[int, int, int]] = []  # (item, position in pruned, substitute token)
    varied = [_varied_positions(it, cfg) for it in items]
    prefetch = getattr(subject, "prefetch_substitutes", None)
    if prefetch is not None:  # every token's neighbours in a few matrix products
        tokens = [
            it.pruned[i] for it, positions in zip(items, varied, strict=True) for i in positions
        ]
        prefetch(tokens, cfg.augmentations, graphs[items[0].neuron].norm if items else str)
    readouts = []
    own: dict[tuple[int, tuple[int, ...]], set[int]] = {}  # (neuron, source tokens) -> path ends
    for k, it in enumerate(items):
        graph = graphs[it.neuron]
        # The path stands for the activation the neuron had in real text (normalised), not in the
        # pruned snippet.
        end = _add(graph, subject, it.pruned, it.importance, it.target / maxima[it.neuron], cfg)
        own.setdefault((it.neuron, tuple(it.tokens)), set()).add(id(end))
        base = (bos, *it.pruned)
        for i in varied[k]:
            for sub in subject.substitutes(it.pruned[i], cfg.augmentations, graph.norm):
                variant = list(it.pruned)
                variant[i] = sub
                readouts.append(Readout([bos] + variant, it.neuron, base=base, shared=i + 1))
                variants.append((k, i, sub))
    values = run(readouts)
    for (k, i, sub), value in zip(variants, values, strict=True):
        it = items[k]
        variant = list(it.pruned)
        variant[i] = sub
        # Firing and non-firing variants both inform the graph: the latter teach it where the neuron
        # stays quiet. A variant keeps the relative change it caused in the snippet, applied to the
        # real activation.
        ratio = min(max(float(value), 0.0) / it.pruned_act, 1.0) if it.pruned_act > 0 else 0.0
        _add(
            graphs[it.neuron],
            subject,
            variant,
            it.importance,
            ratio * it.target / maxima[it.neuron],
            cfg,
        )

    if cfg.calibrate:
        for n, graph in graphs.items():
            if maxima[n] > 0:
                everything = [*examples[n][: cfg.train_examples], *extra.get(n, [])]
                texts = {tuple(ex.tokens): ex for ex in everything}  # each context once
                mine = {key: ends for (m, key), ends in own.items() if m == n}
                calibrate(graph, list(texts.values()), maxima[n], mine)
    return graphs


def calibrate(
    graph: NeuronGraph,
    texts: Sequence[Example],
    max_activation: float,
    own: dict[tuple[int, ...], set[int]] | None = None,
) -> int:
    """Lower every path to what the neuron does where the path matches: each time a path's end is
    reached in the training text, the true normalised activation there (negative counted as 0) joins
    the path's average - except where the path was built from that very token (``own``: the tokens
    up to and including a source token -> ids of the end nodes its paths made), which its average
    holds.

    A path built from one top example with only its activating token concrete (``" the"``) matches
    many tokens where the neuron is quiet; calibrated, it predicts the neuron's mean there and stops
    firing on random text, while a path whose matches all fire keeps its value. Returns how many
    matches were counted."""
    own = own or {}
    counted = 0
    for ex in texts:
        for j, ends in enumerate(graph.matched_ends(ex.str_tokens[1:]), start=1):
            if not ends:
                continue
            truth = max(float(ex.activations[j]) / max_activation, 0.0)
            mine = own.get(tuple(ex.tokens[: j + 1]), set())
            for end in ends:
                if id(end) not in mine:
                    end.end_sum += truth
                    end.end_count += 1
                    counted += 1
    return counted


def _add(
    graph: NeuronGraph,
    subject: GraphSubject,
    pruned: list[int],
    importance: list[float],
    activation: float,
    cfg: N2GConfig,
) -> Node:
    last = len(pruned) - 1
    important = [i for i in range(last) if importance[i] >= cfg.importance_threshold]
    earliest = min(important) if important else last
    strs = subject.str_tokens(pruned)
    tokens: list[str | None] = []
    imps: list[float] = []
    for i in range(last, earliest - 1, -1):
        concrete = i == last or importance[i] >= cfg.importance_threshold
        tokens.append(strs[i] if concrete else None)
        imps.append(importance[i])
    return graph.add_path(PathExample(tuple(tokens), tuple(imps), float(activation)))


# -------------------------------------------------------------------------------------------------
# evaluation
def evaluate(
    graph: NeuronGraph, records: Sequence[Example], max_activation: float, fire_threshold: float
) -> dict[str, float | int | None]:
    """Score a graph on held-out records: token-level precision/recall/F1 at ``fire_threshold`` x
    max, and the Pearson correlation between predicted and true normalised activations pooled over
    all tokens (BOS excluded)."""
    preds: list[float] = []
    truth: list[float] = []
    for rec in records:
        preds.extend(graph.predict(rec.str_tokens[1:]))
        truth.extend(a / max_activation for a in rec.activations[1:])
    p, t = np.asarray(preds), np.asarray(truth)
    return {**token_metrics(p, t, fire_threshold), "n_records": len(records)}


def token_metrics(
    pred: np.ndarray, true: np.ndarray, threshold: float
) -> dict[str, float | int | None]:
    fired_p, fired_t = pred >= threshold, true >= threshold
    tp = int((fired_p & fired_t).sum())
    precision = tp / int(fired_p.sum()) if fired_p.any() else None
    recall = tp / int(fired_t.sum()) if fired_t.any() else None
    denominator = int(fired_p.sum()) + int(fired_t.sum())  # 2tp + fp + fn
    f1 = 2 * tp / denominator if denominator else None
    correlation = None
    if len(pred) > 1 and pred.std() > 0 and true.std() > 0:
        correlation = float(np.corrcoef(pred, true)[0, 1])
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "correlation": correlation,
        "n_tokens": int(len(pred)),
        "n_true_firing": int(fired_t.sum()),
    }
