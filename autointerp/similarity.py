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
the Dice coefficient::

    overlap(X, Y) = 2 |X ∩ Y| / (|X| + |Y|)        # harmonic mean of |X∩Y|/|X| and |X∩Y|/|Y|; 0 if
    both empty

    similarity(A, B) = w · overlap(act_A, act_B) + (1 - w) · overlap(ctx_A, ctx_B)     (w = 0.5 by
    default)

When neither graph has context tokens, the context term is left out and similarity = overlap(act_A,
act_B). It is symmetric, 1.0 for identical graphs and 0 for graphs with no token in common. The
harmonic mean (rather than the arithmetic one) is dominated by the smaller proportion, so a tiny
graph is not "similar" to every big graph that happens to contain its one token.

**Stop tokens.** A token that occurs (as the same kind) in more than ``max_df`` of the model's
graphs - ``","``, ``"."``, ``"the"`` as context tokens - says little about what a neuron does, and
under a Zipfian token distribution it would make the candidate pairs quadratic in the number of
graphs (a token in k graphs makes k² pairs). Such tokens are dropped from both sets before the
overlap is taken, as a search engine drops stop words. The default cap is ``max(50, ceil(2 ·
sqrt(N)))`` graphs for N graphs (384 of 36,864 graphs, 1%; nothing is dropped below 50 graphs),
which bounds the work by ``max_df × (number of token occurrences)``: O(N^1.5) at worst (measured
growth on Zipfian tokens: ~N^1.4, see BENCHMARKS.md). The stop tokens are part of the definition, so
:func:`brute_force_top` (every pair) gives exactly the same answer as :func:`top_similar` (candidate
pairs from the index); a test checks it. ``--max-df`` changes the cap (a cap of N or more keeps
every token).

**The algorithm.** Token ids are interned per kind; each graph is a list of ids; the inverted index
is one CSR posting list per token. Queries are processed in blocks: every (query, candidate, kind)
triple reachable through a shared token is emitted as one int64 key, the keys are sorted, and runs
of equal keys give the intersection sizes. Only pairs that share a token are ever scored; the top
``limit`` per neuron (ties broken by layer, neuron) are kept.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from autointerp.errors import UserError
from autointerp.token_index import (
    TokenSets,
    ensure_token_index,
)

DEFAULT_LIMIT = 20
DEFAULT_ACTIVATING_WEIGHT = 0.5
KINDS = ("activating", "context")
# similarities are rounded so that mathematically equal ones tie exactly (then the lower index wins)
ROUND = 12


def overlap(x: frozenset[str] | set[str], y: frozenset[str] | set[str]) -> float:
    """Dice coefficient: the harmonic mean of the two proportions |x∩y|/|x| and |x∩y|/|y|; 0 when
    both are empty."""
    total = len(x) + len(y)
    return 2 * len(x & y) / total if total else 0.0


def graph_similarity(
    a: TokenSets,
    b: TokenSets,
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT,
    stop: tuple[frozenset[str], frozenset[str]] | None = None,
) -> float:
    """Similarity of two graphs' token sets (formula in the module docstring); ``stop`` =
    (activating, context) stop tokens to drop first."""
    sa, sc = stop or (frozenset(), frozenset())
    act_a, act_b = a.activating - sa, b.activating - sa
    ctx_a, ctx_b = a.context - sc, b.context - sc
    if not ctx_a and not ctx_b:
        return round(overlap(act_a, act_b), ROUND)
    return round(
        activating_weight * overlap(act_a, act_b) + (1 - activating_weight) * overlap(ctx_a, ctx_b),
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


def index_kind(token_lists: Sequence[Iterable[str]], max_df: int) -> KindIndex:
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
    return KindIndex(g_ptr, flat, t_ptr, t_graph, size)


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
) -> list[list[tuple[int, float]]]:
    """For each graph, its ``limit`` most similar other graphs as (index, similarity), most similar
    first.

    Only pairs sharing a non-stop token are scored (all others have similarity 0 and are never
    listed). Ties are broken by the lower index, so the answer is deterministic and equal to
    :func:`brute_force_top`'s.
    """
    n = len(sets)
    if max_df is None:
        max_df = default_max_df(n)
    kinds = [index_kind([getattr(s, k) for s in sets], max_df) for k in KINDS]
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
        _score_block(kinds, start, end, n, limit, activating_weight, out)
        bar.update(end - start)
        start = end
    bar.close()
    return out


def _score_block(
    kinds: list[KindIndex],
    start: int,
    end: int,
    n: int,
    limit: int,
    weight: float,
    out: list[list[tuple[int, float]]],
) -> None:
    """Score every candidate pair of queries ``start:end`` and keep each query's top ``limit``."""
    queries = np.arange(start, end, dtype=np.int64)
    keys = []
    for k, kd in enumerate(kinds):
        toks, which = _gather(kd.g_ptr, kd.g_tok, queries)  # every (query, token) occurrence
        cands, occ = _gather(kd.t_ptr, kd.t_graph, toks)  # every graph sharing that token
        q = which[occ]
        mask = cands != q + start
        keys.append((q[mask] * n + cands[mask]) * 2 + k)
    allkeys = np.concatenate(keys)
    if not len(allkeys):
        return
    allkeys.sort()
    # runs of equal keys: (query, candidate, kind) -> number of shared tokens of that kind
    new = np.empty(len(allkeys), dtype=bool)
    new[0] = True
    np.not_equal(allkeys[1:], allkeys[:-1], out=new[1:])
    firsts = np.flatnonzero(new)
    counts = np.diff(np.append(firsts, len(allkeys)))
    uniq = allkeys[firsts]
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
    keep = (rank < limit) & (sim > 0)
    q, c, sim = q[keep].tolist(), c[keep].tolist(), sim[keep].tolist()
    for qi, ci, si in zip(q, c, sim, strict=True):
        out[qi + start].append((ci, si))


def brute_force_top(
    sets: Sequence[TokenSets],
    limit: int = DEFAULT_LIMIT,
    max_df: int | None = None,
    activating_weight: float = DEFAULT_ACTIVATING_WEIGHT,
) -> list[list[tuple[int, float]]]:
    """Every pair through :func:`graph_similarity`: the O(N²) reference the index must equal
    (tests only)."""
    n = len(sets)
    stop = stop_tokens(sets, default_max_df(n) if max_df is None else max_df)
    out = []
    for i in range(n):
        scored = [
            (j, graph_similarity(sets[i], sets[j], activating_weight, stop))
            for j in range(n)
            if j != i
        ]
        scored = [p for p in scored if p[1] > 0]
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
) -> dict[str, Any]:
    """Compute the top ``limit`` similar neurons of every neuron with an N2G graph of ``model`` and
    store them (one transaction: the previous result stays until the new one is complete).

    Returns ``{"model", "run_id", "graphs", "max_df", "stop_tokens": {"activating": n, "context":
    n}, "pairs", "seconds"}``.
    """
    if not 0 <= activating_weight <= 1:
        raise UserError(
            f"The activating-token weight must be between 0 and 1, not {activating_weight}."
        )
    if limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
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
    tops = top_similar(sets, limit, df_cap, activating_weight, progress=progress)
    stop = stop_tokens(sets, df_cap)
    config = {
        "limit": limit,
        "max_df": df_cap,
        "activating_weight": activating_weight,
        "formula": "dice-v1",
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
    similar first.

    With ``compute`` the similarities are (re)computed first when they are missing or older than the
    graphs.
    """
    if store.graph(model, layer, neuron) is None:
        raise UserError(
            f"No N2G graph for {model} {layer}/{neuron}; run `autointerp graph {model} --layers"
            f" {layer} --neurons {neuron}` first."
        )
    if compute and store.similarity_stale(model, limit):
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
