"""What users type to name layers and neurons: integer lists (``0,3,5``, ``2-4``, ``all``), ``auto``
layers, and ``L/N`` neuron ids.

Every stage and every read-only command parses these, so they live here, with no torch and no
stage import: ``autointerp rank --layers 3`` must not load the harvest engine to read "3"."""

from __future__ import annotations

from autointerp.errors import UserError

#: The largest layer, neuron or count a user may type (the API's bound too): far beyond any model,
#: and far below SQLite's 64-bit integers, which a larger number would overflow.
MAX_INDEX = 2**31 - 1
#: The most numbers one ``a-b`` range may name: more neurons than any model's layer has, and few
#: enough that spelling out the range costs no noticeable memory.
MAX_RANGE = 2**20


def bounded_index(value: int, what: str, text: str) -> int:
    """``value`` if it is within :data:`MAX_INDEX` either way; else one sentence naming ``what``
    (e.g. "Layers") and the ``text`` it came from."""
    if abs(value) > MAX_INDEX:
        raise UserError(f"{what} must be at most {MAX_INDEX}, not {value} (in {text!r}).")
    return value


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
                lo, hi = (bounded_index(int(x), what, text) for x in part.split("-", 1))
                if hi - lo >= MAX_RANGE:
                    raise UserError(
                        f"The range {part!r} names more than {MAX_RANGE:,} {what.lower()}; no"
                        " model has that many."
                    )
                out.update(range(lo, hi + 1))
            elif part:
                out.add(bounded_index(int(part), what, text))
    except ValueError as exc:
        raise UserError(f"{what} must look like {example} or all, not {text!r}.") from exc
    if not out:
        raise UserError(f"No {what.lower()} in {text!r}.")
    return out


AUTO_LAYERS = "auto"


def default_layers(n_layers: int) -> list[int]:
    """An early, a middle and a late layer: ``(2k + 1) * n_layers // 6`` for k = 0, 1, 2,
    de-duplicated.

    These are the centres of the depth's thirds (3, 9, 15 of Gemma-3-270M's 18 layers; 2, 6, 10 of
    GPT-2 small's 12; 5, 15, 25 of SmolLM2's 30), so any model gets layers it has, spread over the
    stages that behave differently (token-level features early, more abstract ones in the middle,
    output-shaping ones late). A 1-layer model gets layer 0, a 2-layer model 0 and 1.
    """
    if n_layers < 1:
        raise UserError(f"A model needs at least one layer, not {n_layers}.")
    return sorted({(2 * k + 1) * n_layers // 6 for k in range(3)})


def is_auto_layers(text: str | None) -> bool:
    """``--layers auto`` (or an empty ``LAYERS=`` from the Makefile, which passes ``auto``)."""
    return text is not None and text.strip().lower() == AUTO_LAYERS


def parse_layers(text: str | None) -> list[int] | None:
    """``"0,3,5"``, ``"2-4"`` or ``"all"`` -> sorted layer list (``None`` for all). ``"auto"`` is
    resolved against the model's depth by :func:`resolve_layers`, so here it is refused."""
    if is_auto_layers(text):
        raise UserError("--layers auto is not available here; give layers like 0,3,5 or 2-4.")
    layers = parse_ranges(text, "Layers", "0,3,5 or 2-4")
    return None if layers is None else sorted(layers)


def resolve_layers(text: str | None, n_layers: int) -> list[int] | None:
    """``auto`` -> :func:`default_layers`; anything else as :func:`parse_layers` (``None`` for
    all)."""
    return default_layers(n_layers) if is_auto_layers(text) else parse_layers(text)


def parse_neuron(text: str) -> tuple[int, int]:
    """A neuron id as users write it, ``L/N`` (``3/117``) -> (layer, neuron)."""
    try:
        layer, neuron = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise UserError(
            f"Neurons are written L/N (layer/neuron), e.g. 3/117, not {text!r}."
        ) from exc
    if layer < 0 or neuron < 0:
        raise UserError(f"Layer and neuron must not be negative in {text!r}.")
    bounded_index(layer, "Layer", text)
    bounded_index(neuron, "Neuron", text)
    return layer, neuron
