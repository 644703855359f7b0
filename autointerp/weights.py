"""Facts about a neuron from the weights alone (no corpus): how its output relates to its input, and
which tokens it pushes up or down directly.

For neuron n of layer L:

* ``cos_in_out`` = cos(w_in, w_out), with w_in the neuron's input vector in residual space and w_out
  its output vector. Strongly negative: the neuron writes against what it reads (a "memory
  management" / erasing candidate); strongly positive: it boosts its own input direction (Gurnee et
  al. 2024, *Universal neurons in GPT-2*).
* ``top_tokens`` / ``bottom_tokens``: the direct logit effect, the tokens with the highest and
  lowest entries of w_out · W_U (mean over the vocabulary subtracted, since only differences between
  logits matter). This is the effect of the neuron's output on the logits through the residual
  stream alone, ignoring later layers.

**Gated MLPs** (both packaged models; TransformerLens ``W_gate`` and ``W_in``) compute ``post =
act(x · w_gate) · (x · w_in)`` and write ``post · w_out``. We use **``W_in``** (the linear "up"
vector) as the input vector: ``act(x · w_gate)`` is (nearly) non-negative for SiLU/GELU and decides
*whether* the neuron is on, while ``x · w_in`` carries the sign, so the direction written relative
to the direction read - what the cosine is meant to measure - is set by w_in and w_out.
``input_vector`` says which was used (``W_in`` also for ungated MLPs), and ``cos_gate_out`` =
cos(w_gate, w_out) is reported beside it for gated models.

**Norms are folded in** so the vectors live in the residual stream the neuron actually sees and
writes: the input vector is scaled elementwise by the pre-MLP norm weight (``ln2.w``), the output
vector by the post-MLP norm weight where the model has one (Gemma's ``ln2_post.w``), and the logit
effect uses the final norm weight (``ln_final.w``). The normalisation's division by the RMS is a
positive scalar per position and changes no direction.

Everything is vectorised per layer: one [d_mlp, d_model] × [d_model, vocab] product in chunks of
neurons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from autointerp.errors import UserError


def _norm_weight(module: Any, name: str, size: int) -> torch.Tensor:
    ln = getattr(module, name, None)
    w = getattr(ln, "w", None) if ln is not None else None
    return w.detach().float() if isinstance(w, torch.Tensor) else torch.ones(size)


@torch.inference_mode()
def compute_weight_facts(
    subject: Any, layers: Sequence[int], top_k: int = 10, chunk: int = 256
) -> list[dict[str, Any]]:
    """Weight facts of every neuron of ``layers``: ``[{"layer", "neuron", "input_vector",
    "cos_in_out", "cos_gate_out" (None if ungated), "top_tokens": [{"token", "id", "logit"}],
    "bottom_tokens": [...]}]``."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {top_k}.")
    subject.check_layers(list(layers))
    tl = subject.model
    d_model = int(tl.cfg.d_model)
    unembed = (
        tl.W_U.detach().float() * _norm_weight(tl, "ln_final", d_model)[:, None]
    )  # [d_model, vocab]
    unembed_mean = unembed.mean(
        dim=1
    )  # logits minus their mean = w · (W_U - mean): subtract after the top-k
    out: list[dict[str, Any]] = []
    for layer in layers:
        block = tl.blocks[layer]
        mlp = block.mlp
        w_in = (
            mlp.W_in.detach().float() * _norm_weight(block, "ln2", d_model)[:, None]
        )  # [d_model, d_mlp]
        w_out = (
            mlp.W_out.detach().float() * _norm_weight(block, "ln2_post", d_model)[None, :]
        )  # [d_mlp, d_model]
        cos_in = torch.nn.functional.cosine_similarity(w_in.T, w_out, dim=1)
        gate = getattr(mlp, "W_gate", None)
        cos_gate = None
        if isinstance(gate, torch.Tensor):
            w_gate = gate.detach().float() * _norm_weight(block, "ln2", d_model)[:, None]
            cos_gate = torch.nn.functional.cosine_similarity(w_gate.T, w_out, dim=1)
        for start in range(0, w_out.shape[0], chunk):
            rows = w_out[start : start + chunk]
            logits = rows @ unembed  # [chunk, vocab]
            mean = (rows @ unembed_mean)[:, None]
            top_v, top_i = logits.topk(top_k, dim=1)
            bot_v, bot_i = logits.topk(top_k, dim=1, largest=False)
            top_v, bot_v = top_v - mean, bot_v - mean
            ids = sorted(set(top_i.flatten().tolist()) | set(bot_i.flatten().tolist()))
            names = dict(zip(ids, subject.str_tokens(ids), strict=True))
            for row in range(logits.shape[0]):
                n = start + row
                out.append(
                    {
                        "layer": layer,
                        "neuron": n,
                        "input_vector": "W_in",
                        "cos_in_out": round(float(cos_in[n]), 6),
                        "cos_gate_out": None if cos_gate is None else round(float(cos_gate[n]), 6),
                        "top_tokens": [
                            {"token": names[i], "id": i, "logit": round(v, 5)}
                            for i, v in zip(top_i[row].tolist(), top_v[row].tolist(), strict=True)
                        ],
                        "bottom_tokens": [
                            {"token": names[i], "id": i, "logit": round(v, 5)}
                            for i, v in zip(bot_i[row].tolist(), bot_v[row].tolist(), strict=True)
                        ],
                    }
                )
    return out


def store_weight_facts(
    store: Any, subject: Any, layers: Sequence[int], top_k: int = 10, progress: bool = True
) -> dict[str, Any]:
    """Compute and store the weight facts of ``layers``, one transaction per layer (a kill keeps
    whole layers). Returns ``{"model", "layers", "neurons"}``."""
    subject.check_layers(list(layers))
    store.upsert_model(subject.info())
    total = 0
    for layer in tqdm(
        list(layers),
        unit="layer",
        desc=f"weights {subject.name}",
        disable=not progress,
        dynamic_ncols=True,
    ):
        rows = compute_weight_facts(subject, [layer], top_k)
        store.save_weight_facts(subject.name, rows)
        total += len(rows)
    return {"model": subject.name, "layers": list(layers), "neurons": total}


@dataclass(frozen=True)
class WeightsConfig:
    """The settings of the weight facts (:func:`store_weight_facts`'s keyword arguments;
    `autointerp weights` reads its option defaults from here)."""

    top_k: int = 10  # top and bottom tokens of the direct logit effect kept per neuron
