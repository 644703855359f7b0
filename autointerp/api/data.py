"""What the server reads: one :class:`~autointerp.store.Store` per thread, behind :class:`ApiData`.

Why per thread: sqlite3 connections must not be shared between threads, and the server answers
requests from a thread pool. WAL mode lets all of these readers run while a pipeline writes. The
rest is by role: which models and layers exist (:mod:`autointerp.api.catalog`, rebuilt only when the
``runs`` table changed), what is known about a neuron (:mod:`autointerp.records`, a library function
of the store), and those records as cached bytes (:mod:`autointerp.api.fastpath`, because a finished
harvest run never changes). :class:`ApiData` ties them to the request: it finds the model, checks
the layer and neuron, and answers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from autointerp.api.catalog import (
    BadRequest,
    Catalog,
    ModelView,
    find_model,
    layer_record,
    model_record,
    model_summary,
    rank_record,
    read_catalog,
)
from autointerp.api.fastpath import NEUROSCOPE_LIMIT, NeuronBytes
from autointerp.errors import UserError
from autointerp.records import SERVICES, NotFound, neuron_record
from autointerp.search import (
    fts_query,
    parse_query,
    search_explanations,
    search_explanations_by_meaning,
    search_tokens,
)
from autointerp.store import Store
from autointerp.token_index import refresh_token_index, stale_harvest_layers

__all__ = ["NEUROSCOPE_LIMIT", "ApiData"]  # the page's examples per kind: also the API's default


class ApiData:
    """Read access for the server. Cheap to call from any thread; every method opens nothing after
    the first call in a thread."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        if not self.db_path.exists():
            raise UserError(
                f"No database at {self.db_path}; run `autointerp harvest` first or pass --db."
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self.bytes = NeuronBytes()
        self._vectors: dict[str, bytes] = {}  # explanation embeddings the database did not hold yet
        self.store()  # fail now (newer schema, unreadable file), not on the first request

    # ----------------------------------------------------------------------------------------------
    # plumbing
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
        catalog = read_catalog(store, fingerprint)
        with self._lock:
            self._catalog = catalog
        return catalog

    def model(self, name: str) -> ModelView:
        return find_model(self.catalog().models, name)

    def check_layer(self, view: ModelView, layer: int) -> int:
        if layer not in view.layers:
            raise NotFound(
                f"Layer {layer} of {view.name} has not been harvested; harvested layers: "
                f"{list(view.layers)}.",
                layers=list(view.layers),
            )
        return view.run_id(layer)

    def check_neuron(self, view: ModelView, layer: int, neuron: int) -> int:
        run_id = self.check_layer(view, layer)
        d_mlp = view.d_mlp
        if neuron < 0 or (d_mlp is not None and neuron >= d_mlp):
            raise NotFound(
                f"Neuron {neuron} does not exist: {view.name} has neurons 0-{(d_mlp or 1) - 1} per"
                " layer.",
                neurons=[0, (d_mlp or 1) - 1],
            )
        return run_id

    @staticmethod
    def check_service(service: str) -> str:
        if service not in SERVICES:
            raise NotFound(
                f"Unknown service {service!r}; services: {', '.join(SERVICES)}.",
                services=list(SERVICES),
            )
        return service

    # ----------------------------------------------------------------------------------------------
    # models
    def models_list(self) -> list[dict[str, Any]]:
        return [model_summary(v) for v in self.catalog().models.values()]

    def model_record(self, view: ModelView) -> dict[str, Any]:
        return model_record(self.store(), view)

    # ----------------------------------------------------------------------------------------------
    # layers
    def layer_record(
        self, view: ModelView, service: str, layer: int, offset: int, limit: int
    ) -> dict[str, Any]:
        run_id = self.check_layer(view, layer)
        return layer_record(self.store(), view, service, layer, run_id, offset, limit)

    # ----------------------------------------------------------------------------------------------
    # neurons
    def neuron_bytes(
        self,
        view: ModelView,
        service: str,
        layer: int,
        neuron: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes:
        """The JSON answer for one neuron and service (:meth:`NeuronBytes.neuron`)."""
        run_id = self.check_neuron(view, layer, neuron)
        return self.bytes.neuron(
            self.store(), view.name, service, layer, neuron, run_id, kinds, limit
        )

    def cached_neuron(
        self,
        view: ModelView,
        service: str,
        layer: int,
        neuron: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes | None:
        """The cached answer, if there is one (no SQL beyond the catalog check): lets the server
        answer from the event loop without a thread hop."""
        if service not in ("stats", "neuroscope"):
            return None
        run_id = self.check_neuron(view, layer, neuron)
        return self.bytes.cached(service, layer, neuron, run_id, kinds, limit)

    def neuroscope_bytes(
        self,
        view: ModelView,
        layer: int,
        neuron: int,
        run_id: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes:
        return self.bytes.neuroscope(self.store(), view.name, layer, neuron, run_id, kinds, limit)

    def neuron_record(
        self,
        view: ModelView,
        service: str,
        layer: int,
        neuron: int,
        kinds: tuple[str, ...] | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        run_id = self.check_neuron(view, layer, neuron)
        return neuron_record(self.store(), view.name, service, layer, neuron, run_id, kinds, limit)

    # ----------------------------------------------------------------------------------------------
    # queries
    def rank(self, view: ModelView, by: str, layer: int | None, limit: int) -> dict[str, Any]:
        if layer is not None:
            self.check_layer(view, layer)
        return rank_record(self.store(), view, by, layer, limit)

    def search(
        self, view: ModelView, query: str | None, text: str | None, limit: int, exact: bool = False
    ) -> dict[str, Any]:
        """Token queries (``any:the``) and explanation text search (:mod:`autointerp.search`)."""
        if not query and not text:
            raise BadRequest("Give a token query (query=any:the) or explanation text (text=...).")
        out: dict[str, Any] = {"model": view.name, "query": query, "text": text, "available": True}
        items: list[dict[str, Any]] = []
        store = self.store()
        try:
            terms = parse_query(query) if query else None  # a malformed query is the user's: 422
            words = fts_query(text) if text else None
        except UserError as exc:
            raise BadRequest(str(exc)) from exc
        if terms is not None and not terms:
            raise BadRequest(f"The token query {query!r} has no terms; write e.g. any:the.")
        messages = []
        if terms:
            graphs = store.graph_state(view.name)["graphs"]
            # the harvest's index is built by `autointerp index` (or a CLI search), never by a GET:
            # it reads every top example of a layer
            unindexed = stale_harvest_layers(store, view.name)
            if not graphs and len(unindexed) == len(store.harvested_layers(view.name)):
                messages.append(
                    "Token search needs N2G graphs or the harvest's token index, and neither is"
                    f" computed for this model yet; run `autointerp index {view.name}`."
                )
            else:
                # read-only unless the index is behind and the lock is free at once: a GET never
                # waits on a writer
                refresh_token_index(store, view.name)
                items += [
                    {**_plain(r), "matched": "tokens"}
                    for r in search_tokens(store, view.name, terms, limit, update_index=False)
                ]
                if unindexed:
                    messages.append(
                        "Neurons without a graph in layers"
                        f" {','.join(map(str, unindexed))} are not searched until `autointerp"
                        f" index {view.name}` runs."
                    )
        if words:
            from autointerp.embeddings import embedder_ready

            if not exact and not embedder_ready():  # never download a model inside a request
                exact = True
                messages.append(
                    "Search by meaning needs the embedding model (run `autointerp setup`); "
                    "these are exact-word matches."
                )
            if exact:
                items += [
                    {**_plain(r), "matched": "explanation"}
                    for r in search_explanations(store, view.name, text, limit)
                ]
            else:  # a GET writes nothing: vectors the database lacks are kept in this process
                items += [
                    {**_plain(r), "matched": "explanation-meaning"}
                    for r in search_explanations_by_meaning(
                        store, view.name, text, limit, save=False, memo=self._vectors
                    )
                ]
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
