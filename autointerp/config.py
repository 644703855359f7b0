"""What the typed per-stage configs share: which fields identify a result, and the hash that names it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any


def config_identity(config: Any, **extra: Any) -> dict[str, Any]:
    """The config's fields except those marked ``metadata={"hashed": False}`` (settings that change how a stage runs,
    not what it produces), plus ``extra`` facts such as a stage's algorithm version. Tuples become lists so the JSON
    saved beside the results reads back equal."""
    skip = {name for name, f in config.__dataclass_fields__.items() if f.metadata.get("hashed") is False}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items() if k not in skip}
    out.update(extra)
    return out


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
