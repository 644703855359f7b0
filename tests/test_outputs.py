"""What `make explain` leaves behind, checked on a real (tiny-model) database: default layers for
any depth, bulk GraphML/DOT export that other tools read back with the right types, the report, and
rank's default order."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch
from apidb import EXPLAINED, GRAPHED, build_api_db
from helpers import PARAGRAPHS

from autointerp.cli import main
from autointerp.errors import UserError
from autointerp.harvest import HarvestConfig, harvest
from autointerp.models import SubjectModel
from autointerp.ranges import default_layers, resolve_layers
from autointerp.store import Store

M = "tiny-gated"


@pytest.fixture(scope="module")
def api_db(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_api_db(tiny_gated, tmp_path_factory.mktemp("outputs"))


# ------------------------------------------------------------------------------------------------
# default layers
@pytest.mark.parametrize(
    ("n_layers", "expected"),
    [(1, [0]), (6, [1, 3, 5]), (12, [2, 6, 10]), (18, [3, 9, 15]), (30, [5, 15, 25])],
)
def test_default_layers_follow_the_depth_of_a_real_config(
    n_layers: int, expected: list[int]
) -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=8,
        n_ctx=16,
        d_vocab=50,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model = SubjectModel(
        f"depth-{n_layers}", HookedTransformer(cfg, move_to_device=False), None, {}
    )
    layers = resolve_layers("auto", model.n_layers)
    assert layers == expected
    model.check_layers(
        layers
    )  # in range, so a harvest of them can run: one forward pass reads them all
    acts = model.mlp_activations(torch.zeros((1, 4), dtype=torch.long), layers)
    assert sorted(acts) == expected and all(a.shape == (1, 4, 8) for a in acts.values())
    with pytest.raises(
        UserError, match=f"Layer {n_layers} is out of range: depth-{n_layers} has layers 0-"
    ):
        model.check_layers([n_layers])


def test_default_layers_small_depths_are_distinct_and_sorted() -> None:
    for n in range(1, 100):
        layers = default_layers(n)
        assert layers == sorted(set(layers)) and all(0 <= x < n for x in layers)
        assert len(layers) == min(n, 3)
    assert resolve_layers("2-4", 30) == [2, 3, 4] and resolve_layers(None, 30) is None


# --------------------------------------------------------------------------------------------
# export
def test_bulk_graphml_export_is_read_by_networkx_with_typed_attributes(
    api_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "graphs"
    assert (
        main(
            [
                "export",
                "graphml",
                M,
                "--all",
                "--full",
                "-o",
                str(out),
                "--db",
                str(api_db),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["graphs"] == len(GRAPHED) and report["without_graph"] == []
    assert sorted(p.name for p in out.glob("*.graphml")) == sorted(
        f"1_{n}.graphml" for n in GRAPHED
    )
    assert sorted(p.name for p in out.glob("*.svg")) == sorted(f"1_{n}.svg" for n in GRAPHED)
    store = Store(api_db, create=False)
    for n in GRAPHED:
        g = nx.read_graphml(out / f"1_{n}.graphml")
        stored = store.graph(M, 1, n)
        assert (g.graph["model"], g.graph["layer"], g.graph["neuron"]) == (M, 1, n)
        assert g.number_of_nodes() == len(stored["graph"]["nodes"])
        for _, attrs in g.nodes(data=True):
            assert isinstance(attrs["token"], str) and isinstance(attrs["kind"], str)
            assert isinstance(attrs["depth"], int) and isinstance(attrs["count"], int)
            for key in ("activation", "importance"):
                assert key not in attrs or isinstance(attrs[key], float)
    assert not list(out.glob("*.tmp"))


def test_bulk_export_of_chosen_neurons_says_which_have_no_graph(
    api_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dot"
    assert (
        main(
            [
                "export",
                "dot",
                M,
                "--layers",
                "1",
                "--neurons",
                "1-4",
                "-o",
                str(out),
                "--no-svg",
                "--db",
                str(api_db),
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["1_1.dot", "1_2.dot"]
    assert (
        "2 graphs of tiny-gated written" in text
        and "no graph yet for 2 chosen neuron(s): 1/3, 1/4" in text
    )


def test_single_neuron_export_still_writes_one_file(
    api_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "one.graphml"
    assert (
        main(["export", "graphml", M, f"1/{GRAPHED[0]}", "-o", str(target), "--db", str(api_db)])
        == 0
    )
    assert capsys.readouterr().out.split() == [str(target), str(target.with_suffix(".svg"))]
    assert nx.read_graphml(target).graph["neuron"] == GRAPHED[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1/0", "--all"], "either one neuron L/N or --layers/--neurons/--all"),
        (["--neurons", "0", "--all"], "--neurons or --all, not both"),
        (["-o", "x.graphml"], "-o is a folder"),
        (["--layers", "0"], "No N2G graphs of tiny-gated in layers 0"),
        (["-o", "../out"], "contains '..'"),
    ],
)
def test_bad_export_requests_are_one_sentence(
    api_db: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "graphml", M, *args, "--db", str(api_db), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err


def _hostile_graph() -> nx.DiGraph:
    from autointerp.n2g.export import to_networkx

    tokens = ['"', "\\", 'a\\"b', "\n", " \t", "{x} -> [y];", "\x00\x1b", "end\\", "日本", "\u0085"]
    nodes = [
        {
            "id": i,
            "token": t,
            "kind": "activating" if i == 0 else "context",
            "depth": i,
            "count": 1,
            "importance": None if i == 0 else 0.5 + i / 100,
            "activation": None,
        }
        for i, t in enumerate(tokens)
    ]
    nodes.append(
        {
            "id": len(tokens),
            "token": "",
            "kind": "end",
            "depth": len(tokens),
            "count": 2,
            "importance": None,
            "activation": 0.75,
        }
    )
    edges = [{"source": i, "target": i + 1} for i in range(len(tokens))]
    return to_networkx(
        {"nodes": nodes, "edges": edges}, {"model": 'we"ird\\model', "layer": 3, "neuron": 7}
    )


def test_dot_is_parsed_by_pydot_with_every_token_intact(tmp_path: Path) -> None:
    import pydot

    from autointerp.n2g.export import unescape_visible, write_dot

    g = _hostile_graph()
    write_dot(g, tmp_path / "g.dot")
    text = (tmp_path / "g.dot").read_text(encoding="utf-8")
    assert all(
        0x20 <= ord(c) or c == "\n" for c in text
    )  # no raw control characters: one line per statement
    (parsed,) = pydot.graph_from_dot_data(text)

    def value(
        raw: str,
    ) -> str:  # DOT quoted string -> the text: undo DOT's \" and doubled \\, then the escapes
        assert raw.startswith('"') and raw.endswith('"')
        inner, out, i = raw[1:-1], [], 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner) and inner[i + 1] in '"\\':
                out.append(inner[i + 1])
                i += 2
            else:
                out.append(inner[i])
                i += 1
        return unescape_visible("".join(out))

    nodes = {
        value(n.get_name()): n
        for n in parsed.get_nodes()
        if n.get_name().strip('"') not in ("node", "graph")
    }
    assert set(nodes) == set(g.nodes)
    for name, attrs in g.nodes(data=True):
        got = nodes[name].get_attributes()
        assert value(got["token"]) == attrs["token"]
        assert value(got["kind"]) == attrs["kind"] and int(value(got["depth"])) == attrs["depth"]
        if "importance" in attrs:
            assert float(value(got["importance"])) == attrs["importance"]
    edges = {(value(e.get_source()), value(e.get_destination())) for e in parsed.get_edges()}
    assert edges == set(g.edges)
    (graph_attrs,) = parsed.get_node("graph")  # the `graph [...]` statement
    assert value(graph_attrs.get_attributes()["model"]) == 'we"ird\\model'
    assert value(graph_attrs.get_attributes()["neuron"]) == "7"


# ----------------------------------------------------------------------------------------------
# report, rank
def test_report_puts_scores_side_by_side_with_similar_neurons(
    api_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", M, "--db", str(api_db), "--json", "--graphs", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["ranked_by"] == "explanation" and report["explained"] == 1 and report["failed"] == 1
    )
    (best,) = report["neurons"]
    assert (best["layer"], best["neuron"], best["score"], best["baseline_score"]) == (
        1,
        EXPLAINED,
        0.61,
        0.22,
    )
    assert report["beat_baseline"] == 1
    store = Store(api_db, create=False)
    assert best["similar"] == store.similar(M, 1, EXPLAINED, 3)
    assert main(["report", M, "--db", str(api_db), "--graphs", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "the word <b>capital</b> & cities" in text and "0.610" in text and "0.220" in text
    assert f"autointerp serve --db {api_db}" in text
    scored = [
        line.split()[0]
        for line in text.splitlines()
        if line.startswith(" ") and line.split()[0][0].isdigit()
    ]
    assert scored == [f"1/{EXPLAINED}"]  # a failed explanation is never listed as a score
    assert f"GraphML + SVG of 0 graphs in {tmp_path}/" in text


def test_the_reports_closing_commands_run_as_pasted(api_db: Path) -> None:
    """`make explain` runs .venv/bin/autointerp with the venv not activated: the commands the
    report ends with must name that script, and run from the same folder as printed; with the
    venv's bin on PATH, the bare name is enough."""
    import os
    import shlex
    import subprocess
    import sys

    from helpers import REPO

    script = Path(sys.prefix) / "bin" / "autointerp"
    assert script.exists(), "the test runs from the project's venv"
    bare_path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "autointerp").exists()
    )
    env = {**os.environ, "PATH": bare_path}
    out = subprocess.run(
        [str(script), "report", M, "--db", str(api_db)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=True,
    ).stdout
    look = next(line for line in out.splitlines() if line.startswith("Look at one:"))
    command = look.split(":", 1)[1].strip()
    assert command.startswith(f"{script.relative_to(REPO)} neuron {M} "), command
    ran = subprocess.run(
        shlex.split(command), capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert ran.returncode == 0 and f"{M}" in ran.stdout, ran.stderr
    browse = next(line for line in out.splitlines() if line.startswith("Browse:"))
    assert f"{script.relative_to(REPO)} serve --db {api_db}" in browse
    # activated (the venv's bin first on PATH): the bare name, which then runs
    activated = {**os.environ, "PATH": f"{script.parent}{os.pathsep}{bare_path}"}
    out = subprocess.run(
        [str(script), "report", M, "--db", str(api_db)],
        capture_output=True,
        text=True,
        env=activated,
        cwd=REPO,
        check=True,
    ).stdout
    assert f"Look at one:  autointerp neuron {M} " in out


def test_rank_defaults_to_explanation_score_once_there_is_one(
    api_db: Path, tiny_gated: SubjectModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rank", M, "--db", str(api_db), "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [(r["layer"], r["neuron"], r["ranked_by"]) for r in rows] == [
        (1, EXPLAINED, "explanation")
    ]
    assert "ranked by explanation" in captured.err

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": p}) for p in PARAGRAPHS))
    db = tmp_path / "bare.db"
    harvest(
        tiny_gated,
        db,
        HarvestConfig(
            model=M,
            corpus=str(corpus),
            layers=[0],
            ctx_len=16,
            top_k=4,
            random_k=2,
            checkpoint_seconds=1e9,
        ),
        progress=False,
        log=lambda m: None,
    )
    assert main(["rank", M, "--db", str(db), "--json", "--limit", "3"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["ranked_by"] for r in rows] == ["max"] * 3
    assert [r["max"] for r in rows] == sorted((r["max"] for r in rows), reverse=True)
    assert "ranked by max (no explanations yet" in captured.err


# ----------------------------------------------------------------------------------------------
# quiet, correct output
def test_runs_lists_what_each_stage_wrote(api_db: Path) -> None:
    from helpers import run_cli

    proc = run_cli("runs", "--db", str(api_db))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "None" not in proc.stdout
    harvest = next(line for line in lines if " harvest " in line)
    tokens = Store(api_db, create=False).runs(M)[0]["tokens_done"]
    assert "layers 0,1" in harvest and f"{tokens:,} tokens" in harvest and "corpus " in harvest
    n2g = next(line for line in lines if " n2g " in line)
    assert f"{len(GRAPHED)} graphs in layers 1" in n2g
    similarity = next(line for line in lines if " similarity " in line)
    assert f"{len(GRAPHED)} graphs," in similarity and "similar pairs stored (>= 0.1)" in similarity


def test_export_draws_tokens_the_font_lacks_as_escapes_and_warns_nothing(
    api_db: Path, tmp_path: Path
) -> None:
    """CJK, Devanagari and Tamil tokens (the corpus' Wikipedia has them) in a graph: the SVG shows
    them as \\u escapes, the GraphML keeps them, and the export prints no glyph warning."""
    import time

    from helpers import copy_store, run_cli

    from autointerp.n2g.graph import NeuronGraph, PathExample
    from autointerp.n2g.picture import drawable

    store = copy_store(api_db, tmp_path)
    g = NeuronGraph()
    g.add_path(PathExample(("中国", "लगभग", None), (1.0, 0.9, 0.1), 1.0))
    g.add_path(PathExample(("தமிழ்",), (1.0,), 0.8))
    run = store.latest_complete_run(M, 1)
    n2g = store.create_run(M, "n2g", {}, "hand", (0, 1), {})
    data = g.to_json()
    store.save_graphs(
        [
            {
                "run_id": run["id"],
                "layer": 1,
                "neuron": 20,
                "config_hash": "hand",
                "graph": json.dumps(data),
                "n_nodes": len(data["nodes"]),
                "n2g_run_id": n2g,
                "created": time.time(),
            }
        ]
    )
    out = tmp_path / "x.graphml"
    proc = run_cli("export", "graphml", M, "1/20", "-o", str(out), "--db", str(store.path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no "Glyph ... missing from font(s)"
    assert {a["token"] for _, a in nx.read_graphml(out).nodes(data=True)} >= {"中国", "लगभग"}
    assert drawable("中国 x") == "\\u4e2d\\u56fd x" and drawable("é, ∀") == "é, ∀"
    assert drawable("\U0002000b") == "\\U0002000b"


# ----------------------------------------------------------------------------------------------
# what a GraphML file holds
def test_graphml_kinds_say_which_roots_fire_and_which_stop_the_neuron(
    api_db: Path, tmp_path: Path
) -> None:
    """On the real graphs: a root is ``activating`` when its best path predicts >= 0.1 of the max,
    else ``substitute`` (an augmentation variant that stopped the neuron); every root is one of
    the two, as the stored graph says."""
    store = Store(api_db, create=False)
    out = tmp_path / "g"
    assert main(["export", "graphml", M, "--all", "-o", str(out), "--db", str(api_db),
                 "--no-svg", "--no-progress"]) == 0  # fmt: skip
    seen: dict[str, int] = {}
    for n in GRAPHED:
        stored = store.graph(M, 1, n)["graph"]
        g = nx.read_graphml(out / f"1_{n}.graphml")
        roots = {f"n{x['id']}" for x in stored["nodes"] if x["kind"] == "activating"}
        for node, attrs in g.nodes(data=True):
            seen[attrs["kind"]] = seen.get(attrs["kind"], 0) + 1
            if node in roots:
                ends = [g.nodes[d]["activation"] for d in nx.descendants(g, node)
                        if g.nodes[d]["kind"] == "end"]  # fmt: skip
                assert attrs["kind"] == ("activating" if max(ends) >= 0.1 else "substitute")
            else:
                assert attrs["kind"] in ("context", "wildcard", "end")
        paths = sum(1 for x in stored["nodes"] if x["kind"] == "end")
        assert g.graph["paths"] == paths and g.graph["paths_exported"] == min(paths, 64)
    assert seen.get("activating") and seen.get("substitute"), seen


def test_export_keeps_the_strongest_64_paths_unless_full(api_db: Path, tmp_path: Path) -> None:
    import time

    from helpers import copy_store

    from autointerp.n2g.graph import NeuronGraph, PathExample

    store = copy_store(api_db, tmp_path)
    g = NeuronGraph()
    for i in range(100):  # 100 paths, activations 0.01 .. 1.00
        g.add_path(PathExample((f"tok{i}", f"ctx{i}"), (1.0, 0.8), (i + 1) / 100))
    data = g.to_json()
    run = store.latest_complete_run(M, 1)
    n2g = store.create_run(M, "n2g", {}, "hand", (0, 1), {})
    store.save_graphs(
        [
            {
                "run_id": run["id"],
                "layer": 1,
                "neuron": 21,
                "config_hash": "hand",
                "graph": json.dumps(data),
                "n_nodes": len(data["nodes"]),
                "n2g_run_id": n2g,
                "created": time.time(),
            }
        ]
    )
    cut, full = tmp_path / "cut.graphml", tmp_path / "full.graphml"
    common = ["export", "graphml", M, "1/21", "--db", str(store.path), "--no-svg"]
    assert main([*common, "-o", str(cut)]) == 0 and main([*common, "-o", str(full), "--full"]) == 0
    kept, every = nx.read_graphml(cut), nx.read_graphml(full)
    ends = sorted(a["activation"] for _, a in kept.nodes(data=True) if a["kind"] == "end")
    assert len(ends) == 64 and ends[0] == pytest.approx(0.37)  # the 64 strongest: 0.37 .. 1.00
    assert (kept.graph["paths"], kept.graph["paths_exported"]) == (100, 64)
    assert (every.graph["paths"], every.graph["paths_exported"]) == (100, 100)
    assert every.number_of_nodes() == len(data["nodes"]) == 300
    assert kept.number_of_nodes() == 3 * 64
    # the tokens below 0.1 are substitutes, above it activating
    kinds = {a["token"]: a["kind"] for _, a in every.nodes(data=True) if a["depth"] == 0}
    assert kinds["tok8"] == "substitute" and kinds["tok9"] == "activating"  # 0.09 and 0.10


def test_rank_by_cos_in_out(api_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from autointerp.api import create_app

    assert main(["rank", M, "--by", "cos_in_out", "--db", str(api_db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["layer"], r["neuron"], r["score"]) for r in rows] == [(1, 0, 0.12)]
    assert main(["rank", M, "--by", "cos_in_out_negative", "--db", str(api_db)]) == 0
    text = capsys.readouterr().out
    assert "cos(in,out)" in text and "+0.120" in text
    items = TestClient(create_app(api_db)).get(f"/api/{M}/rank?by=cos_in_out").json()["items"]
    assert [(it["layer"], it["neuron"], it["cos_in_out"]) for it in items] == [(1, 0, 0.12)]
