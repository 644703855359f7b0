"""Building N2G graphs from a neuron's training examples: prune, saliency, augmentation, trie and
calibration; and scoring them on held-out examples.

Every step asks the model for activations through :func:`~autointerp.n2g.readouts.run_readouts`,
which batches the readouts of all of a layer's neurons together (:mod:`autointerp.n2g.readouts`
says how), so each step collects every neuron's readouts first and runs them in one call.
:func:`build_graphs` is those steps in order, each a function of its own.

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
from typing import Any

import numpy as np

from autointerp.config import check_int, check_number, config_identity, identity_hash
from autointerp.errors import UserError
from autointerp.n2g.graph import NeuronGraph, Node, PathExample
from autointerp.n2g.readouts import GraphSubject, Readout, default_batch_tokens, run_readouts

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


#: What a step runs its readouts with: :func:`run_readouts` on the build's subject and settings.
RunReadouts = Callable[[list[Readout]], np.ndarray]


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
    extra = extra or {}
    graphs = {n: NeuronGraph(cfg.case_sensitive, cfg.strip_space) for n in examples}
    items = _activating_items(examples, extra, maxima, cfg)
    batch_tokens = cfg.batch_tokens or default_batch_tokens(subject)

    def run(readouts: list[Readout]) -> np.ndarray:
        return run_readouts(subject, readouts, batch_tokens, cfg.naive, cfg.reuse_prefix)

    _prune(items, run, subject.bos_id, cfg)
    _saliency(items, run, subject.bos_id, subject.pad_id)
    own = _paths_and_variants(graphs, subject, items, maxima, run, cfg)
    if cfg.calibrate:
        for n, graph in graphs.items():
            if maxima[n] > 0:
                everything = [*examples[n][: cfg.train_examples], *extra.get(n, [])]
                texts = {tuple(ex.tokens): ex for ex in everything}  # each context once
                mine = {key: ends for (m, key), ends in own.items() if m == n}
                calibrate(graph, list(texts.values()), maxima[n], mine)
    return graphs


def _activating_items(
    examples: dict[int, list[Example]],
    extra: dict[int, list[Example]],
    maxima: dict[int, float],
    cfg: N2GConfig,
) -> list[_Item]:
    """Activating tokens: each top example's peak, plus other tokens >= activating_threshold x max;
    in the extra examples, the tokens >= extra_threshold x max (most random contexts have none).
    Each (neuron, context up to the token) once."""
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
    return items


def _prune(items: list[_Item], run: RunReadouts, bos: int, cfg: N2GConfig) -> None:
    """Step 1, prune: set each item's ``pruned`` context to the shortest suffix (ending at the
    activating token) that keeps >= prune_keep of the activation.

    Lengths go shortest first, one length per forward round, and a token stops at the first length
    that keeps: a token that keeps at a short length never runs the longer ones, and the first
    length that keeps is the shortest that would have kept had every length run. The whole context
    is the example itself, whose activation is known: it is never run again."""
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


def _saliency(items: list[_Item], run: RunReadouts, bos: int, pad: int) -> None:
    """Step 2, saliency: replace each token of the pruned context with the neutral token; the
    relative drop is the token's importance."""
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


def _paths_and_variants(
    graphs: dict[int, NeuronGraph],
    subject: GraphSubject,
    items: list[_Item],
    maxima: dict[int, float],
    run: RunReadouts,
    cfg: N2GConfig,
) -> dict[tuple[int, tuple[int, ...]], set[int]]:
    """Step 3: each item's path, from the activating token back to the earliest important token;
    then its augmentation variants' paths. Returns, per (neuron, source tokens), the ids of the end
    nodes its own paths made (what calibration leaves out)."""
    bos = subject.bos_id
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
    return own


def _varied_positions(item: _Item, cfg: N2GConfig) -> list[int]:
    """The positions of a pruned context that augmentation varies: the activating token (always
    worth varying) and the most important context tokens, in order."""
    last = len(item.pruned) - 1
    context = [i for i in range(last) if item.importance[i] >= cfg.importance_threshold]
    context = sorted(context, key=lambda i: (-item.importance[i], -i))[: cfg.augment_positions]
    return [last, *sorted(context)]


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
