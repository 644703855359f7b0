"""Corpora become deterministic contexts with exact provenance; model names resolve or fail
helpfully; the packaged model's TransformerLens wrapping computes what the Hugging Face model
computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

from autointerp.corpus import (
    CODE_SHARE,
    MIN_READ_CHARS,
    READ_BYTES,
    Document,
    iter_contexts,
    load_documents,
    read_limit,
    read_text_stream,
)
from autointerp.errors import UserError
from autointerp.model_names import canonical_model_name, resolve_model_name, tl_official_name
from autointerp.models import SubjectModel
from autointerp.packaged import PACKAGED, packaged_model_dir


def test_default_corpus_mixes_prose_and_code_deterministically() -> None:
    docs = load_documents("default", seed=0)
    assert docs == load_documents("default", seed=0)
    assert [d.doc_id for d in docs[:50]] != [
        d.doc_id for d in load_documents("default", seed=1)[:50]
    ]
    sources = {d.source for d in docs}
    assert sources == {"wiki", "code"}
    prefix = docs[:2000]
    code_chars = sum(len(d.text) for d in prefix if d.source == "code")
    share = code_chars / sum(len(d.text) for d in prefix)
    assert abs(share - CODE_SHARE) < 0.02
    assert sum(d.source == "wiki" for d in docs) > 9000


@pytest.mark.parametrize("model_name", ["smollm2-135m", "gemma-3-270m"])
def test_documents_tokenized_in_pieces_equal_whole_documents(model_name: str) -> None:
    """A huge document is tokenized a piece at a time, cut before a space that starts a word: the
    tokens, documents and character offsets must be exactly those of tokenizing each document whole.
    Checked with pieces of 300 characters (so every ordinary document is cut many times) on the real
    tokenizers, over prose and code."""
    from transformers import AutoTokenizer

    path = packaged_model_dir(model_name)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        pytest.skip(f"{model_name} is not converted here (autointerp setup)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    docs = load_documents("default", seed=0)[:300]
    docs.append(
        Document("spaces", "a  b   c\n\n  d \t e, f" * 200, "test")
    )  # whitespace runs of every kind
    whole = list(iter_contexts(docs, tokenizer, 64, 1, 2, piece_chars=10**9))
    pieces = list(iter_contexts(docs, tokenizer, 64, 1, 2, piece_chars=300))
    assert len(pieces) == len(whole) > 500
    for a, b in zip(whole, pieces, strict=True):
        assert (a.tokens == b.tokens).all() and (a.doc_index == b.doc_index).all(), a.context_id
        assert (a.offsets == b.offsets).all(), a.context_id


def test_files_with_a_byte_order_mark_are_read_without_it(tmp_path: Path) -> None:
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes("\ufeff".encode() + b'{"text": "first document"}\n{"text": "second"}\n')
    plain = tmp_path / "bom.txt"
    plain.write_bytes("\ufeff".encode() + b"one document")
    assert sorted(d.text for d in load_documents(str(lines), 0)) == ["first document", "second"]
    assert [d.text for d in load_documents(str(plain), 0)] == ["one document"]


def test_contexts_carry_exact_provenance(tiny: SubjectModel, text_corpus: Path) -> None:
    docs = load_documents(str(text_corpus), seed=0)
    contexts = list(iter_contexts(docs, tiny.tokenizer, 16, tiny.bos_id, tiny.sep_id))
    assert [c.context_id for c in contexts] == list(range(len(contexts)))
    again = list(iter_contexts(docs, tiny.tokenizer, 16, tiny.bos_id, tiny.sep_id))
    assert all((a.tokens == b.tokens).all() for a, b in zip(contexts, again, strict=True))
    seen_sep = False
    for c in contexts:
        assert len(c.tokens) == 16 and c.tokens[0] == tiny.bos_id and c.doc_index[0] == -1
        for tok, doc, (start, end) in zip(
            c.tokens[1:], c.doc_index[1:], c.offsets[1:], strict=True
        ):
            if doc < 0:
                seen_sep = True
                assert tok == tiny.sep_id
                continue
            # the character span of each token re-encodes to that token
            piece = docs[doc].text[start:end]
            assert tiny.tokenizer.decode([int(tok)]).strip() == piece.strip()
    assert seen_sep
    # the stream is every document's tokens in order, nothing skipped
    stream = [int(t) for c in contexts for t in c.tokens[1:]]
    first = tiny.tokenizer(docs[0].text, add_special_tokens=False)["input_ids"]
    assert stream[: len(first)] == first and stream[len(first)] == tiny.sep_id


def test_jsonl_errors_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"nope": 1}\n')
    with pytest.raises(UserError, match="Line 2"):
        load_documents(str(bad), 0)
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        load_documents(str(bad), 0)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha text")
    (folder / "b.jsonl").write_text(json.dumps("beta text") + "\n")
    assert sorted(d.text for d in load_documents(str(folder), 0)) == ["alpha text", "beta text"]


def test_hf_dataset_offline_fails_fast_and_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not available offline"):
        load_documents("hf:surely-not-cached/dataset-xyz", 0)


def test_model_names_resolve_or_suggest() -> None:
    assert resolve_model_name("gemma3-270m")[0] == "gemma-3-270m"
    assert resolve_model_name("SmolLM2")[0] == "smollm2-135m"
    # TransformerLens names: every alias is stored under the default alias; the official name is the
    # HF repo
    assert resolve_model_name("gpt2-small") == ("gpt2-small", None)
    assert resolve_model_name("GPT2") == ("gpt2-small", None)
    assert canonical_model_name("gpt2") == canonical_model_name("gpt2-small") == "gpt2-small"
    assert tl_official_name("gpt2-small") == "gpt2"
    assert canonical_model_name("EleutherAI/pythia-70m") == "pythia-70m"
    assert canonical_model_name("smollm2") == "smollm2-135m"
    # unknown names stay as their caller stored them
    assert canonical_model_name("tiny-gated") == "tiny-gated"
    assert resolve_model_name("solu-1l")[1] is None
    with pytest.raises(UserError, match="Did you mean 'pythia-70m'"):
        resolve_model_name("pythia-70n")
    with pytest.raises(UserError, match="Unknown model 'zzzz'"):
        resolve_model_name("zzzz")


@pytest.mark.slow
def test_packaged_smollm2_matches_the_hf_model(smol: SubjectModel) -> None:
    from transformers import AutoModelForCausalLM

    path = packaged_model_dir("smollm2-135m")
    provenance = json.loads((path / "provenance.json").read_text())
    assert provenance["source_sha256"] == PACKAGED["smollm2-135m"].gguf_sha256
    assert provenance["dtype"] == "float32"
    assert (path / "model.safetensors").exists()
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ids, _ = smol.encode("The Eiffel Tower is in Paris, and def main(): pass")
    tokens = torch.tensor([ids])
    captured = {}
    handle = hf.model.layers[4].mlp.down_proj.register_forward_hook(
        lambda m, i, o: captured.update(x=i[0])
    )
    with torch.no_grad():
        logits = hf(tokens).logits
    handle.remove()
    assert torch.allclose(smol.model(tokens), logits, atol=1e-3)
    # hook_post is exactly the input of the MLP's down projection: act(gate) * up, signed for gated
    # MLPs
    acts = smol.mlp_activations(tokens, [4])[4]
    assert torch.allclose(acts, captured["x"], atol=1e-4)
    assert smol.gated and (acts < 0).any() and (acts > 0).any()
    assert smol.n_layers == 30 and smol.d_mlp == 1536


def test_loaded_weights_are_laid_out_so_the_forward_pass_copies_none(smol: SubjectModel) -> None:
    """TransformerLens copies a weight it reads as ``W.T.contiguous()`` or as a rearranged view
    on every forward pass; a loaded model stores each in that order already, and computes exactly
    what the same weights in TransformerLens's own layout compute."""
    import copy

    import einops

    block = smol.model.blocks[0]
    for name in ("W_gate", "W_in", "W_out"):
        assert getattr(block.mlp, name).T.is_contiguous(), name
    for name in ("W_Q", "_W_K", "_W_V"):
        weight = getattr(block.attn, name)
        read = einops.rearrange(weight, "head d_model d_head -> (head d_head) d_model")
        assert read.data_ptr() == weight.data_ptr() and read.is_contiguous(), name
    read = einops.rearrange(block.attn.W_O, "head d_head d_model -> d_model (head d_head)")
    assert read.data_ptr() == block.attn.W_O.data_ptr() and read.is_contiguous()

    as_loaded_by_transformer_lens = copy.deepcopy(smol)
    for p in as_loaded_by_transformer_lens.model.parameters():
        p.data = p.data.contiguous()
    assert not as_loaded_by_transformer_lens.model.blocks[0].mlp.W_gate.T.is_contiguous()
    ids, _ = smol.encode("The Eiffel Tower is in Paris, and def main(): pass")
    tokens = torch.tensor([ids, ids[::-1]])
    layers = [0, 7, 29]
    ours = smol.mlp_activations(tokens, layers)
    theirs = as_loaded_by_transformer_lens.mlp_activations(tokens, layers)
    assert all(torch.equal(ours[layer], theirs[layer]) for layer in layers)


def test_token_texts_are_decoded_once_per_model(tiny: SubjectModel) -> None:
    """A harvest's final write shows ~1.4M tokens; each distinct id goes through the tokenizer once
    per model, and the text is what decoding it alone gives."""

    class CountingTokenizer:
        def __init__(self, inner: object) -> None:
            self.inner, self.calls = inner, 0

        def decode(self, ids: list[int]) -> str:
            self.calls += 1
            return self.inner.decode(ids)  # type: ignore[attr-defined]

    counting = CountingTokenizer(tiny.tokenizer)
    model = SubjectModel(tiny.name, tiny.model, counting, tiny.provenance)
    ids = tiny.tokenizer.encode("the cat sat on the mat, the end")
    assert len(set(ids)) < len(ids)
    assert model.str_tokens(ids) == [tiny.tokenizer.decode([i]) for i in ids]
    assert model.str_tokens(torch.tensor(ids)) == model.str_tokens(ids)
    assert counting.calls == len(set(ids))


def test_a_corpus_file_read_as_a_stream_is_exactly_a_whole_read(tmp_path: Path) -> None:
    """Pieces of a few bytes, cut inside characters, a byte-order mark and \r\n pairs: the same
    text, newlines and error position as ``read_text(encoding="utf-8-sig")``."""
    cases = [
        "\ufeffa\r\nb\rc\n\U0001d518 caf\u00e9\r".encode(),
        b"\r\n\r\r\n\n" * 5,
        "\ufeffab".encode() + b"\xff" + b"cd",
        "\u20ac\u20ac".encode() + b"\xe2\x82" + b"x",
        b"",
    ]
    for data in cases:
        path = tmp_path / "f.txt"
        path.write_bytes(data)
        try:
            want: object = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            want = f"(byte {exc.start} cannot be decoded)"
        for piece in (1, 2, 3, 7, READ_BYTES):
            try:
                got: object = read_text_stream(path, None, piece)
            except UserError as exc:
                got = str(exc)[str(exc).index("(byte") :]
            assert got == (want + "." if "(byte" in str(want) else (want, False))
            if isinstance(want, str) and "(byte" not in want:
                for limit in (1, 5):
                    assert read_text_stream(path, limit, piece) == (
                        want[:limit],
                        len(want) > limit,
                    )


def test_jsonl_strings_may_hold_raw_line_and_paragraph_separators(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are valid raw inside a JSON string; only \\n ends a JSONL line."""
    text = "one\u2028two\u2029three\x85four"
    lines = tmp_path / "seps.jsonl"
    lines.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [d.text for d in load_documents(str(lines), 0)] == [text]


#: Loads a corpus in a process that may use at most this much memory (address space), so that a
#: reader that reads without end fails fast with MemoryError instead of filling the machine.
SMALL_PROCESS_BYTES = 1 << 30

_LOAD_SCRIPT = """
import resource, sys, threading, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from autointerp.corpus import load_documents

spec, budget, endless = sys.argv[1], sys.argv[2], sys.argv[3] == "1"


def write_forever():  # an endless source behind a named pipe
    chunk = ("endless words " * 4096).encode()
    try:
        with open(spec, "wb") as f:
            while True:
                f.write(chunk)
    except OSError:
        pass  # the reader closed the pipe


if endless:
    threading.Thread(target=write_forever, daemon=True).start()
tracemalloc.start()
docs = load_documents(spec, 0, max_tokens=int(budget) if budget else None)
peak = tracemalloc.get_traced_memory()[1]  # ru_maxrss would count the forked parent's pages
print(len(docs), sum(len(d.text) for d in docs), peak)
"""


def _load_in_a_small_process(
    spec: Path, budget: int | None, endless: bool = False
) -> subprocess.CompletedProcess[str]:
    """``load_documents`` in a child process capped at :data:`SMALL_PROCESS_BYTES` and 60 s."""
    script = _LOAD_SCRIPT.format(limit=SMALL_PROCESS_BYTES)
    return subprocess.run(
        [sys.executable, "-c", script, str(spec), str(budget or ""), "1" if endless else "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_a_corpus_behind_a_link_to_a_device_is_refused_before_reading(tmp_path: Path) -> None:
    link = tmp_path / "corpus.txt"
    link.symlink_to("/dev/zero")  # read whole, it would fill the memory
    for budget in (1000, None):
        proc = _load_in_a_small_process(link, budget)
        assert proc.returncode == 1 and "MemoryError" not in proc.stderr, proc.stderr[-500:]
        assert "UserError: The corpus" in proc.stderr and "is a device (/dev/zero)" in proc.stderr


def test_an_endless_pipe_is_read_only_as_far_as_the_token_budget(tmp_path: Path) -> None:
    """A named pipe whose writer never stops: the corpus is read as a stream up to the budget's
    characters, in bounded memory; without a budget it is refused, as it may never end."""
    fifo = tmp_path / "endless.txt"
    os.mkfifo(fifo)
    proc = _load_in_a_small_process(fifo, 1000, endless=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    documents, characters, peak = map(int, proc.stdout.split())
    assert documents == 1 and characters == read_limit(1000) == MIN_READ_CHARS
    assert peak < 3 * MIN_READ_CHARS, peak  # the text and its pieces, nothing more
    proc = _load_in_a_small_process(fifo, None)
    assert proc.returncode == 1 and "which may never end; give --tokens" in proc.stderr, proc.stderr
