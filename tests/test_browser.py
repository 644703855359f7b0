"""The pages in a real browser: headless Chromium (the Debian package; browser downloads do not work
here) driven by Playwright against a real uvicorn server on a free loopback port. Screenshots go to
$ARTIFACTS_DIR (or test-artifacts/browser/, git-ignored) so a person can look at what the test saw.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apidb import EXPLAINED, GRAPHED, build_api_db
from helpers import REPO, free_port

from autointerp.models import SubjectModel

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
M = "tiny-gated"


@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    """The browser tests are part of the suite `make test` promises: without chromium they fail with
    the command that installs it (`make test` runs it first), never skip."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(
            "the browser tests need the Debian chromium package: run  make browser  "
            "(apt-get install -y chromium)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def server(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    from autointerp.api import create_app

    db = build_api_db(tiny_gated, tmp_path_factory.mktemp("browser"))
    app = create_app(db, loader=lambda name: tiny_gated)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def shots() -> Path:
    out = Path(os.environ.get("ARTIFACTS_DIR") or REPO / "test-artifacts") / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


def test_neuron_page_colours_tokens_shows_the_graph_and_runs_live_text(
    page, server: str, shots: Path
) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}/m/{M}/neuron/1/{EXPLAINED}")
    coloured = page.eval_on_selector_all(
        "#ex-top .tok",
        "els => els.filter(e => getComputedStyle(e).backgroundColor !== 'rgb(255, 255,"
        " 255)').length",
    )
    assert coloured > 5
    visible_before = page.locator("#ex-top .tok:visible").count()
    page.click("#toggle-all")
    assert (
        page.locator("#ex-top .tok:visible").count() > visible_before
    )  # the full texts, not just the windows
    page.wait_for_function(
        "document.querySelector('#graph').complete && "
        "document.querySelector('#graph').naturalWidth > 100"
    )
    assert "capital" in page.inner_text("#explanation")
    page.screenshot(path=str(shots / "neuron.png"), full_page=True)

    page.fill("#live-text", "Paris is the capital of France.")
    page.wait_for_selector("#live-out .tok")
    assert page.locator("#live-out .tok").count() >= 6
    assert "tokens" in page.inner_text("#live-status")
    page.locator("#live").screenshot(path=str(shots / "neuron-live.png"))
    page.click("#next")
    assert page.url.endswith(f"/neuron/1/{EXPLAINED + 1}")
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_neuron_page_summary_card_histogram_axis_weight_tables_and_load_button(
    page, server: str, shots: Path
) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}/m/{M}/neuron/1/{EXPLAINED}")
    card = page.locator("#summary")
    assert "capital" in page.inner_text("#card-text")
    assert page.inner_text("#card-score-explanation") == "0.610"
    assert page.inner_text("#card-score-baseline") == "0.220"
    assert (
        "density" in page.inner_text("#card-density") and page.locator("#card-tokens .chip").count()
    )
    page.wait_for_function(
        "document.querySelector('#card-graph').complete && "
        "document.querySelector('#card-graph').naturalWidth > 100"
    )
    # the card is at the top: above the live box, which is above the statistics
    tops = [page.locator(s).bounding_box()["y"] for s in ("#summary", "#live", "#stats")]
    assert tops == sorted(tops) and tops[1] < 900, tops
    card.screenshot(path=str(shots / "neuron-card.png"))

    labels = page.eval_on_selector_all("#hist text.tick", "els => els.map(e => e.textContent)")
    assert "0" in labels and 3 <= len(labels) <= 13, labels
    ends = [float(x) for x in (labels[0], labels[-1])]
    assert ends[0] < 0 < ends[1] < 100, labels  # the neuron's range, not the fixed +-2,980
    assert page.locator("#hist rect").count() >= 3
    page.locator("#stats").screenshot(path=str(shots / "neuron-histogram.png"))

    assert "Paris" in page.inner_text("#promoted") and "+1.50" in page.inner_text("#promoted")
    assert "the" in page.inner_text("#suppressed") and "-1.20" in page.inner_text("#suppressed")
    assert "weakly aligned" in page.inner_text("#cos-words")
    assert "cos_in_out" in page.inner_text("#cos-words")
    page.locator("#weights").screenshot(path=str(shots / "neuron-weights.png"))

    top_text = page.get_attribute("#ex-top .ex >> nth=0", "data-text")
    page.click("#live-load")
    assert page.input_value("#live-text") == top_text
    page.wait_for_selector("#live-out .tok")
    page.wait_for_function("document.querySelector('#live-status').textContent.includes('tokens')")
    second = page.locator("#ex-top .ex").nth(1)
    second.locator("button.load").click()
    assert page.input_value("#live-text") == second.get_attribute("data-text")
    page.locator("#live").screenshot(path=str(shots / "neuron-load.png"))
    page.click("#cos-words a >> nth=0")
    assert page.url.endswith(f"/m/{M}?by=cos_in_out")
    assert "ranked by cos_in_out" in page.inner_text("body")
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_your_own_explanation_is_scored_beside_the_stored_ones(
    page, server: str, shots: Path
) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}/m/{M}/neuron/1/{EXPLAINED}")
    page.fill("#score-text", 'the tokens "capital" and "Paris"')
    page.click("#score-form button[type=submit]")
    page.wait_for_selector("#score-result")
    rows = page.locator("#score-result tr")
    assert rows.count() == 4
    mine = rows.nth(0).inner_text()
    assert "your description" in mine and "AUPRC" in mine and "held-out tokens" in mine
    assert "0.610" in rows.nth(1).inner_text() and "0.220" in rows.nth(2).inner_text()
    assert '"tokens":["capital","Paris"]' in page.inner_text("#score-rule")
    page.locator("#explanation").screenshot(path=str(shots / "neuron-score.png"))
    # a phrase needs an LLM, which this server does not have: said, not a number
    page.fill("#score-text", "capital cities")
    page.click("#score-form button[type=submit]")
    page.wait_for_selector("#score-out .error")
    assert "no LLM" in page.inner_text("#score-out") and page.locator("#score-result").count() == 0
    # the browser logs the 409 answer itself; that one is expected, nothing else is
    refused = [e for e in page.errors if "status of 409" in e]  # type: ignore[attr-defined]
    assert len(refused) == 1
    page.errors.remove(refused[0])  # type: ignore[attr-defined]
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_layerscope_runs_a_prompt_steps_layers_and_filters(page, server: str, shots: Path) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}/m/{M}/layer/0")
    page.fill("#ls-text", "The capital of France is Paris.")
    page.click("#ls-form button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#ls-image').complete && "
        "document.querySelector('#ls-image').naturalWidth === 24"
    )
    assert page.locator("#ls-tokens div").count() == 7
    page.click("#ls-next")
    assert page.inner_text("#ls-layer") == "1"
    page.wait_for_function("document.querySelector('#ls-image').src.includes('/1.png')")
    page.check("input[name=ls-view][value=resid]")
    page.wait_for_function(
        "document.querySelector('#ls-image').src.includes('view=resid') && "
        "document.querySelector('#ls-image').naturalWidth === 32"
    )
    page.check("input[name=ls-view][value=mlp]")
    page.select_option("#ls-mode", "absolute")
    page.fill("#ls-hi", "0.3")
    page.fill("#ls-lo", "-0.3")
    page.click("#ls-apply")
    page.wait_for_selector("#ls-threshold .unit a")
    assert "units match" in page.inner_text("#ls-count")
    assert "The capital of France" in page.inner_text("#ls-recent")
    gif = page.get_attribute("#ls-gif", "href")
    assert gif and gif.endswith(".gif?view=mlp")
    page.screenshot(path=str(shots / "layerscope.png"), full_page=True)
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def _run_layerscope(page, url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url)
    page.fill("#ls-text", "The capital of France is Paris.")
    page.click("#ls-form button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#ls-image').complete && "
        "document.querySelector('#ls-image').naturalWidth === 24"
    )
    page.wait_for_selector("#ls-count:has-text('units match')")


def test_layerscope_picture_has_a_neuron_axis_hover_and_click(
    page, server: str, shots: Path, tiny_gated: SubjectModel
) -> None:  # type: ignore[no-untyped-def]
    import torch

    _run_layerscope(page, f"{server}/m/{M}/layer/0")
    ticks = page.eval_on_selector_all("#ls-axis span", "els => els.map(e => e.textContent)")
    assert ticks[0] == "0" and len(ticks) >= 3 and int(ticks[-1]) < 24, ticks
    assert "neuron" in page.inner_text("#ls-axis-name")
    box = page.locator("#ls-image").bounding_box()
    unit, tok = 5, 2
    at = {"x": (unit + 0.5) / 24 * box["width"], "y": (tok + 0.5) / 7 * box["height"]}
    page.hover("#ls-image", position=at)
    page.wait_for_selector("#ls-hover:has-text('L0/N5')")
    shown = page.inner_text("#ls-hover")
    ids, _ = tiny_gated.encode("The capital of France is Paris.")
    want = tiny_gated.mlp_activations(torch.tensor([ids]), [0])[0][0, 1:][tok, unit].item()
    assert '" of"' in shown and abs(float(shown.rsplit(" ", 1)[1]) - want) < 0.01, (shown, want)
    page.screenshot(path=str(shots / "layerscope-hover.png"), full_page=True)
    page.click("#ls-image", position=at)
    page.wait_for_selector("#stats")
    assert page.url.endswith(f"/m/{M}/neuron/0/{unit}")
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_threshold_view_is_relative_to_each_neuron_and_pages(
    page, server: str, shots: Path
) -> None:  # type: ignore[no-untyped-def]
    def count() -> int:
        return int(page.inner_text("#ls-count").split()[0])

    _run_layerscope(page, f"{server}/m/{M}/layer/1?per_page=5")
    # a gated model: by default a neuron matches near its own max or min, not below 0
    assert page.input_value("#ls-mode") == "neuron" and page.input_value("#ls-hi") == "0.5"
    assert "× its max" in page.inner_text("#ls-hi-unit")
    relative = count()
    page.select_option("#ls-mode", "absolute")
    assert page.input_value("#ls-hi") == "3" and page.input_value("#ls-lo") == "0"
    page.wait_for_function(
        f"!document.querySelector('#ls-count').textContent.startsWith('{relative} ')"
    )
    absolute = count()
    assert relative < absolute and absolute > 10  # lo=0 matches nearly every gated neuron
    rows = page.locator("#ls-threshold .unit a")
    assert rows.count() == 5 and page.inner_text("#ls-page") == f"showing 1-5 of {absolute}"
    assert page.is_disabled("#ls-page-prev") and not page.is_disabled("#ls-page-next")
    first = rows.all_inner_texts()
    page.click("#ls-page-next")
    page.wait_for_selector(f"#ls-page:has-text('showing 6-10 of {absolute}')")
    second = rows.all_inner_texts()
    assert len(second) == 5 and not set(first) & set(second)
    page.locator("#layerscope").screenshot(path=str(shots / "layerscope-threshold-page2.png"))
    page.click("#ls-page-prev")
    page.wait_for_selector("#ls-page:has-text('showing 1-5')")
    assert rows.all_inner_texts() == first
    # the residual view has no per-neuron scale: absolute, and it says why if asked for relative
    page.check("input[name=ls-view][value=resid]")
    assert page.input_value("#ls-mode") == "absolute"
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_search_finds_the_explained_neuron(page, server: str, shots: Path) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server}/m/{M}/search")
    page.fill("#search-text", "capital")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results")
    link = page.locator(f"#results a[href='/m/{M}/neuron/1/{EXPLAINED}']").first
    assert link.count() == 1
    import httpx

    graph = httpx.get(f"{server}/api/{M}/n2g/1/0").json()["graph"]
    token = next(
        n["token"] for n in graph["nodes"] if n["kind"] == "activating" and n["token"].isalnum()
    )
    page.fill("#search-query", f"activating:{token}")
    page.fill("#search-text", "")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results tr.result")
    assert page.locator(f"#results a[href='/m/{M}/neuron/1/0']").count() == 1
    graphed = page.locator("#results tr.result", has=page.locator(f"a[href='/m/{M}/neuron/1/0']"))
    assert graphed.locator(".source").inner_text() == "N2G graph"
    page.screenshot(path=str(shots / "search.png"), full_page=True)
    # neurons without a graph are found through the harvest index, and the row says so
    page.goto(f"{server}/m/{M}/search?query=activating:the")
    page.wait_for_selector("#results tr.result")
    harvested = page.locator("#results tr.result", has=page.locator(".source.harvest")).first
    assert harvested.locator(".source").inner_text() == "harvest index"
    href = harvested.locator("a").get_attribute("href")
    assert href and not any(href.endswith(f"/neuron/1/{n}") for n in GRAPHED)
    page.screenshot(path=str(shots / "search-sources.png"), full_page=True)
    page.goto(f"{server}/m/{M}/search?text=capital")
    page.locator(f"#results a[href='/m/{M}/neuron/1/{EXPLAINED}']").first.click()
    page.wait_for_selector("#stats")
    assert page.url.endswith(f"/m/{M}/neuron/1/{EXPLAINED}")
    page.goto(f"{server}/m/{M}")
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "model.png"), full_page=True)
    assert not page.errors, page.errors  # type: ignore[attr-defined]
