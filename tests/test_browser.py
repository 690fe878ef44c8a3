"""The explorer and atlas pages in a real browser: the system's headless Chromium, driven by Playwright."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from catdog.views.atlas import build_atlas, load_atlas, write_atlas
from catdog.views.explorer import attach_patterns, explorer_data, write_index
from tests.test_explorer import page_data, small_catdog

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    """An explorer page with an atlas of the same weights (and its filter patterns, as ``python -m catdog.atlas``
    makes it), the atlas page, and a page of weights with no patterns at hand, for a small CatDogCNN."""
    tmp = tmp_path_factory.mktemp("pages")
    model = small_catdog()
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    names = [f"<b>{i}</b>&.jpg" for i in range(12)]  # names that must be escaped
    atlas = build_atlas(model, [(images, torch.arange(12) % 2, names)], k=3, data="<data>", source="test")
    with pytest.MonkeyPatch.context() as mp:  # the patterns' cache: this test's own folder, not the user's
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        attach_patterns(model, atlas["layers"], (64, 64))
        write_atlas(tmp / "atlas", atlas)
        x = images[:1]
        image = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        write_index(tmp / "index.html", explorer_data(model, x, image, "<img src=x onerror=alert(1)>", atlas=atlas))
        mp.setenv("XDG_CACHE_HOME", str(tmp / "empty"))
        write_index(tmp / "bare.html", explorer_data(model, x, image, "bare"))
    live = next(c for c, ch in enumerate(atlas["layers"]["conv3"]["channels"]) if len(ch["top"]) == 3 and c < 100)
    return {"index": tmp / "index.html", "atlas": tmp / "atlas" / "atlas.html", "channel": live,
            "bare": tmp / "bare.html"}  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url: str, ready: str):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an unescaped name would alert
    page.goto(url)
    page.wait_for_function(f"window.{ready} && window.{ready}.ready", timeout=15000)
    return page, errors


def canvas_painted(page, selector: str) -> bool:
    return page.eval_on_selector(
        selector,
        "c => c.width > 0 && c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
        "  .some((v, i) => i % 4 == 3 && v)",
    )


def test_explorer_click_keys_and_links(browser, pages):
    page, errors = open_page(browser, pages["index"].as_uri(), "explorer")
    assert page.text_content("#title") == "<img src=x onerror=alert(1)>"
    assert page.locator(".tile").count() == 32 + 32 + 64 + 64 + 128 * 4
    c = pages["channel"]  # a channel some atlas image excites
    page.click(f".tile[data-layer='conv3'][data-channel='{c}']")
    page.wait_for_selector(f"#detail[data-ready='conv3/{c}']")
    assert canvas_painted(page, "#detail-map") and canvas_painted(page, "#detail-overlay")
    assert page.locator("#atlas-crops canvas").count() == 3
    assert canvas_painted(page, "#atlas-crops canvas")
    assert page.is_visible("#detail-pattern") and canvas_painted(page, "#detail-pattern")  # from the atlas
    assert page.eval_on_selector("#detail-pattern", "c => [c.width, c.height]") == [18, 18]  # conv3's field
    assert page.is_hidden("#detail-pattern-missing")
    assert page.evaluate("location.hash") == f"#conv3/{c}"
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f"#detail[data-ready='conv3/{c + 1}']")
    assert page.evaluate("location.hash") == f"#conv3/{c + 1}"
    assert page.locator(".tile.sel").get_attribute("data-channel") == str(c + 1)
    page.keyboard.press("ArrowDown")
    page.wait_for_selector(f"#detail[data-ready='pool3/{c + 1}']")
    assert page.is_hidden("#detail-pattern-fig") and page.is_hidden("#detail-pattern-missing")  # a pool: none
    dead = page.locator(".tile[data-layer='conv2'][data-channel='5']")
    assert "dead" in dead.get_attribute("title")
    assert errors == []
    linked, errors = open_page(browser, pages["index"].as_uri() + "#conv3/17", "explorer")
    linked.wait_for_selector("#detail[data-ready='conv3/17']")
    assert linked.text_content("#detail-title").startswith("conv3 / channel 17")
    assert errors == []


def test_without_patterns_a_conv_channel_says_how_to_get_them(browser, pages):
    page, errors = open_page(browser, pages["bare"].as_uri() + "#conv2/3", "explorer")
    page.wait_for_selector("#detail[data-ready='conv2/3']")
    assert page.is_hidden("#detail-pattern-fig") and page.is_visible("#detail-pattern-missing")
    assert "python -m catdog.atlas patterns=only" in page.text_content("#detail-pattern-missing")
    page.keyboard.press("ArrowDown")
    page.wait_for_selector("#detail[data-ready='pool2/3']")
    assert page.is_hidden("#detail-pattern-missing")  # pools have no pattern to get
    assert errors == []


def test_atlas_page_cards_and_sorting(browser, pages):
    shown, kept = page_data(pages["atlas"])["layers"], load_atlas(pages["atlas"].parent)["layers"]
    assert not any("patterns" in layer for layer in shown.values())  # the cards do not use them: not carried
    assert [name for name, layer in kept.items() if "patterns" in layer] == ["conv1", "conv2", "conv3", "conv4"]
    page, errors = open_page(browser, pages["atlas"].as_uri(), "atlas")
    assert page.locator(".card").count() == 32 + 32 + 64 + 64 + 128 * 4
    assert canvas_painted(page, ".card canvas")
    page.select_option("#sort", "dogs")
    values = page.eval_on_selector_all(
        "#layers .row[data-layer='conv4'] .card", "cs => cs.map(c => +c.dataset.selectivity)"
    )
    assert values == sorted(values, reverse=True) and len(values) == 128
    assert page.locator(".card b").count() == page.locator(".card").count()  # only the cards' own headings
    assert errors == []
