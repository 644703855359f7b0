"""Live forward passes: text -> neurons, and for the server the interactive neuroscope and the
Layerscope.

:func:`text_neurons` runs a text through the model and lists the neurons of a layer that fire above
``hi`` or below ``lo`` on any token (the threshold filter of the GPT-J-6B neuroscope study), with
their value at every token: the CLI's ``text`` command. The rest serves the API and the pages
(:mod:`autointerp.api`), which read it from here.

The subject model is loaded lazily, once per model name, and kept; forward passes are serialised
with one lock (two cores gain nothing from running two at once, and TransformerLens hooks are
per-model state). Layerscope prompts are run once over every layer (MLP activations and the residual
stream before the MLP) and the recent ones are kept, so stepping through layers, the GIF and the
threshold view cost no further forward passes.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autointerp.errors import UserError

VIEWS = ("mlp", "resid")
#: Clients (browser cookies) a recent prompt is listed to, at most: the most recent ones.
MAX_OWNERS = 64


class LiveUnavailable(Exception):
    """The subject model cannot be run on this server (not packaged, weights missing, ...)."""


class TooLong(Exception):
    """The text is longer than the server accepts (413)."""


@dataclass
class Prompt:
    """One Layerscope prompt, run over all layers. Activations are float16 ``[layer, token,
    unit]`` without BOS."""

    prompt_id: str
    model: str
    text: str
    tokens: list[str]
    mlp: np.ndarray
    resid: np.ndarray
    created: float

    def acts(self, view: str) -> np.ndarray:
        return self.mlp if view == "mlp" else self.resid

    def summary(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "model": self.model,
            "text": self.text,
            "tokens": self.tokens,
            "n_tokens": len(self.tokens),
            "n_layers": int(self.mlp.shape[0]),
            "d_mlp": int(self.mlp.shape[2]),
            "d_model": int(self.resid.shape[2]),
            "created": self.created,
        }


class Live:
    """Lazily loaded subject models and the forward passes the server runs on them."""

    def __init__(
        self,
        loader: Callable[[str], Any] | None = None,
        max_chars: int = 2000,
        max_tokens: int = 256,
        recent_prompts: int = 8,
        share_recent: bool = False,
    ):
        self._loader = loader
        # Recent prompts are listed only to the client (browser cookie) that ran them, unless the
        # server was started to share them: a prompt typed into a local server is nobody else's
        # business.
        self.share_recent = share_recent
        # prompt -> the clients that ran it, oldest first, at most MAX_OWNERS each: every client
        # sends a cookie of its choosing, so an unbounded table grows with the cookies sent
        self._owners: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self.recent_prompts = recent_prompts
        self._models: dict[str, Any] = {}
        self._failures: dict[str, str] = {}
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._prompts: OrderedDict[tuple[str, str], Prompt] = OrderedDict()
        self._prompts_lock = threading.Lock()
        self._images: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()

    # ----------------------------------------------------------------------------------------------
    # models
    def model(self, name: str) -> Any:
        if name in self._models:
            return self._models[name]
        with self._load_lock:
            if name in self._models:
                return self._models[name]
            if name in self._failures:
                raise LiveUnavailable(self._failures[name])
            try:
                if self._loader is not None:
                    subject = self._loader(name)
                else:
                    from autointerp.models import load_model

                    subject = load_model(name, progress=False)
            except UserError as exc:
                self._failures[name] = (
                    f"Live activations are not available for {name} on this server: {exc}"
                )
                raise LiveUnavailable(self._failures[name]) from exc
            self._models[name] = subject
            return subject

    def check_text(self, text: str) -> None:
        if not text or not text.strip():
            raise UserError("The text is empty; type something to run the model on.")
        if len(text) > self.max_chars:
            raise TooLong(
                f"The text is {len(text)} characters long; this server takes at most"
                f" {self.max_chars}."
            )

    def _encode(self, subject: Any, text: str) -> list[int]:
        self.check_text(text)
        ids, _ = subject.encode(text, max_tokens=min(self.max_tokens, subject.n_ctx))
        if len(ids) < 2:
            raise UserError("The text has no tokens.")
        return ids

    # ----------------------------------------------------------------------------------------------
    # neuroscope
    def activations(self, name: str, text: str, layer: int, neuron: int | None) -> dict[str, Any]:
        """Per-token activations of one neuron (``neuron`` given) or of the whole layer, BOS left
        out."""
        import torch

        subject = self.model(name)
        ids = self._encode(subject, text)
        with self._run_lock:
            acts = subject.mlp_activations(torch.tensor([ids]), [layer])[layer][0, 1:]
        tokens = subject.str_tokens(ids)[1:]
        out: dict[str, Any] = {"model": name, "layer": layer, "tokens": tokens}
        if neuron is not None:
            out["neuron"] = neuron
            out["activations"] = [round(float(a), 4) for a in acts[:, neuron].tolist()]
        else:
            out["neuron"] = None
            out["activations"] = np.round(acts.numpy(), 3).tolist()  # [token][neuron]
            out["shape"] = [len(tokens), int(acts.shape[1])]
        return out

    # ----------------------------------------------------------------------------------------------
    # layerscope
    def layerscope(self, name: str, text: str, owner: str | None = None) -> Prompt:
        """Run ``text`` over every layer once (or reuse a recent run of the same text); ``owner``
        (the client) may list it among its recent prompts."""
        import torch

        key = (name, hashlib.sha256(text.encode()).hexdigest()[:16])
        with self._prompts_lock:
            if key in self._prompts:
                self._prompts.move_to_end(key)
                if owner:
                    self._add_owner(key, owner)
                return self._prompts[key]
        subject = self.model(name)
        ids = self._encode(subject, text)
        n_layers = subject.n_layers
        mlp: dict[int, torch.Tensor] = {}
        resid: dict[int, torch.Tensor] = {}

        def keep(store: dict[int, torch.Tensor]) -> Callable[[torch.Tensor, Any], None]:
            def hook(act: torch.Tensor, hook: Any) -> None:
                store[int(hook.name.split(".")[1])] = act[0, 1:].detach().to("cpu", torch.float16)

            return hook

        hooks = [(f"blocks.{layer}.mlp.hook_post", keep(mlp)) for layer in range(n_layers)]
        hooks += [(f"blocks.{layer}.hook_resid_mid", keep(resid)) for layer in range(n_layers)]
        with self._run_lock, torch.inference_mode():
            subject.model.run_with_hooks(
                torch.tensor([ids], device=subject.device), stop_at_layer=n_layers, fwd_hooks=hooks
            )
        prompt = Prompt(
            key[1],
            name,
            text,
            subject.str_tokens(ids)[1:],
            torch.stack([mlp[i] for i in range(n_layers)]).numpy(),
            torch.stack([resid[i] for i in range(n_layers)]).numpy(),
            time.time(),
        )
        with self._prompts_lock:
            self._prompts[key] = prompt
            if owner:
                self._add_owner(key, owner)
            while len(self._prompts) > self.recent_prompts:
                old, _ = self._prompts.popitem(last=False)
                self._owners.pop(old, None)
        return prompt

    def _add_owner(self, key: tuple[str, str], owner: str) -> None:
        """``owner`` ran prompt ``key`` (most recent last); the oldest owner beyond
        :data:`MAX_OWNERS` no longer sees it among its recent prompts. Call with the prompts
        lock held."""
        owners = self._owners.setdefault(key, OrderedDict())
        owners[owner] = None
        owners.move_to_end(owner)
        while len(owners) > MAX_OWNERS:
            owners.popitem(last=False)

    def recent(self, name: str, owner: str | None = None) -> list[Prompt]:
        """Recent prompts of ``name`` that ``owner`` ran (all of them when the server shares
        them)."""
        with self._prompts_lock:
            return [
                p
                for key, p in reversed(self._prompts.items())
                if key[0] == name
                and (
                    self.share_recent or (owner is not None and owner in self._owners.get(key, ()))
                )
            ]

    def prompt(self, name: str, prompt_id: str) -> Prompt | None:
        with self._prompts_lock:
            return self._prompts.get((name, prompt_id))

    def image(self, prompt: Prompt, layer: int, view: str) -> bytes:
        return self._cached_image(
            ("png", prompt.model, prompt.prompt_id, layer, view),
            lambda: _png(layer_frame(prompt, layer, view)),
        )

    def gif(self, prompt: Prompt, view: str) -> bytes:
        def make() -> bytes:
            frames = [
                layer_frame(prompt, layer, view, label=True) for layer in range(prompt.mlp.shape[0])
            ]
            buf = io.BytesIO()
            frames[0].save(
                buf, format="GIF", save_all=True, append_images=frames[1:], duration=600, loop=0
            )
            return buf.getvalue()

        return self._cached_image(("gif", prompt.model, prompt.prompt_id, view), make)

    def _cached_image(self, key: tuple[Any, ...], make: Callable[[], bytes]) -> bytes:
        with self._prompts_lock:
            if key in self._images:
                return self._images[key]
        data = make()
        with self._prompts_lock:
            self._images[key] = data
            while len(self._images) > 64:
                self._images.popitem(last=False)
        return data


#: What a threshold view's ``hi`` and ``lo`` are: activations ("absolute"), or fractions of each
#: neuron's own harvested max and min ("neuron"), with the defaults of each. A gated MLP's
#: activations are signed and every neuron dips below 0 somewhere, so absolute ``lo=0`` matches
#: nearly every neuron; relative to its own scale, a neuron matches only near its extremes.
THRESHOLDS = {"absolute": (3.0, 0.0), "neuron": (0.5, 0.5)}


def threshold_view(
    prompt: Prompt,
    layer: int,
    view: str,
    hi: float,
    lo: float,
    limit: int,
    offset: int = 0,
    extremes: tuple[list[float], list[float]] | None = None,
) -> dict[str, Any]:
    """Units of one layer that go above ``hi`` or below ``lo`` somewhere in the prompt (red > 3,
    blue < 0 by default, as in the GPT-J-6B neuroscope study), strongest first, with their per-token
    activations; ``limit`` of them from the ``offset``-th (pages).

    ``extremes``: each unit's harvested ``(max, min)``; then ``hi`` and ``lo`` are fractions of
    them (a unit is above when it exceeds ``hi`` x its max, below when it goes under ``lo`` x its
    min) and strength is the share of its own extreme reached. Each unit carries the cuts it was
    held to (``hi_cut``, ``lo_cut``), so a page colours it by its own scale."""
    acts = prompt.acts(view)[layer].astype(np.float32)  # [token, unit]
    n_units = acts.shape[1]
    if extremes is None:
        hi_cut = np.full(n_units, hi, dtype=np.float32)
        lo_cut = np.full(n_units, lo, dtype=np.float32)
        top, bottom = np.ones(n_units, np.float32), np.ones(n_units, np.float32)
    else:
        top = np.asarray(extremes[0], dtype=np.float32)
        bottom = -np.asarray(extremes[1], dtype=np.float32)  # how far below 0 it goes
        # a unit that never went above (below) 0 in the harvest is never above (below)
        hi_cut = np.where(top > 0, hi * top, np.inf).astype(np.float32)
        lo_cut = np.where(bottom > 0, -lo * bottom, -np.inf).astype(np.float32)
        top, bottom = np.maximum(top, 1e-9), np.maximum(bottom, 1e-9)
    above = (acts > hi_cut).any(axis=0)
    below = (acts < lo_cut).any(axis=0)
    chosen = np.flatnonzero(above | below)
    if extremes is None:
        strength = np.maximum(acts.max(axis=0) - hi, lo - acts.min(axis=0))
    else:
        strength = np.maximum(acts.max(axis=0) / top - hi, -acts.min(axis=0) / bottom - lo)
    order = chosen[np.argsort(-strength[chosen], kind="stable")][offset : offset + limit]
    units = [
        {
            "unit": int(u),
            "max": round(float(acts[:, u].max()), 4),
            "min": round(float(acts[:, u].min()), 4),
            "above": bool(above[u]),
            "below": bool(below[u]),
            "hi_cut": _finite(hi_cut[u]),
            "lo_cut": _finite(lo_cut[u]),
            "activations": [round(float(a), 3) for a in acts[:, u]],
        }
        for u in order
    ]
    return {
        "prompt_id": prompt.prompt_id,
        "model": prompt.model,
        "layer": layer,
        "view": view,
        "thresholds": "absolute" if extremes is None else "neuron",
        "hi": hi,
        "lo": lo,
        "tokens": prompt.tokens,
        "n_above": int(above.sum()),
        "n_below": int(below.sum()),
        "n_matching": int(len(chosen)),
        "offset": offset,
        "units": units,
    }


def _finite(x: float) -> float | None:
    """A cut as JSON: None for a unit that can never cross it."""
    return round(float(x), 4) if np.isfinite(x) else None


def unit_activations(prompt: Prompt, layer: int, view: str, unit: int) -> dict[str, Any]:
    """One unit's activation on each token of a prompt (what Layerscope's picture shows when the
    pointer is over that unit's column)."""
    acts = prompt.acts(view)[layer]
    return {
        "prompt_id": prompt.prompt_id,
        "layer": layer,
        "view": view,
        "unit": unit,
        "tokens": prompt.tokens,
        "activations": [round(float(a), 4) for a in acts[:, unit].astype(np.float32)],
    }


def _scale(acts: np.ndarray) -> float:
    """Colour scale: the 99.5th percentile of |activation|, so one outlier unit does not wash out
    the rest."""
    if acts.size == 0:
        return 1.0
    return max(float(np.percentile(np.abs(acts), 99.5)), 1e-6)


def layer_frame(prompt: Prompt, layer: int, view: str, label: bool = False) -> Any:
    """The layer as an image: one row per token (4 px), one column per unit; red positive, blue
    negative."""
    from PIL import Image, ImageDraw

    acts = prompt.acts(view)[layer].astype(np.float32)  # [token, unit]
    v = np.clip(acts / _scale(acts), -1.0, 1.0)
    rgb = np.full((*v.shape, 3), 255.0, dtype=np.float32)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb[..., 0] -= 255 * neg
    rgb[..., 1] -= 255 * np.maximum(pos, neg)
    rgb[..., 2] -= 255 * pos
    row_px = 4
    pixels = np.repeat(rgb.astype(np.uint8), row_px, axis=0)
    img = Image.fromarray(pixels, mode="RGB")
    if label:
        top = 14
        framed = Image.new("RGB", (img.width, img.height + top), "white")
        framed.paste(img, (0, top))
        ImageDraw.Draw(framed).text(
            (2, 1),
            f"{prompt.model} layer {layer} ({view}), scale +-{_scale(acts):.3g}",
            fill="black",
        )
        return framed
    return img


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def layer_scales(prompt: Prompt, view: str) -> list[float]:
    return [
        round(_scale(prompt.acts(view)[layer].astype(np.float32)), 4)
        for layer in range(prompt.mlp.shape[0])
    ]


def text_neurons(
    subject: Any,
    text: str,
    layer: int,
    hi: float | None = 3.0,
    lo: float | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The neurons of ``layer`` that fire above ``hi`` or below ``lo`` on any token of ``text``,
    strongest first.

    Returns ``{"model", "layer", "hi", "lo", "tokens": [str], "neurons": [{"neuron", "max", "min",
    "peak_index", "peak_token", "values": [float per token]}]}``; BOS is left out of tokens and
    values. Strength is the larger of ``max`` (when above ``hi``) and ``-min`` (when below ``lo``).
    """
    import torch

    if hi is None and lo is None:
        raise UserError("Give a threshold: --hi (fires above) and/or --lo (fires below).")
    if hi is not None and lo is not None and lo >= hi:
        raise UserError(f"--lo ({lo}) must be below --hi ({hi}).")
    if not text:
        raise UserError("Give some text to run (--text or standard input).")
    subject.check_layers([layer])
    ids, _ = subject.encode(text)
    acts = subject.mlp_activations(torch.tensor([ids]), [layer])[layer][
        0, 1:
    ]  # [T, d_mlp], BOS dropped
    mx, arg_mx = acts.max(dim=0)
    mn, arg_mn = acts.min(dim=0)
    above = mx > hi if hi is not None else torch.zeros_like(mx, dtype=torch.bool)
    below = mn < lo if lo is not None else torch.zeros_like(mn, dtype=torch.bool)
    strength = torch.where(above, mx, torch.full_like(mx, -torch.inf))
    strength = torch.maximum(strength, torch.where(below, -mn, torch.full_like(mn, -torch.inf)))
    chosen = torch.nonzero(above | below).flatten()
    chosen = chosen[torch.argsort(strength[chosen], descending=True, stable=True)]
    if limit is not None:
        chosen = chosen[:limit]
    tokens = subject.str_tokens(ids)[1:]
    neurons = []
    for nrn in chosen.tolist():
        peak = (
            int(arg_mx[nrn])
            if bool(above[nrn]) and (not bool(below[nrn]) or mx[nrn] >= -mn[nrn])
            else int(arg_mn[nrn])
        )
        neurons.append(
            {
                "neuron": nrn,
                "max": round(float(mx[nrn]), 4),
                "min": round(float(mn[nrn]), 4),
                "peak_index": peak,
                "peak_token": tokens[peak],
                "values": [round(v, 4) for v in acts[:, nrn].tolist()],
            }
        )
    return {
        "model": subject.name,
        "layer": layer,
        "hi": hi,
        "lo": lo,
        "tokens": tokens,
        "neurons": neurons,
    }
