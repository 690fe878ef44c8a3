"""The atlas page in a real browser: the system's headless Chromium, driven by Playwright."""

import json
import re
import time
from pathlib import Path

import pytest
import torch

from catdog.model import CatDogCNN
from catdog.views.channel_atlas import build_atlas, load_atlas, write_atlas

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium (apt-get install chromium)")


def page_data(path: Path) -> dict:
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def atlas_page(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = CatDogCNN(input_size=(64, 64)).eval()
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    names = [f"<b>{i}</b>&.jpg" for i in range(12)]  # names that must be escaped
    atlas = build_atlas(model, [(images, torch.arange(12) % 2, names)], k=3, data="<data>", source="test")
    folder = tmp_path_factory.mktemp("atlas")
    write_atlas(folder, atlas, links={"explorer": "explorer.html"})
    return folder / "atlas.html"


def test_atlas_page_cards_sorting_and_links(atlas_page):
    playwright = pytest.importorskip("playwright.sync_api")
    shown = page_data(atlas_page)["layers"]
    assert not any("patterns" in layer for layer in shown.values())  # the cards do not use them: not carried
    assert set(load_atlas(atlas_page.parent)["layers"]) == set(shown)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an unescaped name would alert
        page.on("request", lambda r: requests.append(r.url))
        page.goto(atlas_page.as_uri() + "#conv4/7")
        start = time.perf_counter()
        while not page.evaluate("Boolean(window.atlas && window.atlas.ready)"):  # the CSP forbids eval: poll
            assert time.perf_counter() - start < 30
            time.sleep(0.05)
        assert page.locator(".card").count() == 32 + 32 + 64 + 64 + 128 * 4
        painted = "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 == 3 && v)"
        assert page.eval_on_selector(".card canvas", painted)
        page.select_option("#sort", "dogs")
        values = page.eval_on_selector_all(
            "#layers .row[data-layer='conv4'] .card", "cs => cs.map(c => +c.dataset.selectivity)"
        )
        assert values == sorted(values, reverse=True) and len(values) == 128
        assert page.locator(".card b").count() == page.locator(".card").count()  # only the cards' own headings
        link = page.get_attribute(".card a", "href")
        assert link.startswith("explorer.html#image=%3Cb%3E")  # a crop opens its picture in the explorer
        assert errors == [] and all(u.startswith(("file:", "data:")) for u in requests)
        browser.close()
