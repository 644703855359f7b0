"""Harvest: one pass over a corpus that keeps, for every neuron of the chosen layers, its most
activating contexts and its activation statistics - without ever holding the full activation matrix.

Design notes (why it is built this way):

* **Exact and mergeable.** Every quantity is a commutative, associative reduction: counts, sums,
  min/max, fixed-edge histograms, and "keep the K largest keys" sets. So ``--shard i/n`` runs can be
  merged into exactly what one unsharded run would have produced (sums up to float64 rounding).
* **Unique keys, deterministic ties.** Top-k ranks contexts by a 64-bit integer key: the float32
  activation mapped to an order-preserving int32 in the high half, the context id in the low half
  (lower id wins a tie). Duplicate text (common in code) therefore ranks identically in a sharded
  and an unsharded run.
* **Random and quantile samples by hashed keys.** Each context gets ``blake2b(seed, context_id)``;
  the random sample is the ``random_k`` contexts with the smallest hashes (a bottom-k sketch:
  uniform, deterministic, mergeable). The quantile samples keep, per neuron and per fixed log-spaced
  activation bin, the context with the smallest hash; at the end up to ``quantile_per_interval`` of
  them are shown per interval of the neuron's max (0-25%, ... 75-100%).
* **Flat memory.** State per layer is ``d_mlp x (top_k + bottom_k + bins) x ctx_len`` floats plus
  ``random_k x ctx_len x d_mlp``, independent of corpus size. Only slots that actually change are
  written.
* **Resumable.** The state is checkpointed into the store every ``checkpoint_seconds`` (one
  transaction, after whole batches); a restarted run loads it and skips the contexts already seen.
  Result rows are written once, in one transaction, at the end.

* **Top examples from many documents.** At most ``per_document`` top (and bottom) examples of a
  neuron come from one document (the one where it peaks), exactly and streaming.
* **On the model's device.** On CUDA the state lives on the GPU and the activations never cross to
  the host batch by batch; the same torch code runs on the CPU.

One role per module: :mod:`.config` (what determines a run), :mod:`.keys` (the ranking and sampling
keys, histogram bins), :mod:`.documents` (an example's document, the capped selection),
:mod:`.state` (the per-layer state that accumulates, merges and is serialised), :mod:`.rows` (a
finished state as result rows), :mod:`.checkpoints` (when to write one), :mod:`.run` (one harvest
run against the store), :mod:`.merging` (shard runs into one) and :mod:`.ray` (the same harvest as
Ray shard tasks; imported on its own, not from here). The names callers use are importable from the
package itself.
"""

from autointerp.harvest.checkpoints import (
    CHECKPOINT_BYTES_PER_SECOND,
    CHECKPOINT_MIN_SECONDS,
    CHECKPOINT_SHARE,
    checkpoint_spacing,
    estimated_write_seconds,
)
from autointerp.harvest.config import (
    HARVEST_VERSION,
    SPLIT_PATTERN,
    HarvestConfig,
    parse_shard,
    resolve_config,
    stats_device,
)
from autointerp.harvest.keys import (
    INT64_MAX,
    INT64_MIN,
    LOW32,
    hash_keys,
    hist_bins,
    key_contexts,
    key_values,
    rank_keys,
    replacements,
)
from autointerp.harvest.merging import merge
from autointerp.harvest.rows import example_rows, neuron_rows
from autointerp.harvest.run import HarvestResult, completed_run, harvest, plan_harvest
from autointerp.harvest.state import LayerState

__all__ = [
    "CHECKPOINT_BYTES_PER_SECOND",
    "CHECKPOINT_MIN_SECONDS",
    "CHECKPOINT_SHARE",
    "HARVEST_VERSION",
    "INT64_MAX",
    "INT64_MIN",
    "LOW32",
    "SPLIT_PATTERN",
    "HarvestConfig",
    "HarvestResult",
    "LayerState",
    "checkpoint_spacing",
    "completed_run",
    "estimated_write_seconds",
    "example_rows",
    "harvest",
    "hash_keys",
    "hist_bins",
    "key_contexts",
    "key_values",
    "merge",
    "neuron_rows",
    "parse_shard",
    "plan_harvest",
    "rank_keys",
    "replacements",
    "resolve_config",
    "stats_device",
]
