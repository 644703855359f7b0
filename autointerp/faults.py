"""Fault injection for the crash tests: SIGKILL this process at a named point of a stage.

``AUTOINTERP_KILL_AFTER=STAGE:N`` kills the process with SIGKILL the N-th time :func:`kill_point` is
called for ``STAGE`` - exactly as an out-of-memory kill or a pulled plug would, with no chance to
clean up. The stages call it right after committing a unit of work (``graph``: a chunk of neurons,
``explain``: one neuron) or, for ``similarity``, inside the one transaction that replaces the old
result, before it commits. (Harvest has its own ``AUTOINTERP_KILL_AFTER_CHECKPOINTS=N``, after the
N-th checkpoint.) Tests then rerun the same command and check the database equals an uninterrupted
run's. A Ray worker is killed the same way by :func:`kill_worker_once` (the Ray tests'
``AUTOINTERP_KILL_RAY_WORKER_ONCE``), which Ray then retries.

Why an environment variable and not a flag: it must reach the real CLI subprocess unchanged, and it
must never show up in ``--help`` or a config hash. Unset (always, outside tests) it costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_counts: dict[str, int] = {}


def kill_point(stage: str) -> None:
    """Count a call for ``stage``; SIGKILL the process when ``AUTOINTERP_KILL_AFTER`` names this
    stage and count."""
    spec = os.environ.get("AUTOINTERP_KILL_AFTER")
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != stage:
        return
    _counts[stage] = _counts.get(stage, 0) + 1
    if _counts[stage] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_worker_once(marker: str | None) -> None:
    """SIGKILL this (Ray worker) process the first time any task gets here, as an out-of-memory kill
    or a lost node would; the ``marker`` file says it happened, so the retried task runs through.
    ``None`` (always, outside the Ray tests): nothing."""
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
