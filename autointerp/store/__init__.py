"""The one place that reads and writes results: a single SQLite file, behind one :class:`Store`.

:class:`Store` is composed of one part per owner of tables, each in its own module, so a reader
finds a stage's queries together and every caller still sees one object:

* :mod:`~autointerp.store.core` - the connection (WAL, foreign keys), :meth:`~StoreCore.atomic`
  (every unit of work in one ``BEGIN IMMEDIATE`` transaction), the schema version check, and
  :func:`~autointerp.store.core.newest_row`: the one definition of a neuron's newest row;
* :mod:`~autointerp.store.schema` - every table declared once, and the in-place upgrade of older
  databases;
* :mod:`~autointerp.store.codec` - the byte format of example activations;
* :mod:`~autointerp.store.harvest` - models, runs, checkpoints, documents, contexts, neurons,
  examples;
* :mod:`~autointerp.store.graphs` - N2G graphs;
* :mod:`~autointerp.store.explanations` - explanations, scores, evaluations, and rankings by them;
* :mod:`~autointerp.store.search_index` - the token index, the explanations' FTS index, text
  embeddings;
* :mod:`~autointerp.store.similarity` - stored similar neurons;
* :mod:`~autointerp.store.weights` - facts from the weights alone;
* :mod:`~autointerp.store.measurements` - what earlier runs cost (seconds, tokens), for estimates.

The store imports no pipeline stage: stages call it, never the other way round.
"""

from __future__ import annotations

from autointerp.store.codec import decode_acts, encode_acts
from autointerp.store.core import DEFAULT_DB, StoreCore, default_db_path
from autointerp.store.explanations import ExplanationTables
from autointerp.store.graphs import GraphTables
from autointerp.store.harvest import EXAMPLE_COLUMNS, HarvestTables
from autointerp.store.measurements import MeasurementQueries
from autointerp.store.schema import SCHEMA_VERSION, TABLES
from autointerp.store.search_index import SearchIndexTables
from autointerp.store.similarity import SimilarityTables
from autointerp.store.weights import WeightTables

__all__ = [
    "DEFAULT_DB",
    "EXAMPLE_COLUMNS",
    "SCHEMA_VERSION",
    "TABLES",
    "Store",
    "decode_acts",
    "default_db_path",
    "encode_acts",
]


class Store(
    ExplanationTables,
    HarvestTables,
    GraphTables,
    SearchIndexTables,
    SimilarityTables,
    WeightTables,
    MeasurementQueries,
    StoreCore,
):
    """Typed access to the results database."""
