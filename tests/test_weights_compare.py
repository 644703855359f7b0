"""Weight facts against a direct computation, and cross-model comparison aligned by character
offsets on the two real packaged tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from transformers import AutoTokenizer

from autointerp.compare import align_offsets, compare_neuron
from autointerp.errors import UserError
from autointerp.models import SubjectModel, load_model
from autointerp.packaged import packaged_model_dir
from autointerp.store import Store
from autointerp.weights import compute_weight_facts, store_weight_facts

TEXT = (
    "Tokenizers disagree: 1234567 unbelievably\n    indented code_snake_case naïve café 😀 end. "
    "Mitochondria produce ATP; the 2026 budget was $12,345.67."
)


# --------------------------------------------------------------------------------------------------
# weights
@pytest.mark.parametrize("fixture", ["tiny", "tiny_gated"])
@torch.no_grad()
def test_weight_facts_match_a_direct_computation(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(fixture)
    tl = model.model
    facts = compute_weight_facts(model, [1], top_k=5)
    assert [f["neuron"] for f in facts] == list(range(model.d_mlp))
    n = 7
    f = facts[n]
    w_in = tl.blocks[1].ln2.w * tl.blocks[1].mlp.W_in[:, n]
    w_out = tl.blocks[1].mlp.W_out[n]
    assert f["input_vector"] == "W_in"
    assert f["cos_in_out"] == pytest.approx(
        float(torch.cosine_similarity(w_in, w_out, dim=0)), abs=1e-5
    )
    if model.gated:
        w_gate = tl.blocks[1].ln2.w * tl.blocks[1].mlp.W_gate[:, n]
        assert f["cos_gate_out"] == pytest.approx(
            float(torch.cosine_similarity(w_gate, w_out, dim=0)), abs=1e-5
        )
    else:
        assert f["cos_gate_out"] is None
    logits = (w_out * tl.ln_final.w) @ tl.W_U
    logits = logits - logits.mean()
    assert [t["id"] for t in f["top_tokens"]] == logits.topk(5).indices.tolist()
    assert [t["id"] for t in f["bottom_tokens"]] == logits.topk(5, largest=False).indices.tolist()
    assert f["top_tokens"][0]["logit"] == pytest.approx(float(logits.max()), abs=1e-4)
    assert f["top_tokens"][0]["token"] == model.str_tokens([f["top_tokens"][0]["id"]])[0]


def test_weight_facts_are_stored_per_layer(tiny_gated: SubjectModel, tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    out = store_weight_facts(store, tiny_gated, [0, 1], top_k=3, progress=False)
    assert out["neurons"] == 2 * tiny_gated.d_mlp
    assert store.weight_layers(tiny_gated.name) == {0, 1}
    stored = store.weight_facts(tiny_gated.name, 1, 4)
    assert stored == {k: v for k, v in compute_weight_facts(tiny_gated, [1], top_k=3)[4].items()}
    assert store.weight_facts(tiny_gated.name, 1, 999) is None
    with pytest.raises(UserError, match="out of range"):
        store_weight_facts(store, tiny_gated, [9], progress=False)


@pytest.mark.slow
def test_weights_cli_on_the_real_model(tmp_path: Path) -> None:
    db = str(tmp_path / "w.db")
    res = run_cli(
        "weights",
        "smollm2-135m",
        "--layers",
        "2",
        "--top-k",
        "4",
        "--json",
        "--no-progress",
        "--db",
        db,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"model": "smollm2-135m", "layers": [2], "neurons": 1536}
    facts = Store(db).weight_facts("smollm2-135m", 2, 100)
    assert (
        facts["input_vector"] == "W_in"
        and -1 <= facts["cos_in_out"] <= 1
        and facts["cos_gate_out"] is not None
    )
    assert (
        len(facts["top_tokens"]) == 4
        and facts["top_tokens"][0]["logit"] > facts["bottom_tokens"][0]["logit"]
    )


# --------------------------------------------------------------------------------------------------
# alignment
def tokenizer_only(name: str) -> SubjectModel:
    """A packaged model's real tokenizer in a SubjectModel, so `encode` is the code the pipeline
    runs."""
    path = packaged_model_dir(name)
    if not (path / "provenance.json").exists():
        load_model(name, progress=False)  # converts it once
    return SubjectModel(name, None, AutoTokenizer.from_pretrained(str(path)), {})


@pytest.mark.slow
def test_character_offset_alignment_on_gemma_and_smollm2_tokenizers() -> None:
    gemma, smol = tokenizer_only("gemma-3-270m"), tokenizer_only("smollm2-135m")
    ids_g, off_g = gemma.encode(TEXT, max_tokens=512)
    ids_s, off_s = smol.encode(TEXT, max_tokens=512)
    # the two tokenizers really split this text differently, so index i is not the same text in both
    assert len(ids_g) != len(ids_s)
    assert any(a != b for a, b in zip(off_g, off_s, strict=False))
    pairs = align_offsets(off_g, off_s)
    assert (
        10 < len(pairs) < min(len(ids_g), len(ids_s)) - 1
    )  # some boundaries exist in only one tokenization
    ends = [e for _, _, e in pairs]
    assert ends == sorted(set(ends)) and ends[-1] == len(TEXT)
    for i, j, end in pairs:
        assert off_g[i][1] == off_s[j][1] == end
        # both models have read exactly the same text at the aligned tokens
        assert gemma.tokenizer.decode(ids_g[1 : i + 1]) == TEXT[:end]
        assert smol.tokenizer.decode(ids_s[1 : j + 1]) == TEXT[:end]
    by_end = {e: (i, j) for i, j, e in pairs}
    # "unbelievably": one Gemma token, three SmolLM2 tokens -> one aligned position, at the end of
    # the word
    word_end = TEXT.index("unbelievably") + len("unbelievably")
    i, j = by_end[word_end]
    assert TEXT[off_g[i][0] : off_g[i][1]].strip() == "unbelievably"
    assert TEXT[off_s[j][0] : off_s[j][1]] != " unbelievably"
    assert TEXT.index("unbelie") + len("unbelie") not in by_end


@pytest.mark.slow
def test_compare_finds_the_same_neuron_in_the_same_model(smol: SubjectModel) -> None:
    texts = ["The capital of France is Paris, and the capital of Italy is Rome.", TEXT]
    out = compare_neuron(smol, 3, 42, smol, texts, layers=[2, 3], limit=5)
    assert out["neurons"][0] == {
        "layer": 3,
        "neuron": 42,
        "correlation": pytest.approx(1.0, abs=1e-5),
    }
    assert [r["correlation"] for r in out["neurons"]] == sorted(
        (r["correlation"] for r in out["neurons"]), reverse=True
    )
    assert out["positions"] == sum(
        len(align_offsets(smol.encode(t)[1], smol.encode(t)[1])) for t in texts
    )
    with pytest.raises(UserError, match="non-empty text"):
        compare_neuron(smol, 3, 42, smol, ["  "])


@pytest.mark.slow
def test_compare_across_tokenizers_counts_only_common_boundaries(smol: SubjectModel) -> None:
    """Model B with Gemma's tokenizer (a small random model, so Gemma itself need not be loaded):
    the positions used are exactly the common character boundaries."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = tokenizer_only("gemma-3-270m").tokenizer
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=8,
        n_ctx=256,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    b = SubjectModel(
        "tiny-gemma-tokenizer", HookedTransformer(cfg, tok, move_to_device=False), tok, {}
    )
    out = compare_neuron(smol, 1, 5, b, [TEXT], limit=3)
    assert out["positions"] == len(align_offsets(smol.encode(TEXT)[1], b.encode(TEXT)[1]))
    assert out["positions"] < len(smol.encode(TEXT)[0]) - 1
    assert len(out["neurons"]) == 3 and all(-1 <= r["correlation"] <= 1 for r in out["neurons"])
