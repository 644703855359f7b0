"""Parsing the integer lists users type for layers and neurons (``0,3,5``, ``2-4``, ``all``)."""

from __future__ import annotations

from autointerp.errors import UserError


def parse_ranges(text: str | None, what: str, example: str) -> set[int] | None:
    """``"0-3,7"`` -> ``{0, 1, 2, 3, 7}``; ``None``, ``""`` or ``"all"`` -> ``None`` (meaning
    everything).

    ``what`` and ``example`` make the error say what was expected, e.g. "Layers must look like 0,3,5
    or 2-4".
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            elif part:
                out.add(int(part))
    except ValueError as exc:
        raise UserError(f"{what} must look like {example} or all, not {text!r}.") from exc
    if not out:
        raise UserError(f"No {what.lower()} in {text!r}.")
    return out
