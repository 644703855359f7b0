"""Randomly initialised controls: a subject model's architecture and tokenizer with seeded random
weights, as a :class:`~autointerp.models.SubjectModel` of its own name.

Why a control at all: explanations of randomly initialised transformers score about as well as
those of trained ones under common scorers (Heap et al. 2025), so a score means little until it is
set beside the same pipeline run on a model that has learnt nothing. ``eval --control random-init``
(:mod:`autointerp.eval.control`) harvests, graphs, explains and scores such a model exactly as it
does the trained one.

How it is built:

* **Named apart.** The control of ``gemma-3-270m`` with seed 0 is ``gemma-3-270m+random-init-0``
  (:func:`autointerp.model_names.random_init_name`): its harvest, graphs and explanations are
  stored under that name and never mix with the trained model's rows; :func:`load_subject` (what
  Ray workers and ``eval`` load by name) understands it.
* **The architecture's own initialisation.** The Hugging Face config of the model (the packaged
  model's converted folder, or a TransformerLens model's hub cache) goes through transformers'
  ``AutoModelForCausalLM.from_config`` under ``torch.manual_seed(seed)``, so the weights are drawn
  by the architecture's own ``_init_weights`` (Gemma, Llama: normal(0, 0.02); norms at their
  neutral value), then wrapped exactly as the trained model is
  (:func:`autointerp.models.build_hooked`), so hook names and every stage work unchanged. A model
  with no Hugging Face class (TransformerLens' own checkpoints, a library caller's
  ``HookedTransformer``) is drawn by TransformerLens' ``init_weights`` instead
  (:func:`random_init_like`); the provenance says which.
* **Built, not stored.** Building the control takes seconds (on a shared 2-core machine 17.5 s
  for SmolLM2-135M and 17.7 s for Gemma-3-270M, where loading the trained ones took 7.1 s and
  15.0 s), not worth 0.5-1 GB of random safetensors in the model cache, and ``eval`` builds it
  only when a stage it lacks needs it. The draw runs
  inside :func:`torch.random.fork_rng`, so it leaves the caller's random state as it found it, and
  is the same for the same seed, config and transformers version (recorded in the provenance).
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib.metadata import version
from typing import Any

import torch

from autointerp.errors import UserError
from autointerp.model_names import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    RANDOM_INIT,
    offline_sentence,
    parse_random_init_name,
    random_init_name,
    resolve_model_name,
    tl_official_name,
)
from autointerp.models import (
    SubjectModel,
    build_hooked,
    lay_out_weights_for_forward,
    load_model,
    prepare_packaged,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
)
from autointerp.packaged import hub_reachable


def load_subject(
    name: str,
    progress: bool = True,
    device: str | None = DEFAULT_DEVICE,
    dtype: str | None = DEFAULT_DTYPE,
) -> SubjectModel:
    """A subject model by name: a random-init control (``<model>+random-init-<seed>``) is built
    (:func:`random_init_model`), any other name loaded (:func:`autointerp.models.load_model`)."""
    control = parse_random_init_name(name)
    if control is None:
        return load_model(name, progress=progress, device=device, dtype=dtype)
    return random_init_model(control[0], control[1], progress=progress, device=device, dtype=dtype)


def _hf_architecture(model: str, progress: bool) -> tuple[str, Any, Any, str, dict[str, str]]:
    """``(canonical name, HF config or None, tokenizer or None, TransformerLens config name,
    source)`` of ``model``'s architecture, read offline: the packaged model's converted folder, or
    the hub cache of a TransformerLens model (the hub when it can be reached). A TransformerLens
    model's tokenizer is None (:func:`autointerp.models.build_hooked` gives it TransformerLens'
    own, as loading the trained model does), and so is its config when it has no Hugging Face one
    (TransformerLens' own checkpoints)."""
    from transformers import AutoConfig, AutoTokenizer

    canonical, packaged = resolve_model_name(model)
    if packaged is not None:
        path = prepare_packaged(packaged, progress=progress)
        trained = json.loads((path / "provenance.json").read_text())
        source = {"config": f"{trained['source']} (converted: {path.name}/config.json)"}
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        config = AutoConfig.from_pretrained(str(path))
        return canonical, config, tokenizer, packaged.tl_config_name or str(path), source
    official = tl_official_name(canonical)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(official, "config.json"), str)
    except Exception:  # noqa: BLE001 - a broken cache reads as no cache
        cached = False
    if not cached and not hub_reachable():
        raise UserError(offline_sentence(model))
    try:
        config = AutoConfig.from_pretrained(official)
    except (OSError, ValueError, KeyError):  # no Hugging Face config: TransformerLens' own init
        config = None
    return canonical, config, None, official, {"config": f"transformer-lens:{official}"}


def _drawn(config: Any, seed: int) -> Any:
    """The Hugging Face model of ``config`` with weights drawn by its ``_init_weights`` under
    ``seed`` (leaving the global random state as it was), or None when transformers has no causal
    LM class for it."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError:  # "Unrecognized configuration class ... for AutoModelForCausalLM"
        return None


def random_init_model(
    model: str,
    seed: int,
    progress: bool = True,
    device: str | None = DEFAULT_DEVICE,
    dtype: str | None = DEFAULT_DTYPE,
) -> SubjectModel:
    """``model``'s architecture and tokenizer with weights drawn by its own initialisation under
    ``seed`` (see the module docstring), named :func:`random_init_name`, on ``device`` in
    ``dtype``. The weights are drawn on the CPU in float32 whatever the device, so a seed gives the
    same control everywhere."""
    target, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    quiet_libraries()
    canonical, config, tokenizer, tl_name, source = _hf_architecture(model, progress)
    hf_model = _drawn(config, seed) if config is not None else None
    if hf_model is None:  # no transformers class (TransformerLens' own checkpoints)
        trained = load_model(canonical, progress=progress, device=device, dtype=dtype)
        return random_init_like(trained, seed)
    hooked = build_hooked(tl_name, hf_model, tokenizer)
    del hf_model
    if target.type != "cpu" or torch_dtype != torch.float32:
        hooked = hooked.to(torch_dtype).to(target)
    lay_out_weights_for_forward(hooked)
    name = random_init_name(canonical, seed)
    config_json = json.dumps(config.to_dict(), sort_keys=True, default=str)
    provenance = {
        "model": name,
        "source": f"{RANDOM_INIT}:{canonical}",
        "random_init": {
            "architecture": canonical,
            "seed": seed,
            "init": "transformers AutoModelForCausalLM.from_config (the architecture's "
            "_init_weights) under torch.manual_seed(seed), drawn on the CPU in float32",
            "architecture_class": config.architectures[0] if config.architectures else None,
            "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
            **source,
        },
        "dtype": "float32",
        "transformers": version("transformers"),
    }
    return SubjectModel(name, hooked, tokenizer or hooked.tokenizer, provenance)


def random_init_like(model: SubjectModel, seed: int) -> SubjectModel:
    """A random-init control of a model that has no Hugging Face class: the same
    TransformerLens config and tokenizer, weights drawn by TransformerLens' ``init_weights`` under
    ``seed`` (on the CPU in float32, then moved where ``model`` lives)."""
    from transformer_lens import HookedTransformer

    cfg = copy.deepcopy(model.model.cfg)
    cfg.seed = None  # TransformerLens would reseed Python's, numpy's and torch's global state
    cfg.device, cfg.dtype = "cpu", torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hooked = HookedTransformer(cfg, model.tokenizer, move_to_device=False)
    hooked.eval()
    if model.device.type != "cpu" or model.dtype != torch.float32:
        hooked = hooked.to(model.dtype).to(model.device)
    lay_out_weights_for_forward(hooked)
    name = random_init_name(model.name, seed)
    provenance = {
        "model": name,
        "source": f"{RANDOM_INIT}:{model.name}",
        "random_init": {
            "architecture": model.name,
            "seed": seed,
            "init": "transformer_lens HookedTransformer.init_weights under torch.manual_seed(seed)",
            "config": f"{model.name}'s HookedTransformerConfig",
        },
        "dtype": "float32",
        "transformer_lens": version("transformer-lens"),
    }
    return SubjectModel(name, hooked, model.tokenizer, provenance)
