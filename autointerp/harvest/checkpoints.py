"""When a harvest writes a checkpoint: often enough that a crash loses little, rarely enough that
writing them costs little.

The state is checkpointed into the store (one transaction, after whole batches); a restarted run
loads it and skips the contexts already seen. The constants are read at call time, so a test can
change them on this module.
"""

from __future__ import annotations

#: With the default cadence checkpoints are at least this many seconds apart ...
CHECKPOINT_MIN_SECONDS = 120.0
#: ... and further apart when writing one takes long, so that the loop spends at most about this
#: share of its time on them. A whole-model state is large (gemma-3-270m, 18 layers: ~1.8 GB,
#: seconds to serialise and commit), and at a fixed 120 s that alone cost several percent of a
#: full-corpus harvest; at 2% a crash loses at most ~50 checkpoint-writes' worth of work.
CHECKPOINT_SHARE = 0.02
#: Before the first write has been timed, its duration is estimated from the state's size at this
#: rate (bytes/s): the faster of the two CPUs measured (a whole-model gemma-3-270m state, 1.75 GB,
#: took 11-15 s on a 2-core Xeon and 19-29 s on a 2-core AVX2 EPYC). Without it, the first
#: checkpoint came after the fixed minimum, and a short whole-model harvest paid one full write
#: (0.10x of a bare pass over 131k tokens) to protect two minutes of work.
CHECKPOINT_BYTES_PER_SECOND = 150e6


def checkpoint_spacing(configured: float | None, last_write_seconds: float) -> float:
    """Seconds from one checkpoint to the next: ``configured`` exactly when the user set it, else at
    least :data:`CHECKPOINT_MIN_SECONDS` and long enough that the last write's duration (before the
    first: :func:`estimated_write_seconds`) is at most :data:`CHECKPOINT_SHARE` of the spacing."""
    if configured is not None:
        return configured
    return max(CHECKPOINT_MIN_SECONDS, last_write_seconds / CHECKPOINT_SHARE)


def estimated_write_seconds(state_bytes: int) -> float:
    """How long a checkpoint of ``state_bytes`` will take before one has been timed (see
    :data:`CHECKPOINT_BYTES_PER_SECOND`): a whole-model gemma-3-270m state waits ~10 minutes for its
    first checkpoint, a few small layers the minimum."""
    return state_bytes / CHECKPOINT_BYTES_PER_SECOND
