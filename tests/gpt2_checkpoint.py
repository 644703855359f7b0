"""A GPT-2 small that TransformerLens loads by its official name with no hub: random weights, real
architecture.

The weights are a randomly initialised ``GPT2LMHeadModel`` with ``GPT2Config()``'s defaults - GPT-2
small's exact shapes (12 layers, d_model 768, 12 heads, d_mlp 3072, GELU, 50,257 tokens, 1,024
positions) - saved as safetensors into a temporary Hugging Face cache under the repository
TransformerLens 3.9 loads ``gpt2-small`` from (``gpt2``), laid out as the hub client lays it out
(``refs/main`` -> ``snapshots/<commit>/``, large files as blobs named by their sha256). With
``HF_HUB_CACHE`` pointing there and ``HF_HUB_OFFLINE=1``,
``HookedTransformer.from_pretrained("gpt2-small")`` takes its normal path: config conversion,
state-dict conversion and weight processing.

The tokenizer is GPT-2's own: llama.cpp's source tree ships it as ``models/ggml-vocab-gpt-2.gguf``
together with reference tokenizations made by the original tokenizer (``.inp`` / ``.out``), and
llama-cpp-python's source distribution (a dependency of this project) carries that tree.
transformers builds a fast tokenizer from the GGUF; :func:`gpt2_vocab` checks it against every
reference tokenization before it is used. The extracted files are kept under
``$AUTOINTERP_CACHE/tokenizers/`` so the source distribution is downloaded once per machine.

Random weights make explanations meaningless - the tests check the plumbing - and the same
checkpoint is the randomly initialised control model that interpretability papers compare trained
models against.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from autointerp.packaged import cache_dir

REPO_ID = (  # what transformer_lens 3.9 loads "gpt2-small" from (its OFFICIAL_MODEL_NAMES entry)
    "gpt2"
)
VOCAB = "ggml-vocab-gpt-2.gguf"
COMMIT = hashlib.sha1(b"autointerp random-init gpt2-small, torch seed 0").hexdigest()


def gpt2_vocab() -> Path:
    """The folder holding GPT-2's GGUF vocabulary and its reference tokenizations (downloaded
    once)."""
    folder = cache_dir() / "tokenizers" / "gpt2"
    if (folder / VOCAB).is_file() and (folder / f"{VOCAB}.out").is_file():
        return folder
    version = importlib.metadata.version("llama-cpp-python")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-q",
                "-d",
                tmp,
                f"llama-cpp-python=={version}",
            ],
            capture_output=True,
            text=True,
        )
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise RuntimeError(
                f"pip could not download llama-cpp-python's source: {proc.stderr[-500:]}"
            )
        staging = folder.with_name(".gpt2-partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if (
                    member.isfile()
                    and "/vendor/llama.cpp/models/" in member.name
                    and name.startswith(VOCAB)
                ):
                    source = tar.extractfile(member)
                    assert source is not None
                    (staging / name).write_bytes(source.read())
        if not (staging / VOCAB).is_file():
            raise RuntimeError(f"{sdists[0].name} has no vendor/llama.cpp/models/{VOCAB}")
        shutil.rmtree(folder, ignore_errors=True)
        staging.replace(folder)
    return folder


def reference_tokenizations(folder: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's test cases: texts and the token ids GPT-2's original tokenizer gives them."""
    texts = (folder / f"{VOCAB}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (folder / f"{VOCAB}.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in i.split()]) for t, i in zip(texts, ids, strict=False)]


def gpt2_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    """GPT-2's tokenizer built from the GGUF vocabulary, checked against every reference
    tokenization."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=VOCAB)
    cases = reference_tokenizations(folder)
    wrong = [
        (t, want)
        for t, want in cases
        if tokenizer(t, add_special_tokens=False)["input_ids"] != want
    ]
    if len(tokenizer) != 50257 or len(cases) < 40 or wrong:
        raise RuntimeError(
            f"the GGUF tokenizer is not GPT-2's: {len(tokenizer)} tokens, wrong on {wrong[:2]}"
        )
    tokenizer.unk_token = tokenizer.eos_token  # as GPT-2's own tokenizer_config.json has it
    return tokenizer


def build_random_gpt2_cache(hub: Path, seed: int = 0) -> dict[str, str]:
    """Write the checkpoint into the hub cache folder ``hub`` (use it as ``HF_HUB_CACHE``). Returns
    ``{"revision", "sha256"}`` of the weights, for checking the provenance a loader records."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer(gpt2_vocab())
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config())
    repo = hub / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    blobs = repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    model.save_pretrained(snapshot, safe_serialization=True)
    tokenizer.save_pretrained(snapshot)
    weights = snapshot / "model.safetensors"
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    sha = digest.hexdigest()
    weights.replace(
        blobs / sha
    )  # the hub client's layout: the snapshot links to a blob named by its sha256
    weights.symlink_to(Path("..") / ".." / "blobs" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    config = json.loads((snapshot / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["vocab_size"]) == (
        12,
        768,
        12,
        50257,
    )
    # The hub's gpt2/config.json still has the legacy "n_ctx" (transformers 5 no longer writes it)
    # and TransformerLens 3.9 reads it; written as the real file has it.
    config["n_ctx"] = config["n_positions"]
    (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    return {"revision": COMMIT, "sha256": sha}
