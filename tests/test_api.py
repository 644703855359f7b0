"""The JSON API and pages against a real database from a real harvest: every endpoint's shape and
every error case (404 says what exists, 422 for bad parameters, 413 for long texts), live
activations equal the model's, CORS, no assets from the internet, and `autointerp serve` as a user
starts it."""

from __future__ import annotations

import io
import json
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import networkx as nx
import numpy as np
import pytest
import torch
from apidb import EXPLAINED, FAILED, GRAPHED, WEIGHTS, build_api_db
from fastapi.testclient import TestClient
from helpers import REPO, free_port, rename_model, write_lock_held
from PIL import Image

from autointerp.api import create_app
from autointerp.errors import UserError
from autointerp.models import SubjectModel
from autointerp.store import Store

M = "tiny-gated"


@pytest.fixture(scope="module")
def api_db(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_api_db(tiny_gated, tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def client(api_db: Path, tiny_gated: SubjectModel) -> TestClient:
    def loader(name: str) -> SubjectModel:
        if name != tiny_gated.name:
            raise UserError(f"no weights for {name}")
        return tiny_gated

    return TestClient(create_app(api_db, loader=loader, max_chars=300))


def _get(client: TestClient, url: str, status: int = 200) -> Any:
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text[:500])
    return r.json()


def _not_found(client: TestClient, url: str, *needles: str) -> dict[str, Any]:
    body = _get(client, url, 404)
    assert isinstance(body["detail"], str)
    for needle in needles:
        assert needle in body["detail"], body
    return body


# ------------------------------------------------------------------------------------------------
# models and layers


def test_models_and_model_metadata(client: TestClient, api_db: Path) -> None:
    models = _get(client, "/api/models")["models"]
    assert [m["name"] for m in models] == [M]
    assert models[0]["harvested_layers"] == [0, 1] and models[0]["d_mlp"] == 24

    m = _get(client, f"/api/{M}")
    assert (m["n_layers"], m["d_mlp"], m["act_fn"], m["gated_mlp"]) == (2, 24, "silu", True)
    assert m["corpus"][0]["spec"].endswith("corpus.jsonl") and m["corpus"][0]["documents"] == 24
    by_layer = {row["layer"]: row for row in m["layers"]}
    assert (
        by_layer[1]["neurons"] == 24
        and by_layer[1]["graphs"] == len(GRAPHED)
        and by_layer[1]["explanations"] == 1
    )
    assert by_layer[0]["graphs"] == 0
    assert m["services"]["neuroscope"] and m["services"]["n2g"] and m["services"]["explanation"]
    assert set(m["services"]) == {
        "neuroscope",
        "n2g",
        "explanation",
        "similar",
        "stats",
        "weights",
        "all",
    }


@pytest.mark.parametrize("service", ["neuroscope", "stats", "all", "similar", "weights"])
def test_layer_summary_is_paginated(client: TestClient, service: str) -> None:
    page = _get(client, f"/api/{M}/{service}/1?offset=5&limit=7")
    assert (page["total"], page["offset"], page["limit"]) == (24, 5, 7)
    assert [it["neuron"] for it in page["items"]] == list(range(5, 12))
    assert page["items"][0]["url"] == f"/api/{M}/{service}/1/5"
    assert {"max", "min", "mean", "frac_positive"} <= set(page["items"][0])
    assert _get(client, f"/api/{M}/{service}/1?offset=100")["items"] == []


def test_layer_summary_of_graphs_and_explanations(client: TestClient) -> None:
    n2g = _get(client, f"/api/{M}/n2g/1")
    assert n2g["total"] == len(GRAPHED) and [it["neuron"] for it in n2g["items"]] == list(GRAPHED)
    assert all("correlation" in it and it["n_nodes"] > 0 for it in n2g["items"])
    assert _get(client, f"/api/{M}/n2g/0")["total"] == 0
    ex = _get(client, f"/api/{M}/explanation/1")
    assert (
        ex["total"] == 1
        and ex["items"][0]["neuron"] == EXPLAINED
        and ex["items"][0]["score"] == 0.61
    )


# ------------------------------------------------------------------------------------------------
# neurons


def test_neuroscope_examples_equal_the_store(client: TestClient, api_db: Path) -> None:
    rec = _get(client, f"/api/{M}/neuroscope/1/3")
    store = Store(api_db)
    run_id = store.latest_complete_run(M, 1)["id"]
    stored = list(store.examples(run_id, 1, 3))
    assert (
        len(rec["examples"]) == len(stored)
        and rec["counts"]["top"] == 8
        and rec["counts"]["bottom"] == 8
    )
    for got, want in zip(rec["examples"], stored, strict=True):
        assert (got["kind"], got["rank"], got["context_id"]) == (
            want["kind"],
            want["rank"],
            want["context_id"],
        )
        assert got["tokens"] == want["str_tokens"] and len(got["activations"]) == len(got["tokens"])
        assert got["activations"] == pytest.approx(
            want["activations"], rel=1e-4, abs=1e-6
        )  # 5 digits
        assert got["peak_index"] == want["peak_index"]
    top = _get(client, f"/api/{M}/neuroscope/1/3?kinds=top,random&limit=2")
    assert [(e["kind"], e["rank"]) for e in top["examples"]] == [
        ("top", 0),
        ("top", 1),
        ("random", 0),
        ("random", 1),
    ]


def test_neuroscope_answers_a_few_per_kind_unless_asked_for_more(
    client: TestClient, api_db: Path
) -> None:
    store = Store(api_db)
    run_id = store.latest_complete_run(M, 1)["id"]
    stored = list(store.examples(run_id, 1, 3))
    totals = Counter(e["kind"] for e in stored)
    default = _get(client, f"/api/{M}/neuroscope/1/3")
    assert default["limit"] == 10 and default["counts"] == dict(totals)
    shown = Counter(e["kind"] for e in default["examples"])
    assert shown == {k: min(n, 10) for k, n in totals.items()}
    for limit in (0, 1, 3):  # the first examples of each kind by rank (quantile ranks have gaps)
        want, seen = [], Counter()
        for e in stored:
            seen[e["kind"]] += 1
            if seen[e["kind"]] <= limit:
                want.append((e["kind"], e["rank"]))
        got = _get(client, f"/api/{M}/neuroscope/1/3?limit={limit}")
        assert [(e["kind"], e["rank"]) for e in got["examples"]] == want
        assert got["counts"] == dict(totals)  # what exists, also past the limit
    assert len(_get(client, f"/api/{M}/neuroscope/1/3?limit=1000")["examples"]) == len(stored)
    everything = _get(client, f"/api/{M}/all/1/3")["neuroscope"]["examples"]
    assert len(everything) == sum(min(n, 10) for n in totals.values())


def test_stored_answers_are_the_assembled_bytes_and_are_what_is_served(
    api_db: Path, tiny_gated: SubjectModel, tmp_path: Path
) -> None:
    import zlib

    from helpers import copy_store

    from autointerp.api.fastpath import NEUROSCOPE_LIMIT, NeuronBytes, store_default_answers

    store = copy_store(api_db, tmp_path)
    store.db.execute("drop table answers")  # as a database written before the (optional) table
    run_id = store.latest_complete_run(M, 1)["id"]

    def fresh_client() -> TestClient:  # a new server: nothing in its memory cache
        return TestClient(create_app(store.path, loader=lambda name: tiny_gated))

    assembled = fresh_client().get(f"/api/{M}/neuroscope/1/3").content
    neurons = sum(store.layer_neuron_count(run_id, layer) for layer in (0, 1))
    assert store_default_answers(store, run_id) == neurons
    for layer in (0, 1):
        for n in range(store.layer_neuron_count(run_id, layer)):
            body = store.answer(run_id, layer, n, "neuroscope")
            assert body is not None and zlib.decompress(body) == NeuronBytes().assemble_neuroscope(
                store, M, layer, n, run_id, None, NEUROSCOPE_LIMIT
            )
    assert fresh_client().get(f"/api/{M}/neuroscope/1/3").content == assembled
    assert store_default_answers(store, run_id) == 0  # every layer is stored already

    # the stored row is what a first request for the default answer gets; other answers are built
    store.save_answers(run_id, 1, "neuroscope", [(3, zlib.compress(b'{"stored":true}'))])
    served = fresh_client()
    assert served.get(f"/api/{M}/neuroscope/1/3").json() == {"stored": True}
    assert served.get(f"/api/{M}/all/1/3").json()["neuroscope"] == {"stored": True}
    assert len(served.get(f"/api/{M}/neuroscope/1/3?limit=2").json()["examples"]) > 0


def test_stats_n2g_explanation_similar_weights_and_all(client: TestClient, api_db: Path) -> None:
    stats = _get(client, f"/api/{M}/stats/1/{EXPLAINED}")
    assert {"count", "mean", "variance", "std", "max", "min", "frac_positive"} <= set(
        stats["stats"]
    )
    assert len(stats["hist"]) == len(stats["hist_edges"]) - 1 == len(stats["ctx_max_hist"])

    g = _get(client, f"/api/{M}/n2g/1/{GRAPHED[0]}")
    assert g["available"] and g["graph"]["nodes"] and g["graph"]["edges"] and "correlation" in g
    graphml = client.get(g["graphml_url"])
    assert graphml.status_code == 200 and "attachment" in graphml.headers["content-disposition"]
    parsed = nx.parse_graphml(graphml.text)
    assert parsed.number_of_nodes() == len(g["graph"]["nodes"])
    svg = client.get(g["svg_url"])
    assert (
        svg.status_code == 200
        and svg.headers["content-type"].startswith("image/svg")
        and b"<svg" in svg.content
    )
    absent = _get(client, f"/api/{M}/n2g/1/20")
    assert absent["available"] is False and "autointerp graph" in absent["message"]
    assert _get(client, f"/api/{M}/n2g/1/20/graphml", 404)["detail"].startswith("No N2G graph")

    e = _get(client, f"/api/{M}/explanation/1/{EXPLAINED}")
    assert e["available"] and e["explanations"]["llm"]["text"] == "the word <b>capital</b> & cities"
    assert (
        e["explanations"]["llm"]["prompt_version"] == "v1"
        and e["explanations"]["llm"]["model"] == "test-llm"
    )
    assert e["scores"]["explanation"]["score"] == 0.61 and e["scores"]["baseline"]["score"] == 0.22
    failed = _get(client, f"/api/{M}/explanation/1/{FAILED}")
    assert (
        failed["available"] is False and failed["scores"] == {}
    )  # a failure never shows as a score
    assert {f["what"] for f in failed["failures"]} == {"explanation:llm", "score:explanation"}

    w = _get(client, f"/api/{M}/weights/1/{WEIGHTS}")
    assert w["available"] and w["facts"]["top_tokens"][0]["token"] == " Paris"
    assert _get(client, f"/api/{M}/weights/1/5")["available"] is False

    everything = _get(client, f"/api/{M}/all/1/{EXPLAINED}")
    assert set(everything) >= {"stats", "neuroscope", "n2g", "explanation", "similar", "weights"}
    assert everything["explanation"]["scores"]["explanation"]["score"] == 0.61


def test_similar_neurons_link_to_pages(client: TestClient, api_db: Path) -> None:
    failed = api_db.parent / "similarity_failed.txt"
    if failed.exists():
        pytest.skip(f"compute_similarities failed on the test database: {failed.read_text()}")
    s = _get(client, f"/api/{M}/similar/1/{GRAPHED[0]}")
    assert s["available"] and s["items"], s
    assert all(it["url"] == f"/m/{M}/neuron/{it['layer']}/{it['neuron']}" for it in s["items"])
    assert _get(client, f"/api/{M}/similar/0/0")["available"] is False


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("/api/nope/stats/1/0", ("'nope'", M)),
        ("/api/nope", ("'nope'",)),
        (f"/api/{M}/bogus/1/0", ("'bogus'", "neuroscope")),
        (f"/api/{M}/bogus/1", ("'bogus'",)),
        (f"/api/{M}/stats/7/0", ("Layer 7", "[0, 1]")),
        (f"/api/{M}/stats/-1/0", ("Layer -1",)),
        (f"/api/{M}/stats/1/24", ("Neuron 24", "0-23")),
        (f"/api/{M}/all/1/-3", ("Neuron -3",)),
        (f"/api/{M}/n2g/5", ("Layer 5",)),
        ("/api/x/y/z/w/v/u", ("No page or endpoint",)),
    ],
)
def test_unknown_things_are_404_saying_what_exists(
    client: TestClient, url: str, needles: tuple[str, ...]
) -> None:
    _not_found(client, url, *needles)


@pytest.mark.parametrize(
    "url",
    [
        f"/api/{M}/stats/one/0",
        f"/api/{M}/stats/1/0.5",
        f"/api/{M}/stats/1?offset=-1",
        f"/api/{M}/stats/1?limit=0",
        f"/api/{M}/stats/1?limit=100000",
        f"/api/{M}/neuroscope/1/0?kinds=best",
        f"/api/{M}/neuroscope/1/0?limit=-2",
        f"/api/{M}/rank?by=loudness",
        f"/api/{M}/rank?limit=0",
        f"/api/{M}/rank?layer=x",
        f"/api/{M}/search",
        f"/api/{M}/search?query=colour:red",
        f"/api/{M}/search?text=%22unclosed",
    ],
)
def test_bad_parameters_are_422(client: TestClient, url: str) -> None:
    body = _get(client, url, 422)
    assert body["detail"]
    assert isinstance(body.get("message", body["detail"]), str)


# ------------------------------------------------------------------------------------------------
# queries


def test_rank(client: TestClient, api_db: Path) -> None:
    by_max = _get(client, f"/api/{M}/rank?by=max&limit=5")
    assert len(by_max["items"]) == 5
    maxima = [it["max"] for it in by_max["items"]]
    assert maxima == sorted(maxima, reverse=True)
    assert by_max["items"][0]["page"].startswith(f"/m/{M}/neuron/")
    n2g = _get(client, f"/api/{M}/rank?by=n2g&layer=1")
    assert sorted(it["neuron"] for it in n2g["items"]) == sorted(GRAPHED)
    _not_found(client, f"/api/{M}/rank?layer=9", "Layer 9")


def test_search_tokens_and_explanations(client: TestClient, api_db: Path) -> None:
    text = _get(client, f"/api/{M}/search?text=capital")
    assert text["available"] and {(it["layer"], it["neuron"]) for it in text["items"]} == {
        (1, EXPLAINED)
    }
    assert "llm" in {it["kind"] for it in text["items"]}
    assert text["items"][0]["page"] == f"/m/{M}/neuron/1/{EXPLAINED}"
    token = _get(client, f"/api/{M}/search?query=any:the")
    assert token["available"] and "items" in token and "message" not in token
    for it in token["items"]:
        assert it["matched"] == "tokens"
        assert ((it["layer"], it["neuron"]) in {(1, n) for n in GRAPHED}) == (
            it["source"] == "graph"
        )
    # neurons without a graph answer from the tokens their top examples peak on
    with sqlite3.connect(api_db) as conn:
        layer, neuron, peak = conn.execute(
            "select layer, neuron, token from harvest_token_index where layer = 0 and token glob"
            " '[a-z]*' order by weight desc, neuron limit 1"
        ).fetchone()
    found = _get(client, f"/api/{M}/search?query=activating:{peak}&limit=500")["items"]
    assert {"layer": layer, "neuron": neuron, "source": "harvest"}.items() <= next(
        it for it in found if (it["layer"], it["neuron"]) == (layer, neuron)
    ).items()
    # SQL-like and FTS-operator strings are just text
    for q in ["text='; drop table neurons; --", "text=capital OR 1=1", "query=any:%27%3B%20drop"]:
        assert client.get(f"/api/{M}/search?{q}").status_code in (200, 422)
    assert _get(client, f"/api/{M}/stats/1/0")["stats"]["count"] > 0
    # the page shows each match as a chip, never a raw Python list of dicts
    nodes = _get(client, f"/api/{M}/n2g/1/{GRAPHED[0]}")["graph"]["nodes"]
    word = next(
        n["token"] for n in nodes if n["kind"] == "activating" and n["token"].strip().isalnum()
    )
    page = client.get(f"/m/{M}/search", params={"query": f"activating:{word.strip().lower()}"}).text
    assert 'class="chip match"' in page and "[{" not in page and "&#39;kind&#39;" not in page, page[
        -1500:
    ]


def test_search_without_the_harvest_index_says_how_to_build_it(
    api_db: Path, tiny_gated: SubjectModel, tmp_path: Path
) -> None:
    from helpers import copy_store

    store = copy_store(api_db, tmp_path)
    store.db.execute("drop table harvest_token_index")  # as a database written before it
    store.db.conn.commit()
    c = TestClient(create_app(store.path, loader=lambda name: tiny_gated))
    found = _get(c, f"/api/{M}/search?query=any:the")
    assert all(it["source"] == "graph" for it in found["items"])
    assert f"autointerp index {M}" in found["message"] and "layers 0,1" in found["message"]
    assert "harvest_token_index" not in store.db.table_names()  # a GET never builds it


# ------------------------------------------------------------------------------------------------
# live activations


def test_live_activations_equal_the_model(client: TestClient, tiny_gated: SubjectModel) -> None:
    text = "Paris is the capital of France."
    r = client.post(f"/api/{M}/activations", json={"text": text, "layer": 1, "neuron": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ids, _ = tiny_gated.encode(text)
    want = tiny_gated.feature_activation(torch.tensor([ids]), 1, 5)[0, 1:].tolist()
    assert body["tokens"] == tiny_gated.str_tokens(ids)[1:]
    assert body["activations"] == pytest.approx(want, abs=1e-4)

    whole = client.post(f"/api/{M}/activations", json={"text": text, "layer": 0}).json()
    assert whole["shape"] == [len(body["tokens"]), 24] and len(whole["activations"][0]) == 24


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"text": "x" * 301, "layer": 1, "neuron": 0}, 413, "at most 300"),
        ({"text": "   ", "layer": 1, "neuron": 0}, 422, "empty"),
        ({"text": "hi", "layer": 2, "neuron": 0}, 404, "layers 0-1"),
        ({"text": "hi", "layer": 1, "neuron": 24}, 404, "neurons 0-23"),
        ({"text": "hi", "layer": -1}, 422, "layer"),
        ({"text": "hi"}, 422, "layer"),
        ({"layer": 1}, 422, "text"),
    ],
)
def test_live_activation_errors(
    client: TestClient, payload: dict[str, Any], status: int, needle: str
) -> None:
    r = client.post(f"/api/{M}/activations", json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert needle in (body.get("message") or body["detail"])


def test_a_megabyte_body_is_refused_before_it_is_read(client: TestClient) -> None:
    big = json.dumps({"text": "a" * 1_000_000, "layer": 1, "neuron": 0})
    r = client.post(
        f"/api/{M}/activations", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "at most" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(20):
            yield b"a" * 65536

    r = client.post(
        f"/api/{M}/layerscope", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_unloadable_model_says_so(tmp_path: Path, api_db: Path) -> None:
    def loader(name: str) -> SubjectModel:
        raise UserError(f"The weights of {name!r} are not available offline.")

    c = TestClient(create_app(api_db, loader=loader))
    r = c.post(f"/api/{M}/activations", json={"text": "hi", "layer": 1, "neuron": 0})
    assert r.status_code == 404 and "not available" in r.json()["detail"]
    _not_found(c, f"/api/{M}/stats/1/99")


def test_layerscope_images_gif_threshold_and_recent(
    client: TestClient, tiny_gated: SubjectModel
) -> None:
    text = "The capital of France is Paris."
    r = client.post(f"/api/{M}/layerscope", json={"text": text})
    assert r.status_code == 200, r.text
    p = r.json()
    n_tok = len(tiny_gated.encode(text)[0]) - 1
    assert (p["n_tokens"], p["n_layers"], p["d_mlp"], p["d_model"]) == (n_tok, 2, 24, 32)
    assert len(p["scales"]["mlp"]) == 2 and len(p["scales"]["resid"]) == 2
    assert (
        client.post(f"/api/{M}/layerscope", json={"text": text}).json()["prompt_id"]
        == p["prompt_id"]
    )

    recent = _get(client, f"/api/{M}/layerscope")["prompts"]
    assert recent[0]["prompt_id"] == p["prompt_id"] and recent[0]["text"] == text

    for view, width in (("mlp", 24), ("resid", 32)):
        img = client.get(f"/img/{M}/layerscope/{p['prompt_id']}/1.png?view={view}")
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(img.content))
        assert picture.size == (width, 4 * n_tok)
        rgb = np.asarray(picture.convert("RGB")).astype(int)
        assert (rgb[..., 0] > rgb[..., 2]).any() and (
            rgb[..., 2] > rgb[..., 0]
        ).any()  # red and blue
    gif = client.get(f"/img/{M}/layerscope/{p['prompt_id']}.gif?view=mlp")
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
    assert Image.open(io.BytesIO(gif.content)).n_frames == 2

    t = _get(client, f"/api/{M}/layerscope/{p['prompt_id']}/1?hi=0.2&lo=-0.2")
    acts = tiny_gated.mlp_activations(torch.tensor([tiny_gated.encode(text)[0]]), [1])[1][0, 1:]
    above = int((acts > 0.2).any(0).sum())
    below = int((acts < -0.2).any(0).sum())
    assert (t["n_above"], t["n_below"]) == (above, below) and t["tokens"] == p["tokens"]
    for u in t["units"]:
        assert u["max"] > 0.2 or u["min"] < -0.2
        assert u["activations"] == pytest.approx(
            acts[:, u["unit"]].tolist(), abs=2e-3
        )  # stored as float16

    _not_found(client, f"/api/{M}/layerscope/nope/1", "POST the text")
    _not_found(client, f"/api/{M}/layerscope/{p['prompt_id']}/9", "layers 0-1")
    _not_found(client, f"/api/{M}/layerscope/{p['prompt_id']}/1?view=attn", "views")
    assert client.get(f"/img/{M}/layerscope/nope/0.png").status_code == 404


def test_layerscope_threshold_relative_to_each_neuron_pages_and_unit_columns(
    client: TestClient, api_db: Path, tiny_gated: SubjectModel
) -> None:
    text = "The capital of France is Paris."
    pid = client.post(f"/api/{M}/layerscope", json={"text": text}).json()["prompt_id"]
    url = f"/api/{M}/layerscope/{pid}/1"
    acts = tiny_gated.mlp_activations(torch.tensor([tiny_gated.encode(text)[0]]), [1])[1][0, 1:]
    stats = Store(api_db).layer_stats(Store(api_db).latest_complete_run(M, 1)["id"], 1, 0, 24)
    top = torch.tensor([r["max"] for r in stats])
    bottom = torch.tensor([r["min"] for r in stats])
    rel = _get(client, f"{url}?thresholds=neuron")
    assert (rel["thresholds"], rel["hi"], rel["lo"]) == ("neuron", 0.5, 0.5)
    above = (acts > 0.5 * top).any(0) & (top > 0)
    below = (acts < 0.5 * bottom).any(0) & (bottom < 0)
    assert (rel["n_above"], rel["n_below"]) == (int(above.sum()), int(below.sum()))
    for u in rel["units"]:
        assert u["hi_cut"] == pytest.approx(0.5 * top[u["unit"]].item(), abs=1e-3)
    absolute = _get(client, url)  # lo=0: nearly every gated neuron dips below 0
    assert rel["n_matching"] < absolute["n_matching"] and absolute["units"][0]["hi_cut"] == 3.0
    pages = [_get(client, f"{url}?limit=4&offset={o}")["units"] for o in (0, 4, 8)]
    assert [u["unit"] for page in pages for u in page] == [
        u["unit"] for u in absolute["units"][:12]
    ]
    column = _get(client, f"{url}/5")
    assert column["tokens"] == absolute["tokens"]
    assert column["activations"] == pytest.approx(acts[:, 5].tolist(), abs=2e-3)
    _not_found(client, f"{url}/24", "neurons 0-23")
    for bad, needle in (
        ("thresholds=neuron&view=resid", "MLP view"),
        ("thresholds=percent", "absolute, neuron"),
    ):
        r = client.get(f"{url}?{bad}")
        assert r.status_code == 422 and needle in r.json()["detail"], r.text


# ------------------------------------------------------------------------------------------------
# pages


def test_histogram_axis_fits_the_neurons_own_range() -> None:
    from autointerp.api.neuron_view import cos_words, hist_range, hist_ticks
    from autointerp.histogram import HIST_EDGES

    counts = [0] * (len(HIST_EDGES) - 1)
    used = [i for i, e in enumerate(HIST_EDGES[:-1]) if 0.5 <= e < 3]
    for i in used:
        counts[i] = 5
    lo, hi = hist_range(HIST_EDGES, counts)
    assert HIST_EDGES[lo] <= 0 < 3 <= HIST_EDGES[hi] < 10  # 0 included, nothing far past the data
    assert lo < min(used) and hi > max(used)
    ticks = hist_ticks(HIST_EDGES, (lo, hi))
    labels = [t["label"] for t in ticks]
    assert "0" in labels and ticks[0]["x"] == 0 and ticks[-1]["x"] == 640
    assert len(ticks) <= 13 and labels[-1] == f"{HIST_EDGES[hi]:.3g}"
    assert cos_words(0.7).startswith("strongly aligned") and "opposed" in cos_words(-0.2)
    assert cos_words(None) == "not computed" and cos_words(0.01).startswith("nearly orthogonal")


def test_model_page_ranks_by_cos_in_out_as_the_neuron_page_links(client: TestClient) -> None:
    neuron = client.get(f"/m/{M}/neuron/1/{WEIGHTS}").text
    assert f'href="/m/{M}?by=cos_in_out"' in neuron
    ranked = client.get(f"/m/{M}?by=cos_in_out").text
    assert "(ranked by cos_in_out)" in ranked and f"/m/{M}/neuron/1/{WEIGHTS}" in ranked
    assert "<td>0.120</td>" in ranked  # its cos_in_out, as the score column
    bad = client.get(f"/m/{M}?by=nonsense")
    assert bad.status_code == 200 and "Cannot rank by" in bad.text


def test_pages_render_and_say_what_is_missing(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200 and f"/m/{M}" in index.text
    model = client.get(f"/m/{M}")
    assert (
        model.status_code == 200
        and f"/img/{M}/scores.svg" in model.text
        and "/layer/1" in model.text
    )
    plot = client.get(f"/img/{M}/scores.svg")
    assert plot.status_code == 200 and b"<svg" in plot.content

    full = client.get(f"/m/{M}/neuron/1/{EXPLAINED}").text
    assert (
        "the word &lt;b&gt;capital&lt;/b&gt; &amp; cities" in full
    )  # explanation text escaped, never HTML
    assert f'src="/img/{M}/n2g/1/{EXPLAINED}.svg"' in full and "GraphML" in full
    assert "0.610" in full and "0.220" in full  # explanation score next to the baseline's
    assert 'class="tok' in full and "background:rgb(" in full
    assert "Paris" in full and "cos_in_out" in full  # weight facts
    assert full.index('id="summary"') < full.index('id="live"') < full.index('id="stats"')
    assert 'id="promoted"' in full and 'id="suppressed"' in full and "+1.50" in full
    assert "weakly aligned" in full  # cos(w_in, w_out) = 0.12, in words
    for kind in ("Top activating", "Most negative", "Random contexts"):
        assert kind in full

    bare = client.get(f"/m/{M}/neuron/0/7").text
    assert "No N2G graph computed" in bare and "No explanation computed" in bare
    assert "No weight facts" in bare and ("No similar" in bare or "not computed" in bare)
    assert (
        f'href="/m/{M}/neuron/0/6"' in bare and f'href="/m/{M}/neuron/0/8"' in bare
    )  # prev / next
    edge = client.get(f"/m/{M}/neuron/0/23").text
    assert f'href="/m/{M}/neuron/1/0"' in edge  # next crosses into the next harvested layer

    rnd = client.get(f"/m/{M}/random", follow_redirects=False)
    assert rnd.status_code == 302 and re.fullmatch(
        rf"/m/{M}/neuron/[01]/\d+", rnd.headers["location"]
    )

    layer = client.get(f"/m/{M}/layer/1")
    assert (
        layer.status_code == 200 and "ls-text" in layer.text and f"/m/{M}/neuron/1/" in layer.text
    )
    assert "has not been harvested" not in layer.text

    search = client.get(f"/m/{M}/search?text=capital")
    assert search.status_code == 200 and f'href="/m/{M}/neuron/1/{EXPLAINED}"' in search.text

    missing = client.get(f"/m/{M}/neuron/1/99")
    assert missing.status_code == 404 and "neurons 0-23" in missing.text and "<html" in missing.text
    assert client.get("/m/nope").status_code == 404
    assert client.get(f"/m/{M}/layer/5").status_code == 404


def test_no_internet_assets_cors_openapi_and_docs(client: TestClient) -> None:
    spec = _get(client, "/openapi.json")
    paths = set(spec["paths"])
    assert {
        "/api/models",
        "/api/{model}",
        "/api/{model}/{service}/{layer}",
        "/api/{model}/{service}/{layer}/{neuron}",
        "/api/{model}/search",
        "/api/{model}/rank",
        "/api/{model}/activations",
    } <= paths
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/api/{model}/activations" in docs.text
    for url in ["/", "/docs", f"/m/{M}", f"/m/{M}/neuron/1/0", f"/m/{M}/layer/1", f"/m/{M}/search"]:
        html = client.get(url).text
        external = re.findall(r'(?:src|href)="(https?:)?//', html)
        assert not external, (url, external)
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    # CORS is opt-in: by default another website open in the same browser cannot read this server's
    # answers
    r = client.get(f"/api/{M}/stats/1/0", headers={"Origin": "http://example.org"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_only_for_the_origins_given(api_db: Path, tiny_gated: SubjectModel) -> None:
    opened = TestClient(
        create_app(api_db, loader=lambda name: tiny_gated, cors_origins=["http://notebook.local"])
    )
    r = opened.get(f"/api/{M}/stats/1/0", headers={"Origin": "http://notebook.local"})
    assert r.headers["access-control-allow-origin"] == "http://notebook.local"
    pre = opened.options(
        f"/api/{M}/activations",
        headers={"Origin": "http://notebook.local", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 200
    r = opened.get(f"/api/{M}/stats/1/0", headers={"Origin": "http://example.org"})
    assert "access-control-allow-origin" not in r.headers


def test_recent_layerscope_prompts_are_listed_only_to_who_ran_them(
    api_db: Path, tiny_gated: SubjectModel
) -> None:
    app = create_app(api_db, loader=lambda name: tiny_gated)
    alice, bob = TestClient(app), TestClient(app)  # two browsers: separate cookie jars
    secret = "my private notes about Paris"
    assert alice.post(f"/api/{M}/layerscope", json={"text": secret}).status_code == 200
    assert [p["text"] for p in alice.get(f"/api/{M}/layerscope").json()["prompts"]] == [secret]
    assert bob.get(f"/api/{M}/layerscope").json()["prompts"] == []
    assert (
        secret not in bob.get(f"/m/{M}/layer/1").text
        and secret in alice.get(f"/m/{M}/layer/1").text
    )
    shared = create_app(api_db, loader=lambda name: tiny_gated, share_recent=True)
    TestClient(shared).post(f"/api/{M}/layerscope", json={"text": secret})
    assert [
        p["text"] for p in TestClient(shared).get(f"/api/{M}/layerscope").json()["prompts"]
    ] == [secret]


def test_the_clients_of_a_recent_prompt_are_bounded_whatever_cookies_are_sent(
    api_db: Path, tiny_gated: SubjectModel
) -> None:
    """Every client chooses its cookie: 4,500 POSTs with distinct ones grew the server by 125 MB.
    A prompt is listed to its MAX_OWNERS most recent clients, and a cookie this server did not hand
    out is replaced, not kept."""
    from autointerp.api.params import CLIENT_COOKIE, CLIENT_ID
    from autointerp.live import MAX_OWNERS

    app = create_app(api_db, loader=lambda name: tiny_gated)
    url = f"/api/{M}/layerscope"
    first, many = TestClient(app), TestClient(app)
    assert first.post(url, json={"text": "hello there"}).status_code == 200
    assert len(first.get(url).json()["prompts"]) == 1
    for i in range(3 * MAX_OWNERS):
        many.cookies.clear()
        many.cookies.set(CLIENT_COOKIE, f"{i:024x}")
        assert many.post(url, json={"text": "hello there"}).status_code == 200
    owners = app.state.live._owners
    assert owners and max(len(o) for o in owners.values()) == MAX_OWNERS
    assert first.get(url).json()["prompts"] == []  # the oldest client is no longer listed
    assert len(many.get(url).json()["prompts"]) == 1  # the latest still is
    many.cookies.clear()
    many.cookies.set(CLIENT_COOKIE, "x" * 4000)
    answer = many.post(url, json={"text": "hello there"})
    assert CLIENT_ID.fullmatch(answer.cookies[CLIENT_COOKIE])
    assert all("x" * 4000 not in o for o in owners.values())


def test_reads_while_a_writer_holds_the_database(client: TestClient, api_db: Path) -> None:
    """WAL: a pipeline in the middle of a write transaction never blocks the server's reads."""
    with write_lock_held(api_db, "api-test-lock"):
        started = time.time()
        for url in [f"/api/{M}/all/1/2", f"/api/{M}", f"/m/{M}/neuron/1/2", f"/api/{M}/n2g/1"]:
            assert client.get(url).status_code == 200
        assert time.time() - started < 5


# ------------------------------------------------------------------------------------------------
# the command


def test_serve_command_binds_loopback_and_serves(api_db: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autointerp", "serve", "--db", str(api_db), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.time() < deadline, "server did not start"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["models"][0]["name"] == M
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        if listening.strip():  # the local address is the 4th field
            assert [line.split()[3] for line in listening.strip().splitlines()] == [
                f"127.0.0.1:{port}"
            ]
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    missing = subprocess.run(
        [sys.executable, "-m", "autointerp", "serve", "--db", str(tmp_path / "none.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        missing.returncode == 2
        and "No database" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_a_model_name_with_a_slash_has_pages_and_api_routes(
    api_db: Path, tmp_path: Path, tiny_gated: SubjectModel
) -> None:
    """Hugging Face ids hold a '/' (EleutherAI/pythia-70m): every route takes the name with '--'
    instead (what the pages link to) or percent-encoded (what encodeURIComponent makes), and the
    links the server writes work."""
    db = tmp_path / "slashed.db"
    with sqlite3.connect(api_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    name = "EleutherAI/tiny-gated"
    rename_model(db, M, name)
    client = TestClient(create_app(db, loader=lambda n: tiny_gated))
    listed = client.get("/api/models").json()["models"]
    assert [m["name"] for m in listed] == [name] and listed[0][
        "url"
    ] == "/api/EleutherAI--tiny-gated"
    for form in ("EleutherAI--tiny-gated", "EleutherAI%2Ftiny-gated"):
        for url in (
            f"/api/{form}",
            f"/api/{form}/all/1/0",
            f"/api/{form}/stats/1",
            f"/api/{form}/n2g/1/0/graphml",
            f"/api/{form}/search?query=any:the",
            f"/api/{form}/rank",
            f"/m/{form}",
            f"/m/{form}/neuron/1/0",
            f"/m/{form}/layer/1",
            f"/m/{form}/search",
            f"/img/{form}/scores.svg",
        ):
            r = client.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text[:200])
        r = client.post(
            f"/api/{form}/activations", json={"text": "Paris is", "layer": 1, "neuron": 0}
        )
        assert r.status_code == 200 and r.json()["model"] == name
    page = client.get("/m/EleutherAI--tiny-gated/neuron/1/0").text
    links = set(re.findall(r'href="(/(?:m|api)/[^"]+)"', page))
    assert links and all(client.get(link).status_code == 200 for link in links), links
    assert client.get("/m/EleutherAI--tiny-gated/random", follow_redirects=True).status_code == 200


def test_serve_on_a_busy_port_and_a_slow_client(api_db: Path) -> None:
    """A busy port is one sentence before anything claims to be serving; a client that stops sending
    its body gets 408 after --timeout instead of holding the connection forever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "autointerp", "serve", "--db", str(api_db), "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert busy.returncode == 2 and "Traceback" not in busy.stderr, busy.stderr
    assert "serving" not in busy.stderr and f"Cannot listen on 127.0.0.1:{port}" in busy.stderr, (
        busy.stderr
    )

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autointerp",
            "serve",
            "--db",
            str(api_db),
            "--port",
            str(port),
            "--timeout",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(
                f"POST /api/{M}/layerscope HTTP/1.1\r\nHost: x\r\nContent-Type:"
                ' application/json\r\nContent-Length: 100\r\n\r\n{"te'.encode()
            )
            started = time.time()
            chunks = []
            while chunk := slow.recv(4096):  # the server closes the connection after answering
                chunks.append(chunk)
            answer = b"".join(chunks).decode()
            assert (
                answer.startswith("HTTP/1.1 408") and "did not arrive within 1 seconds" in answer
            ), answer
            assert time.time() - started < 8
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _serving(api_db: Path, *options: str) -> tuple[subprocess.Popen[str], int]:
    """`autointerp serve` on a free loopback port, answering once this returns."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autointerp", "serve", "--db", str(api_db), "--port", str(port)]
        + list(options),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2)
            return proc, port
        except httpx.TransportError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                stderr = proc.communicate()[1][-500:]
                raise AssertionError(f"server did not start: {stderr}") from None
            time.sleep(0.3)


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_headers_are_cut_off_and_never_use_up_the_server(api_db: Path) -> None:
    """70 sockets each sending one header byte at a time (they used to hold all 64 connection
    slots, so every normal request got 503): normal requests are answered all along, and each slow
    socket is disconnected once --header-timeout has passed without a whole request."""
    proc, port = _serving(api_db, "--header-timeout", "1")
    url = f"http://127.0.0.1:{port}/api/models"
    request = b"GET /api/models HTTP/1.1\r\nHost: x\r\n\r\n"
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(70)]
    try:
        statuses = []
        for i in range(6):  # ~2.5 s, past the header deadline
            for sock in slow:
                try:
                    sock.send(request[i : i + 1])
                except OSError:
                    pass  # already disconnected
            statuses.append(httpx.get(url, timeout=5).status_code)
            time.sleep(0.4)
        assert statuses == [200] * 6
        assert all(_closed_by_server(sock) for sock in slow)
    finally:
        for sock in slow:
            sock.close()
        proc.terminate()
        proc.wait(timeout=20)


def test_a_trickled_body_gets_408_at_the_body_deadline(api_db: Path) -> None:
    """Content-Length 200 sent one byte every 0.3 s: each byte arrives well within --timeout, but
    the body as a whole does not, and that is what the deadline is for (it used to be per read)."""
    proc, port = _serving(api_db, "--timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                f"POST /api/{M}/layerscope HTTP/1.1\r\nHost: x\r\nContent-Type:"
                " application/json\r\nContent-Length: 200\r\n\r\n".encode()
            )
            started = time.time()
            sock.setblocking(False)
            answer = b""
            while time.time() - started < 8 and not answer.endswith(b"}"):
                try:
                    sock.send(b" ")
                except OSError:
                    pass  # the server closed it after answering
                time.sleep(0.3)
                try:
                    answer += sock.recv(4096)
                except BlockingIOError:
                    pass
            text = answer.decode()
            assert text.startswith("HTTP/1.1 408") and "within 2 seconds" in text, text
            assert 1.5 < time.time() - started < 5
    finally:
        proc.terminate()
        proc.wait(timeout=20)
