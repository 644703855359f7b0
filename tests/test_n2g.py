"""N2G: hand-built neurons with known rules test each stage exactly; the real model tests that
graphs predict."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from helpers import as_older_database, run_cli

from autointerp.models import SubjectModel
from autointerp.n2g.build import Example, N2GConfig, build_graphs, evaluate, token_metrics
from autointerp.n2g.graph import NeuronGraph, PathExample, same_graph
from autointerp.store import Store

WORDS = [
    "<bos>",
    "<pad>",
    "the",
    "big",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "slow",
    "fast",
    "cat",
    "wolf",
    "red",
    "a",
    "and",
    "runs",
]
ID = {w: i for i, w in enumerate(WORDS)}


class RuleSubject:
    """A hand-written 'layer' with two neurons whose rules we know exactly.

    neuron 0: 1.0 at "fox" when "quick" is exactly two tokens earlier; 0.2 at any other "fox".
    neuron 1: 0.8 at "dog" whatever comes before.
    neuron 2: 1.0 at "runs" from the third token on, else 0.
    neuron 3: 0.8 at "dog", 0.7 at "wolf".
    Substitutes come from a fixed table (stand-ins for embedding neighbours).
    """

    bos_id = ID["<bos>"]
    pad_id = ID["<pad>"]
    table = {"fox": ["cat", "wolf"], "quick": ["slow", "fast"], "dog": ["cat"], "brown": ["red"]}

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        out = torch.zeros(b, t, 4)
        for i in range(b):
            for j in range(t):
                if tokens[i, j] == ID["fox"]:
                    out[i, j, 0] = 1.0 if j >= 2 and tokens[i, j - 2] == ID["quick"] else 0.2
                if tokens[i, j] == ID["dog"]:
                    out[i, j, 1] = 0.8
                if tokens[i, j] == ID["runs"]:  # by position: no context token is important, so
                    out[i, j, 2] = 1.0 if j >= 3 else 0.0  # " runs" alone is the path
                if tokens[i, j] in (ID["dog"], ID["wolf"]):  # " wolf" is never in its top examples
                    out[i, j, 3] = 0.8 if tokens[i, j] == ID["dog"] else 0.7
        return out

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        return [" " + WORDS[i] for i in ids]

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        return [ID[w] for w in self.table.get(WORDS[token], [])][:k]


def example(subject: RuleSubject, words: str, neuron: int) -> Example:
    ids = [ID["<bos>"]] + [ID[w] for w in words.split()]
    acts = subject.activations(torch.tensor([ids]))[0, :, neuron].tolist()
    return Example(ids, subject.str_tokens(ids), acts)


def paths(graph: NeuronGraph) -> set[tuple[tuple[str, ...], float]]:
    """Every root-to-end path as (tokens from the activating one backwards, activation)."""
    out = set()

    def walk(node, prefix):  # type: ignore[no-untyped-def]
        here = prefix + ("*" if node.token.startswith("\u0000") else node.token,)
        if node.is_end:
            out.add((here, round(node.activation, 4)))
        for child in node.children.values():
            walk(child, here)

    for root in graph.roots.values():
        walk(root, ())
    return out


def test_prune_saliency_and_augmentation_recover_the_rule() -> None:
    s = RuleSubject()
    ex = example(s, "the big quick brown fox jumps over the lazy dog", 0)
    graph = build_graphs(s, {0: [ex]}, {0: 1.0}, N2GConfig(augmentations=2))[0]
    found = paths(graph)
    # pruning kept exactly "quick brown fox"; saliency made "brown" a wildcard and "quick" concrete
    assert (("fox", "*", "quick"), 1.0) in found
    # augmentation: other words in quick's place only give the plain-fox activation; other animals
    # give nothing
    assert (("fox", "*", "slow"), 0.2) in found and (("fox", "*", "fast"), 0.2) in found
    assert (("cat", "*", "quick"), 0.0) in found and (("wolf", "*", "quick"), 0.0) in found
    assert not any("big" in p or "the" in p for p, _ in found)


class LengthSubject(RuleSubject):
    """Neuron 0 reads only how many tokens follow BOS (the table), whatever they are; every
    sequence it is asked about is kept."""

    table = {1: 0.2, 2: 0.3, 3: 0.6, 4: 0.1, 6: 0.7, 8: 0.7, 10: 1.0}

    def __init__(self) -> None:
        self.seen: list[int] = []

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seen.extend([tokens.shape[1]] * tokens.shape[0])
        acts = torch.tensor([self.table.get(j, 0.0) for j in range(tokens.shape[1])])
        return acts[None, :, None].expand(tokens.shape[0], -1, 1).clone()

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        return []


def test_pruning_keeps_the_shortest_context_and_never_runs_a_longer_one() -> None:
    s = LengthSubject()
    ex = example(s, "the big quick brown fox jumps over the lazy dog", 0)  # 1.0 at " dog"
    s.seen.clear()
    build_graphs(s, {0: [ex]}, {0: 1.0}, N2GConfig(naive=True))
    # 1 and 2 tokens keep too little (0.2, 0.3 < 0.5 x 1.0); 3 keep 0.6; 4 would lose it again.
    # Saliency then varies each of the 3 kept tokens: 3 sequences of BOS + 3 tokens.
    assert sorted(s.seen) == [2, 3, 4, 4, 4, 4]


def test_trie_predicts_training_strings_exactly_and_zero_on_unrelated_text() -> None:
    s = RuleSubject()
    train = [example(s, "a quick red fox runs", 0), example(s, "the quick brown fox jumps", 0)]
    graph = build_graphs(s, {0: train}, {0: 1.0}, N2GConfig(augmentations=0))[0]
    for ex in train:
        pred = graph.predict(ex.str_tokens[1:])
        assert pred == pytest.approx(ex.activations[1:])
    assert graph.predict([" the", " lazy", " dog", " jumps", " over", " a", " cat"]) == [0.0] * 7
    # wildcard matching: any token between quick and fox
    assert graph.predict([" quick", " lazy", " fox"])[2] == pytest.approx(1.0)
    # case and leading space are normalised away by default
    assert graph.predict(["Quick", " LAZY", "Fox"])[2] == pytest.approx(1.0)


def test_all_path_matching_beats_greedy_where_they_differ() -> None:
    graph = NeuronGraph()
    graph.add_path(PathExample((" fox", " quick", " lazy"), (1.0, 0.9, 0.9), 1.0))
    graph.add_path(PathExample((" fox", None, " big"), (1.0, 0.1, 0.8), 0.7))
    text = [" big", " quick", " fox"]
    # greedy follows the concrete " quick" child, which has no end and no " big" child: it predicts
    # 0
    assert graph.predict_greedy(text)[2] == 0.0
    # all-path matching also tries the wildcard branch and reaches the 0.7 end
    assert graph.predict(text)[2] == pytest.approx(0.7)
    truth = np.array([0.0, 0.0, 0.7])
    assert token_metrics(np.array(graph.predict(text)), truth, 0.5)["f1"] == 1.0
    assert token_metrics(np.array(graph.predict_greedy(text)), truth, 0.5)["f1"] == 0.0


def test_evaluation_counts_false_positives_on_random_text() -> None:
    s = RuleSubject()
    graph = build_graphs(
        s, {1: [example(s, "the lazy dog", 1)]}, {1: 0.8}, N2GConfig(augmentations=1)
    )[1]
    top_only = evaluate(graph, [example(s, "a big dog", 1)], 0.8, 0.5)
    assert top_only["precision"] == 1.0 and top_only["recall"] == 1.0
    # random text with "cat": the graph learned cat -> 0 from augmentation, so no false positive
    # appears
    mixed = evaluate(
        graph,
        [example(s, "a big dog", 1), example(s, "the cat runs and the fox runs", 1)],
        0.8,
        0.5,
    )
    assert mixed["precision"] == 1.0 and mixed["n_records"] == 2
    assert mixed["correlation"] == pytest.approx(1.0)


def test_batched_and_naive_building_give_identical_graphs() -> None:
    s = RuleSubject()
    exs = {
        0: [example(s, "the big quick brown fox jumps", 0), example(s, "quick red fox", 0)],
        1: [example(s, "over the lazy dog", 1)],
    }
    batched = build_graphs(s, exs, {0: 1.0, 1: 0.8}, N2GConfig(batch_tokens=64))
    naive = build_graphs(s, exs, {0: 1.0, 1: 0.8}, N2GConfig(naive=True))
    assert {n: g.to_json() for n, g in batched.items()} == {
        n: g.to_json() for n, g in naive.items()
    }


class LateFoxSubject(RuleSubject):
    """Neuron 0 is 1.0 at "fox" from the 20th token on, so every pruned context is long (a build
    has many tokens to run); it notes the shape of every batch."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        self.shapes.append((tokens.shape[0], tokens.shape[1]))
        late = torch.arange(tokens.shape[1]) >= 20
        return ((tokens == ID["fox"]) & late).float()[:, :, None]

    def substitutes(self, token: int, k: int, norm: Callable[[str], str]) -> list[int]:
        return []


def test_on_a_cpu_forward_passes_hold_at_most_1024_padded_tokens_unless_asked() -> None:
    s = LateFoxSubject()
    rng = np.random.default_rng(0)
    filler = ["the", "big", "brown", "jumps", "over", "lazy", "red", "a", "and"]
    # distinct contexts (identical sequences would run once)
    exs = {0: [example(s, " ".join([*rng.choice(filler, 22), "fox"]), 0) for _ in range(20)]}
    s.shapes.clear()
    build_graphs(s, exs, {0: 1.0}, N2GConfig())
    assert sum(b * t for b, t in s.shapes) > 4 * 1024  # several batches' worth
    assert max(b * t for b, t in s.shapes) <= 1024
    s.shapes.clear()
    build_graphs(s, exs, {0: 1.0}, N2GConfig(batch_tokens=4096))
    assert max(b * t for b, t in s.shapes) > 1024


def test_calibration_quiets_paths_that_fire_where_the_neuron_does_not() -> None:
    s = RuleSubject()
    top = {2: [example(s, "the big dog runs", 2)]}
    # training random text: " runs" early in a context (quiet), and once late (firing)
    extra = {
        2: [
            example(s, "runs runs and the cat", 2),
            example(s, "runs and a dog", 2),
            example(s, "a dog runs", 2),
        ]
    }
    plain = build_graphs(s, top, {2: 1.0}, N2GConfig(extra_kinds=(), calibrate=False))[2]
    calibrated = build_graphs(s, top, {2: 1.0}, N2GConfig(), extra)[2]
    text = [" runs", " and", " the", " fox", " runs"]  # the neuron: 0 at the first, 1 at the last
    assert plain.predict(text)[0] == 1.0  # top examples alone: " runs" always fires
    # " runs" was built from 2 firing tokens (1.0) and matched 3 quiet ones in training text: 2/5
    assert calibrated.predict(text)[0] == pytest.approx(0.4)
    assert paths(calibrated) == {((" runs".strip(),), 0.4)}
    # a path whose every match fires keeps its value
    dog = build_graphs(
        s,
        {1: [example(s, "the lazy dog", 1)]},
        {1: 0.8},
        N2GConfig(),
        {1: [example(s, "a dog and the cat", 1)]},
    )[1]
    assert dog.predict([" dog"]) == [pytest.approx(1.0)]


def test_firing_tokens_of_random_examples_become_paths() -> None:
    s = RuleSubject()
    top = {3: [example(s, "the lazy dog", 3)]}
    extra = {3: [example(s, "a wolf runs", 3), example(s, "the cat runs", 3)]}
    plain = build_graphs(s, top, {3: 0.8}, N2GConfig(extra_kinds=(), calibrate=False))[3]
    both = build_graphs(s, top, {3: 0.8}, N2GConfig(), extra)[3]
    assert plain.predict([" a", " wolf"])[1] == 0.0
    assert both.predict([" a", " wolf"])[1] == pytest.approx(0.7 / 0.8)
    assert both.predict([" the", " cat"]) == [0.0, 0.0]


def test_version_and_recipe_change_the_config_hash() -> None:
    assert N2GConfig().config_hash() != N2GConfig(extra_kinds=(), calibrate=False).config_hash()
    # how it runs, not what it builds
    assert N2GConfig().config_hash() == N2GConfig(batch_tokens=64, naive=True).config_hash()
    assert N2GConfig().identity()["n2g_version"] == 2


def test_an_older_database_gets_the_per_kind_score_columns_when_opened(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    Store(db)
    # as a database written before the columns existed
    as_older_database(
        db, {"graphs": ["f1_top", "correlation_top", "f1_random", "correlation_random"]}
    )
    with sqlite3.connect(db) as conn:
        assert "f1_top" not in {row[1] for row in conn.execute("pragma table_info(graphs)")}
    columns = Store(db, create=False).db["graphs"].columns_dict  # opening adds them back
    assert {"f1_top", "correlation_top", "f1_random", "correlation_random"} <= set(columns)


def _tiny_rotary(tiny_gated):  # type: ignore[no-untyped-def]
    """A random 3-layer rotary, grouped-query model (the packaged models' kind of attention) on
    SmolLM2's tokens."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from autointerp.models import SubjectModel

    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=24,
        n_ctx=64,
        d_vocab=tiny_gated.model.cfg.d_vocab,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        seed=1,
    )
    model = HookedTransformer(cfg, tiny_gated.tokenizer, move_to_device=False)
    model.eval()
    return SubjectModel("tiny-rotary", model, tiny_gated.tokenizer, {"model": "tiny-rotary"})


@pytest.mark.parametrize("kind", ["absolute", "rotary"])
def test_prefix_reuse_reads_what_full_forward_passes_read(  # type: ignore[no-untyped-def]
    tiny_gated, kind: str
) -> None:
    from autointerp.n2g.readouts import ModelLayerSubject, Readout, run_readouts

    model = tiny_gated if kind == "absolute" else _tiny_rotary(tiny_gated)
    subject = ModelLayerSubject(model, 1)
    rng = np.random.default_rng(0)
    readouts = []
    for _ in range(12):
        base = [subject.bos_id, *rng.integers(100, 5000, size=int(rng.integers(2, 12))).tolist()]
        for _ in range(5):
            at = int(rng.integers(1, len(base)))  # changed: to the pad token (saliency) or another
            variant = list(base)
            variant[at] = subject.pad_id if rng.random() < 0.5 else int(rng.integers(100, 5000))
            neuron = int(rng.integers(0, model.d_mlp))
            readouts.append(Readout(variant, neuron, base=tuple(base), shared=at))
        readouts.append(Readout(list(base), 3))  # and plain ones, some twice
        readouts.append(Readout(list(base), 5))
    naive = run_readouts(subject, readouts, naive=True)
    reused = run_readouts(subject, readouts, batch_tokens=64)
    assert np.abs(naive).max() > 0.01
    np.testing.assert_allclose(reused, naive, rtol=1e-4, atol=1e-5)


def test_json_and_graphml_round_trip(tmp_path: Path) -> None:
    from autointerp.n2g.export import to_networkx, write_graphml

    s = RuleSubject()
    graph = build_graphs(s, {0: [example(s, "the quick brown fox", 0)]}, {0: 1.0}, N2GConfig())[0]
    data = graph.to_json()
    again = NeuronGraph.from_json(json.loads(json.dumps(data)))
    assert again.to_json() == data
    text = [" a", " quick", " red", " fox", " fox"]
    assert again.predict(text) == graph.predict(text)

    g = to_networkx(data, {"model": "rule", "layer": 0, "neuron": 0})
    write_graphml(g, tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert back.graph["model"] == "rule"
    assert set(back.nodes) == set(g.nodes) and set(back.edges) == set(g.edges)
    for n, attrs in g.nodes(data=True):
        assert back.nodes[n] == attrs
    assert {a["kind"] for _, a in back.nodes(data=True)} == {
        "activating",
        "substitute",  # an augmentation variant on which the rule neuron stays quiet
        "context",
        "wildcard",
        "end",
    }
    for _, a in back.nodes(data=True):
        if a["kind"] in ("activating", "substitute"):
            assert (a["activation"] >= 0.1) == (a["kind"] == "activating")
    assert isinstance(back.nodes["n0"]["depth"], int) and isinstance(
        back.nodes["n0"]["activation"], float
    )


def test_the_picture_reads_left_to_right_into_the_activating_token_with_legible_labels(
    tmp_path: Path,
) -> None:
    """The SVG of a graph with a real rule, a long token, a CJK token, a newline and a right-to-left
    override: every label fits its box at 13 px, each token sits left of the token after it
    (context columns lead into the activating one, rightmost), nothing the font lacks is drawn
    (escapes instead), the whole token is in the tooltip, and the same graph gives the same
    bytes."""
    import xml.etree.ElementTree as ET

    from autointerp.n2g.export import to_networkx, write_svg
    from autointerp.n2g.picture import CHAR_W, FONT_SIZE, MAX_LABEL

    s = RuleSubject()
    graph = build_graphs(s, {0: [example(s, "the quick brown fox", 0)]}, {0: 1.0}, N2GConfig())[0]
    long = "supercalifragilisticexpialidocious"
    graph.add_path(PathExample(("中国", "\n", long), (1.0, 0.9, 0.8), 0.9))
    graph.add_path(PathExample(("\u202eevil",), (1.0,), 0.5))
    g = to_networkx(graph.to_json(), {"model": "rule", "layer": 0, "neuron": 0})
    write_svg(g, tmp_path / "a.svg", "rule 0/0")
    write_svg(g, tmp_path / "b.svg", "rule 0/0")
    text = (tmp_path / "a.svg").read_text()
    assert text == (tmp_path / "b.svg").read_text()
    root = ET.fromstring(text)  # well-formed
    assert FONT_SIZE >= 12 and root.get("font-size") == str(FONT_SIZE)
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {}
    for group in root.iter(f"{ns}g"):
        if group.get("id") is None:
            continue
        rect, label = group.find(f"{ns}rect"), group.find(f"{ns}text")
        x, w = float(rect.get("x")), float(rect.get("width"))
        assert w >= len(label.text) * CHAR_W, (label.text, w)  # the label fits its box
        boxes[group.get("id")] = (x, x + w, label.text, group.find(f"{ns}title").text)
    assert set(boxes) == set(g.nodes)
    for parent, child in g.edges:  # an edge goes from a token to the one before it in the text
        assert boxes[child][1] < boxes[parent][0], (boxes[child], boxes[parent])
    rightmost = max(right for _, right, _, _ in boxes.values())
    roots = [n for n in g if g.in_degree(n) == 0]
    assert roots and all(abs(boxes[n][1] - rightmost) < 0.2 for n in roots)
    labels = {label for _, _, label, _ in boxes.values()}
    assert "\\u4e2d\\u56fd" in labels and "中" not in text  # no empty glyph boxes
    assert "\\n" in labels and "\u202e" not in text and "\\u202eevil" in labels
    cut = long[: MAX_LABEL - 1] + "…"
    assert cut in labels and any(long in tip for _, _, _, tip in boxes.values())
    assert {"fox", "quick", "*"} <= {label.strip() for label in labels}


# ------------------------------------------------------------------------------------------------
# real model


@pytest.mark.slow
def test_real_graph_for_a_single_token_neuron_predicts_held_out_text(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    proc = run_cli(
        "harvest",
        "--model",
        "smollm2-135m",
        "--layers",
        "1",
        "--tokens",
        "24576",
        "--no-progress",
        "--db",
        str(db),
    )
    assert proc.returncode == 0, proc.stderr
    store = Store(db)
    run_id = store.runs()[0]["id"]
    # a neuron with a clear single-token pattern: most of its top training examples peak on the same
    # token
    best, best_share = None, 0.0
    for row in store.db.query(
        "select neuron from neurons where run_id = ? order by max desc limit 300", [run_id]
    ):
        n = row["neuron"]
        peaks = [
            e["str_tokens"][e["peak_index"]].strip().lower()
            for e in store.examples(run_id, 1, n, kinds=["top"], split="train")
        ]
        share = Counter(peaks).most_common(1)[0][1] / len(peaks)
        if share > best_share:
            best, best_share = n, share
    assert best is not None and best_share >= 0.8

    proc = run_cli(
        "graph",
        "smollm2-135m",
        "--layers",
        "1",
        "--neurons",
        str(best),
        "--db",
        str(db),
        "--json",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["built"] == 1
    row = store.graph("smollm2-135m", 1, best)
    assert row["correlation"] > 0.3, row  # measured on held-out top + random examples
    assert row["n_tokens"] > 0 and row["recall"] is not None

    ranked = json.loads(
        run_cli("rank", "smollm2-135m", "--by", "n2g", "--db", str(db), "--json").stdout
    )
    assert [(r["layer"], r["neuron"]) for r in ranked] == [(1, best)]
    assert ranked[0]["score"] == pytest.approx(row["correlation"])

    # rerunning skips what is done; export writes GraphML + SVG that networkx reads back
    again = json.loads(
        run_cli(
            "graph",
            "smollm2-135m",
            "--layers",
            "1",
            "--neurons",
            str(best),
            "--db",
            str(db),
            "--json",
            "--no-progress",
        ).stdout
    )
    assert again[0]["built"] == 0 and again[0]["already_done"] == 1
    out = tmp_path / "g" / "n.graphml"
    out.parent.mkdir()  # export creates folders only inside the working directory
    proc = run_cli(
        "export", "graphml", "smollm2-135m", f"1/{best}", "--db", str(db), "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    g = nx.read_graphml(out)
    assert any(a["kind"] == "activating" for _, a in g.nodes(data=True))
    assert out.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    bad = run_cli(
        "export", "graphml", "smollm2-135m", f"1/{best}", "--db", str(db), "-o", "../x.graphml"
    )
    assert bad.returncode == 2 and "'..'" in bad.stderr


@pytest.mark.slow
def test_real_model_batched_and_naive_graphs_are_the_same(smol, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from autointerp.harvest import HarvestConfig, harvest
    from autointerp.n2g.readouts import ModelLayerSubject
    from autointerp.n2g.run import load_examples

    db = tmp_path / "h.db"
    harvest(
        smol,
        db,
        HarvestConfig(model=smol.name, layers=[2], n_tokens=2048),
        progress=False,
        log=lambda m: None,
    )
    store = Store(db)
    run_id = store.runs()[0]["id"]
    exs = {n: load_examples(store, run_id, 2, n, "train", ("top",))[:4] for n in (5, 6)}
    # the quantile examples have firing tokens the top ones lack: built and calibrated on too
    extra = {
        n: load_examples(store, run_id, 2, n, "train", ("quantile", "random"))[:3] for n in (5, 6)
    }
    maxima = {n: store.neuron(run_id, 2, n)["max"] for n in exs}
    subject = ModelLayerSubject(smol, 2)
    batched = build_graphs(subject, exs, maxima, N2GConfig(), extra)
    reused = build_graphs(subject, exs, maxima, N2GConfig(reuse_prefix=True), extra)
    naive = build_graphs(subject, exs, maxima, N2GConfig(naive=True), extra)
    for n in exs:
        assert len(batched[n].to_json()["nodes"]) > 3
        assert same_graph(batched[n].to_json(), naive[n].to_json())
        assert same_graph(reused[n].to_json(), naive[n].to_json())  # variants from their change on


def test_zero_augmentations_means_no_substitutes(tiny: SubjectModel) -> None:
    """`graph --augmentations 0` turns augmentation off: the embedding-neighbour picker returns
    nothing for k = 0 (it used to check the count only after its first pick and return up to 8
    neighbours), and exactly k for k > 0."""
    from autointerp.n2g.readouts import ModelLayerSubject

    subject = ModelLayerSubject(tiny, 0)
    token = tiny.tokenizer.encode(" fox", add_special_tokens=False)[0]
    assert subject.substitutes(token, 0, str.lower) == []
    assert len(subject.substitutes(token, 3, str.lower)) == 3
    assert subject.substitutes(token, 0, str.lower) == []  # not a cached k = 3 answer


def test_substitutes_computed_in_blocks_are_the_one_token_answers(tiny: SubjectModel) -> None:
    """A build scores all its tokens against the vocabulary in a few matrix products; each token
    gets the neighbours it gets alone (a block that spans several matrix products too)."""
    from autointerp.n2g.readouts import ModelLayerSubject

    tokens = list(range(200, 200 + 2 * ModelLayerSubject.SUBSTITUTE_BLOCK + 7))
    alone = {}
    for t in tokens:
        subject = ModelLayerSubject(tiny, 0)  # nothing cached: one token, one product
        alone[t] = subject.substitutes(t, 4, str.lower)
    together = ModelLayerSubject(tiny, 0)
    together.prefetch_substitutes(tokens, 4, str.lower)
    assert {t: together.substitutes(t, 4, str.lower) for t in tokens} == alone
    assert sum(len(v) == 4 for v in alone.values()) > len(tokens) // 2
