"""Building N2G graphs from a neuron's top training examples: prune, saliency, augmentation, trie.

All model work is forward passes of short token sequences that only need one neuron's activation at one position.
:func:`run_readouts` batches them across examples *and neurons of the same layer*: sequences are sorted by length,
packed into batches of about ``batch_tokens`` tokens, right-padded (harmless: attention is causal and we read at or
before the last real token) and run with the model stopped after the neuron's layer. ``naive=True`` runs the same
readouts one sequence at a time, as the original N2G code did; the benchmark and a test compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from autointerp.config import check_int, check_number, config_identity, identity_hash
from autointerp.errors import UserError
from autointerp.models import SubjectModel
from autointerp.n2g.graph import NeuronGraph, PathExample

N2G_VERSION = 1


@dataclass
class N2GConfig:
    """Every threshold of graph building (defaults from Foote et al. 2023 where the paper gives one)."""

    train_examples: int = 20  # top training examples used (split "train")
    activating_threshold: float = 0.75  # extra activating tokens in an example: >= this x neuron max
    max_activating_per_example: int = 2
    prune_keep: float = 0.5  # shortest context that keeps >= this x the token's activation
    # Context lengths tried, shortest first, in two rounds: up to 8 tokens for every activating token, the longer
    # ones only where no short one kept the activation. Capped at 32 tokens (the original stopped at 30).
    prune_lengths: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    importance_threshold: float = 0.5  # saliency at or above this makes a context token concrete, else wildcard
    augmentations: int = 5  # embedding-neighbour substitutes tried per important token
    augment_positions: int = 3  # only the most important context positions are varied (plus the activating token)
    fire_threshold: float = 0.5  # for evaluation: a token "fires" at >= this x max (true and predicted)
    case_sensitive: bool = False
    strip_space: bool = True
    batch_tokens: int = 4096  # padded tokens per forward pass
    naive: bool = field(default=False, metadata={"hashed": False})
    dtype: str = field(default="float32", metadata={"hashed": False})  # the subject model's (see HarvestConfig)

    def __post_init__(self) -> None:
        check_int(self.train_examples, "--train-examples", 1)  # 0: an empty graph would be stored
        check_int(self.max_activating_per_example, "max_activating_per_example", 1)
        check_int(self.augmentations, "--augmentations", 0)  # 0 turns augmentation off
        check_int(self.augment_positions, "augment_positions", 0)
        check_int(self.batch_tokens, "batch_tokens", 1)
        for name in ("activating_threshold", "prune_keep", "fire_threshold"):
            check_number(getattr(self, name), name, 0.0, 1.0, low_open=True)
        check_number(self.importance_threshold, "--importance-threshold", 0.0, 1.0)
        if not self.prune_lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                         for n in self.prune_lengths):
            raise UserError(f"prune_lengths must be positive token counts, not "
                            f"{self.prune_lengths!r}.")

    def identity(self) -> dict[str, Any]:
        half = {"dtype": self.dtype} if self.dtype != "float32" else {}
        return config_identity(self, n2g_version=N2G_VERSION, **half)

    def config_hash(self) -> str:
        return identity_hash(self.identity())


class Subject(Protocol):
    """What graph building needs from a model layer (the N2G fork's ``feature_activation`` seam): activations of
    every neuron of one layer for a batch of token ids, token strings, and plausible substitutes for a token."""

    bos_id: int
    pad_id: int

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, d]
        ...

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        ...

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        ...


def neutral_token(model: SubjectModel) -> int:
    """The token that "removes" a token in saliency: the tokenizer's pad or unk token when it is distinct from
    BOS/EOS, else the token for a single space.

    The original N2G used id 1 for every model, which in GPT-2 is the ``"`` character - a real token with its own
    effects. Gemma: ``<pad>`` (0); SmolLM2: ``<|endoftext|>`` (0, its unk); GPT-2: ``" "`` (220).
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
    """Run ``tokens`` and read neuron ``neuron`` at position ``position`` (``-1``: the last token)."""

    tokens: list[int]
    neuron: int
    position: int = -1


@torch.inference_mode()
def run_readouts(subject: Subject, readouts: Sequence[Readout], batch_tokens: int = 4096,
                 naive: bool = False) -> np.ndarray:
    """Activation of each readout's neuron at its position, batched by length (or one by one if ``naive``)."""
    out = np.zeros(len(readouts), dtype=np.float32)
    if not readouts:
        return out
    if naive:
        for i, r in enumerate(readouts):
            acts = subject.activations(torch.tensor([r.tokens]))
            out[i] = float(acts[0, r.position, r.neuron])
        return out
    order = sorted(range(len(readouts)), key=lambda i: len(readouts[i].tokens))
    start = 0
    while start < len(order):
        end = start  # grow the chunk while its padded size (rows x the longest, i.e. last, length) fits
        while end < len(order):
            if (end - start + 1) * len(readouts[order[end]].tokens) > batch_tokens and end > start:
                break
            end += 1
        chunk = order[start:end]
        width = len(readouts[chunk[-1]].tokens)
        batch = torch.full((len(chunk), width), subject.pad_id, dtype=torch.long)
        positions = torch.empty(len(chunk), dtype=torch.long)
        neurons = torch.empty(len(chunk), dtype=torch.long)
        for row, i in enumerate(chunk):
            r = readouts[i]
            batch[row, : len(r.tokens)] = torch.tensor(r.tokens)
            positions[row] = r.position if r.position >= 0 else len(r.tokens) + r.position
            neurons[row] = r.neuron
        acts = subject.activations(batch)
        values = acts[torch.arange(len(chunk)), positions, neurons]
        out[chunk] = values.numpy()
        start = end
    return out


@dataclass
class Example:
    """A training example as the harvest stored it: token ids (BOS first), strings, activations (raw)."""

    tokens: list[int]
    str_tokens: list[str]
    activations: list[float]


@dataclass
class _Item:
    """Work on one activating token of one example of one neuron, carried through the stages."""

    neuron: int
    tokens: list[int]  # BOS + context up to and including the activating token
    target: float  # its activation in the full context
    pruned: list[int] = field(default_factory=list)  # context tokens (no BOS) ending at the activating token
    pruned_act: float = 0.0
    importance: list[float] = field(default_factory=list)


class ModelSubject:
    """A :class:`SubjectModel` layer as a :class:`Subject`: forward passes stop after ``layer``; substitutes are
    embedding-space neighbours (the subject model's own idea of what could stand in a token's place, so no extra
    model is downloaded, unlike the original's DistilBERT; and no unembedding is run)."""

    def __init__(self, model: SubjectModel, layer: int):
        self.model = model
        self.layer = layer
        self.bos_id = model.bos_id
        self.pad_id = neutral_token(model)
        # on the host in float32 whatever the model runs in: the same neighbours on every device and dtype
        self._w = model.model.W_E.detach().to("cpu", torch.float32)
        self._norms = self._w.norm(dim=1).clamp_min(1e-8)
        self._special = set(model.tokenizer.all_special_ids or [])
        self._cache: dict[tuple[int, int], list[int]] = {}

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.mlp_activations(tokens, [self.layer])[self.layer]

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.model.str_tokens(ids)

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        if k <= 0:  # no augmentation (the loop below checks the count only after its first pick)
            return []
        if (token, k) in self._cache:
            return self._cache[(token, k)]
        scores = (self._w @ self._w[token]) / self._norms
        decode = self.model.tokenizer.decode
        seen = {norm(decode([token]))}
        picked: list[int] = []
        for cand in scores.topk(min(len(scores), 8 * k + 8)).indices.tolist():
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
        return picked


def build_graphs(subject: Subject, examples: dict[int, list[Example]], maxima: dict[int, float],
                 cfg: N2GConfig) -> dict[int, NeuronGraph]:
    """Build one graph per neuron of a layer from its training examples; all neurons' work is batched together.

    ``maxima`` are the neurons' max activations over the harvest (activations are normalised by them).
    """
    bos = subject.bos_id
    pad = subject.pad_id
    graphs = {n: NeuronGraph(cfg.case_sensitive, cfg.strip_space) for n in examples}

    # Activating tokens: each example's peak, plus other tokens >= activating_threshold x max.
    items: list[_Item] = []
    for n, exs in examples.items():
        top = maxima[n]
        if top <= 0:
            continue
        for ex in exs[: cfg.train_examples]:
            acts = np.asarray(ex.activations[1:])
            order = np.argsort(-acts, kind="stable")
            chosen = [int(order[0]) + 1] + [int(j) + 1 for j in order[1:]
                                             if acts[j] >= cfg.activating_threshold * top]
            for j in chosen[: cfg.max_activating_per_example]:
                if ex.activations[j] > 0:
                    items.append(_Item(n, list(ex.tokens[: j + 1]), float(ex.activations[j])))

    def run(readouts: list[Readout]) -> np.ndarray:
        return run_readouts(subject, readouts, cfg.batch_tokens, cfg.naive)

    # 1. Prune: shortest suffix (ending at the activating token) keeping >= prune_keep of the activation. Short
    #    lengths first for everyone; long ones only for the tokens that need them (most need few tokens).
    best: dict[int, tuple[int, float]] = {}
    longest: dict[int, tuple[int, float]] = {}  # fallback: the longest length tried
    short = [x for x in cfg.prune_lengths if x <= 8]
    for lengths_round in (short, [x for x in cfg.prune_lengths if x > 8]):
        readouts, owners = [], []
        for k, it in enumerate(items):
            if k in best:
                continue
            body = it.tokens[1:]
            for length in sorted({min(x, len(body)) for x in lengths_round}):
                readouts.append(Readout([bos] + body[-length:], it.neuron))
                owners.append((k, length))
        for (k, length), value in zip(owners, run(readouts), strict=True):
            if value >= cfg.prune_keep * items[k].target and (k not in best or length < best[k][0]):
                best[k] = (length, float(value))
            if k not in longest or length > longest[k][0]:
                longest[k] = (length, float(value))
    for k, it in enumerate(items):
        length, value = best.get(k) or longest[k]  # nothing kept enough: the longest context tried
        it.pruned = it.tokens[1:][-length:]
        it.pruned_act = value

    # 2. Saliency: replace each token of the pruned context with the neutral token; relative drop = importance.
    readouts, owners = [], []
    for k, it in enumerate(items):
        for i in range(len(it.pruned)):
            masked = list(it.pruned)
            masked[i] = pad
            readouts.append(Readout([bos] + masked, it.neuron))
            owners.append(k)
    values = run(readouts)
    for it in items:
        it.importance = []
    for k, value in zip(owners, values, strict=True):
        it = items[k]
        drop = (it.pruned_act - float(value)) / it.pruned_act if it.pruned_act > 0 else 0.0
        it.importance.append(float(min(max(drop, 0.0), 1.0)))

    # 3. Paths from the activating token back to the earliest important token; then augmentation variants.
    variants: list[tuple[int, int, int]] = []  # (item, position in pruned, substitute token)
    readouts = []
    for k, it in enumerate(items):
        graph = graphs[it.neuron]
        # The path stands for the activation the neuron had in real text (normalised), not in the pruned snippet.
        _add(graph, subject, it.pruned, it.importance, it.target / maxima[it.neuron], cfg)
        last = len(it.pruned) - 1
        context = [i for i in range(last) if it.importance[i] >= cfg.importance_threshold]
        context = sorted(context, key=lambda i: (-it.importance[i], -i))[: cfg.augment_positions]
        for i in [last, *sorted(context)]:  # the activating token is always worth varying
            for sub in subject.substitutes(it.pruned[i], cfg.augmentations, graph.norm):
                variant = list(it.pruned)
                variant[i] = sub
                readouts.append(Readout([bos] + variant, it.neuron))
                variants.append((k, i, sub))
    values = run(readouts)
    for (k, i, sub), value in zip(variants, values, strict=True):
        it = items[k]
        variant = list(it.pruned)
        variant[i] = sub
        # Firing and non-firing variants both inform the graph: the latter teach it where the neuron stays quiet.
        # A variant keeps the relative change the substitution caused in the snippet, applied to the real activation.
        ratio = min(max(float(value), 0.0) / it.pruned_act, 1.0) if it.pruned_act > 0 else 0.0
        _add(graphs[it.neuron], subject, variant, it.importance, ratio * it.target / maxima[it.neuron], cfg)
    return graphs


def _add(graph: NeuronGraph, subject: Subject, pruned: list[int], importance: list[float], activation: float,
         cfg: N2GConfig) -> None:
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
    graph.add_path(PathExample(tuple(tokens), tuple(imps), float(activation)))


# ------------------------------------------------------------------------------------------------- evaluation
def evaluate(graph: NeuronGraph, records: Sequence[Example], max_activation: float, fire_threshold: float
             ) -> dict[str, float | int | None]:
    """Score a graph on held-out records: token-level precision/recall/F1 at ``fire_threshold`` x max, and the
    Pearson correlation between predicted and true normalised activations pooled over all tokens (BOS excluded)."""
    preds: list[float] = []
    truth: list[float] = []
    for rec in records:
        preds.extend(graph.predict(rec.str_tokens[1:]))
        truth.extend(a / max_activation for a in rec.activations[1:])
    p, t = np.asarray(preds), np.asarray(truth)
    return {**token_metrics(p, t, fire_threshold), "n_records": len(records)}


def token_metrics(pred: np.ndarray, true: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    fired_p, fired_t = pred >= threshold, true >= threshold
    tp = int((fired_p & fired_t).sum())
    precision = tp / int(fired_p.sum()) if fired_p.any() else None
    recall = tp / int(fired_t.sum()) if fired_t.any() else None
    denominator = int(fired_p.sum()) + int(fired_t.sum())  # 2tp + fp + fn
    f1 = 2 * tp / denominator if denominator else None
    correlation = None
    if len(pred) > 1 and pred.std() > 0 and true.std() > 0:
        correlation = float(np.corrcoef(pred, true)[0, 1])
    return {"precision": precision, "recall": recall, "f1": f1, "correlation": correlation,
            "n_tokens": int(len(pred)), "n_true_firing": int(fired_t.sum())}
