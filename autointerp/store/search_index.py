"""The search indexes: ``token_index`` / ``indexed_graphs`` (the tokens of each neuron's newest
N2G graph: token search and graph similarity read them), ``harvest_token_index`` (the tokens every
harvested neuron peaks on: token search for neurons without a graph), the FTS5 index over
explanation texts, and the sentence embeddings of explanation texts (search by meaning).

:func:`graph_token_weights` (which tokens of a graph the index holds, and their weights) lives
here rather than with similarity: :meth:`autointerp.store.graphs.GraphTables.save_graphs` writes
a batch of graphs and their index rows in one transaction, and the store imports no stage."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import autointerp.store.schema as schema
from autointerp.store.core import StoreCore, newest_row

#: A graph's (activating, context) tokens.
TokenSetPair = tuple[frozenset[str], frozenset[str]]

MIN_ACTIVATION = (
    0.1  # an activating node counts as a token the neuron fires on from this normalised activation
)

#: The newest graph of each neuron of a model (one parameter: the model), from any of its runs
#: and N2G configs: ``layer, neuron, run_id, config_hash, created``.
CURRENT_GRAPHS = (
    "select layer, neuron, run_id, config_hash, created from graphs g where "
    + newest_row(
        "graphs",
        "g",
        ("layer", "neuron"),
        "h.run_id in (select id from runs where model = ?)",
        every_group=True,
    )
)


def graph_token_weights(graph: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"activating": {token: activation}, "context": {token: importance}}`` of a serialised
    graph.

    An activating token's weight is the highest (normalised) activation of any end node below it; a
    context token's weight is its highest importance anywhere in the graph. Search ranks matches by
    these weights. Activating nodes whose best activation is below :data:`MIN_ACTIVATION` are left
    out: N2G adds augmentation variants that *stopped* the neuron as activating nodes too (so the
    graph predicts it stays quiet there), and those are not tokens it fires on.
    """
    nodes = graph["nodes"]
    parent = {e["target"]: e["source"] for e in graph["edges"]}
    root_of: dict[int, int] = {}
    out: dict[str, dict[str, float]] = {"activating": {}, "context": {}}
    for node in nodes:  # parents precede children in to_json's order
        ident = node["id"]
        root_of[ident] = (
            ident if node["kind"] == "activating" else root_of.get(parent.get(ident, -1), -1)
        )
        if node["kind"] == "activating":
            out["activating"].setdefault(node["token"], 0.0)
        elif node["kind"] == "context":
            imp = float(node["importance"] or 0.0)
            ctx = out["context"]
            ctx[node["token"]] = max(ctx.get(node["token"], imp), imp)
    for node in nodes:
        if node["kind"] == "end" and node["activation"] is not None:
            root = nodes[root_of[node["id"]]]["token"] if root_of.get(node["id"], -1) >= 0 else None
            if root is not None:
                act = out["activating"]
                act[root] = max(act[root], float(node["activation"]))
    out["activating"] = {t: w for t, w in out["activating"].items() if w >= MIN_ACTIVATION}
    return out


class SearchIndexTables(StoreCore):
    """The token index, the explanation text index and the text embeddings."""

    def graphs_to_index(self, model: str) -> list[dict[str, Any]]:
        """Neurons whose newest graph is not (or not yet) what ``token_index`` holds: ``[{layer,
        neuron, run_id, config_hash, created}]``."""
        sql = (
            f"select c.* from ({CURRENT_GRAPHS}) c left join indexed_graphs i on i.model = ? and"
            " i.layer = c.layer and i.neuron = c.neuron where i.created is null or i.created !="
            " c.created or i.run_id != c.run_id or i.config_hash != c.config_hash order by"
            " c.layer, c.neuron"
        )
        return [dict(r) for r in self.db.query(sql, [model, model])]

    def save_token_index(
        self, model: str, items: Iterable[tuple[dict[str, Any], dict[str, dict[str, float]]]]
    ) -> None:
        """Replace the token rows of some neurons (graph key, {kind: {token: weight}}) in one
        transaction."""
        with self.atomic():
            self._replace_token_rows(model, items)

    def _replace_token_rows(
        self, model: str, items: Iterable[tuple[dict[str, Any], dict[str, dict[str, float]]]]
    ) -> None:
        db = self.db
        for key, tokens in items:
            layer, neuron = key["layer"], key["neuron"]
            db.execute(
                "delete from token_index where model = ? and layer = ? and neuron = ?",
                [model, layer, neuron],
            )
            db.conn.executemany(
                "insert into token_index (model, layer, neuron, kind, token, weight) values (?, ?,"
                " ?, ?, ?, ?)",
                [
                    (model, layer, neuron, kind, tok, w)
                    for kind, ws in tokens.items()
                    for tok, w in ws.items()
                ],
            )
            db["indexed_graphs"].insert(
                {
                    "model": model,
                    "layer": layer,
                    "neuron": neuron,
                    "run_id": key["run_id"],
                    "config_hash": key["config_hash"],
                    "created": key["created"],
                },
                replace=True,
            )

    def graph_token_sets(self, model: str) -> tuple[list[tuple[int, int]], list[TokenSetPair]]:
        """Every indexed neuron of ``model`` (ordered by layer, neuron) and its graph's
        (activating, context) token sets (:class:`autointerp.similarity.TokenSets` holds them)."""
        neurons = [
            (int(r[0]), int(r[1]))
            for r in self.db.execute(
                "select layer, neuron from indexed_graphs where model = ? order by layer, neuron",
                [model],
            )
        ]
        sets: dict[tuple[int, int], tuple[set[str], set[str]]] = {
            n: (set(), set()) for n in neurons
        }
        for layer, neuron, kind, token in self.db.execute(
            "select layer, neuron, kind, token from token_index where model = ?", [model]
        ):
            sets[(layer, neuron)][0 if kind == "activating" else 1].add(token)
        return neurons, [(frozenset(sets[n][0]), frozenset(sets[n][1])) for n in neurons]

    # ----------------------------------------------------------------------------------------------
    # the harvest's peak tokens
    def harvest_indexed_layers(self, model: str, layers: Iterable[int]) -> dict[int, int]:
        """Which of ``layers`` ``harvest_token_index`` holds, each -> the harvest run its rows come
        from (a layer's rows are written together, so one row tells; read through the primary
        key). Empty when the database predates the table."""
        if "harvest_token_index" not in self.db.table_names():
            return {}
        out = {}
        for layer in layers:
            row = self.db.execute(
                "select run_id from harvest_token_index where model = ? and layer = ? limit 1",
                [model, layer],
            ).fetchone()
            if row is not None:
                out[int(layer)] = int(row[0])
        return out

    def harvest_index_neurons(self, model: str) -> int:
        """How many neurons of ``model`` the harvest's token index holds."""
        if "harvest_token_index" not in self.db.table_names():
            return 0
        sql = (
            "select count(*) from (select distinct layer, neuron from harvest_token_index where"
            " model = ?)"
        )
        return int(self.db.execute(sql, [model]).fetchone()[0])

    def has_harvest_index(self, model: str) -> bool:
        """Whether ``harvest_token_index`` holds any neuron of ``model``."""
        if "harvest_token_index" not in self.db.table_names():
            return False
        sql = "select 1 from harvest_token_index where model = ? limit 1"
        return self.db.execute(sql, [model]).fetchone() is not None

    def save_harvest_tokens(
        self, model: str, layer: int, run_id: int, rows: Iterable[tuple[int, str, float]]
    ) -> None:
        """Replace one layer's rows of ``harvest_token_index`` with ``(neuron, token, weight)``
        rows from harvest ``run_id``, in one transaction."""
        with self.atomic():
            schema.create_table(self.db, "harvest_token_index")  # optional: it may predate it
            self.db.execute(
                "delete from harvest_token_index where model = ? and layer = ?", [model, layer]
            )
            self.db.conn.executemany(
                "insert into harvest_token_index (model, layer, neuron, token, weight, run_id)"
                " values (?, ?, ?, ?, ?, ?)",
                ((model, layer, n, t, w, run_id) for n, t, w in rows),
            )

    def harvest_neuron_tokens(
        self, model: str, layer: int, neuron: int, tokens: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Which of ``tokens`` the neuron's top examples peak on, with what weight."""
        return [
            dict(r)
            for r in self.db.query(
                "select 'activating' as kind, token, weight from harvest_token_index where model ="
                f" ? and layer = ? and neuron = ? and token in ({','.join('?' * len(tokens))})"
                " order by weight desc",
                [model, layer, neuron, *tokens],
            )
        ]

    def token_search(
        self,
        model: str,
        terms: Sequence[tuple[Sequence[str], Sequence[str]]],
        limit: int,
        harvest: bool = False,
    ) -> list[dict[str, Any]]:
        """Neurons matching every term; a term is (kinds, tokens) and matches a neuron with any of
        its tokens as any of its kinds. Score = sum over terms of the best matching weight. With
        ``harvest``, a neuron without an indexed graph matches an ``activating`` term through the
        tokens its top examples peak on (``harvest_token_index``); each row says its ``source``,
        ``graph`` or ``harvest``. Parameterised SQL only."""
        parts, params = [], []
        for i, (kinds, tokens) in enumerate(terms):
            marks = ",".join("?" * len(tokens))
            source = (
                f"select layer, neuron, weight from token_index where model = ? and kind in"
                f" ({','.join('?' * len(kinds))}) and token in ({marks})"
            )
            params += [model, *kinds, *tokens]
            if harvest and "activating" in kinds:
                source += (
                    " union all select h.layer, h.neuron, h.weight from harvest_token_index h where"
                    f" h.model = ? and h.token in ({marks}) and not exists (select 1 from"
                    " indexed_graphs i where i.model = h.model and i.layer = h.layer and i.neuron"
                    " = h.neuron)"
                )
                params += [model, *tokens]
            parts.append(
                f"(select layer, neuron, max(weight) as w from ({source}) group by layer, neuron)"
                f" t{i}"
            )
        graphed = (
            "case when exists (select 1 from indexed_graphs i where i.model = ? and i.layer ="
            " t0.layer and i.neuron = t0.neuron) then 'graph' else 'harvest' end"
        )
        params.insert(0, model)
        sql = (
            f"select t0.layer, t0.neuron, {' + '.join(f't{i}.w' for i in range(len(terms)))} as"
            f" score, {graphed} as source from {parts[0]}"
        )
        for i in range(1, len(terms)):
            sql += f" join {parts[i]} on t{i}.layer = t0.layer and t{i}.neuron = t0.neuron"
        sql += " order by score desc, t0.layer, t0.neuron limit ?"
        return [dict(r) for r in self.db.query(sql, [*params, limit])]

    def neuron_tokens(
        self, model: str, layer: int, neuron: int, tokens: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Which of ``tokens`` the neuron's graph has, as which kind and with what weight."""
        return [
            dict(r)
            for r in self.db.query(
                "select kind, token, weight from token_index where model = ? and layer = ? and"
                f" neuron = ? and token in ({','.join('?' * len(tokens))}) order by weight desc",
                [model, layer, neuron, *tokens],
            )
        ]

    def explanation_search(self, model: str, fts_query: str, limit: int) -> list[dict[str, Any]]:
        """Ok explanations of ``model`` matching an FTS5 query (best bm25 rank first)."""
        return [
            dict(r)
            for r in self.db.query(
                "select e.layer, e.neuron, e.kind, e.text, e.run_id, bm25(explanations_fts) as rank"
                " from explanations_fts join explanations e on e.rowid = explanations_fts.rowid"
                " join runs r on r.id = e.run_id where explanations_fts match ? and r.model = ? and"
                " e.status = 'ok' order by rank, e.layer, e.neuron limit ?",
                [fts_query, model, limit],
            )
        ]

    def ok_explanations(self, model: str) -> list[dict[str, Any]]:
        """Every explanation of ``model`` with ``status = 'ok'``: ``[{layer, neuron, kind, text,
        run_id}]``."""
        return [
            dict(r)
            for r in self.db.query(
                "select e.layer, e.neuron, e.kind, e.text, e.run_id from explanations e join runs r"
                " on r.id = e.run_id where r.model = ? and e.status = 'ok' and e.text is not null"
                " order by e.layer, e.neuron, e.kind",
                [model],
            )
        ]

    def text_embeddings(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Stored vectors by key (missing keys are absent)."""
        out: dict[str, bytes] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(
                {
                    r[0]: r[1]
                    for r in self.db.execute(
                        f"select key, vector from text_embeddings where key in ({marks})", chunk
                    )
                }
            )
        return out

    def save_text_embeddings(self, embedder: str, vectors: dict[str, bytes]) -> None:
        """Store vectors in one transaction (a key already there is kept: same embedder, same
        text)."""
        now = time.time()
        with self.atomic():
            self.db["text_embeddings"].insert_all(
                (
                    {"key": k, "embedder": embedder, "vector": v, "created": now}
                    for k, v in vectors.items()
                ),
                ignore=True,
                batch_size=500,
            )
