"""The byte fast path: a neuron's JSON answer assembled as bytes, cached where it can never go
stale.

A finished harvest run never changes (a newer harvest is a new run id), so a neuron's statistics and
examples keyed by run id can be encoded to JSON once and served as bytes afterwards
(:class:`ByteCache`). For a busy server the default neuroscope answer (what a page asks for) can
also be encoded once per neuron after the harvest (``harvest --answers``), zlib-compressed into the
``answers`` table (:func:`store_default_answers`): a neuron nobody asked for before then costs one
row read and a decompression (~0.2 ms) instead of assembling ~60 KB of JSON from ~30 example rows
(~1.2 ms), which is what capped cold answers at ~450 requests/s on two cores. It is opt-in because
it costs ~20 KB per neuron, about half again the database. Examples are assembled from the stored
JSON text without decoding it, their activations printed straight from the float32 blobs, and the
contexts many neurons share (all of them share the random sample) are encoded once. Graphs are read
fresh but embedded as their stored JSON text. The answers equal ``dumps`` of the records in
:mod:`autointerp.records`.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from autointerp.records import (
    EXAMPLE_KINDS,
    explanation_record,
    head,
    n2g_fields,
    n2g_record,
    neuron_record,
    rounded,
    similar_record,
    stats_record,
    weights_record,
)

# Examples per kind in a neuroscope answer unless ``limit`` asks for more: what a page shows.
# All of them (~140 with their activations, ~200 KB) made a cold answer cost 4x more to read and
# encode than what a reader looks at.
NEUROSCOPE_LIMIT = 10
#: zlib level of stored answers: 1 makes them ~2.8x smaller than the JSON at a third of the time of
#: level 6 (which gains only another 15%)
ANSWER_COMPRESSION = 1


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN/inf (never valid JSON) become null so browsers can parse every answer."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    except ValueError:
        return json.dumps(
            _finite(obj), separators=(",", ":"), allow_nan=False, ensure_ascii=False
        ).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _activation_arrays(blobs: list[bytes]) -> list[bytes]:
    """JSON arrays of float32 activation blobs, 5 significant digits ("%.5g" is valid JSON for
    finite numbers and several times faster than rounding to Python floats and encoding them one by
    one)."""
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


class NeuronBytes:
    """Encoded neuron answers, with the caches they are built from. Safe to share between
    threads."""

    def __init__(self) -> None:
        self.cache = ByteCache()
        self._contexts: dict[
            tuple[int, int], bytes
        ] = {}  # (run, context) -> JSON fragment; plain dict ops are atomic

    def neuron(
        self,
        store: Any,
        model: str,
        service: str,
        layer: int,
        neuron: int,
        run_id: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes:
        """The JSON answer for one neuron and service: statistics and examples come from the byte
        cache or are assembled from the stored JSON text; graphs, explanations and the rest are read
        fresh, so new results show at once."""
        if service == "stats":
            return self.stats(store, model, layer, neuron, run_id)
        if service == "neuroscope":
            return self.neuroscope(store, model, layer, neuron, run_id, kinds, limit)
        if service == "n2g":
            return self.n2g(store, model, layer, neuron)
        if service == "all":
            first = dumps({"model": model, "layer": layer, "neuron": neuron, "run_id": run_id})[:-1]
            parts = [
                b'"stats":' + self.stats(store, model, layer, neuron, run_id),
                b'"neuroscope":'
                + self.neuroscope(store, model, layer, neuron, run_id, kinds, limit),
                b'"n2g":' + self.n2g(store, model, layer, neuron),
                b'"explanation":' + dumps(explanation_record(store, model, layer, neuron, run_id)),
                b'"similar":' + dumps(similar_record(store, model, layer, neuron)),
                b'"weights":' + dumps(weights_record(store, model, layer, neuron)),
            ]
            return first + b"," + b",".join(parts) + b"}"
        return dumps(neuron_record(store, model, service, layer, neuron, run_id, kinds, limit))

    def cached(
        self,
        service: str,
        layer: int,
        neuron: int,
        run_id: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes | None:
        """The cached answer, if there is one (no SQL)."""
        if service == "stats":
            return self.cache.get(("stats", run_id, layer, neuron))
        if service == "neuroscope":
            return self.cache.get(("neuroscope", run_id, layer, neuron, kinds, limit))
        return None

    def stats(self, store: Any, model: str, layer: int, neuron: int, run_id: int) -> bytes:
        return self.cache.get_or_make(
            ("stats", run_id, layer, neuron),
            lambda: stats_record(store, model, layer, neuron, run_id),
        )

    def n2g(self, store: Any, model: str, layer: int, neuron: int) -> bytes:
        """The graph is embedded as its stored JSON text (graphs have thousands of nodes; decoding
        and re-encoding them per request would cost more than everything else)."""
        row = store.graph_raw(model, layer, neuron)
        if row is None:
            return dumps(n2g_record(store, model, layer, neuron))
        record = n2g_fields(model, layer, neuron, row)
        return dumps(record)[:-1] + b',"graph":' + row["graph"].encode() + b"}"

    def neuroscope(
        self,
        store: Any,
        model: str,
        layer: int,
        neuron: int,
        run_id: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes:
        key = ("neuroscope", run_id, layer, neuron, kinds, limit)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        stored = (
            store.answer(run_id, layer, neuron, "neuroscope")
            if kinds is None and limit == NEUROSCOPE_LIMIT
            else None
        )
        out = (
            zlib.decompress(stored)
            if stored is not None
            else self.assemble_neuroscope(store, model, layer, neuron, run_id, kinds, limit)
        )
        self.cache.put(key, out)
        return out

    def assemble_neuroscope(
        self,
        store: Any,
        model: str,
        layer: int,
        neuron: int,
        run_id: int,
        kinds: tuple[str, ...] | None,
        limit: int | None,
    ) -> bytes:
        """The neuroscope answer built from the stored example rows (no answer cache)."""
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
            pieces.append(
                b'{"kind":"'
                + kind.encode()
                + b'",'
                + dumps(
                    {
                        "rank": rank,
                        "split": split,
                        "context_id": context_id,
                        "max_activation": rounded(mx),
                        "min_activation": rounded(mn),
                        "peak_index": peak,
                        "interval": interval,
                    }
                )[1:-1]
                + b","
                + self._context_json(run_id, context_id, row)
                + b',"activations":'
                + acts
                + b"}"
            )
        first = dumps(
            {
                **head(model, layer, neuron, run_id),
                "hook": f"blocks.{layer}.mlp.hook_post",
                "kinds": list(kinds or EXAMPLE_KINDS),
                "counts": per_kind,
                "limit": limit,
                "note": "token 0 of every example is BOS and never counts in statistics",
            }
        )
        return first[:-1] + b',"examples":[' + b",".join(pieces) + b"]}"

    def _context_json(self, run_id: int, context_id: int, row: tuple[Any, ...]) -> bytes:
        """``"tokens":[...],"token_ids":[...],"documents":[...]`` of a context, cached: many neurons
        share contexts (all of them share the random sample)."""
        key = (run_id, context_id)
        frag = self._contexts.get(key)
        if frag is None:
            docs = sorted({i for i in json.loads(row[11]) if i >= 0})
            frag = (
                b'"tokens":'
                + row[9].encode()
                + b',"token_ids":'
                + row[10].encode()
                + b',"documents":'
                + dumps(docs)
            )
            if len(self._contexts) > 50_000:
                self._contexts.clear()
            self._contexts[key] = frag
        return frag


def default_answers(store: Any, model: str, run_id: int, layer: int) -> Iterator[tuple[int, bytes]]:
    """``(neuron, compressed default neuroscope answer)`` for every neuron of a layer of a complete
    harvest run, exactly the bytes the server would assemble."""
    encoder = NeuronBytes()
    for neuron in range(store.layer_neuron_count(run_id, layer)):
        body = encoder.assemble_neuroscope(
            store, model, layer, neuron, run_id, None, NEUROSCOPE_LIMIT
        )
        yield neuron, zlib.compress(body, ANSWER_COMPRESSION)


def store_default_answers(
    store: Any, run_id: int, progress: Callable[[int], None] = lambda n: None
) -> int:
    """Encode and store the default neuroscope answer of every neuron of the complete harvest run
    ``run_id`` (layers already stored are skipped, one transaction per layer, so an interrupted
    write resumes by layer); returns how many were written. ``progress`` gets each layer's neuron
    count."""
    run = next(r for r in store.runs() if r["id"] == run_id)
    done = store.answered_layers(run_id, "neuroscope")
    written = 0
    for layer in run["config"]["layers"]:
        if layer in done:
            continue
        bodies = list(default_answers(store, run["model"], run_id, layer))
        store.save_answers(run_id, layer, "neuroscope", bodies)
        written += len(bodies)
        progress(len(bodies))
    return written
