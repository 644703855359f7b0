"""Similar neurons by N2G graph overlap, computed for a whole model through an inverted index.

**What is compared.** A neuron's N2G graph (:mod:`autointerp.n2g.graph`) has two sets of tokens that
say what it does: its *activating* tokens (the trie roots, the tokens it fires on: those whose best
normalised activation in the graph is at least 0.1, see
:data:`autointerp.store.search_index.MIN_ACTIVATION`) and its *important context* tokens (concrete,
non-wildcard context nodes: the earlier tokens that mattered). Tokens are compared as the graphs
store them, normalised (case-insensitive, leading space stripped; see
:func:`autointerp.n2g.graph.normalize_token`).

**The formula.** DeepDecipher's idea is the two-way proportion of overlapping nodes: the share of
A's tokens that are in B, and the share of B's tokens that are in A. Its code used one direction
only, so sim(A, B) != sim(B, A). We combine the two proportions by their *harmonic mean*, which is
the Dice coefficient, and count each shared token by how much it says (its weight w, 0-1, below)::

    overlap(X, Y) = 2 w(X ∩ Y) / (|X| + |Y|)     # harmonic mean of w(X∩Y)/|X| and w(X∩Y)/|Y|;
    w(S) = sum of the weights of S's tokens; 0 if both empty

    similarity(A, B) = a · overlap(act_A, act_B) + (1 - a) · overlap(ctx_A, ctx_B)     (a = 0.5 by
    default)

When neither graph has context tokens, the context term is left out and similarity =
overlap(act_A, act_B). It is symmetric, 0 for graphs with no token in common, and for identical
graphs the mean weight of their tokens (1.0 when every token is informative). The harmonic mean
(rather than the arithmetic one) is dominated by the smaller proportion, so a tiny graph is not
"similar" to every big graph that happens to contain its one token. The weights sit in the
numerator only: with them in the denominator too (weighted Dice), two graphs whose only context
token is ``the`` would still share "all" of their context.

**Token weights come from the corpus.** A token's weight is its inverse document frequency in the
text the harvest read, ``log((N + 1) / (df + 1))`` over the N contexts the harvest stored (df: the
contexts holding the token, normalised like the graphs), divided by that of a token never seen,
``log(N + 1)``, so that it runs from 0 (in every context) to 1 (never seen). No per-token count of
the whole corpus is stored, so the contexts are what the harvest kept: those some example of some
neuron refers to, which is every context of a small harvest (the default 65,536 tokens) and a
sample of a large one. On the default Gemma harvest ``,`` weighs 0.02, ``.`` 0.01, ``the`` 0.03,
``and`` 0.06, ``known`` 0.31 and ``september`` 0.90, so two graphs that share only punctuation and
``the`` score near 0 (with every token counting 1, the first `make explain` listed such pairs at up
to 0.10). Without stored contexts (graphs added by hand) every token counts 1: plain Dice.

**A minimum score.** Pairs below ``min_score`` (:data:`MIN_SIMILARITY`, 0.1) are not stored, so the
CLI, the API and the report never list them; a neuron with none says so.

**Stop tokens.** A token that occurs (as the same kind) in more than ``max_df`` of the model's
graphs would make the candidate pairs quadratic in the number of graphs under a Zipfian token
distribution (a token in k graphs makes k² pairs). Such tokens are dropped from both sets before the
overlap is taken: a bound on the work, not the weighting (the IDF does that). The default cap is
``max(50, ceil(2 · sqrt(N)))`` graphs for N graphs (384 of 36,864 graphs, 1%; nothing is dropped
below 50 graphs), which bounds the work by ``max_df × (number of token occurrences)``: O(N^1.5) at
worst (measured growth on Zipfian tokens: ~N^1.4, see BENCHMARKS.md). The stop tokens are part of
the definition, so :func:`brute_force_top` (every pair) gives exactly the same answer as
:func:`top_similar` (candidate pairs from the index); a test checks it. ``--max-df`` changes the cap
(a cap of N or more keeps every token).

**The algorithm.** Token ids are interned per kind; each graph is a list of ids; the inverted index
is one CSR posting list per token. Queries are processed in blocks: every (query, candidate, kind)
triple reachable through a shared token is emitted as one int64 key with the token's weight, the
keys are sorted, and runs of equal keys give the weight of the intersections. Only pairs that share
a token are ever scored; the top ``limit`` per neuron (ties broken by layer, neuron) are kept.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from autointerp.errors import UserError
from autointerp.n2g.graph import normalize_token
from autointerp.store.similarity import MIN_SIMILARITY
from autointerp.token_index import (
    TokenSets,
    ensure_token_index,
)

DEFAULT_LIMIT = 20
DEFAULT_ACTIVATING_WEIGHT = 0.5
KINDS = ("activating", "context")
# similarities are rounded so that mathematically equal ones tie exactly (then the lower index wins)
ROUND = 12
#: The stored results' formula: a result computed with another is stale.
FORMULA = "idf-dice-v2"
#: Token weights are multiples of 1 / WEIGHT_SCALE (2^-20, about 1e-6).
WEIGHT_BITS = 20
WEIGHT_SCALE = 1 << WEIGHT_BITS


@dataclass(frozen=True)
class TokenWeights:
    """What a shared token counts for in an overlap, 0-1: ``weights[token]``, or ``unseen`` for a
    token not listed (the default, ``TokenWeights()``, counts every token 1: plain Dice).

    A weight is rounded to a multiple of 2^-:data:`WEIGHT_BITS`: sums of such numbers are exact in
    float64, so the index (which sums in its own order) and the brute force agree to the bit, and
    the index can carry a weight in the low bits of its sort keys."""

    weights: Mapping[str, float] = field(default_factory=dict)
    unseen: float = 1.0

    def __call__(self, token: str) -> float:
        return round(self.weights.get(token, self.unseen) * WEIGHT_SCALE) / WEIGHT_SCALE

    def total(self, tokens: Iterable[str]) -> float:
        return sum(self(t) for t in tokens)


UNIFORM = TokenWeights()


def corpus_idf(contexts: Iterable[Sequence[str]]) -> tuple[TokenWeights, int]:
    """Token weights from a corpus sample (contexts of string tokens, BOS first): the IDF
    ``log((N + 1) / (df + 1))`` of a token in ``df`` of the N contexts over that of a token never
    seen, ``log(N + 1)`` (so 0-1; an unseen token weighs 1); and N. Tokens are normalised as the
    graphs store them. No context at all: :data:`UNIFORM`."""
    df: Counter[str] = Counter()
    n = 0
    for tokens in contexts:
        n += 1
        df.update({normalize_token(t) for t in tokens[1:]})  # index 0 is BOS
    if not n:
        return UNIFORM, 0
    rarest = math.log(n + 1)
    return TokenWeights({t: math.log((n + 1) / (c + 1)) / rarest for t, c in df.items()}), n


def overlap(
    x: frozenset[str] | set[str], y: frozenset[str] | set[str], weights: TokenWeights = UNIFORM
) -> float:
    """Dice coefficient with each shared token counted by its weight (0-1): the harmonic mean of
    the two proportions w(x∩y)/|x| and w(x∩y)/|y|; 0 when both are empty."""
    total = len(x) + len(y)
    return 2 * weights.total(t for t in x if t in y) / total if total else 0.0


def graph_similarity(
    a: TokenSets,
    b: TokenSets,
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT,
    stop: tuple[frozenset[str], frozenset[str]] | None = None,
    weights: TokenWeights = UNIFORM,
) -> float:
    """Similarity of two graphs' token sets (formula in the module docstring); ``stop`` =
    (activating, context) stop tokens to drop first; ``weights``: the tokens' weights."""
    sa, sc = stop or (frozenset(), frozenset())
    act_a = frozenset(t for t in a.activating if t not in sa)
    act_b = frozenset(t for t in b.activating if t not in sa)
    ctx_a = frozenset(t for t in a.context if t not in sc)
    ctx_b = frozenset(t for t in b.context if t not in sc)
    if not ctx_a and not ctx_b:
        return round(overlap(act_a, act_b, weights), ROUND)
    return round(
        activating_weight * overlap(act_a, act_b, weights)
        + (1 - activating_weight) * overlap(ctx_a, ctx_b, weights),
        ROUND,
    )


def default_max_df(n_graphs: int) -> int:
    """Graphs a token may occur in before it is a stop token: ``max(50, ceil(2·sqrt(N)))``."""
    return max(50, math.ceil(2 * math.sqrt(n_graphs)))


def stop_tokens(sets: Sequence[TokenSets], max_df: int) -> tuple[frozenset[str], frozenset[str]]:
    """(activating, context) tokens occurring in more than ``max_df`` graphs."""
    out = []
    for kind in KINDS:
        counts: dict[str, int] = {}
        for s in sets:
            for t in getattr(s, kind):
                counts[t] = counts.get(t, 0) + 1
        out.append(frozenset(t for t, c in counts.items() if c > max_df))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# all pairs
@dataclass
class KindIndex:
    """One kind's sets as CSR arrays: graph -> token ids, token -> graph ids (the inverted
    index)."""

    g_ptr: np.ndarray
    g_tok: np.ndarray
    t_ptr: np.ndarray
    t_graph: np.ndarray
    size: np.ndarray  # tokens per graph after stop tokens are dropped
    weight: np.ndarray  # token id -> its weight x WEIGHT_SCALE (an integer, 0..WEIGHT_SCALE)


def index_kind(
    token_lists: Sequence[Iterable[str]], max_df: int, weights: TokenWeights = UNIFORM
) -> KindIndex:
    vocab: dict[str, int] = {}
    ids: list[np.ndarray] = []
    for tokens in token_lists:
        ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), dtype=np.int64))
    n = len(ids)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    df = np.bincount(flat, minlength=len(vocab))
    keep = df[flat] <= max_df
    flat, owner = flat[keep], owner[keep]
    size = np.bincount(owner, minlength=n).astype(np.int64)
    g_ptr = np.concatenate([[0], np.cumsum(size)])
    order = np.argsort(
        flat, kind="stable"
    )  # owner is already sorted, so each posting list is sorted by graph
    t_graph = owner[order]
    t_ptr = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=len(vocab)))])
    weight = np.rint(np.array([weights(t) for t in vocab]) * WEIGHT_SCALE).astype(np.int64)
    return KindIndex(g_ptr, flat, t_ptr, t_graph, size, weight)


def _gather(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CSR rows ``rows``: returns (values, index into ``rows`` each value came from)."""
    starts, ends = ptr[rows], ptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=values.dtype), np.zeros(0, dtype=np.int64)
    which = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return values[np.repeat(starts, lengths) + offsets], which


def top_similar(
    sets: Sequence[TokenSets],
    limit: int = DEFAULT_LIMIT,
    max_df: int | None = None,
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT,
    block_pairs: int = 2_000_000,
    progress: bool = False,
    weights: TokenWeights = UNIFORM,
    min_score: float = 0.0,
) -> list[list[tuple[int, float]]]:
    """For each graph, its ``limit`` most similar other graphs scoring at least ``min_score`` as
    (index, similarity), most similar first; ``weights``: the tokens' weights.

    Only pairs sharing a non-stop token are scored (all others have similarity 0 and are never
    listed). Ties are broken by the lower index, so the answer is deterministic and equal to
    :func:`brute_force_top`'s.
    """
    n = len(sets)
    if 2 * n * n >= 1 << (62 - WEIGHT_BITS):  # a sort key holds (query, candidate, kind, weight)
        raise UserError(f"Similarity is computed for up to 1,000,000 graphs at once, not {n:,}.")
    if max_df is None:
        max_df = default_max_df(n)
    kinds = [index_kind([getattr(s, k) for s in sets], max_df, weights) for k in KINDS]
    # Pairs per query through each kind: sum over its tokens of the posting list lengths (to size
    # the blocks).
    work = np.zeros(n, dtype=np.int64)
    for kd in kinds:
        df = np.diff(kd.t_ptr)
        per_occ = df[kd.g_tok]
        work += np.bincount(np.repeat(np.arange(n), kd.size), weights=per_occ, minlength=n).astype(
            np.int64
        )
    out: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    bar = tqdm(total=n, unit="graph", desc="similarity", disable=not progress, dynamic_ncols=True)
    start = 0
    cum = np.concatenate([[0], np.cumsum(work)])
    while start < n:
        end = int(np.searchsorted(cum, cum[start] + block_pairs, side="right")) - 1
        end = min(max(end, start + 1), n)
        _score_block(kinds, start, end, n, (limit, min_score), activating_weight, out)
        bar.update(end - start)
        start = end
    bar.close()
    return out


def _score_block(
    kinds: list[KindIndex],
    start: int,
    end: int,
    n: int,
    keep_rule: tuple[int, float],
    weight: float,
    out: list[list[tuple[int, float]]],
) -> None:
    """Score every candidate pair of queries ``start:end`` and keep each query's top ``limit``
    scoring at least ``min_score`` (``keep_rule`` = (limit, min_score))."""
    limit, min_score = keep_rule
    queries = np.arange(start, end, dtype=np.int64)
    keys = []
    field_bits = WEIGHT_BITS + 1  # a weight is 0..WEIGHT_SCALE
    for k, kd in enumerate(kinds):
        toks, which = _gather(kd.g_ptr, kd.g_tok, queries)  # every (query, token) occurrence
        cands, occ = _gather(kd.t_ptr, kd.t_graph, toks)  # every graph sharing that token
        q = which[occ]
        mask = cands != q + start
        # (query, candidate, kind) in the high bits, the shared token's weight in the low ones
        triple = (q[mask] * n + cands[mask]) * 2 + k
        keys.append(triple << field_bits | kd.weight[toks[occ][mask]])
    allkeys = np.concatenate(keys)
    if not len(allkeys):
        return
    allkeys.sort()
    triples = allkeys >> field_bits
    # runs of equal triples: (query, candidate, kind) -> weight of the shared tokens of that kind
    new = np.empty(len(triples), dtype=bool)
    new[0] = True
    np.not_equal(triples[1:], triples[:-1], out=new[1:])
    firsts = np.flatnonzero(new)
    counts = np.add.reduceat(allkeys & ((1 << field_bits) - 1), firsts) / WEIGHT_SCALE
    uniq = triples[firsts]
    pair, kind = uniq >> 1, uniq & 1
    new_pair = np.empty(len(pair), dtype=bool)
    new_pair[0] = True
    np.not_equal(pair[1:], pair[:-1], out=new_pair[1:])
    slot = np.cumsum(new_pair) - 1
    pairs = pair[new_pair]
    x = np.zeros((len(pairs), 2), dtype=np.float64)
    x[slot, kind] = counts
    q, c = pairs // n, pairs % n
    act = kinds[0].size[q + start] + kinds[0].size[c]
    ctx = kinds[1].size[q + start] + kinds[1].size[c]
    dice_act = 2 * x[:, 0] / np.maximum(act, 1)
    dice_ctx = 2 * x[:, 1] / np.maximum(ctx, 1)
    sim = np.round(np.where(ctx > 0, weight * dice_act + (1 - weight) * dice_ctx, dice_act), ROUND)
    # per query: highest similarity first; equal similarities keep the candidate order (stable sort)
    order = np.argsort(q * 2.0 + (1.0 - sim), kind="stable")
    q, c, sim = q[order], c[order], sim[order]
    first = np.empty(len(q), dtype=bool)
    first[0] = True
    np.not_equal(q[1:], q[:-1], out=first[1:])
    group_start = np.flatnonzero(first)
    rank = np.arange(len(q)) - np.repeat(group_start, np.diff(np.append(group_start, len(q))))
    keep = (rank < limit) & (sim > 0) & (sim >= min_score)
    q, c, sim = q[keep].tolist(), c[keep].tolist(), sim[keep].tolist()
    for qi, ci, si in zip(q, c, sim, strict=True):
        out[qi + start].append((ci, si))


def brute_force_top(
    sets: Sequence[TokenSets],
    limit: int = DEFAULT_LIMIT,
    max_df: int | None = None,
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT,
    weights: TokenWeights = UNIFORM,
    min_score: float = 0.0,
) -> list[list[tuple[int, float]]]:
    """Every pair through :func:`graph_similarity`: the O(N²) reference the index must equal
    (tests only)."""
    n = len(sets)
    stop = stop_tokens(sets, default_max_df(n) if max_df is None else max_df)
    out = []
    for i in range(n):
        scored = [
            (j, graph_similarity(sets[i], sets[j], activating_weight, stop, weights))
            for j in range(n)
            if j != i
        ]
        scored = [p for p in scored if p[1] > 0 and p[1] >= min_score]
        scored.sort(key=lambda p: (-p[1], p[0]))
        out.append(scored[:limit])
    return out


# --------------------------------------------------------------------------------------------------
# the store
def compute_similarities(
    store: Any,
    model: str,
    limit: int = DEFAULT_LIMIT,
    max_df: int | None = None,
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT,
    progress: bool = True,
    min_score: float = MIN_SIMILARITY,
) -> dict[str, Any]:
    """Compute the top ``limit`` similar neurons (scoring at least ``min_score``) of every neuron
    with an N2G graph of ``model``, tokens weighted by their IDF in the contexts of the graphs'
    harvests, and store them (one transaction: the previous result stays until the new one is
    complete).

    Returns ``{"model", "run_id", "graphs", "max_df", "stop_tokens": {"activating": n, "context":
    n}, "idf_contexts", "min_score", "pairs", "seconds"}``.
    """
    if not 0 <= activating_weight <= 1:
        raise UserError(
            f"The activating-token weight must be between 0 and 1, not {activating_weight}."
        )
    if limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    if not 0 <= min_score <= 1:
        raise UserError(f"--min-score must be between 0 and 1, not {min_score}.")
    started = time.time()
    ensure_token_index(store, model, progress=progress)
    neurons, token_sets = store.graph_token_sets(model)
    sets = [TokenSets(activating, context) for activating, context in token_sets]
    if not neurons:
        raise UserError(
            f"No N2G graphs of {model} in {store.path}; run `autointerp graph {model}` first."
        )
    df_cap = default_max_df(len(sets)) if max_df is None else max_df
    if df_cap < 1:
        raise UserError(f"--max-df must be at least 1, not {df_cap}.")
    weights, n_contexts = corpus_idf(store.context_str_tokens(store.graph_harvest_runs(model)))
    tops = top_similar(
        sets,
        limit,
        df_cap,
        activating_weight,
        progress=progress,
        weights=weights,
        min_score=min_score,
    )
    stop = stop_tokens(sets, df_cap)
    config = {
        "limit": limit,
        "max_df": df_cap,
        "activating_weight": activating_weight,
        "formula": FORMULA,
        "idf_contexts": n_contexts,
        "min_score": min_score,
    }
    rows = [
        (i_rank, neurons[i], neurons[j], s)
        for i, top in enumerate(tops)
        for i_rank, (j, s) in enumerate(top)
    ]
    run_id = store.save_similarities(model, config, store.graph_state(model), rows)
    return {
        "model": model,
        "run_id": run_id,
        "graphs": len(sets),
        "max_df": df_cap,
        "stop_tokens": {"activating": len(stop[0]), "context": len(stop[1])},
        "idf_contexts": n_contexts,
        "min_score": min_score,
        "pairs": len(rows),
        "seconds": round(time.time() - started, 3),
    }


def similar(
    store: Any,
    model: str,
    layer: int,
    neuron: int,
    limit: int = 10,
    compute: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The neurons most similar to ``layer/neuron``: ``[{"layer", "neuron", "similarity"}]``, most
    similar first, none below the stored result's minimum score.

    With ``compute`` the similarities are (re)computed first when they are missing, older than the
    graphs or computed by an older formula.
    """
    if store.graph(model, layer, neuron) is None:
        raise UserError(
            f"No N2G graph for {model} {layer}/{neuron}; run `autointerp graph {model} --layers"
            f" {layer} --neurons {neuron}` first."
        )
    if compute and store.similarity_stale(model, limit, FORMULA):
        compute_similarities(store, model, limit=max(limit, DEFAULT_LIMIT), progress=progress)
    return store.similar(model, layer, neuron, limit)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class SimilarityConfig:
    """The settings of a similarity computation (:func:`compute_similarities`'s keyword arguments;
    `autointerp similarity` reads its option defaults from here)."""

    limit: int = DEFAULT_LIMIT  # similar neurons kept per neuron
    max_df: int | None = None  # stop-token cap; None: default_max_df(number of graphs)
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT  # the rest goes to context tokens
    min_score: float = MIN_SIMILARITY  # pairs below it are not stored
