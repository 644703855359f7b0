"""From a token, an idea or a text to the neurons that handle it.

**Token search** (DeepDecipher's query language) over the tokens of every neuron's newest N2G
graph and, for the neurons without one, the tokens their top examples peak on in the harvest::

    any:the activating:battery,batteries important:legal

* A query is whitespace-separated *terms*; a term is ``KIND:TOKEN[,TOKEN...]``. The tokens of one
  term are a **union** (any of them), the terms an **intersection** (a neuron must match every
  term).
* ``activating:`` matches the tokens a neuron fires on (its graph's activating nodes),
  ``important:`` the context tokens that mattered (concrete context nodes), ``any:`` either. A bare
  token (no ``KIND:``) means ``any:``.
* Tokens are normalised as the graphs store them (:func:`autointerp.n2g.graph.normalize_token`:
  case-insensitive, leading/trailing space stripped, whitespace-only tokens kept). Put a token in
  double quotes to include spaces, commas or colons: ``important:"\\n"``, ``any:"a,b"``; inside
  quotes ``\\n``, ``\\t``, ``\\"`` and ``\\\\`` are escapes.
* Results are sorted by relevance: the sum over terms of the best weight that matched - the token's
  normalised activation (0-1, for activating matches) or its importance (0-1, for context matches).
* Each result says its ``source``: ``graph`` (the neuron's graph answered) or ``harvest`` (it has no
  graph, and its top examples peak on the token; see
  :func:`autointerp.token_index.ensure_harvest_index`).
  A harvest has no context tokens, so such a neuron matches ``activating:`` and ``any:`` terms but
  never ``important:``. A graph built for a few neurons of a layer would otherwise leave the rest
  unsearchable: after `make explain`, 12 of 6,144.

**Explanation search by meaning** (the default, :func:`search_explanations_by_meaning`) embeds the
query and every ok explanation with the packaged sentence-embedding model
(:mod:`autointerp.embeddings`) and ranks by cosine similarity, so "weekday names" finds "days of the
week" with no word in common. Explanation vectors are stored in ``text_embeddings`` the first time
they are needed; a read path that cannot write (the server while a pipeline holds the lock, a
read-only database) embeds in memory instead.

**Exact explanation search** (``--exact``) uses the SQLite FTS5 index ``explanations_fts`` (porter
stemming, so "weeks" finds "week"; bm25 ranking) over explanations with ``status = 'ok'``. Words are
ANDed; ``"days of the week"`` in double quotes is a phrase; ``week*`` is a prefix. Everything the
user types is quoted before it reaches FTS5, so its syntax can never fail on user text.

Text → neurons (a live forward pass, not a search of stored results) is
:func:`autointerp.live.text_neurons`.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from autointerp.errors import UserError
from autointerp.n2g.graph import normalize_token
from autointerp.token_index import ensure_harvest_index, ensure_token_index

QUERY_KINDS = {
    "any": ("activating", "context"),
    "activating": ("activating",),
    "important": ("context",),
}
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}


# --------------------------------------------------------------------------------------------------
# query language
def parse_query(text: str) -> list[dict[str, Any]]:
    """``'any:the activating:battery,cell'`` -> ``[{"kind": "any", "tokens": ["the"]}, {"kind":
    "activating", "tokens": ["battery", "cell"]}]`` with tokens normalised like the graphs'.
    Malformed queries raise one :class:`UserError` sentence that says what is wrong and where."""
    terms: list[dict[str, Any]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        kind = "any"
        m = re.match(r"([A-Za-z_]+):", text[i:])
        if m:
            kind = m.group(1).lower()
            if kind not in QUERY_KINDS:
                raise UserError(
                    f"Unknown search kind {m.group(1)!r} at character {i + 1}; terms look like"
                    " any:TOKEN, activating:TOKEN or important:TOKEN (quote a token that contains"
                    " a colon)."
                )
            i += len(m.group(0))
        tokens: list[str] = []
        while True:
            value, i = _read_value(text, i, start)
            normalised = normalize_token(value)
            if normalised not in tokens:
                tokens.append(normalised)
            if i < n and text[i] == ",":
                i += 1
                continue
            break
        if i < n and not text[i].isspace():
            raise UserError(
                f"Unexpected {text[i]!r} at character {i + 1} of the query; separate terms with"
                " spaces and tokens of one term with commas."
            )
        terms.append({"kind": kind, "tokens": tokens})
    if not terms:
        raise UserError(
            "The search query is empty; try e.g. `any:the activating:battery important:legal`."
        )
    return terms


def _read_value(text: str, i: int, term_start: int) -> tuple[str, int]:
    """One token starting at ``i`` (bare or double-quoted) and the position after it."""
    n = len(text)
    if i < n and text[i] == '"':
        out = []
        i += 1
        while i < n and text[i] != '"':
            if text[i] == "\\" and i + 1 < n:
                if text[i + 1] not in _ESCAPES:
                    raise UserError(
                        f"Unknown escape \\{text[i + 1]} at character {i + 1} of the query; use"
                        " \\n, "
                        f'\\t, \\r, \\" or \\\\.'
                    )
                out.append(_ESCAPES[text[i + 1]])
                i += 2
            else:
                out.append(text[i])
                i += 1
        if i >= n:
            raise UserError(
                f"The quote opened at character {text.index(chr(34), term_start) + 1} of the query"
                " is never closed."
            )
        if not out:
            raise UserError(f"Empty quoted token at character {i} of the query.")
        return "".join(out), i + 1
    j = i
    while j < n and not text[j].isspace() and text[j] not in ',"':
        j += 1
    if j == i:
        where = "at the end of the query" if i >= n else f"at character {i + 1} of the query"
        hint = '; to search for a comma, quote it: any:","' if i < n and text[i] == "," else ""
        raise UserError(f"A token is missing {where} (after {text[term_start:i]!r}){hint}.")
    return text[i:j], j


def search_tokens(
    store: Any,
    model: str,
    query: str | list[dict[str, Any]],
    limit: int = 20,
    update_index: bool = True,
) -> list[dict[str, Any]]:
    """Neurons whose graphs (or, without a graph, harvested top examples) match a query (a string,
    or :func:`parse_query`'s output), best first: ``[{"layer", "neuron", "score", "source":
    "graph"|"harvest", "matches": [{"kind": "activating"|"important", "token", "weight"}]}]``.

    ``update_index=False`` reads the indexes as they are (the caller refreshed them, see
    :func:`refresh_token_index`)."""
    terms = parse_query(query) if isinstance(query, str) else query
    if limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    if update_index:
        ensure_token_index(store, model)
        ensure_harvest_index(store, model)
    harvest = store.has_harvest_index(model)
    if not harvest and not store.graph_state(model)["graphs"]:
        raise UserError(
            f"No N2G graphs or indexed harvest of {model} in {store.path}; run `autointerp graph"
            f" {model}` or `autointerp index {model}` first."
        )
    rows = store.token_search(
        model, [(QUERY_KINDS[t["kind"]], t["tokens"]) for t in terms], limit, harvest=harvest
    )
    wanted = {(kind, tok) for t in terms for kind in QUERY_KINDS[t["kind"]] for tok in t["tokens"]}
    tokens = sorted({t for _, t in wanted})
    out = []
    for r in rows:
        found = (
            store.neuron_tokens(model, r["layer"], r["neuron"], tokens)
            if r["source"] == "graph"
            else store.harvest_neuron_tokens(model, r["layer"], r["neuron"], tokens)
        )
        matches = [
            {
                "kind": "important" if m["kind"] == "context" else "activating",
                "token": m["token"],
                "weight": round(m["weight"], 6),
            }
            for m in found
            if (m["kind"], m["token"]) in wanted
        ]
        out.append(
            {
                "layer": r["layer"],
                "neuron": r["neuron"],
                "score": round(r["score"], 6),
                "source": r["source"],
                "matches": matches,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# explanations
def fts_query(text: str) -> str:
    """User text -> a safe FTS5 query: every word double-quoted (ANDed), ``"..."`` phrases kept,
    ``word*`` prefixes.

    FTS5 operators typed by the user (AND, OR, NEAR, ``-``, ``:``, parentheses) become plain words,
    so the query can never be a syntax error."""
    if text.count('"') % 2:
        raise UserError(
            'The explanation search has an unmatched double quote; use "..." around a phrase.'
        )
    parts = []
    for phrase, bare in re.findall(r'"([^"]*)"|(\S+)', text):
        if phrase:
            words = re.findall(r"\w+", phrase)
            if words:
                parts.append('"' + " ".join(words) + '"')
            continue
        for word in re.findall(r"\w+\*?", bare):
            parts.append(f'"{word.rstrip("*")}"' + (" *" if word.endswith("*") else ""))
    if not parts:
        raise UserError(f"The explanation search {text!r} has no words to look for.")
    return " ".join(parts)


def search_explanations(store: Any, model: str, text: str, limit: int = 20) -> list[dict[str, Any]]:
    """Explanations (status ok) of ``model`` matching ``text``, best bm25 match first:
    ``[{"layer", "neuron", "kind", "text", "score"}]`` (score = -bm25, higher is better)."""
    query = fts_query(text)
    if limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    try:
        rows = store.explanation_search(model, query, limit)
    except (
        sqlite3.OperationalError
    ) as exc:  # cannot happen for quoted input; kept so it never becomes a traceback
        raise UserError(f"The explanation search {text!r} could not be run: {exc}.") from exc
    return [
        {
            "layer": r["layer"],
            "neuron": r["neuron"],
            "kind": r["kind"],
            "text": r["text"],
            "score": round(-r["rank"], 6),
        }
        for r in rows
    ]


def search_explanations_by_meaning(
    store: Any,
    model: str,
    text: str,
    limit: int = 20,
    save: bool = True,
    memo: dict[str, bytes] | None = None,
) -> list[dict[str, Any]]:
    """Ok explanations of ``model`` closest in meaning to ``text``, best first:
    ``[{"layer", "neuron", "kind", "text", "score"}]`` (score = cosine similarity, -1 to 1).

    Vectors missing from the store are computed and stored (the CLI); ``save=False`` never writes
    (the server: a GET writes nothing) and keeps them in ``memo`` instead, a dict the caller holds
    across requests. A database that cannot be written now is treated like ``save=False``."""
    import numpy as np

    from autointerp.embeddings import EMBEDDER, embed, text_key

    if not re.search(r"\w", text):  # punctuation alone means nothing, whatever its embedding
        raise UserError(
            f"The explanation search {text!r} has no words to look for; type what the neurons "
            "should do, e.g. 'dates'."
        )
    if limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}.")
    rows = store.ok_explanations(model)
    if not rows:
        return []
    keys = [text_key(r["text"]) for r in rows]
    stored = store.text_embeddings(keys)
    if memo is not None:
        stored.update({k: memo[k] for k in keys if k not in stored and k in memo})
    missing = sorted(
        {k: r["text"] for k, r in zip(keys, rows, strict=True) if k not in stored}.items()
    )
    if missing:
        fresh = embed([t for _, t in missing])
        computed = {k: fresh[i].tobytes() for i, (k, _) in enumerate(missing)}
        stored.update(computed)
        if memo is not None:
            # ~300 MB of vectors: start again rather than grow without bound
            if len(memo) > 100_000:
                memo.clear()
            memo.update(computed)
        if save:
            try:
                store.db.execute("PRAGMA busy_timeout=200")
                store.save_text_embeddings(EMBEDDER, computed)
            # locked, busy or read-only: the answer does not need the write
            except sqlite3.OperationalError:
                if store.db.conn.in_transaction:
                    store.db.conn.rollback()
            finally:
                store.db.execute("PRAGMA busy_timeout=30000")
    matrix = np.stack([np.frombuffer(stored[k], dtype=np.float32) for k in keys])
    scores = matrix @ embed([text])[0]
    best = np.argsort(-scores, kind="stable")[:limit]
    return [
        {
            "layer": rows[i]["layer"],
            "neuron": rows[i]["neuron"],
            "kind": rows[i]["kind"],
            "text": rows[i]["text"],
            "score": round(float(scores[i]), 6),
        }
        for i in best
    ]


# --------------------------------------------------------------------------------------------------
# text -> neurons
