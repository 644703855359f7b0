"""Explanations, their scores and the stored results of ``eval`` / ``calibrate``; and the reads
that rank or summarise neurons by them (which join the harvest's statistics and the graphs)."""

from __future__ import annotations

import json
import time
from typing import Any

from autointerp.errors import UserError
from autointerp.store.core import newest_first, newest_row
from autointerp.store.harvest import HarvestTables

#: The ``explanations.kind`` and ``scores.method`` of a description a person wrote and scored with
#: ``autointerp score --save`` (a hypothesis, not a pipeline result). Each text is its own pair of
#: rows: their ``config_hash`` is a hash of the text and of the explain config whose held-out
#: records scored it (:mod:`autointerp.explain.score_text`), so several hypotheses of one neuron
#: sit side by side, and an explain run - which replaces its own config's rows - never touches them.
USER_KIND = "user"


class ExplanationTables(HarvestTables):
    """The ``explanations``, ``scores`` and ``evaluations`` tables (their rankings read the
    harvest's statistics: hence on top of the harvest's tables)."""

    def explain_state(self, run_id: int, layer: int, config_hash: str) -> dict[int, str]:
        """Neuron -> ``ok`` or ``failed`` (any failed row) for neurons already processed with
        this explain config."""
        state: dict[int, str] = {}
        for table in ("explanations", "scores"):
            for row in self.db.query(
                f"select neuron, status from {table} where run_id = ? and layer = ? and "
                "config_hash = ?",
                [run_id, layer, config_hash],
            ):
                n = int(row["neuron"])
                if row["status"] == "failed":
                    state[n] = "failed"
                else:
                    state.setdefault(n, "ok")
        return state

    def save_explanation_results(
        self,
        run_id: int,
        layer: int,
        neuron: int,
        config_hash: str,
        explain_run_id: int | None,
        explanations: list[dict[str, Any]],
        scores: list[dict[str, Any]],
    ) -> None:
        """Replace one neuron's explanations and scores for this config in one transaction (a redo
        of failed rows replaces them whole, so a neuron never mixes rows from two attempts)."""
        key = {
            "run_id": run_id,
            "layer": layer,
            "neuron": neuron,
            "config_hash": config_hash,
            "explain_run_id": explain_run_id,
        }
        with self.atomic():
            for table in ("explanations", "scores"):
                self.db.execute(
                    f"delete from {table} where run_id = ? and layer = ? and neuron = ? and "
                    "config_hash = ?",
                    [run_id, layer, neuron, config_hash],
                )
            self.db["explanations"].insert_all({**key, **r} for r in explanations)
            self.db["scores"].insert_all({**key, **r} for r in scores)

    def config_results(
        self, run_id: int, layer: int, neuron: int, config_hash: str
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(explanations by kind, scores by method) of one neuron under one explain config."""
        out = []
        for table, column in (("explanations", "kind"), ("scores", "method")):
            rows = self.db.query(
                f"select * from {table} where run_id = ? and layer = ? and "
                "neuron = ? and config_hash = ?",
                [run_id, layer, neuron, config_hash],
            )
            out.append({r[column]: dict(r) for r in rows})
        return out[0], out[1]

    def explanation_summary(self, model: str, layer: int, neuron: int) -> dict[str, Any]:
        """The newest explanation of each kind and score of each method for a neuron (from the
        model's harvests); the descriptions users scored are :meth:`user_explanations`."""
        out: dict[str, Any] = {"explanations": {}, "scores": {}}
        for table, column in (("explanations", "kind"), ("scores", "method")):
            rows = self.db.query(
                f"select t.* from {table} t join runs r on r.id = t.run_id where r.model = ? and"
                f" t.layer = ? and t.neuron = ? and t.{column} != ? order by t.created",
                [model, layer, neuron, USER_KIND],
            )
            for row in rows:  # later rows win; a kind keeps the place of its first row
                out[table][row[column]] = dict(row)
        return out

    def neuron_explanations(self, run_id: int, layer: int, neuron: int) -> list[dict[str, Any]]:
        """Every explanation row of a neuron (all kinds and configs, failures included), newest
        first."""
        return [
            dict(r)
            for r in self.db.query(
                "select * from explanations where run_id = ? and layer = ? and neuron = ? order by"
                " created desc",
                [run_id, layer, neuron],
            )
        ]

    def neuron_scores(self, run_id: int, layer: int, neuron: int) -> list[dict[str, Any]]:
        """Every score row of a neuron (all methods and configs, failures included), newest
        first."""
        return [
            dict(r)
            for r in self.db.query(
                "select * from scores where run_id = ? and layer = ? and neuron = ? order by"
                " created desc",
                [run_id, layer, neuron],
            )
        ]

    def newest_explained_config(self, run_id: int, layer: int, neuron: int) -> str | None:
        """The explain config hash of the neuron's newest score of its explanation, baseline or N2G
        graph: the held-out records a new description is scored on to stand beside them (None:
        never explained)."""
        row = self.db.execute(
            "select s.config_hash from scores s where s.run_id = ? and s.layer = ? and s.neuron = ?"
            " and s.method in ('explanation', 'baseline', 'n2g') order by"
            f" {newest_first('s')} limit 1",
            [run_id, layer, neuron],
        ).fetchone()
        return None if row is None else str(row[0])

    def user_explanations(self, run_id: int, layer: int, neuron: int) -> list[dict[str, Any]]:
        """The descriptions users scored and saved for a neuron (:data:`USER_KIND`), newest first,
        each with its score row's columns (``status``, ``score``, ``simulation``, ``error``...)."""
        return [
            dict(r)
            for r in self.db.query(
                "select e.text, e.config_hash, e.explain_run_id, e.created, s.status, s.score,"
                " s.score_raw, s.score_top, s.score_random, s.auprc, s.n_tokens, s.simulator_model,"
                " s.simulator_mode, s.simulation, s.error from explanations e left join scores s on"
                " s.run_id = e.run_id and s.layer = e.layer and s.neuron = e.neuron and"
                " s.config_hash = e.config_hash and s.method = e.kind where e.run_id = ? and"
                f" e.layer = ? and e.neuron = ? and e.kind = ? order by {newest_first('e')}",
                [run_id, layer, neuron, USER_KIND],
            )
        ]

    def layer_explanations(
        self, run_id: int, layer: int, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many neurons have an ok ``llm`` explanation, a page of them with their newest
        explanation score)."""
        newest = newest_row(
            "explanations", "e", ("run_id", "layer", "neuron", "kind"), "h.status = 'ok'"
        )
        newest = (
            "from explanations e where e.run_id = ? and e.layer = ? and e.kind = 'llm' and "
            f"e.status = 'ok' and {newest}"
        )
        total = int(self.db.execute(f"select count(*) {newest}", [run_id, layer]).fetchone()[0])
        rows = self.db.query(
            "select e.neuron, e.text, e.model, e.prompt_version, (select s.score from scores s"
            " where s.run_id = e.run_id and s.layer = e.layer and s.neuron = e.neuron and s.method"
            f" = 'explanation' and s.status = 'ok' order by {newest_first('s')} limit 1) as score"
            f" {newest} order by e.neuron limit ? offset ?",
            [run_id, layer, limit, offset],
        )
        return total, [dict(r) for r in rows]

    def layer_counts(self, run_id: int, layer: int) -> dict[str, int]:
        """How many neurons of a layer have statistics, graphs, ok explanations and ok scores."""
        q = {
            "neurons": "select count(*) from neurons where run_id = ? and layer = ?",
            "graphs": "select count(distinct neuron) from graphs where run_id = ? and layer = ?",
            "explanations": (
                "select count(distinct neuron) from explanations where run_id = ? and layer = ? and"
                " status = 'ok' and kind = 'llm'"
            ),
            "scores": (
                "select count(distinct neuron) from scores where run_id = ? and layer = ? and"
                f" status = 'ok' and method != '{USER_KIND}'"
            ),
        }
        return {k: int(self.db.execute(sql, [run_id, layer]).fetchone()[0]) for k, sql in q.items()}

    def score_values(self, run_id: int, layer: int) -> dict[str, list[float]]:
        """Every ok score of a layer by method (newest per neuron), plus ``n2g_graph``: graph
        correlations. Users' descriptions are not the layer's results: left out."""
        out: dict[str, list[float]] = {}
        newest = newest_row(
            "scores",
            "s",
            ("neuron", "method"),
            "h.run_id = ? and h.layer = ? and h.status = 'ok' and h.method != ?",
            every_group=True,
        )
        for row in self.db.query(
            f"select s.method, s.score from scores s where {newest} and "
            "s.score is not null order by s.neuron, s.method",
            [run_id, layer, USER_KIND],
        ):
            out.setdefault(row["method"], []).append(float(row["score"]))
        newest = newest_row(
            "graphs", "g", ("neuron",), "h.run_id = ? and h.layer = ?", every_group=True
        )
        graphs = [
            float(r["correlation"])
            for r in self.db.query(
                f"select g.correlation from graphs g where {newest} and g.correlation is not null "
                "order by g.neuron",
                [run_id, layer],
            )
        ]
        if graphs:
            out["n2g_graph"] = graphs
        return out

    #: rank --by choices that read the scores table rather than a statistic: (score method, its
    #: explanation's kind, the column ranked by) - the headline, or one of the numbers beside it
    SCORE_METHODS = {
        "explanation": ("explanation", "llm", "score"),
        "explanation_random": ("explanation", "llm", "score_random"),
        "explanation_auprc": ("explanation", "llm", "auprc"),
        "baseline": ("baseline", "baseline", "score"),
        "explanation_negative": ("explanation_negative", "llm_negative", "score"),
    }

    def rank_neurons(
        self, model: str, by: str, layer: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Neurons of the latest complete harvest(s) of ``model``, best first by a statistic or a
        score.

        Scores (``n2g``, ``explanation``, ``baseline``) use each neuron's newest successful score;
        neurons without one drop out - a failed or undefined score is never ranked as a number.
        ``cos_in_out`` (most positive first) and ``cos_in_out_negative`` (most negative first) rank
        by the weight facts; neurons without them drop out too."""
        columns = {
            "max": "n.max",
            "min": "-n.min",
            "frac_positive": "n.frac_positive",
            "variance": "n.variance",
            "n2g": "g.correlation",
            "cos_in_out": "w.cos_in_out",
            "cos_in_out_negative": "-w.cos_in_out",
            **{k: f"s.{v[2]}" for k, v in self.SCORE_METHODS.items()},
        }
        if by not in columns:
            raise UserError(f"Cannot rank by {by!r}; choose one of {', '.join(columns)}.")
        runs = {lay: run["id"] for lay, run in self.harvested_layers(model).items()}
        if layer is not None:
            if layer not in runs:
                raise self.not_harvested(model, layer)
            runs = {layer: runs[layer]}
        if not runs:
            raise self.not_harvested(model)
        where = " or ".join("(n.run_id = ? and n.layer = ?)" for _ in runs)
        params: list[Any] = [v for lay, run_id in runs.items() for v in (run_id, lay)]
        per_neuron = ("run_id", "layer", "neuron")
        join, extra, join_params = "", "", []
        if by == "n2g":
            # the newest graph of each neuron, scored by its held-out correlation
            join = (
                "join graphs g on g.run_id = n.run_id and g.layer = n.layer and g.neuron ="
                f" n.neuron and {newest_row('graphs', 'g', per_neuron)} and g.correlation is not"
                " null"
            )
            extra = (
                ", g.correlation as score, g.correlation as n2g_correlation, g.f1 as n2g_f1, "
                "g.precision as n2g_precision, g.recall as n2g_recall, "
                "g.f1_top as n2g_f1_top, g.correlation_top as n2g_correlation_top, "
                "g.f1_random as n2g_f1_random, g.correlation_random as n2g_correlation_random"
            )
        elif by in ("cos_in_out", "cos_in_out_negative"):
            # weight facts (`autointerp weights`): cos(w_in, w_out), most positive or most negative
            join = (
                "join weights w on w.model = ? and w.layer = n.layer and w.neuron = n.neuron and"
                " w.cos_in_out is not null"
            )
            join_params = [model]
            extra = ", w.cos_in_out as score, w.cos_in_out, w.input_vector"
        elif by in self.SCORE_METHODS:
            method, kind, column = self.SCORE_METHODS[by]
            newest = newest_row("scores", "s", (*per_neuron, "method"), "h.status = 'ok'")
            join = (
                "join scores s on s.run_id = n.run_id and s.layer = n.layer and s.neuron ="
                f" n.neuron and s.method = ? and s.status = 'ok' and s.{column} is not null and"
                f" {newest} left join"
                " explanations e on e.run_id = s.run_id and e.layer = s.layer and e.neuron ="
                " s.neuron and e.config_hash = s.config_hash and e.kind = ?"
            )
            join_params = [method, kind]
            other = (
                "(select o.score from scores o where o.run_id = s.run_id and o.layer = s.layer and "
                "o.neuron = s.neuron and o.config_hash = s.config_hash and o.method = '{}' and "
                "o.status = 'ok')"
            )
            extra = (
                ", s.score, s.score_raw, s.score_top, s.score_random, s.auprc, s.r2,"
                " s.simulator_model, s.simulator_mode, e.text as explanation, e.origin,"
                " e.model as explainer_model,"
                f" e.prompt_version, s.config_hash, {other.format('baseline')} as baseline_score,"
                f" {other.format('n2g')} as n2g_score"
            )
        sql = (
            "select n.layer, n.neuron, n.max, n.min, n.mean, n.frac_positive, n.variance,"
            f" n.run_id{extra} from neurons n {join} where ({where}) order by {columns[by]} desc,"
            " n.layer, n.neuron limit ?"
        )
        return [dict(r) for r in self.db.query(sql, [*join_params, *params, limit])]

    def save_evaluation(
        self,
        model: str,
        kind: str,
        config: dict[str, Any],
        config_hash: str,
        result: dict[str, Any] | list[Any],
        run_model: str | None = None,
    ) -> int:
        """Store one ``eval`` / ``calibrate`` result with its config (a ``runs`` row of that stage)
        in one transaction; returns the run id. Every invocation is kept, so a later explainer can
        be compared. ``run_model`` names the ``runs`` row's model when it differs: a calibration run
        belongs to the feature set's model (which the ``models`` table holds), while its result is
        filed under the real model that ``eval`` looks it up by."""
        now = time.time()
        with self.atomic():
            table = self.db["runs"]
            table.insert(
                {
                    "model": run_model or model,
                    "stage": kind,
                    "config": json.dumps(config, sort_keys=True),
                    "config_hash": config_hash,
                    "shard_index": 0,
                    "shard_count": 1,
                    "status": "complete",
                    "corpus": json.dumps({}),
                    "contexts_done": 0,
                    "tokens_done": 0,
                    "created": now,
                    "finished": now,
                }
            )
            run_id = int(table.last_pk)
            self.db["evaluations"].insert(
                {
                    "run_id": run_id,
                    "model": model,
                    "kind": kind,
                    "result": json.dumps(result),
                    "created": now,
                }
            )
        return run_id

    def latest_evaluation(self, model: str, kind: str) -> dict[str, Any] | None:
        """The newest stored ``eval`` / ``calibrate`` result of ``model``: ``{run_id, config,
        result, created}``."""
        row = next(
            self.db.query(
                "select e.run_id, e.result, e.created, r.config, r.config_hash from evaluations e "
                "join runs r on r.id = e.run_id where e.model = ? and e.kind = ? "
                "order by e.run_id desc limit 1",
                [model, kind],
            ),
            None,
        )
        if row is None:
            return None
        return {
            "run_id": row["run_id"],
            "config": json.loads(row["config"]),
            "config_hash": row["config_hash"],
            "result": json.loads(row["result"]),
            "created": row["created"],
        }
