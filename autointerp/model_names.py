"""Model names: the one stored name of each model, whatever alias a user types.

Every command takes a model name, and the read-only ones (``rank``, ``search``, ``report``,
``serve``) only need to spell it, so this module imports no torch and no transformers: packaged
models come from :mod:`autointerp.packaged`'s catalog, TransformerLens names from its plain data
file, read on its own (:func:`_tl_tables`). Loading a model is :mod:`autointerp.models`' business;
the names of the devices and dtypes it can load onto are here too, because ``serve`` offers
``--device``/``--dtype`` (for its live views) without loading anything.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

from autointerp.errors import UserError
from autointerp.packaged import FAST_MODEL, PACKAGED, PackagedModel, find_packaged

DEFAULT_DEVICE = "auto"
"""Where :func:`autointerp.models.load_model` puts a model unless told: CUDA when available."""
DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""The dtypes a subject model can run in (``--dtype``); :data:`autointerp.models.DTYPES` maps them
to torch's."""
DEFAULT_DTYPE = "float32"
RANDOM_INIT = "random-init"
"""The control kind whose models are a subject's architecture with seeded random weights
(:mod:`autointerp.random_init`)."""
_RANDOM_INIT_NAME = re.compile(r"^(?P<base>.+)\+random-init-(?P<seed>\d+)$")


def random_init_name(model: str, seed: int) -> str:
    """The stored name of ``model``'s random-init control drawn with ``seed``
    (``gemma-3-270m+random-init-0``): its rows never mix with the trained model's."""
    return f"{model}+{RANDOM_INIT}-{seed}"


def parse_random_init_name(name: str) -> tuple[str, int] | None:
    """``(architecture model, seed)`` of a random-init control's name, else None."""
    match = _RANDOM_INIT_NAME.match(name.strip())
    return (match["base"], int(match["seed"])) if match else None


@lru_cache(maxsize=1)
def _tl_tables() -> tuple[list[str], dict[str, list[str]]]:
    """TransformerLens' official names and its alias table (``{"gpt2": ["gpt2-small"], ...}``).

    They live in ``transformer_lens/supported_models.py``, a plain data module that
    ``loading_from_pretrained`` imports. Importing it through the package would import torch and
    transformers first (seconds), which every read-only command (``rank``, ``export``) would pay
    just to spell a name, so the file is loaded on its own; if a TransformerLens version moves it,
    the package import is the fallback.
    """
    import importlib.util

    spec = importlib.util.find_spec("transformer_lens")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "supported_models.py" if locations else None
    if path is not None and path.is_file():
        file_spec = importlib.util.spec_from_file_location("_autointerp_tl_supported_models", path)
        if file_spec is not None and file_spec.loader is not None:
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            if hasattr(module, "OFFICIAL_MODEL_NAMES") and hasattr(module, "MODEL_ALIASES"):
                return list(module.OFFICIAL_MODEL_NAMES), dict(module.MODEL_ALIASES)
    import transformer_lens.loading_from_pretrained as loading

    return list(loading.OFFICIAL_MODEL_NAMES), dict(loading.MODEL_ALIASES)


def _tl_names() -> tuple[list[str], dict[str, str]]:
    """TransformerLens official names and the alias -> official map (as ``make_model_alias_map``
    builds it)."""
    official, aliases = _tl_tables()
    alias_map: dict[str, str] = {}
    for name in official:
        for alias in aliases.get(name, []):
            alias_map[alias.lower()] = name
        alias_map[name.lower()] = name
    return official, alias_map


def tl_default_name(official: str) -> str:
    """The name a TransformerLens model is stored under: its default alias (TransformerLens'
    convention, the first alias in its table: ``gpt2`` -> ``gpt2-small``), else the official name.
    Every spelling of one model then lands on one stored name, and it is the name people type
    (``MODEL=gpt2-small``)."""
    aliases = _tl_tables()[1].get(official) or []
    return aliases[0] if aliases else official


def canonical_model_name(name: str) -> str:
    """The stored name of ``name``: packaged aliases and TransformerLens aliases resolve to one
    canonical name; a name known to neither (e.g. a model stored by a library caller under its own
    name) comes back unchanged. A random-init control's name gets its model's stored name
    (``smollm2+random-init-0`` -> ``smollm2-135m+random-init-0``)."""
    control = parse_random_init_name(name)
    if control is not None:
        return random_init_name(canonical_model_name(control[0]), control[1])
    packaged = find_packaged(name)
    if packaged is not None:
        return packaged.name
    official = _tl_names()[1].get(name.strip().lower())
    return tl_default_name(official) if official else name


def offline_sentence(name: str) -> str:
    packaged = ", ".join(PACKAGED)
    return (
        f"The weights of {name!r} are not available offline (the Hugging Face hub cannot be reached"
        " and they are not in the local cache); the packaged models that work offline are"
        f" {packaged}, e.g. `autointerp harvest --model {FAST_MODEL}`."
    )


def resolve_model_name(name: str) -> tuple[str, PackagedModel | None]:
    """Map a user-given model name to (canonical name, packaged spec or None for a TransformerLens
    model).

    A TransformerLens model's canonical name is its default alias (``gpt2``, ``GPT2-small`` ->
    ``gpt2-small``); :func:`tl_official_name` gives the Hugging Face repository it loads from.

    A name that is neither packaged nor known to TransformerLens raises :class:`UserError` with a
    "did you mean" suggestion, before anything slow or irreversible happens.
    """
    packaged = find_packaged(name)
    if packaged is not None:
        return packaged.name, packaged
    official, aliases = _tl_names()
    lowered = {n.lower(): n for n in official}
    lowered.update({a.lower(): o for a, o in aliases.items()})
    key = name.strip().lower()
    if key in lowered:
        return tl_default_name(lowered[key]), None
    candidates = (
        list(PACKAGED)
        + [a for m in PACKAGED.values() for a in m.aliases]
        + list(aliases)
        + official
    )
    close = difflib.get_close_matches(name.strip(), candidates, n=3, cutoff=0.75)
    if not close:
        close = difflib.get_close_matches(key, [c.lower() for c in candidates], n=3, cutoff=0.75)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(
        f"Unknown model {name!r}.{hint} Packaged offline models: {', '.join(PACKAGED)}; any"
        " TransformerLens model name also works where its weights can be downloaded or are cached."
    )


def tl_official_name(canonical: str) -> str:
    """The Hugging Face repository TransformerLens loads a model from (``gpt2-small`` ->
    ``gpt2``)."""
    return _tl_names()[1].get(canonical.strip().lower(), canonical)
