"""The projector: embeddings at a layer, the neighbour figures, projector.json, the command and its page."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catdog import CatDogError
from catdog.model import CatDogCNN
from catdog.views.projector import (
    Embedder,
    layout_2d,
    load_projector,
    nearest,
    neighbour_figures,
    projector_record,
    thumbnails,
    write_projector,
)
from tests.conftest import REPO, make_tree

CHROMIUM = Path("/usr/bin/chromium")


def small_catdog() -> CatDogCNN:
    torch.manual_seed(0)
    return CatDogCNN(input_size=(64, 64)).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# --- the embedding ----------------------------------------------------------------------------------------------


def test_fc1_embedding_is_fc1_after_its_relu_and_the_logit_is_the_network_s():
    model, x = small_catdog(), images(6)
    features, logits = Embedder(model, "fc1")(x)
    with torch.no_grad():
        h = x
        for name, module in model.named_children():
            h = module(h)
            if name == "fc1":
                break
        expected_logits = model(x)[:, 0]
    assert features.shape == (6, 512) and (features >= 0).all() and (features == 0).any()  # after ReLU
    torch.testing.assert_close(features, h)
    torch.testing.assert_close(logits, expected_logits)
    assert hooks_left(model) == 0  # the recorder's hook is gone after every batch


@pytest.mark.parametrize("layer", ["conv2", "pool4"])
def test_conv_and_pool_layers_embed_as_channel_means(layer):
    model, x = small_catdog(), images(5)
    features, _ = Embedder(model, layer)(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        h = x
        for name, module in model.named_children():
            h = module(h)
            if name == layer:
                break
    assert features.shape == (5, h.shape[1])
    torch.testing.assert_close(features, h.mean((2, 3)))
    if layer == "conv2":
        assert (h >= 0).all()  # recorded after its ReLU, as the network computes it


@pytest.mark.parametrize("layer", ["conv9", "fc2", "conv*", ""])
def test_a_layer_that_is_no_place_for_a_map_is_refused_in_one_line(layer):
    with pytest.raises(CatDogError, match="does not exist here; give one of conv1, pool1, .*, pool4, fc1$"):
        Embedder(small_catdog(), layer)


def test_thumbnails_average_the_pixels_they_cover():
    pixels = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    pixels[0, :2, :2] = 200  # the top-left quarter bright
    small = thumbnails(pixels, 2)
    assert small.shape == (1, 2, 2, 3) and small.dtype == np.uint8
    assert small[0, 0, 0].tolist() == [200] * 3 and small[0, 1, 1].tolist() == [0] * 3


# --- the neighbour figures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_matches_a_full_sort(metric):
    x = np.random.default_rng(0).normal(size=(60, 7))
    got = nearest(x, 5, metric)
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - u @ u.T
    else:
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(got, np.argsort(d, axis=1)[:, :5])


def test_a_map_that_is_the_embedding_keeps_every_neighbourhood():
    points = np.random.default_rng(1).normal(size=(200, 2))
    labels = (points[:, 0] > 0).astype(int)
    f = neighbour_figures(points, points, labels, metric="euclidean")
    assert f["neighbours_kept"] == 1.0
    assert f["class_agreement_map"] == f["class_agreement_full"] > 0.8  # two half-planes: mostly alike
    # cosine at full size, euclidean in the map: directions with random lengths, laid out on the unit circle
    angles = np.random.default_rng(2).uniform(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angles), np.sin(angles)], 1)
    lengths = np.random.default_rng(3).uniform(0.1, 10, (200, 1))
    assert neighbour_figures(circle * lengths, circle, labels)["neighbours_kept"] == 1.0


def test_a_map_unrelated_to_the_embedding_keeps_what_chance_gives():
    rng = np.random.default_rng(4)
    n = 400
    f = neighbour_figures(rng.normal(size=(n, 16)), rng.normal(size=(n, 2)), rng.integers(0, 2, n))
    assert f["neighbours_kept"] == pytest.approx(20 / (n - 1), abs=0.015)  # a random 10 among the 20 of n - 1
    assert f["class_agreement_map"] == pytest.approx(0.5, abs=0.05)


def test_class_agreement_by_hand():
    line = np.array([[0.0], [1.0], [3.0], [6.0]])  # gaps 1, 2, 3: no ties
    f = neighbour_figures(line, np.hstack([line, np.zeros((4, 1))]), np.array([0, 0, 1, 1]), k=1, k_full=1,
                          metric="euclidean")  # fmt: skip
    # nearest: 0 -> 1 (same class), 1 -> 0 (same), 3 -> 1 (other), 6 -> 3 (same)
    assert f["class_agreement_map"] == f["class_agreement_full"] == 0.75 and f["neighbours_kept"] == 1.0


def test_figures_with_too_few_images():
    f = neighbour_figures(np.ones((1, 3)), np.zeros((1, 2)), np.array([0]))
    assert f["neighbours_kept"] is None and f["k"] == 0
    f = neighbour_figures(np.eye(3), np.eye(3)[:, :2], np.array([0, 1, 1]))
    assert (f["k"], f["k_full"]) == (2, 2) and f["neighbours_kept"] == 1.0


# --- the layout -------------------------------------------------------------------------------------------------


def test_tsne_layout_is_seeded_and_separates_two_clusters():
    pytest.importorskip("openTSNE")
    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(0, 1, (30, 8)) + 6, rng.normal(0, 1, (30, 8)) - 6])
    labels = np.repeat([0, 1], 30)
    first, settings = layout_2d(x, "tsne", seed=3, metric="euclidean", perplexity=10, threads=1)
    again, _ = layout_2d(x, "tsne", seed=3, metric="euclidean", perplexity=10, threads=1)
    assert first.shape == (60, 2) and settings["method"] == "tsne" and settings["perplexity"] == 10
    np.testing.assert_array_equal(first, again)
    assert neighbour_figures(x, first, labels, metric="euclidean")["class_agreement_map"] == 1.0


def test_tsne_lowers_a_perplexity_too_high_for_few_images():
    pytest.importorskip("openTSNE")
    positions, settings = layout_2d(np.random.default_rng(6).normal(size=(7, 4)), "tsne", threads=1)
    assert positions.shape == (7, 2) and settings["perplexity"] == 2.0


@pytest.mark.slow  # umap-learn compiles its numba code on first use (half a minute)
def test_umap_layout_is_seeded():
    pytest.importorskip("umap")
    x = np.random.default_rng(7).normal(size=(40, 8))
    first, settings = layout_2d(x, "umap", seed=1, n_neighbors=8)
    again, _ = layout_2d(x, "umap", seed=1, n_neighbors=8)
    assert first.shape == (40, 2) and settings["n_neighbors"] == 8
    np.testing.assert_array_equal(first, again)


def test_a_missing_layout_library_is_named_before_any_work(monkeypatch):
    import importlib.util

    from catdog.views.projector import require_library

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openTSNE" else real(name, *a))
    with pytest.raises(CatDogError, match=r"method=tsne needs openTSNE: pip install 'catdog\[projector\]'"):
        require_library("tsne")


def test_very_few_images_get_principal_components_and_unknown_methods_are_refused():
    positions, settings = layout_2d(np.array([[0.0, 0, 1], [0, 2, 1], [4, 0, 1]]), "tsne")
    assert settings["method"] == "pca" and positions.shape == (3, 2)
    assert layout_2d(np.ones((1, 4)), "umap")[0].tolist() == [[0.0, 0.0]]
    with pytest.raises(CatDogError, match="method must be one of tsne, umap"):
        layout_2d(np.ones((9, 4)), "pca")


# --- projector.json and the page --------------------------------------------------------------------------------

NAMES = [f"{'cats' if i % 2 == 0 else 'dogs'}/<b>{i}</b>&'x\".jpg" for i in range(12)]  # names to escape


def small_record(n: int = 12, fingerprint: str = "f" * 64) -> tuple[dict, np.ndarray]:
    """A record of ``n`` images laid out on a grid (no thumbnail covers another), images 4 and 7 misclassified,
    and smooth thumbnails (JPEG-friendly, as photographs are)."""
    labels = np.arange(n) % 2
    features = np.random.default_rng(8).normal(size=(n, 6)) + labels[:, None] * 4
    cols = 4 if n <= 12 else 68
    positions = np.stack([np.arange(n) % cols, np.arange(n) // cols], 1) * 10.0
    confidence = np.linspace(0.5, 3, n)
    logits = np.where(labels == 1, confidence, -confidence)
    logits[[4, 7]] *= -1
    files = NAMES[:n] if n <= len(NAMES) else [f"{'cats' if c == 0 else 'dogs'}/{i}.jpg" for i, c in enumerate(labels)]
    record = projector_record(
        files, labels, logits, features, positions, {"method": "tsne", "perplexity": 3},
        layer="fc1", data="/data/test", source="test weights", fingerprint=fingerprint,
        unreadable=["cats/bad.jpg"], metric="euclidean",
    )  # fmt: skip
    ramp = np.linspace(40, 220, 32).astype(np.uint8)
    tiles = np.stack([np.broadcast_to(ramp[None, :, None] // (1 + i % 3), (32, 32, 3)) for i in range(n)])
    return record, tiles.astype(np.uint8)


def test_projector_json_fields(tmp_path):
    record, tiles = small_record()
    json_path, html_path = write_projector(tmp_path, record, tiles)
    saved = json.loads(json_path.read_text())
    assert saved["format"] == "catdog-projector/1" and saved["fingerprint"] == "f" * 64
    assert saved["images"] == 12 and saved["layer"] == "fc1" and saved["dims"] == 6
    assert saved["unreadable"] == ["cats/bad.jpg"] and saved["class_counts"] == {"cats": 6, "dogs": 6}
    assert set(saved["figures"]) >= {"neighbours_kept", "class_agreement_map", "class_agreement_full", "k", "k_full"}
    point = saved["points"][1]
    assert set(point) == {"path", "label", "p_dog", "x", "y"}
    assert point["path"] == NAMES[1] and point["label"] == "dogs"
    assert point["p_dog"] == pytest.approx(1 / (1 + np.exp(-(0.5 + 2.5 / 11))), abs=1e-5)
    assert load_projector(tmp_path, expected="f" * 64)["points"] == saved["points"]


def test_the_page_is_one_offline_file(tmp_path):
    record, tiles = small_record()
    _, html_path = write_projector(tmp_path, record, tiles, explorer="explorer.html#image={path}")
    text = html_path.read_text()
    assert "default-src 'none'" in text and "Content-Security-Policy" in text
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)  # no file or URL is loaded
    assert text.count("data:image/jpeg;base64,") == 1  # ONE sprite sheet
    assert "<b>1</b>" not in text  # names ride as escaped JSON
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)[1])
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["sprite"]["src"].split(",", 1)[1]))))
    cols = data["sprite"]["cols"]
    assert data["sprite"]["size"] == 32 and sheet.shape == (-(-12 // cols) * 32, cols * 32, 3)
    r, c = divmod(5, cols)  # tile 5 where the page cuts it out, as JPEG keeps it
    assert np.abs(sheet[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32].astype(int) - tiles[5]).mean() < 4
    assert data["explorer"] == "explorer.html#image={path}"
    assert data["base"] == Path(os.path.relpath("/data/test", tmp_path)).as_posix()  # the images, from the page


def test_a_projector_of_other_weights_is_refused(tmp_path):
    record, tiles = small_record(fingerprint="a" * 64)
    write_projector(tmp_path, record, tiles)
    with pytest.raises(CatDogError, match=r"made for other weights .*python -m catdog.projector ckpt="):
        load_projector(tmp_path / "projector.json", expected="b" * 64)
    (tmp_path / "other.json").write_text('{"format": "catdog-atlas/1"}')
    with pytest.raises(CatDogError, match="is not a catdog projector"):
        load_projector(tmp_path / "other.json")
    with pytest.raises(CatDogError, match="not found; make one"):
        load_projector(tmp_path / "missing")


def test_find_projector_finds_one_of_the_same_weights_only(tmp_path, monkeypatch):
    from catdog.projector import default_out_dir, find_projector

    monkeypatch.chdir(tmp_path)
    record, tiles = small_record(fingerprint="c" * 64)
    write_projector(default_out_dir("none", "c" * 64), record, tiles)
    assert find_projector("none", "c" * 64) == Path("outputs/projector/cccccccccccccccc/projector.json")
    assert find_projector("none", "d" * 64) is None


# --- the command ------------------------------------------------------------------------------------------------


def project(tmp_path: Path, *overrides: str) -> int:
    from catdog.projector import main

    return main(["ckpt=none", "data.num_workers=0", f"out_dir={tmp_path / 'out'}", *overrides])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:skipped")  # the unreadable file is warned about: expected here
def test_the_command_maps_a_folder_and_skips_unreadable_files(tmp_path, capsys):
    pytest.importorskip("openTSNE")
    root = make_tree(tmp_path / "data", 1, 6)
    (root / "test" / "dogs" / "broken.jpg").write_bytes(b"not a picture")
    assert project(tmp_path, f"data.root={root}", "thumb=16") == 0
    out = capsys.readouterr().out
    assert re.search(r"12 images of .* \(1 unreadable file skipped\) at fc1 \(512 values each\) in [\d.]+ s", out)
    assert re.search(r"neighbours kept: [01]\.\d{3} .*\nclass agreement of the 10 nearest: [01]\.\d{3} in the map", out)
    saved = load_projector(tmp_path / "out")
    assert saved["images"] == 12 and saved["unreadable"] == ["dogs/broken.jpg"]
    assert saved["layout"]["method"] == "tsne" and saved["layout"]["seed"] == 0
    assert {p["path"] for p in saved["points"]} == {f"{c}/{c[:-1]}.{i}.jpg" for c in ("cats", "dogs") for i in range(6)}


@pytest.mark.parametrize(
    ("setup", "overrides", "message"),
    [
        ("tree", ["layer=conv9"], "error: layer='conv9' does not exist here; give one of conv1, "),
        ("empty", [], "error: class folder .*cats holds no images"),
        ("bad", [], r"error: no readable images under .* \(2 files could not be read\)"),
        ("tree", ["method=pca"], "error: method must be one of tsne, umap, got 'pca'"),
        ("tree", ["thumb=4"], "error: thumb must be a whole number of pixels from 8 to 128"),
    ],
)
@pytest.mark.filterwarnings("ignore:skipped")
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, overrides, message):
    root = tmp_path / "data"
    if setup == "tree":
        make_tree(root, 1, 1)
    else:
        for c in ("cats", "dogs"):
            (root / "test" / c).mkdir(parents=True)
            if setup == "bad":
                (root / "test" / c / "x.jpg").write_bytes(b"junk")
    assert project(tmp_path, f"data.root={root}", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(message, err[-1]) and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_python_m_catdog_projector_starts_as_the_other_commands(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "catdog.projector", "layer=nope", "ckpt=none", f"data.root={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    layers = "conv1, pool1, conv2, pool2, conv3, pool3, conv4, pool4, fc1"
    assert result.stderr.strip().splitlines() == [f"error: layer='nope' does not exist here; give one of {layers}"]


# --- the page in a browser --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("needs the system Chromium (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, html: Path, timeout_s: float = 15):
    """The page, once ``window.projector.ready``; its console errors and every request it made. Polled: the page's
    CSP forbids eval, which Playwright's wait_for_function needs."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an unescaped name would alert
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri())
    for _ in range(int(timeout_s * 50)):
        if page.evaluate("Boolean(window.projector && window.projector.ready)"):
            break
        page.wait_for_timeout(20)
    assert page.evaluate("window.projector.ready"), errors
    return page, errors, requests


def pixel(page, x: float, y: float) -> list[int]:
    return page.evaluate(
        """([x, y]) => { const c = document.getElementById('map'), r = c.getBoundingClientRect(), d = devicePixelRatio;
        return Array.from(c.getContext('2d').getImageData((x - r.left) * d, (y - r.top) * d, 1, 1).data); }""",
        [x, y],
    )


def test_page_renders_hovers_zooms_and_stays_offline(browser, tmp_path):
    record, tiles = small_record()
    _, html = write_projector(tmp_path, record, tiles, explorer="explorer.html#image={path}&n={index}")
    page, errors, requests = open_page(browser, html)
    api = page.evaluate("({points: projector.points, wrong: projector.misclassified, ms: projector.readyMs})")
    assert api["points"] == 12 and api["wrong"] == 2
    assert api["ms"] <= 2000  # interactive within 2 s of navigation
    assert page.text_content("#figures").startswith("neighbours kept: ")
    assert "class agreement:" in page.text_content("#figures")
    # hover: the file name (escaped: shown as text, never as markup) and p(dog)
    x, y = page.evaluate("projector.screenPosition(3)")
    assert pixel(page, x, y)[3] == 255  # a thumbnail is drawn there
    page.mouse.move(x, y)
    assert page.evaluate("projector.hovered()") == 3
    assert page.is_visible("#tip")
    assert page.text_content("#tip-name") == NAMES[3]
    assert page.text_content("#tip-p") == f"p(dog) {record['points'][3]['p_dog']:.3f}"
    # a click opens the image in the explorer: window.open is the hook's way out, caught here
    page.evaluate("window.open = (url) => { window.__opened = url; }")
    x, y = page.evaluate("projector.screenPosition(4)")
    page.mouse.click(x, y)
    path = Path(os.path.relpath("/data/test", tmp_path)).as_posix() + "/" + NAMES[4]
    assert page.evaluate("window.__opened") == f"explorer.html#image={urllib.parse.quote(path, safe=SAFE)}&n=4"
    # zoom with the wheel, around the cursor; pan by dragging
    view = page.evaluate("projector.view()")
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(100)
    zoomed = page.evaluate("projector.view()")
    assert zoomed["scale"] > view["scale"] * 1.5
    assert page.evaluate("projector.screenPosition(4)") == pytest.approx([x, y], abs=1)  # the point under the cursor
    centre = "(r => [r.x + r.width / 2, r.y + r.height / 2])(document.getElementById('map').getBoundingClientRect())"
    cx, cy = page.evaluate(centre)
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 40, steps=4)
    page.mouse.up()
    page.wait_for_timeout(50)
    panned = page.evaluate("projector.view()")
    assert (panned["x"] - zoomed["x"], panned["y"] - zoomed["y"]) == pytest.approx((60, 40), abs=1)
    assert page.evaluate("window.__opened").endswith("&n=4")  # a drag is not a click
    page.keyboard.press("0")
    assert page.evaluate("projector.view()") == pytest.approx(view)
    assert errors == []
    assert requests == [html.as_uri()]  # the page itself, nothing else


SAFE = "-_.!~*'()"  # what JavaScript's encodeURIComponent leaves as it is


def test_page_colour_toggle_and_misclassified_only(browser, tmp_path):
    record, tiles = small_record()
    _, html = write_projector(tmp_path, record, tiles)
    page, errors, _ = open_page(browser, html)
    by_class = page.evaluate("[0, 1, 4].map(projector.colourOf)")
    assert by_class[0] == by_class[2] != by_class[1]  # cats 0 and 4 alike (4 is misclassified: its corner says so)
    draws = page.evaluate("projector.draws()")
    page.check("input[name=colour][value=prediction]")
    page.wait_for_timeout(50)
    by_prediction = page.evaluate("[0, 1, 4].map(projector.colourOf)")
    assert len(set(by_prediction)) == 3 and by_prediction[0] != by_class[0]  # each its own p(dog)
    assert page.evaluate("projector.draws()") > draws
    x, y = page.evaluate("projector.screenPosition(0)")
    assert pixel(page, x, y)[3] == 255
    page.check("#wrong-only")
    page.wait_for_timeout(50)
    assert pixel(page, x, y)[3] < 255  # a correctly classified image fades
    x, y = page.evaluate("projector.screenPosition(7)")
    assert pixel(page, x, y)[3] == 255  # a misclassified one stays
    assert errors == []


@pytest.mark.slow
def test_a_page_of_4500_images_is_small_and_quick(browser, tmp_path):
    record, tiles = small_record(4500)
    tiles = np.random.default_rng(9).integers(0, 256, (4500, 32, 32, 3), dtype=np.uint8)  # worst case for JPEG
    _, html = write_projector(tmp_path, record, tiles)
    assert html.stat().st_size <= 15e6
    page, errors, requests = open_page(browser, html)
    assert page.evaluate("projector.readyMs") <= 2000 and errors == [] and len(requests) == 1


def test_a_link_to_a_point_centres_the_map_on_it_and_a_click_opens_the_file_in_the_explorer(browser, tmp_path):
    """The explorer and the atlas link to ``projector.html#point=<path in the data folder>``; the default click goes
    to ``explorer.html#image=<that path>``, which the explorer written beside the page opens."""
    record, tiles = small_record()
    _, html = write_projector(tmp_path, record, tiles, explorer="explorer.html#image={file}")
    page, errors, _ = open_page(browser, html)
    page.goto(html.as_uri() + "#point=" + urllib.parse.quote(NAMES[5], safe=""))
    for _ in range(250):
        if page.evaluate("Boolean(window.projector && window.projector.ready)"):
            break
        page.wait_for_timeout(20)
    assert page.evaluate("projector.focused") == 5 and page.evaluate("projector.hovered()") == 5
    centre = "(r => [r.width / 2, r.height / 2])(document.getElementById('map').getBoundingClientRect())"
    x, y = page.evaluate("projector.screenPosition(5)")
    box = page.evaluate("(r => [r.left, r.top])(document.getElementById('map').getBoundingClientRect())")
    assert [x - box[0], y - box[1]] == pytest.approx(page.evaluate(centre), abs=1)
    expected = "explorer.html#image=" + urllib.parse.quote(NAMES[5], safe=SAFE)
    assert page.evaluate("projector.explorerLink(5)") == expected
    page.evaluate("location.hash = '#point=nothing.jpg'")
    page.wait_for_timeout(100)
    assert "no image nothing.jpg in this map" in page.text_content("#status")
    assert errors == []


def test_visualize_links_a_picture_to_its_place_in_a_map_of_the_same_weights(tmp_path, monkeypatch, capsys):
    from catdog.visualize import main as visualize
    from catdog.weights import load_weights, weights_fingerprint
    from tests.test_explorer import page_data

    monkeypatch.chdir(tmp_path)
    data = make_tree(tmp_path / "data", 1, 6)
    weights = load_weights("pretrained")
    fp = weights_fingerprint(weights.model(), weights.preprocessing.to_dict())
    folder = data / "test"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    record, tiles = small_record(len(files), fingerprint=fp)
    record["data"] = str(folder)
    for point, name in zip(record["points"], files, strict=True):
        point["path"] = name
    write_projector(tmp_path / "outputs" / "projector" / fp[:16], record, tiles)
    picture = folder / files[1]
    assert visualize([f"image={picture}", "ckpt=pretrained", "out_dir=v"]) == 0, capsys.readouterr().err
    link = page_data(tmp_path / "v" / "index.html")["projector"]
    assert link == {"href": f"../outputs/projector/{fp[:16]}/projector.html", "points": {picture.name: files[1]}}
