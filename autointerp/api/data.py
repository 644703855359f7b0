"""What the server reads: one :class:`~autointerp.store.Store` per thread, a catalog of models and layers, and the
per-neuron records every JSON endpoint and page is built from.

Why per thread: sqlite3 connections must not be shared between threads, and the server answers requests from a
thread pool. WAL mode lets all of these readers run while a pipeline writes. Why a catalog: the layer -> harvest run
map is needed by every request, but it only changes when a run is added or finishes, which one tiny query on
``runs`` detects. Why a byte cache: a finished harvest run never changes (a newer harvest is a new run id), so a
neuron's statistics and examples keyed by run id can be encoded to JSON once and served as bytes afterwards.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import UserError
from autointerp.histogram import HIST_EDGES
from autointerp.store import Store
from autointerp.token_index import refresh_token_index

SERVICES = ("neuroscope", "n2g", "explanation", "similar", "stats", "weights", "all")
EXAMPLE_KINDS = ("top", "bottom", "quantile", "random")
# Examples per kind in a neuroscope answer unless ``limit`` asks for more: what a page shows.
# All of them (~140 with their activations, ~200 KB) made a cold answer cost 4x more to read and
# encode than what a reader looks at.
NEUROSCOPE_LIMIT = 10


class NotFound(Exception):
    """Something the request names does not exist; ``available`` says what does (sent as the 404 body)."""

    def __init__(self, message: str, **available: Any):
        super().__init__(message)
        self.message = message
        self.available = available


class BadRequest(Exception):
    """A parameter has the right type but a value we cannot use (sent as 422 with one message)."""


def url_name(name: str) -> str:
    """Model names may hold ``/`` (Hugging Face ids), which a path segment cannot: links use ``--``
    instead (the Hugging Face cache's own convention), and :meth:`ApiData.model` maps it back."""
    return name.replace("/", "--")


@dataclass
class ModelView:
    """One model as the server sees it: its facts (from the ``models`` table) and the run each layer is read from."""

    name: str
    info: dict[str, Any]
    layers: dict[int, dict[str, Any]]  # layer -> harvest run row

    @property
    def d_mlp(self) -> int | None:
        return self.info.get("d_mlp")

    @property
    def url(self) -> str:
        """The name as one URL path segment: ``org/name`` -> ``org--name``."""
        return url_name(self.name)

    def run_id(self, layer: int) -> int:
        return int(self.layers[layer]["id"])


@dataclass
class Catalog:
    fingerprint: tuple[Any, ...]
    models: dict[str, ModelView] = field(default_factory=dict)


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN/inf (never valid JSON) become null so browsers can parse every answer."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    except ValueError:
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _activation_arrays(blobs: list[bytes]) -> list[bytes]:
    """JSON arrays of float32 activation blobs, 5 significant digits ("%.5g" is valid JSON for finite numbers and
    several times faster than rounding to Python floats and encoding them one by one)."""
    if not blobs:
        return []
    from autointerp.store import decode_acts

    out = []
    for blob in blobs:
        values = decode_acts(blob)
        if np.isfinite(values).all():
            out.append(("[" + ",".join(["%.5g" % v for v in values.tolist()]) + "]").encode())  # noqa: UP031
        else:
            out.append(dumps([round(v, 4) if math.isfinite(v) else None for v in values.tolist()]))
    return out


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


class ByteCache:
    """A thread-safe LRU of encoded JSON answers, bounded by total bytes."""

    def __init__(self, max_bytes: int = 128 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def get_or_make(self, key: Any, make: Callable[[], Any]) -> bytes:
        value = self.get(key)
        if value is None:
            value = dumps(make())
            self.put(key, value)
        return value


class ApiData:
    """Read access for the server. Cheap to call from any thread; every method opens nothing after the first call
    in a thread."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        if not self.db_path.exists():
            raise UserError(f"No database at {self.db_path}; run `autointerp harvest` first or pass --db.")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self.cache = ByteCache()
        self._vectors: dict[str, bytes] = {}  # explanation embeddings the database did not hold yet
        self._contexts: dict[tuple[int, int], bytes] = {}  # (run, context) -> JSON fragment; plain dict ops are atomic
        self.store()  # fail now (newer schema, unreadable file), not on the first request
        import autointerp.models  # noqa: F401  (imports torch: 2 s that must not land on the first request)

    # ------------------------------------------------------------------------------------------------ plumbing
    def store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = Store(self.db_path, create=False)
            self._local.store = store
        return store

    def catalog(self) -> Catalog:
        """The models and harvested layers; rebuilt only when the ``runs`` table changed."""
        store = self.store()
        fingerprint = store.runs_fingerprint()
        current = self._catalog
        if current is not None and current.fingerprint == fingerprint:
            return current
        models: dict[str, ModelView] = {}
        names = sorted({r["model"] for r in store.runs()})
        for name in names:
            layers = store.harvested_layers(name)
            if not layers:
                continue
            models[name] = ModelView(name, store.model_info(name) or {"name": name}, dict(sorted(layers.items())))
        catalog = Catalog(fingerprint, models)
        with self._lock:
            self._catalog = catalog
        return catalog

    def model(self, name: str) -> ModelView:
        models = self.catalog().models
        if name in models:
            return models[name]
        from autointerp.models import canonical_model_name

        canonical = canonical_model_name(name)
        if canonical in models:
            return models[canonical]
        unslashed = name.replace("--", "/")
        if unslashed in models:
            return models[unslashed]
        raise NotFound(f"No harvested model {name!r} in this database." + (
            f" It has: {', '.join(models)}." if models else " It has no complete harvest yet."), models=list(models))

    def check_layer(self, view: ModelView, layer: int) -> int:
        if layer not in view.layers:
            raise NotFound(f"Layer {layer} of {view.name} has not been harvested; harvested layers: "
                           f"{list(view.layers)}.", layers=list(view.layers))
        return view.run_id(layer)

    def check_neuron(self, view: ModelView, layer: int, neuron: int) -> int:
        run_id = self.check_layer(view, layer)
        d_mlp = view.d_mlp
        if neuron < 0 or (d_mlp is not None and neuron >= d_mlp):
            raise NotFound(f"Neuron {neuron} does not exist: {view.name} has neurons 0-{(d_mlp or 1) - 1} per layer.",
                           neurons=[0, (d_mlp or 1) - 1])
        return run_id

    @staticmethod
    def check_service(service: str) -> str:
        if service not in SERVICES:
            raise NotFound(f"Unknown service {service!r}; services: {', '.join(SERVICES)}.", services=list(SERVICES))
        return service

    # ------------------------------------------------------------------------------------------------ models
    def models_list(self) -> list[dict[str, Any]]:
        return [self._model_summary(v) for v in self.catalog().models.values()]

    def _model_summary(self, view: ModelView) -> dict[str, Any]:
        info = view.info
        return {"name": view.name, "n_layers": info.get("n_layers"), "d_mlp": info.get("d_mlp"),
                "act_fn": info.get("act_fn"), "gated_mlp": info.get("gated_mlp"),
                "harvested_layers": list(view.layers), "url": f"/api/{view.url}",
                "page": f"/m/{view.url}"}

    def model_record(self, view: ModelView) -> dict[str, Any]:
        store = self.store()
        layers = []
        totals = {"neurons": 0, "graphs": 0, "explanations": 0, "scores": 0}
        for layer, run in view.layers.items():
            counts = store.layer_counts(run["id"], layer)
            for k in totals:
                totals[k] += counts[k]
            layers.append({"layer": layer, "run_id": run["id"], **counts,
                           "tokens": run.get("tokens_done"), "corpus": run.get("corpus", {}).get("spec"),
                           "url": f"/api/{view.url}/all/{layer}"})
        runs = {r["id"]: r for r in view.layers.values()}
        corpora = [{"run_id": rid, "spec": r["corpus"].get("spec"), "documents": r["corpus"].get("documents"),
                    "fingerprint": r["corpus"].get("fingerprint"), "tokens": r.get("tokens_done"),
                    "ctx_len": r["config"].get("ctx_len")} for rid, r in runs.items()]
        return {
            **self._model_summary(view),
            "d_model": view.info.get("d_model"), "n_ctx": view.info.get("n_ctx"),
            "provenance": view.info.get("provenance"),
            "corpus": corpora, "layers": layers, "totals": totals,
            "services": self.available_services(totals),
        }

    def available_services(self, totals: dict[str, int]) -> dict[str, bool]:
        """Which services have any data for this model (the others answer "not computed" per neuron)."""
        store = self.store()
        return {
            "neuroscope": totals["neurons"] > 0, "stats": totals["neurons"] > 0, "n2g": totals["graphs"] > 0,
            "explanation": totals["explanations"] > 0 or totals["scores"] > 0,
            "similar": hasattr(store, "similar"), "weights": hasattr(store, "weight_facts"), "all": True,
        }

    # ------------------------------------------------------------------------------------------------ layers
    def layer_record(self, view: ModelView, service: str, layer: int, offset: int, limit: int) -> dict[str, Any]:
        run_id = self.check_layer(view, layer)
        store = self.store()
        base = {"model": view.name, "service": service, "layer": layer, "run_id": run_id, "offset": offset,
                "limit": limit}
        if service == "n2g":
            total, rows = store.layer_graphs(run_id, layer, offset, limit)
            items = [{**{k: _r(v) if isinstance(v, float) else v for k, v in r.items()},
                      "url": f"/api/{view.url}/n2g/{layer}/{r['neuron']}"} for r in rows]
        elif service == "explanation":
            total, rows = store.layer_explanations(run_id, layer, offset, limit)
            items = [{**r, "score": _r(r["score"]),
                      "url": f"/api/{view.url}/explanation/{layer}/{r['neuron']}"}
                     for r in rows]
        else:
            total = store.layer_neuron_count(run_id, layer)
            rows = store.layer_stats(run_id, layer, offset, limit)
            items = [{**{k: _r(v, 6) if isinstance(v, float) else v for k, v in r.items()},
                      "url": f"/api/{view.url}/{service}/{layer}/{r['neuron']}"} for r in rows]
        return {**base, "total": total, "items": items}

    # ------------------------------------------------------------------------------------------------ neurons
    def neuron_bytes(self, view: ModelView, service: str, layer: int, neuron: int, kinds: tuple[str, ...] | None,
                     limit: int | None) -> bytes:
        """The JSON answer for one neuron and service, built for speed: statistics and examples come from the byte
        cache (a finished run never changes) or are assembled from the stored JSON text without decoding it;
        graphs, explanations and the rest are read fresh, so new results show at once."""
        run_id = self.check_neuron(view, layer, neuron)
        if service == "stats":
            return self.stats_bytes(view, layer, neuron, run_id)
        if service == "neuroscope":
            return self.neuroscope_bytes(view, layer, neuron, run_id, kinds, limit)
        if service == "n2g":
            return self.n2g_bytes(view, layer, neuron)
        if service == "all":
            head = dumps({"model": view.name, "layer": layer, "neuron": neuron, "run_id": run_id})[:-1]
            parts = [b'"stats":' + self.stats_bytes(view, layer, neuron, run_id),
                     b'"neuroscope":' + self.neuroscope_bytes(view, layer, neuron, run_id, kinds, limit),
                     b'"n2g":' + self.n2g_bytes(view, layer, neuron),
                     b'"explanation":' + dumps(self.explanation_record(view, layer, neuron, run_id)),
                     b'"similar":' + dumps(self.similar_record(view, layer, neuron)),
                     b'"weights":' + dumps(self.weights_record(view, layer, neuron))]
            return head + b"," + b",".join(parts) + b"}"
        return dumps(self.neuron_record(view, service, layer, neuron, kinds, limit))

    def cached_neuron(self, view: ModelView, service: str, layer: int, neuron: int,
                      kinds: tuple[str, ...] | None, limit: int | None) -> bytes | None:
        """The cached answer, if there is one (no SQL beyond the catalog check): lets the server answer from the
        event loop without a thread hop."""
        if service not in ("stats", "neuroscope"):
            return None
        run_id = self.check_neuron(view, layer, neuron)
        if service == "stats":
            return self.cache.get(("stats", run_id, layer, neuron))
        return self.cache.get(("neuroscope", run_id, layer, neuron, kinds, limit))

    def stats_bytes(self, view: ModelView, layer: int, neuron: int, run_id: int) -> bytes:
        return self.cache.get_or_make(("stats", run_id, layer, neuron),
                                      lambda: self.stats_record(view, layer, neuron, run_id))

    def n2g_bytes(self, view: ModelView, layer: int, neuron: int) -> bytes:
        """The graph is embedded as its stored JSON text (graphs have thousands of nodes; decoding and re-encoding
        them per request would cost more than everything else)."""
        row = self.store().graph_raw(view.name, layer, neuron)
        if row is None:
            return dumps(self.n2g_record(view, layer, neuron))
        record = self._n2g_fields(view, layer, neuron, row)
        return dumps(record)[:-1] + b',"graph":' + row["graph"].encode() + b"}"

    def neuroscope_bytes(self, view: ModelView, layer: int, neuron: int, run_id: int,
                         kinds: tuple[str, ...] | None, limit: int | None) -> bytes:
        key = ("neuroscope", run_id, layer, neuron, kinds, limit)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        store = self.store()
        ranks = store.example_ranks(run_id, layer, neuron)  # also those past the limit
        rows = store.example_rows_raw(run_id, layer, neuron, kinds, limit, ranks)
        per_kind = {k: len(ranks[k]) for k in kinds or EXAMPLE_KINDS if k in ranks}
        shown: dict[str, int] = {}
        keep = []
        for row in rows:
            shown[row[0]] = shown.get(row[0], 0) + 1
            if limit is None or shown[row[0]] <= limit:
                keep.append(row)
        acts_json = _activation_arrays([row[8] for row in keep])
        pieces = []
        for row, acts in zip(keep, acts_json, strict=True):
            kind, rank, split, context_id, mx, mn, peak, interval = row[:8]
            pieces.append(b'{"kind":"' + kind.encode() + b'",' + dumps(
                {"rank": rank, "split": split, "context_id": context_id, "max_activation": _r(mx),
                 "min_activation": _r(mn), "peak_index": peak, "interval": interval})[1:-1]
                + b"," + self._context_json(run_id, context_id, row) + b',"activations":' + acts + b"}")
        head = dumps({**self._head(view, layer, neuron, run_id), "hook": f"blocks.{layer}.mlp.hook_post",
                      "kinds": list(kinds or EXAMPLE_KINDS), "counts": per_kind, "limit": limit,
                      "note": "token 0 of every example is BOS and never counts in statistics"})
        out = head[:-1] + b',"examples":[' + b",".join(pieces) + b"]}"
        self.cache.put(key, out)
        return out

    def _context_json(self, run_id: int, context_id: int, row: tuple[Any, ...]) -> bytes:
        """``"tokens":[...],"token_ids":[...],"documents":[...]`` of a context, cached: many neurons share
        contexts (all of them share the random sample)."""
        key = (run_id, context_id)
        frag = self._contexts.get(key)
        if frag is None:
            docs = sorted({i for i in json.loads(row[11]) if i >= 0})
            frag = (b'"tokens":' + row[9].encode() + b',"token_ids":' + row[10].encode() + b',"documents":'
                    + dumps(docs))
            if len(self._contexts) > 50_000:
                self._contexts.clear()
            self._contexts[key] = frag
        return frag

    def neuron_record(self, view: ModelView, service: str, layer: int, neuron: int,
                      kinds: tuple[str, ...] | None = None, limit: int | None = None) -> dict[str, Any]:
        run_id = self.check_neuron(view, layer, neuron)
        makers: dict[str, Callable[[], dict[str, Any]]] = {
            "stats": lambda: self.stats_record(view, layer, neuron, run_id),
            "neuroscope": lambda: self.neuroscope_record(view, layer, neuron, run_id, kinds, limit),
            "n2g": lambda: self.n2g_record(view, layer, neuron),
            "explanation": lambda: self.explanation_record(view, layer, neuron, run_id),
            "similar": lambda: self.similar_record(view, layer, neuron),
            "weights": lambda: self.weights_record(view, layer, neuron),
        }
        if service != "all":
            return makers[service]()
        out = {"model": view.name, "layer": layer, "neuron": neuron, "run_id": run_id}
        for name, make in makers.items():
            record = make()
            out[name] = {k: v for k, v in record.items() if k not in ("model", "layer", "neuron", "run_id")}
        return out

    def _head(self, view: ModelView, layer: int, neuron: int, run_id: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": view.name, "layer": layer, "neuron": neuron}
        if run_id is not None:
            out["run_id"] = run_id
        return out

    def stats_record(self, view: ModelView, layer: int, neuron: int, run_id: int) -> dict[str, Any]:
        row = self.store().neuron(run_id, layer, neuron)
        if row is None:
            raise NotFound(f"Neuron {layer}/{neuron} has no statistics in run {run_id}.")
        keep = ("count", "mean", "variance", "max", "min", "frac_positive")
        stats = {k: row[k] for k in keep}
        stats["std"] = math.sqrt(max(row["variance"] or 0.0, 0.0))
        return {**self._head(view, layer, neuron, run_id), "hook": f"blocks.{layer}.mlp.hook_post", "stats": stats,
                "hist": row["hist"], "hist_edges": HIST_EDGES, "ctx_max_hist": row["ctx_max_hist"],
                "hist_note": "token histogram over a fixed 1-in-hist_sample sample of contexts; ctx_max_hist counts "
                             "each context's maximum, over all contexts"}

    def neuroscope_record(self, view: ModelView, layer: int, neuron: int, run_id: int,
                          kinds: tuple[str, ...] | None = None, limit: int | None = None) -> dict[str, Any]:
        examples = []
        per_kind: dict[str, int] = {}
        for ex in self.store().examples(run_id, layer, neuron, kinds=kinds):
            per_kind[ex["kind"]] = per_kind.get(ex["kind"], 0) + 1
            if limit is not None and per_kind[ex["kind"]] > limit:
                continue
            examples.append({
                "kind": ex["kind"], "rank": ex["rank"], "split": ex["split"], "context_id": ex["context_id"],
                "tokens": ex["str_tokens"], "token_ids": ex["tokens"],
                "activations": [round(a, 4) for a in ex["activations"]],
                "max_activation": _r(ex["max_activation"]), "min_activation": _r(ex["min_activation"]),
                "peak_index": ex["peak_index"], "interval": ex["interval"],
                "documents": sorted({i for i in ex["doc_index"] if i >= 0}),
            })
        return {**self._head(view, layer, neuron, run_id), "hook": f"blocks.{layer}.mlp.hook_post",
                "kinds": list(kinds or EXAMPLE_KINDS), "counts": per_kind, "limit": limit,
                "examples": examples,
                "note": "token 0 of every example is BOS and never counts in statistics"}

    def n2g_record(self, view: ModelView, layer: int, neuron: int) -> dict[str, Any]:
        row = self.store().graph(view.name, layer, neuron)
        if row is None:
            return {**self._head(view, layer, neuron), "available": False,
                    "message": f"No N2G graph computed for this neuron; run `autointerp graph {view.name} --layers "
                               f"{layer} --neurons {neuron}`."}
        return {**self._n2g_fields(view, layer, neuron, row), "graph": row["graph"]}

    def _n2g_fields(self, view: ModelView, layer: int, neuron: int, row: dict[str, Any]) -> dict[str, Any]:
        return {**self._head(view, layer, neuron), "available": True, "config_hash": row["config_hash"],
                "n_nodes": row["n_nodes"], "precision": row["precision"], "recall": row["recall"], "f1": row["f1"],
                "correlation": row["correlation"], "n_tokens": row["n_tokens"],
                "graphml_url": f"/api/{view.url}/n2g/{layer}/{neuron}/graphml",
                "svg_url": f"/img/{view.url}/n2g/{layer}/{neuron}.svg"}

    def explanation_record(self, view: ModelView, layer: int, neuron: int, run_id: int) -> dict[str, Any]:
        store = self.store()
        explanations: dict[str, dict[str, Any]] = {}
        failures: list[dict[str, Any]] = []
        for row in store.neuron_explanations(run_id, layer, neuron):  # newest first: the first ok row wins
            if row["status"] == "ok" and row["kind"] not in explanations:
                explanations[row["kind"]] = {k: row.get(k) for k in (
                    "text", "model", "prompt_version", "prompt_hash", "config_hash", "created")}
            elif row["status"] != "ok":
                failures.append({"what": f"explanation:{row['kind']}", "error": row.get("error"),
                                 "created": row.get("created")})
        scores: dict[str, dict[str, Any]] = {}
        for row in store.neuron_scores(run_id, layer, neuron):
            if row["status"] == "ok" and row["method"] not in scores:
                scores[row["method"]] = {k: row.get(k) for k in (
                    "score", "score_top", "score_random", "r2", "n_tokens", "simulator_model", "simulator_mode",
                    "config_hash", "created")}
            elif row["status"] != "ok":
                failures.append({"what": f"score:{row['method']}", "error": row.get("error"),
                                 "created": row.get("created")})
        head = self._head(view, layer, neuron, run_id)
        if not explanations and not scores:
            return {**head, "available": False, "explanations": {}, "scores": {}, "failures": failures,
                    "message": "No explanation computed for this neuron; run `autointerp explain`."}
        return {**head, "available": True, "explanations": explanations, "scores": scores, "failures": failures}

    def similar_record(self, view: ModelView, layer: int, neuron: int, limit: int = 10) -> dict[str, Any]:
        store = self.store()
        head = self._head(view, layer, neuron)
        method = getattr(store, "similar", None)
        if method is None:
            return {**head, "available": False, "items": [], "message": "Similarity is not computed in this "
                    "version (autointerp similarity is not installed)."}
        try:
            items = method(view.name, layer, neuron, limit)
        except UserError as exc:
            return {**head, "available": False, "items": [], "message": str(exc)}
        items = [{**it, "url": f"/m/{view.url}/neuron/{it['layer']}/{it['neuron']}"}
                 for it in items or []]
        if not items:
            return {**head, "available": False, "items": [],
                    "message": "No similar neurons computed for this neuron."}
        return {**head, "available": True, "items": items}

    def weights_record(self, view: ModelView, layer: int, neuron: int) -> dict[str, Any]:
        store = self.store()
        head = self._head(view, layer, neuron)
        method = getattr(store, "weight_facts", None)
        if method is None:
            return {**head, "available": False, "facts": None, "message": "Weight facts are not computed in this "
                    "version (autointerp weights is not installed)."}
        try:
            facts = method(view.name, layer, neuron)
        except UserError as exc:
            return {**head, "available": False, "facts": None, "message": str(exc)}
        if not facts:
            return {**head, "available": False, "facts": None, "message": "No weight facts computed for this "
                    "neuron."}
        return {**head, "available": True, "facts": facts}

    # ------------------------------------------------------------------------------------------------ queries
    def rank(self, view: ModelView, by: str, layer: int | None, limit: int) -> dict[str, Any]:
        if layer is not None:
            self.check_layer(view, layer)
        try:
            rows = self.store().rank_neurons(view.name, by, layer, limit)
        except UserError as exc:
            raise BadRequest(str(exc)) from exc
        items = [{**{k: _r(v, 6) if isinstance(v, float) else v for k, v in r.items()},
                  "page": f"/m/{view.url}/neuron/{r['layer']}/{r['neuron']}",
                  "url": f"/api/{view.url}/all/{r['layer']}/{r['neuron']}"} for r in rows]
        return {"model": view.name, "by": by, "layer": layer, "limit": limit, "items": items}

    def search(self, view: ModelView, query: str | None, text: str | None, limit: int,
               exact: bool = False) -> dict[str, Any]:
        """Token queries (``any:the``) and explanation text search, through autointerp.search when installed."""
        if not query and not text:
            raise BadRequest("Give a token query (query=any:the) or explanation text (text=...).")
        try:
            from autointerp import search as search_mod
        except ImportError:
            return {"model": view.name, "query": query, "text": text, "available": False, "items": [],
                    "message": "Search is not available in this version (autointerp.search is not installed)."}
        out: dict[str, Any] = {"model": view.name, "query": query, "text": text, "available": True}
        items: list[dict[str, Any]] = []
        store = self.store()
        try:
            terms = search_mod.parse_query(query) if query else None  # a malformed query is the user's: 422
            words = search_mod.fts_query(text) if text else None
        except UserError as exc:
            raise BadRequest(str(exc)) from exc
        if terms is not None and not terms:
            raise BadRequest(f"The token query {query!r} has no terms; write e.g. any:the.")
        messages = []
        if terms:
            if not store.graph_state(view.name)["graphs"]:
                messages.append("Token search needs N2G graphs, and none are computed for this model yet.")
            else:
                # read-only unless the index is behind and the lock is free at once: a GET never waits on a writer
                refresh_token_index(store, view.name)
                items += [{**_plain(r), "matched": "tokens"}
                          for r in search_mod.search_tokens(store, view.name, terms, limit, update_index=False)]
        if words:
            from autointerp.embeddings import embedder_ready

            if not exact and not embedder_ready():  # never download a model inside a request
                exact = True
                messages.append("Search by meaning needs the embedding model (run `autointerp setup`); "
                                "these are exact-word matches.")
            if exact:
                items += [{**_plain(r), "matched": "explanation"}
                          for r in search_mod.search_explanations(store, view.name, text, limit)]
            else:  # a GET writes nothing: vectors the database lacks are kept in this process
                items += [{**_plain(r), "matched": "explanation-meaning"}
                          for r in search_mod.search_explanations_by_meaning(
                              store, view.name, text, limit, save=False, memo=self._vectors)]
            out["explanation_search"] = "exact" if exact else "meaning"
        if messages and not items:
            out.update(available=False, message=" ".join(messages))
        elif messages:
            out["message"] = " ".join(messages)
        for it in items:
            if "layer" in it and "neuron" in it:
                it["page"] = f"/m/{view.url}/neuron/{it['layer']}/{it['neuron']}"
        out["items"] = items
        return out


def _plain(row: Any) -> dict[str, Any]:
    """Search results may be dicts or dataclasses; the API sends plain dicts."""
    if isinstance(row, dict):
        return dict(row)
    from dataclasses import asdict, is_dataclass

    if is_dataclass(row):
        return asdict(row)  # type: ignore[arg-type]
    return dict(row)
