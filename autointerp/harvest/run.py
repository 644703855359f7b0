"""One harvest run: a pass over the corpus that folds every batch's activations into the layers'
:class:`~autointerp.harvest.state.LayerState` and writes the results to the store.

* **Checked before anything is written.** :func:`plan_harvest` resolves the config against the model
  and reads the corpus; everything the user can get wrong fails there, before the database is
  opened, so a bad invocation writes nothing.
* **Resumable.** The state is checkpointed into the store (:mod:`.checkpoints` says when); a
  restarted run loads it and skips the contexts already seen. A run that is already complete is
  recognised (:func:`completed_run` even without loading the model) and not run again.
* **Written once.** Result rows (neurons, examples, the contexts and documents they point at) are
  written in one transaction at the end. A shard run (``--shard i/n``) also keeps its final states,
  which :func:`autointerp.harvest.merging.merge` combines exactly.

The run is cut into its steps: open (or resume) the run, the pass over the corpus, the final write.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autointerp.corpus import Context, Document, corpus_fingerprint, iter_contexts, load_documents
from autointerp.errors import UserError
from autointerp.harvest.checkpoints import checkpoint_spacing, estimated_write_seconds
from autointerp.harvest.config import HarvestConfig, resolve_config
from autointerp.harvest.keys import hash_keys
from autointerp.harvest.rows import example_rows, neuron_rows
from autointerp.harvest.state import LayerState
from autointerp.models import SubjectModel
from autointerp.store import Store


@dataclass
class HarvestResult:
    run_id: int
    status: str  # "complete" (just now), "already complete"
    contexts: int
    tokens: int
    seconds: float


@dataclass
class _Pass:
    """Where the pass over the corpus stands: the contexts read (in every shard: the position a
    resumed run starts from), this shard's tokens folded in, and the last context read."""

    contexts_done: int
    tokens_done: int
    last: Context | None = None


def plan_harvest(
    model: SubjectModel, config: HarvestConfig
) -> tuple[HarvestConfig, list[Document]]:
    """The resolved config (layers, bottom_k, the corpus fingerprint that is part of a run's
    identity, so only the same text resumes) and the corpus's documents; every check that can fail
    on user input, before any database is opened."""
    cfg = resolve_config(config, model)
    docs = load_documents(cfg.corpus, cfg.seed, cfg.n_tokens)
    if (
        next(iter_contexts(docs, model.tokenizer, cfg.ctx_len, model.bos_id, model.sep_id, 1), None)
        is None
    ):
        raise UserError(
            f"The corpus {cfg.corpus!r} has fewer tokens than one context of {cfg.ctx_len}."
        )
    cfg.corpus_fingerprint = corpus_fingerprint(docs)
    return cfg, docs


def harvest(
    model: SubjectModel,
    store: Store | str | os.PathLike[str],
    config: HarvestConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    write_examples: bool = True,
) -> HarvestResult:
    """Run (or resume, or recognise as done) one harvest and write its results to ``store``.

    Everything the user can get wrong (layers, lengths, an empty or unreadable corpus) is checked
    before the database is opened, so a bad invocation writes nothing. ``store`` may be a path for
    exactly that reason. ``write_examples=False`` (a Ray shard task, whose driver merges the final
    states) leaves out the neuron and example rows: the run is its states, contexts and documents.
    """
    started = time.time()
    cfg, docs = plan_harvest(model, config)
    if not isinstance(store, Store):
        store = Store(store)
    shard: tuple[int, int] = tuple(cfg.shard)  # type: ignore[assignment]
    run = store.find_run(model.name, "harvest", cfg.config_hash(), shard)
    if run and run["status"] == "complete":
        log(f"Harvest run {run['id']} with this config is already complete; nothing to do.")
        return HarvestResult(
            run["id"], "already complete", run["contexts_done"], run["tokens_done"], 0.0
        )
    store.upsert_model(model.info())
    run_id, states, start = _open_run(model, store, cfg, docs, run, log)
    done = _harvest_pass(model, store, cfg, docs, run_id, states, start, progress)
    _write_results(model, store, cfg, docs, run_id, states, done, write_examples, progress, log)
    return HarvestResult(
        run_id, "complete", done.contexts_done, done.tokens_done, time.time() - started
    )


def _open_run(
    model: SubjectModel,
    store: Store,
    cfg: HarvestConfig,
    docs: list[Document],
    run: dict[str, Any] | None,
    log: Callable[[str], None],
) -> tuple[int, dict[int, LayerState], _Pass]:
    """The run to write (``run``, the unfinished run of this config, or a new one), its layers'
    states (from its last checkpoint, or empty) and where the pass resumes."""
    layers = cfg.layers or []
    start_ctx = tokens_done = 0
    if run:
        run_id = run["id"]
        start_ctx, blobs = store.load_checkpoint(run_id)
        tokens_done = run["tokens_done"]
        states = (
            {layer: LayerState.from_bytes(blobs[layer], cfg.hist_sample) for layer in layers}
            if blobs
            else {}
        )
        if states:
            log(f"Resuming harvest run {run_id} at context {start_ctx}.")
    else:
        shard: tuple[int, int] = tuple(cfg.shard)  # type: ignore[assignment]
        full = {
            **cfg.identity(),
            "batch_size": cfg.batch_size,
            "shard": list(shard),
            "device": str(model.device),
        }
        corpus_info = {
            "spec": cfg.corpus,
            "documents": len(docs),
            "fingerprint": cfg.corpus_fingerprint,
        }
        run_id = store.create_run(
            model.name, "harvest", full, cfg.config_hash(), shard, corpus_info
        )
        states = {}
    if not states:
        start_ctx = tokens_done = 0
        states = {
            layer: LayerState(
                model.d_mlp,
                cfg.ctx_len,
                cfg.top_k,
                cfg.bottom_k or 0,
                cfg.random_k,
                cfg.hist_sample,
            )
            for layer in layers
        }
    return run_id, states, _Pass(start_ctx, tokens_done)


def _harvest_pass(
    model: SubjectModel,
    store: Store,
    cfg: HarvestConfig,
    docs: list[Document],
    run_id: int,
    states: dict[int, LayerState],
    start: _Pass,
    progress: bool,
) -> _Pass:
    """Read the corpus's contexts from ``start`` on, fold this shard's into ``states`` a batch at a
    time, and checkpoint after whole batches as :func:`checkpoint_spacing` says."""
    layers = cfg.layers or []
    shard = tuple(cfg.shard)
    max_contexts = cfg.n_tokens // cfg.ctx_len if cfg.n_tokens else None
    start_ctx = start.contexts_done
    done = _Pass(start.contexts_done, start.tokens_done)
    bar = tqdm(
        total=max_contexts * cfg.ctx_len if max_contexts else None,
        initial=start_ctx * cfg.ctx_len,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"harvest {model.name} L{layers[0]}-{layers[-1]}",
        dynamic_ncols=True,
    )
    last_checkpoint = time.time()
    spacing = checkpoint_spacing(
        cfg.checkpoint_seconds,
        estimated_write_seconds(sum(st.nbytes for st in states.values())),
    )
    checkpoints = 0
    batch: list[Context] = []
    stream = iter_contexts(
        docs, model.tokenizer, cfg.ctx_len, model.bos_id, model.sep_id, max_contexts
    )
    for ctx in stream:
        done.last = ctx
        if ctx.context_id < start_ctx:
            continue
        if ctx.context_id % shard[1] == shard[0]:
            batch.append(ctx)
        done.contexts_done = ctx.context_id + 1
        bar.update(cfg.ctx_len)
        if len(batch) == cfg.batch_size:
            _fold_batch(model, layers, states, batch, cfg.seed)
            done.tokens_done += len(batch) * cfg.ctx_len
            batch = []
            if time.time() - last_checkpoint >= spacing:
                began = time.time()
                store.save_checkpoint(
                    run_id,
                    done.contexts_done,
                    done.tokens_done,
                    ((layer, st.to_bytes()) for layer, st in states.items()),
                )
                last_checkpoint = time.time()
                spacing = checkpoint_spacing(cfg.checkpoint_seconds, last_checkpoint - began)
                checkpoints += 1
                _fault_point(checkpoints)
    if batch:
        _fold_batch(model, layers, states, batch, cfg.seed)
        done.tokens_done += len(batch) * cfg.ctx_len
    bar.close()
    return done


def _fold_batch(
    model: SubjectModel,
    layers: list[int],
    states: dict[int, LayerState],
    batch: list[Context],
    seed: int,
) -> None:
    """One forward pass over ``batch``; each layer's activations are folded into its state while
    the pass runs (while they are still in the CPU's cache)."""
    tokens = torch.from_numpy(np.stack([c.tokens for c in batch]))
    ids = torch.tensor([c.context_id for c in batch], dtype=torch.int64)
    hkeys = hash_keys(ids.tolist(), seed)
    model.each_mlp_activation(
        tokens, layers, lambda layer, acts: states[layer].update(acts, ids, hkeys)
    )


def _fault_point(checkpoints_written: int) -> None:
    """Fault injection for the resume tests: ``AUTOINTERP_KILL_AFTER_CHECKPOINTS=N`` SIGKILLs this
    process right after its N-th checkpoint, exactly as an out-of-memory kill or a pulled plug
    would."""
    limit = os.environ.get("AUTOINTERP_KILL_AFTER_CHECKPOINTS")
    if limit and checkpoints_written >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def _write_results(
    model: SubjectModel,
    store: Store,
    cfg: HarvestConfig,
    docs: list[Document],
    run_id: int,
    states: dict[int, LayerState],
    done: _Pass,
    write_examples: bool,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Finish the run in one transaction: the contexts the states point at and their documents
    (cut where the pass stopped), the neuron and example rows (unless ``write_examples`` is off),
    and a shard's final states."""
    layers = cfg.layers or []
    needed: set[int] = set().union(*(st.context_ids() for st in states.values()))
    picked = [
        c
        for c in iter_contexts(
            docs,
            model.tokenizer,
            cfg.ctx_len,
            model.bos_id,
            model.sep_id,
            max(needed) + 1 if needed else 0,
        )
        if c.context_id in needed
    ]
    doc_indices = sorted({int(i) for c in picked for i in c.doc_index if i >= 0})
    cut = _stream_end(done.last)
    log(f"Writing results for {len(layers)} layer(s) x {model.d_mlp} neurons ...")
    store.finish_run(
        run_id,
        documents=(_document_row(i, docs[i], cut) for i in doc_indices),
        contexts=_context_rows(model, picked),
        neurons=(
            row for layer in layers if write_examples for row in neuron_rows(states[layer], layer)
        ),
        examples=_example_rows_with_progress(
            {layer: states[layer] for layer in layers if write_examples},
            cfg,
            disable=not progress,
        ),
        states={layer: st.to_bytes() for layer, st in states.items()}
        if tuple(cfg.shard)[1] > 1
        else None,
        contexts_done=done.contexts_done,
        tokens_done=done.tokens_done,
    )


def _example_rows_with_progress(
    states: dict[int, LayerState], cfg: HarvestConfig, disable: bool
) -> Iterator[tuple[Any, ...]]:
    """Every layer's example rows, with a bar that moves a layer at a time as the store consumes
    them: a whole model's ~4.6M rows take a minute or more to write (BENCHMARKS.md), which a user
    otherwise watches in silence after the harvest's own bar has finished."""
    with tqdm(
        total=len(states), unit="layer", desc="write results", disable=disable or not states
    ) as bar:
        for layer, state in states.items():
            yield from example_rows(state, layer, cfg.quantile_intervals, cfg.quantile_per_interval)
            bar.update(1)


def _stream_end(last: Context | None) -> tuple[int, int] | None:
    """``(document, character)`` where the token stream stopped inside a document (the token budget
    ran out before its end), or None when it stopped between documents. Only the text before that
    point is stored: a 45 MB document of which 2,000 tokens were read stores a few kilobytes."""
    if last is None or last.doc_index[-1] < 0:
        return None
    return int(last.doc_index[-1]), int(last.offsets[-1, 1])


def _document_row(index: int, doc: Document, cut: tuple[int, int] | None = None) -> dict[str, Any]:
    text = doc.text[: cut[1]] if cut is not None and cut[0] == index else doc.text
    return {"doc_index": index, "doc_id": doc.doc_id, "source": doc.source, "text": text}


def _context_rows(model: SubjectModel, contexts: Iterable[Context]) -> Iterator[dict[str, Any]]:
    for c in contexts:
        yield {
            "context_id": c.context_id,
            "tokens": json.dumps(c.tokens.tolist()),
            "str_tokens": json.dumps(model.str_tokens(c.tokens.tolist())),
            "doc_index": json.dumps(c.doc_index.tolist()),
            "offsets": json.dumps(c.offsets.tolist()),
        }


def completed_run(db: str | os.PathLike[str], config: HarvestConfig) -> dict[str, Any] | None:
    """The complete run ``config`` names in ``db``, found without loading the model (its facts are
    stored with its runs), so rerunning a finished harvest costs a corpus read, not a model load.
    None when there is none."""
    if not os.path.exists(db):
        return None
    store = Store(db, create=False)
    info = store.model_info(config.model)
    if not info:
        return None
    layers = config.layers if config.layers is not None else list(range(int(info["n_layers"])))
    bottom = (
        config.bottom_k
        if config.bottom_k is not None
        else (config.top_k if info.get("gated_mlp") else 0)
    )
    cfg = HarvestConfig(**{**asdict(config), "layers": sorted(set(layers)), "bottom_k": bottom})
    cfg.corpus_fingerprint = corpus_fingerprint(load_documents(cfg.corpus, cfg.seed, cfg.n_tokens))
    shard: tuple[int, int] = tuple(config.shard)  # type: ignore[assignment]
    run = store.find_run(config.model, "harvest", cfg.config_hash(), shard)
    return run if run and run["status"] == "complete" else None
