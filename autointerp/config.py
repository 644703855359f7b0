"""What the typed per-stage configs share: which fields identify a result, the hash that names it,
and the checks their ``__post_init__`` run so that a nonsense value (a zero count, a nan threshold)
is refused in one place with one sentence, whether it came from the command line or from a library
caller."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from typing import Any

from autointerp.errors import UserError


def config_identity(config: Any, **extra: Any) -> dict[str, Any]:
    """The config's fields except those marked ``metadata={"hashed": False}`` (settings that change
    how a stage runs, not what it produces), plus ``extra`` facts such as a stage's algorithm
    version. Tuples become lists so the JSON saved beside the results reads back equal."""
    skip = {
        name for name, f in config.__dataclass_fields__.items() if f.metadata.get("hashed") is False
    }
    out = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in asdict(config).items()
        if k not in skip
    }
    out.update(extra)
    return out


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# ---- validation shared by the configs' __post_init__: one sentence naming the option, before
# anything runs
def check_int(value: Any, option: str, low: int, high: int | None = None) -> None:
    """``value`` must be an integer in ``[low, high]``; ``option`` is how the user wrote it
    (``--top-k``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{option} must be a whole number, not {value!r}.")
    if value < low or (high is not None and value > high):
        limit = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"{option} must be {limit}, not {value}.")


def check_number(
    value: Any,
    option: str,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    finite: bool = True,
) -> None:
    """``value`` must be a number (never nan) in ``[low, high]`` (``(low, high]`` with
    ``low_open``); ``finite`` refuses infinities too."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or (finite and math.isinf(value))
    ):
        raise UserError(f"{option} must be a {'finite ' if finite else ''}number, not {value!r}.")
    if value < low or value > high or (low_open and value == low):
        lower = f"more than {low:g}" if low_open else f"at least {low:g}"
        span = lower if high == math.inf else f"{lower} and at most {high:g}"
        raise UserError(f"{option} must be {span}, not {value:g}.")
