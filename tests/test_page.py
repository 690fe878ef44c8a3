"""The explorer page in a real browser: the system's headless Chromium, driven by Playwright. The network runs in the
page; every number it shows is checked against PyTorch on the same input."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from catdog.model import CatDogCNN
from catdog.preprocess import INTERPOLATIONS, Preprocessing, resize
from catdog.views.explorer import PageImage, explorer_data, write_explorer
from catdog.views.network import page_state
from catdog.views.trace import trace
from catdog.weights import load_weights

CHROMIUM = Path("/usr/bin/chromium")
SAMPLES = Path(__file__).resolve().parents[1] / "catdog" / "samples"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats" / "train"  # beside the checkout
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium (apt-get install chromium)")
# headless, no sandbox (root), a fake webcam that needs no permission prompt, no background traffic to count
ARGS = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def real_photos(n: int) -> list[Path]:
    """The two sample photos, and up to ``n - 2`` more from the Kaggle folder beside the checkout, when it is there."""
    found = sorted(SAMPLES.glob("*.jpg"))
    if SHARED.is_dir():
        cats, dogs = sorted(SHARED.glob("cat.*.jpg"))[: n // 2], sorted(SHARED.glob("dog.*.jpg"))[: n // 2]
        found += [p for pair in zip(cats, dogs, strict=True) for p in pair][: n - len(found)]
    return found


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


class Opened:
    """A page opened in the browser, with the console errors and the requests it made."""

    def __init__(self, browser, path: Path, hash: str = "") -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        start = time.perf_counter()
        self.page.goto(path.as_uri() + hash)
        # the page's CSP forbids eval, which wait_for_function's string predicates need: poll instead
        while not self.page.evaluate("Boolean(window.catdog && window.catdog.ready)"):
            assert time.perf_counter() - start < 60, f"not ready: {self.errors}"
            time.sleep(0.05)
        self.seconds = time.perf_counter() - start

    def network_requests(self) -> list[str]:
        """Requests other than the page itself and its own data: and blob: URLs."""
        own = self.page.url.split("#")[0]
        return [u for u in self.requests if not u.startswith(("data:", "blob:")) and u.split("#")[0] != own]

    def run_pixels(self, pixels: np.ndarray) -> dict:
        """``catdog.run`` on an ImageData of the network's input size: the exact input, used as is."""
        h, w = pixels.shape[:2]
        rgba = np.concatenate([pixels, np.full((h, w, 1), 255, np.uint8)], axis=2)
        return self.page.evaluate(
            """async ([b64, w, h]) => {
              const raw = atob(b64), a = new Uint8ClampedArray(raw.length);
              for (let i = 0; i < raw.length; i++) a[i] = raw.charCodeAt(i);
              return window.catdog.run(new ImageData(a, w, h));
            }""",
            [base64.b64encode(rgba.tobytes()).decode(), w, h],
        )

    def run_file(self, data: bytes, name: str, mime: str, call: str = "run") -> dict | str:
        """``catdog.run`` (or ``preprocess``) on a File, as if dropped: the page decodes and resizes it."""
        return self.page.evaluate(
            f"""async ([b64, name, mime]) => {{
              const raw = atob(b64), a = new Uint8Array(raw.length);
              for (let i = 0; i < raw.length; i++) a[i] = raw.charCodeAt(i);
              return window.catdog.{call}(new File([a], name, {{type: mime}}));
            }}""",
            [base64.b64encode(data).decode(), name, mime],
        )

    def arrays(self) -> dict:
        raw = self.page.evaluate("window.catdog.arrays()")
        f32 = lambda s: np.frombuffer(base64.b64decode(s), dtype=np.float32)  # noqa: E731
        out = {"layers": {k: f32(v) for k, v in raw["layers"].items()}, "input": base64.b64decode(raw["input"])}
        if "gradcam" in raw:
            out["gradcam"] = {k: f32(v) for k, v in raw["gradcam"].items()}
        return out


def as_input(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().mul_(1 / 255)


def assert_matches(opened: Opened, result: dict, reference, model: nn.Module, atol_p: float = 1e-3) -> None:
    """Every recorded layer within 1e-4 of the layer's largest value, p(dog) within ``atol_p``, the same label,
    Grad-CAM within 1e-4."""
    arrays = opened.arrays()
    for name, record in reference.records.items():
        got = arrays["layers"][name].reshape(record.shape)
        scale = max(float(record.abs().max()), 1e-12)
        assert np.abs(got - record.numpy()).max() <= 1e-4 * scale, name
    assert abs(result["p_dog"] - reference.prediction["p_dog"]) <= atol_p
    assert result["label"] == reference.prediction["label"]
    if reference.gradcam is not None:
        for which in ("dog", "cat"):
            got = arrays["gradcam"][which].reshape(reference.gradcam[which].shape)
            assert np.abs(got - reference.gradcam[which].numpy()).max() <= 1e-4, which


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict:
    weights = load_weights("pretrained")
    model = weights.model()
    folder = tmp_path_factory.mktemp("page")
    data = explorer_data(model, weights.preprocessing, "shipped <b>weights</b>", weights.source)
    return {"weights": weights, "model": model, "path": write_explorer(folder / "catdog.html", data)}


@pytest.fixture(scope="module")
def shipped_page(browser, shipped) -> Opened:
    return Opened(browser, shipped["path"])


def test_the_page_of_the_shipped_weights_is_small_and_opens_offline(shipped, shipped_page):
    assert shipped["path"].stat().st_size <= 10_000_000
    assert shipped_page.page.text_content("#title") == "shipped <b>weights</b>"  # escaped, shown as text
    assert shipped_page.page.locator(".tile").count() == 32 * 2 + 64 * 2 + 128 * 4
    assert shipped_page.network_requests() == [] and shipped_page.errors == []
    csp = shipped_page.page.get_attribute("meta[http-equiv='Content-Security-Policy']", "content")
    assert "default-src 'none'" in csp and "connect-src" not in csp


@pytest.mark.parametrize("photo", real_photos(2), ids=lambda p: p.name)
def test_layers_prediction_and_gradcam_equal_pytorch(shipped, shipped_page, photo):
    weights, model = shipped["weights"], shipped["model"]
    pixels = np.asarray(weights.preprocessing.image(photo))
    result = shipped_page.run_pixels(pixels)
    reference = trace(model, as_input(pixels), gradcam_layer="conv4")
    assert_matches(shipped_page, result, reference, model)
    assert set(result["layers"]) == set(reference.records)
    assert result["layers"]["conv1"]["shape"] == [32, 148, 148]


@pytest.mark.slow
def test_twenty_real_photos_equal_pytorch(shipped, shipped_page):
    """fc1 travels as float16 (catdog.views.network.HALF_ABOVE): p(dog) stays within 1e-3 and no label moves."""
    photos = real_photos(20)
    if len(photos) < 20:
        pytest.skip("needs the Kaggle photos beside the checkout (../shared)")
    weights, model = shipped["weights"], shipped["model"]
    for photo in photos:
        pixels = np.asarray(weights.preprocessing.image(photo))
        reference = trace(model, as_input(pixels), gradcam_layer="conv4")
        assert_matches(shipped_page, shipped_page.run_pixels(pixels), reference, model)


@pytest.mark.slow
def test_a_folder_page_holds_each_input_losslessly_in_60_kb(browser, shipped, tmp_path):
    weights, model = shipped["weights"], shipped["model"]
    photos = real_photos(6)
    images = [PageImage(p.name, np.asarray(weights.preprocessing.image(p))) for p in photos]
    path = write_explorer(tmp_path / "folder.html", explorer_data(model, weights.preprocessing, "f", "", images))
    per_image = (path.stat().st_size - shipped["path"].stat().st_size) / len(photos)
    assert per_image <= 60_000, per_image
    opened = Opened(browser, path)
    assert opened.page.evaluate("window.catdog.entries()") == [p.name for p in photos]
    for image in images[:2]:
        result = opened.page.evaluate("name => window.catdog.open(name)", image.name)
        assert opened.arrays()["input"] == image.pixels.tobytes()
        reference = trace(model, as_input(image.pixels), gradcam_layer="conv4")
        assert_matches(opened, result, reference, model)
    assert opened.network_requests() == [] and opened.errors == []
    opened.page.close()


def test_ablation_equals_forward_hooks_and_clears(shipped, shipped_page):
    weights, model = shipped["weights"], shipped["model"]
    pixels = np.asarray(weights.preprocessing.image(SAMPLES / "dog.jpg"))
    before = shipped_page.run_pixels(pixels)
    off = {"conv3": [17, 3], "conv4": [5], "pool2": [0]}
    result = shipped_page.page.evaluate("off => window.catdog.ablate(off)", off)
    reference = trace(model, as_input(pixels), gradcam_layer="conv4", off=off)
    assert_matches(shipped_page, result, reference, model)
    assert result["p_dog_before"] == pytest.approx(before["p_dog"], abs=1e-9)
    assert np.all(shipped_page.arrays()["layers"]["conv3"].reshape(128, 34, 34)[[3, 17]] == 0)
    # a new picture keeps the channels off, and reports both numbers
    again = shipped_page.run_pixels(pixels[::-1].copy())
    flipped = trace(model, as_input(pixels[::-1].copy()), gradcam_layer="conv4", off=off)
    assert again["p_dog"] == pytest.approx(flipped.prediction["p_dog"], abs=1e-3)
    # "all but this one", then all on again
    only = shipped_page.page.evaluate("() => catdog.ablate({conv4: [...Array(128).keys()].filter(c => c !== 9)})")
    reference = trace(model, as_input(pixels[::-1].copy()), off={"conv4": [c for c in range(128) if c != 9]})
    assert only["p_dog"] == pytest.approx(reference.prediction["p_dog"], abs=1e-3)
    cleared = shipped_page.page.evaluate("() => window.catdog.ablate({})")
    assert cleared["p_dog"] == pytest.approx(again["p_dog_before"], abs=1e-9)
    with pytest.raises(Exception, match="no recorded layer fc9"):
        shipped_page.page.evaluate("() => window.catdog.ablate({fc9: [1]})")


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_pages(tmp_path_factory) -> dict[str, Path]:
    """A page per interpolation, of a small network at the seed's input size (quick to write and open)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 74 * 74, 1)).eval()
    folder = tmp_path_factory.mktemp("resize")
    pages = {}
    for interpolation in INTERPOLATIONS:
        data = explorer_data(model, Preprocessing(interpolation=interpolation), interpolation)
        pages[interpolation] = write_explorer(folder / f"{interpolation}.html", data)
    return pages


@pytest.mark.parametrize("interpolation", list(INTERPOLATIONS))
def test_the_page_resizes_as_pillow_to_the_last_bit(browser, small_pages, interpolation):
    """Given the same decoded pixels as PIL (a PNG: lossless), the page's network input equals PIL's resize."""
    opened = Opened(browser, small_pages[interpolation])
    rng = np.random.default_rng(0)
    for width, height in [(200, 200), (500, 375), (151, 149), (37, 301), (640, 480), (150, 150), (90, 120)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels = (pixels.astype(np.uint16).cumsum(axis=1) // np.arange(1, width + 1)[None, :, None]).astype(np.uint8)
        got = base64.b64decode(opened.run_file(png(pixels), "x.png", "image/png", call="preprocess"))
        expected = resize(Image.fromarray(pixels), (150, 150), interpolation)
        assert got == np.asarray(expected).tobytes(), (width, height)
    opened.page.close()


@pytest.mark.slow
def test_photos_the_browser_decodes_score_as_catdog_predict(shipped, shipped_page):
    """JPEG decoders differ a little: the page's input of 200 photos, scored by PyTorch, against PIL's (predict)."""
    if not SHARED.is_dir():
        pytest.skip("needs the Kaggle photos beside the checkout (../shared)")
    weights, model = shipped["weights"], shipped["model"]
    photos = sorted(SHARED.glob("*.jpg"))[::100][:200]
    page_inputs, pil_inputs = [], []
    for photo in photos:
        b64 = shipped_page.run_file(photo.read_bytes(), photo.name, "image/jpeg", call="preprocess")
        page_inputs.append(np.frombuffer(base64.b64decode(b64), np.uint8).reshape(150, 150, 3))
        pil_inputs.append(np.asarray(weights.preprocessing.image(photo)))
    with torch.no_grad():
        p_page = torch.sigmoid(model(torch.cat([as_input(p) for p in page_inputs]))[:, 0]).numpy()
        p_pil = torch.sigmoid(model(torch.cat([as_input(p) for p in pil_inputs]))[:, 0]).numpy()
    close = np.abs(p_page - p_pil) <= 0.02
    same = (p_page >= 0.5) == (p_pil >= 0.5)
    print(f"worst |p(dog) page - predict| over {len(photos)} photos: {np.abs(p_page - p_pil).max():.4f}")
    assert close.mean() >= 0.99 and same.mean() >= 0.99


@pytest.mark.slow  # a page of its own and a walk through it: the fast lane keeps the numerical checks
def test_any_sequential_cnn_and_a_smaller_catdog(browser, tmp_path):
    torch.manual_seed(1)
    odd = nn.Sequential(
        nn.Conv2d(3, 5, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(5, 6, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(6 * 9 * 9, 8), nn.ReLU(), nn.Linear(8, 1),
    ).eval()  # fmt: skip
    small = CatDogCNN(input_size=(64, 64)).eval()
    rng = np.random.default_rng(2)
    for name, model, size, layer in (("odd", odd, (75, 75), "3"), ("small", small, (64, 64), "conv4")):
        pre = Preprocessing(image_size=size)
        path = write_explorer(tmp_path / f"{name}.html", explorer_data(model, pre, name, gradcam_layer=layer))
        opened = Opened(browser, path)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        reference = trace(model, as_input(pixels), gradcam_layer=layer)
        assert_matches(opened, opened.run_pixels(pixels), reference, model)
        with torch.no_grad():  # the page holds fc1 in float32 here: below HALF_ABOVE
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in page_state(model, opened.page.evaluate(
                "window.catdog.network")).items())  # fmt: skip
        opened.page.close()


def test_a_page_responds_while_the_network_runs(shipped_page):
    """The arithmetic runs in a Web Worker: the main thread answers during a forward pass."""
    latency = shipped_page.page.evaluate(
        """async () => {
          const rgb = new Uint8ClampedArray(150 * 150 * 4).fill(120);
          const running = window.catdog.run(new ImageData(rgb, 150, 150));
          const t0 = performance.now();
          await new Promise(r => setTimeout(r, 0));
          const waited = performance.now() - t0;
          await running;
          return waited;
        }"""
    )
    assert latency < 100


@pytest.mark.slow
def test_bad_files_and_a_refused_webcam_are_one_line_and_the_picture_stays(browser, shipped):
    opened = Opened(browser, shipped["path"])
    page = opened.page
    page.set_input_files("#pick", str(SAMPLES / "cat.jpg"))
    page.wait_for_selector("#status:has-text('cat.jpg: cat')")
    before = page.evaluate("window.catdog.arrays().input")
    page.set_input_files("#pick", files=[{"name": "notes<b>.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_selector("#status:has-text('notes<b>.txt is not an image')")
    page.set_input_files("#pick", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8junk"}])
    page.wait_for_selector("#status:has-text('cannot use broken.jpg')")
    assert page.evaluate("window.catdog.arrays().input") == before
    assert page.locator("#status b").count() == 0  # the name was shown as text
    page.evaluate(
        "() => { navigator.mediaDevices.getUserMedia = async () => { throw new DOMException('', 'NotAllowedError') } }"
    )
    page.click("#webcam")
    page.wait_for_selector("#status:has-text('the webcam was refused')")
    assert opened.network_requests() == []
    assert opened.errors == []
    page.close()


@pytest.mark.slow
def test_a_photo_and_the_fake_webcam_run_offline(browser, shipped):
    opened = Opened(browser, shipped["path"])
    page = opened.page
    page.set_input_files("#pick", str(SAMPLES / "dog.jpg"))
    page.wait_for_selector("#status:has-text('dog.jpg: dog')")
    assert page.evaluate("window.catdog.entries()") == ["dog.jpg"]
    page.click("#webcam")
    start = time.perf_counter()
    while page.evaluate("window.catdog.frames || 0") < 2:
        assert time.perf_counter() - start < 30, opened.errors
        time.sleep(0.1)
    page.click("#pause")
    assert page.text_content("#pause") == "Resume"
    page.evaluate("window.catdog.stopWebcam()")
    assert opened.network_requests() == [] and opened.errors == []
    page.close()


@pytest.mark.slow
def test_links_keys_and_the_channel_detail(browser, shipped):
    opened = Opened(browser, shipped["path"], "#conv3/17")
    page = opened.page
    opened.run_file((SAMPLES / "cat.jpg").read_bytes(), "cat.jpg", "image/jpeg")
    page.wait_for_selector("#detail[data-ready='conv3/17']")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#detail[data-ready='conv3/18']")
    page.keyboard.press("ArrowDown")
    page.wait_for_selector("#detail[data-ready='pool3/18']")
    assert page.url.endswith("#image=cat.jpg&pool3/18")  # the address keeps the picture and the channel
    page.click("#toggle-channel")
    page.wait_for_selector("#ablation:not([hidden])")
    assert "1 channel switched off" in page.text_content("#ablation-text")
    assert "changed by" in page.text_content("#head-conv4")
    page.check("input[name=view][value=change]")
    assert opened.errors == []
    page.close()


@pytest.mark.slow
def test_the_page_shows_the_attributions_python_made_for_its_pictures(browser, shipped, tmp_path):
    weights, model = shipped["weights"], shipped["model"]
    pixels = np.asarray(weights.preprocessing.image(SAMPLES / "dog.jpg"))
    maps = {"gradcam": {"dog": np.full((150, 150), 200, np.uint8), "cat": np.zeros((150, 150), np.uint8)}}
    data = explorer_data(model, weights.preprocessing, "a", "", [PageImage("dog.jpg", pixels, maps)])
    opened = Opened(browser, write_explorer(tmp_path / "a.html", data))
    assert opened.page.locator("#attributions img").count() == 2
    assert opened.page.get_attribute("#attributions img", "alt") == "gradcam dog"
    assert opened.errors == []
    opened.page.close()


@pytest.mark.slow
def test_a_link_to_a_picture_opens_it_from_the_folder_the_user_opens(browser, shipped, tmp_path):
    """An atlas crop or a projector point links to ``explorer.html#image=cats/c.jpg``: the page asks for the folder
    (a page opened from disk cannot read the user's files by itself), then shows that picture."""
    folder = tmp_path / "test"
    for label, name in (("cats", "a.jpg"), ("cats", "c.jpg"), ("dogs", "d.jpg")):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / name).write_bytes((SAMPLES / ("cat.jpg" if label == "cats" else "dog.jpg")).read_bytes())
    opened = Opened(browser, shipped["path"], "#image=cats%2Fc.jpg")
    page = opened.page
    assert "cats/c.jpg: open the folder that holds it" in page.text_content("#status")
    page.set_input_files("#pick-folder", str(folder))
    page.wait_for_selector("#status:has-text('c.jpg: cat')")
    assert page.evaluate("window.catdog.entries()") == ["test/cats/a.jpg", "test/cats/c.jpg", "test/dogs/d.jpg"]
    assert page.locator("#strip button.sel").get_attribute("title") == "test/cats/c.jpg"
    assert opened.errors == []
    page.close()
