"""The explorer page's speed in headless Chromium (/usr/bin/chromium), measured in one run on this machine:

    python bench/page.py [--ckpt pretrained] [--repeats 7] [--image PATH] [--screenshot docs/explorer.png]

Prints, as medians over ``--repeats`` (at least 5): open to interactive (a fresh tab: parse the page, start the
worker, unpack the weights, run the first picture, draw every layer), a forward pass of a 150 x 150 picture with
all 8 records (in the worker: the arithmetic alone, and the whole call from the page's side, drawing included),
Grad-CAM, and an ablation (one conv3 channel off: recomputed from conv3 on), and the page's size.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catdog.views.explorer import PageImage, explorer_data, known_patterns, write_explorer  # noqa: E402
from catdog.weights import load_weights  # noqa: E402

SAMPLE = REPO / "catdog" / "samples" / "cat.jpg"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_ready(page) -> None:
    while not page.evaluate("Boolean(window.catdog && window.catdog.ready)"):  # the page's CSP forbids eval: poll
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="pretrained")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--image", type=Path, default=SAMPLE)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    weights = load_weights(args.ckpt)
    model = weights.model()
    pixels = np.asarray(weights.preprocessing.image(args.image))
    rgba = np.concatenate([pixels, np.full((*pixels.shape[:2], 1), 255, np.uint8)], axis=2)
    h, w = pixels.shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "catdog.html"
        picture = PageImage(args.image.name, pixels)
        data = explorer_data(model, weights.preprocessing, "catdog", weights.source, [picture], **known_patterns(model))
        write_explorer(page_path, data)
        size = page_path.stat().st_size
        opened, forward, call, gradcam, ablation = [], [], [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                start = time.perf_counter()
                page.goto(page_path.as_uri())
                wait_ready(page)
                opened.append(time.perf_counter() - start)
                if args.screenshot and len(opened) == 1:
                    page.click(".tile[data-layer='conv2'][data-channel='14']")
                    page.wait_for_selector("#detail[data-ready='conv2/14']")
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path=str(args.screenshot), full_page=False)
                page.close()
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(page_path.as_uri())
            wait_ready(page)
            b64 = base64.b64encode(rgba.tobytes()).decode()
            for _ in range(args.repeats):
                r = page.evaluate(
                    """async ([b64, w, h]) => {
                      const raw = atob(b64), a = new Uint8ClampedArray(raw.length);
                      for (let i = 0; i < raw.length; i++) a[i] = raw.charCodeAt(i);
                      return window.catdog.run(new ImageData(a, w, h));
                    }""",
                    [b64, w, h],
                )
                forward.append(r["timing"]["forward"] / 1000)
                gradcam.append(r["timing"]["gradcam"] / 1000)
                call.append(r["ms"] / 1000)
            for c in range(args.repeats):
                r = page.evaluate("c => window.catdog.ablate({conv3: [c]})", c)
                ablation.append(r["ms"] / 1000)
            browser.close()
    rows = [
        ("page size (shipped weights and their patterns, one picture)", f"{size / 1e6:.2f} MB"),
        ("open to interactive (first picture shown)", f"{statistics.median(opened):.2f} s"),
        ("forward pass, 8 records (in the worker)", f"{statistics.median(forward):.2f} s"),
        ("Grad-CAM for dog and cat (in the worker)", f"{statistics.median(gradcam) * 1000:.0f} ms"),
        ("run(): picture to result, drawing included", f"{statistics.median(call):.2f} s"),
        ("ablation: one conv3 channel off, to result", f"{statistics.median(ablation):.2f} s"),
    ]
    print(f"Explorer page, headless Chromium, medians of {args.repeats}:\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
