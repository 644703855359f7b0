"""What determines a harvest's results (:class:`HarvestConfig`), and resolving it against a model.

Kept apart from the accumulators and the run: the config is plain data whose hash names a run, so
it reads the same whether a CLI builds it, a Ray driver ships it to its workers, or ``merge`` reads
it back from a shard database. :func:`resolve_config` is the one place a user's config meets the
model (layers, the bottom-k default of a gated MLP, the context length the model allows), so an
in-process harvest and a Ray planning task resolve it identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from autointerp.config import check_int, check_number, config_identity, identity_hash
from autointerp.errors import UserError
from autointerp.histogram import HIST_BINS, HIST_HI, HIST_LO

if TYPE_CHECKING:
    from autointerp.models import SubjectModel

HARVEST_VERSION = 1
#: : Train/valid/test assignment by rank within a kind, interleaved so every split sees the whole
#: activation range.
SPLIT_PATTERN = ("train", "valid", "train", "test")


@dataclass
class HarvestConfig:
    """Everything that determines a harvest's results. Saved as JSON with the run; its hash
    identifies the run."""

    model: str
    corpus: str = "default"
    layers: list[int] | None = None  # None: all layers
    ctx_len: int = 64
    n_tokens: int | None = None  # None: the whole corpus
    top_k: int = 40  # 20 train + 10 valid + 10 test with SPLIT_PATTERN
    bottom_k: int | None = None  # None: top_k for gated (signed) MLPs, else 0
    random_k: int = 40
    quantile_intervals: int = 4
    quantile_per_interval: int = 4
    hist_sample: int = (
        4  # the token histogram counts contexts whose hash is 0 mod this (1: every context)
    )
    seed: int = 0
    # At most this many top (and bottom) examples of a neuron from one document (the document of
    # the token where the neuron peaks; see autointerp.harvest.documents); 0: no cap.
    per_document: int = 2
    corpus_fingerprint: str | None = (
        None  # filled in by harvest(): a changed corpus is a different run
    )
    # Not part of the result's identity:
    batch_size: int = field(default=16, metadata={"hashed": False})
    shard: tuple[int, int] = field(default=(0, 1), metadata={"hashed": False})
    # None: at least CHECKPOINT_MIN_SECONDS apart and further when writing one takes long (see
    # CHECKPOINT_SHARE); a number: exactly that spacing (0: after every batch, as the crash tests
    # use).
    checkpoint_seconds: float | None = field(default=None, metadata={"hashed": False})
    # The subject model's dtype. float32 runs keep the identity they always had; a half-precision
    # run is a different result (activations differ in the third significant digit), so it gets its
    # own identity.
    dtype: str = field(default="float32", metadata={"hashed": False})
    # Where the statistics are computed: None: on the model's device when that is CUDA (the
    # activations never cross to the host), else on the CPU; or a torch device ("cpu", "cuda:1").
    # The same results either way, so not part of the identity.
    stats_device: str | None = field(default=None, metadata={"hashed": False})

    def __post_init__(self) -> None:
        check_int(self.ctx_len, "--ctx-len", 2)
        if self.n_tokens is not None:
            check_int(self.n_tokens, "--tokens", 1)
        check_int(self.top_k, "--top-k", 1)  # 0 would leave nothing to explain or graph
        if self.bottom_k is not None:
            check_int(self.bottom_k, "--bottom-k", 0)
        check_int(self.random_k, "--random-k", 0)
        check_int(self.quantile_intervals, "quantile_intervals", 1)
        check_int(self.quantile_per_interval, "quantile_per_interval", 0)
        check_int(self.hist_sample, "hist_sample", 1)
        check_int(self.seed, "--seed", 0)
        check_int(self.per_document, "--per-document", 0)
        check_int(self.batch_size, "--batch-size", 1)
        if self.checkpoint_seconds is not None:
            # 0 is meaningful: a checkpoint after every batch (the crash tests use it)
            check_number(self.checkpoint_seconds, "--checkpoint-seconds", 0.0, finite=False)

    def identity(self) -> dict[str, Any]:
        """The fields that change results (shard, batch size, checkpoint cadence and where the
        statistics are computed do not). Settings added later are left out at their "off" value,
        so runs made before they existed keep their hash: ``per_document`` 0 (no cap) and float32.
        The default cap (2) changes results, so a harvest made with it has a new hash."""
        half = {"dtype": self.dtype} if self.dtype != "float32" else {}
        out = config_identity(
            self,
            harvest_version=HARVEST_VERSION,
            hist=[HIST_LO, HIST_HI, HIST_BINS],
            split_pattern=list(SPLIT_PATTERN),
            **half,
        )
        if not self.per_document:
            del out["per_document"]
        return out

    def config_hash(self) -> str:
        return identity_hash(self.identity())


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise UserError(f"--shard takes i/n, e.g. 0/4, not {text!r}.") from exc
    if n < 1 or not 0 <= i < n:
        raise UserError(f"Shard {text} is impossible: need 0 <= i < n.")
    return (i, n)


def resolve_config(cfg: HarvestConfig, model: SubjectModel) -> HarvestConfig:
    """``cfg`` checked against ``model`` and completed by it: the layers (all when None; sorted,
    each once), the bottom-k default (``top_k`` for a gated MLP, else 0), the model's name and
    dtype."""
    layers = cfg.layers if cfg.layers is not None else list(range(model.n_layers))
    model.check_layers(layers)
    if cfg.ctx_len > model.n_ctx:
        raise UserError(
            f"Contexts of {cfg.ctx_len} tokens are longer than {model.name} allows ({model.n_ctx})."
        )
    if cfg.ctx_len < 2:
        raise UserError("--ctx-len must be at least 2 (BOS plus one token).")
    for name in ("top_k", "bottom_k", "random_k"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative.")
    if cfg.batch_size < 1 or cfg.hist_sample < 1:
        raise UserError("--batch-size and hist_sample must be at least 1.")
    if cfg.n_tokens is not None and cfg.n_tokens < cfg.ctx_len:
        raise UserError(
            f"--tokens {cfg.n_tokens} is less than one context of {cfg.ctx_len} tokens."
        )
    stats_device(cfg, model)  # a device that does not exist is one sentence here
    bottom = cfg.bottom_k if cfg.bottom_k is not None else (cfg.top_k if model.gated else 0)
    out = HarvestConfig(
        **{
            **asdict(cfg),
            "layers": sorted(set(layers)),
            "bottom_k": bottom,
            "model": model.name,
            "dtype": model.dtype_name,
        }
    )
    out.shard = tuple(cfg.shard)  # type: ignore[assignment]
    return out


def stats_device(cfg: HarvestConfig, model: SubjectModel) -> torch.device:
    """Where ``cfg``'s statistics are computed on ``model``: ``cfg.stats_device`` if set, else the
    model's device when that is CUDA (the activations stay where the forward pass made them) and
    the CPU otherwise. Left unresolved in the config itself, so that each Ray worker picks its own
    device."""
    if cfg.stats_device is None:
        return model.device if model.device.type == "cuda" else torch.device("cpu")
    try:
        device = torch.device(cfg.stats_device)
    except RuntimeError as exc:
        raise UserError(f"{cfg.stats_device!r} is not a device (cpu, cuda, cuda:N).") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"The statistics cannot go to {cfg.stats_device}: torch sees no CUDA device."
        )
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"The statistics go to the CPU or a CUDA device, not {cfg.stats_device}.")
    return device
