"""Explorer and atlas figures, measured in one run on this machine (README "Explorer"):

    python bench/explorer.py [--image PATH] [--data data/processed_data] [--ckpt pretrained] [--no-atlas]

index.html's size, its time to interactive and a channel switch in headless Chromium (/usr/bin/chromium),
visualize.py's time for one image with and without the page (also the first run for new weights, cache empty),
``python -m catdog.atlas patterns=only``, the atlas of data/test (time, peak memory, where the time went), the
page with that atlas and the patterns, and screenshots into docs/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Seconds, peak RSS (bytes) and stdout of ``python args``, which must succeed."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest of all children
        took = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            sys.exit(err.read()[-2000:])
        return took, usage.ru_maxrss * 1024, out.read()


def seconds(args: list[str], env: dict | None = None) -> float:
    return run(args, env)[0]


def browser_figures(index: Path, atlas: Path | None, switches: int = 20) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(index.as_uri() + "#conv3/17")
        page.wait_for_function("window.explorer && window.explorer.ready")
        ready_ms = page.evaluate("performance.now()")
        times = []
        for _ in range(switches):
            page.keyboard.press("ArrowRight")
            page.wait_for_function("document.getElementById('detail').dataset.ready !== undefined")
            page.wait_for_timeout(30)
            times.append(page.evaluate("window.explorer.lastSwitchMs"))
        page.goto(index.as_uri() + "#conv3/17")
        page.wait_for_function("window.explorer && window.explorer.ready")
        page.wait_for_timeout(300)
        page.screenshot(path=str(REPO / "docs" / "explorer.png"))
        figures = {"ready_ms": ready_ms, "switch_ms": sorted(times)[len(times) // 2], "switch_max_ms": max(times)}
        if atlas is not None:
            page.goto(atlas.as_uri())
            page.wait_for_function("window.atlas && window.atlas.ready", timeout=60000)
            figures["atlas_ready_ms"] = page.evaluate("performance.now()")
            page.select_option("#sort", "dogs")
            page.screenshot(path=str(REPO / "docs" / "atlas.png"))
        browser.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default=str(REPO / "data/processed_data/test/cats/cat.10010.jpg"))
    parser.add_argument("--data", default=str(REPO / "data/processed_data"))
    parser.add_argument("--ckpt", default="pretrained")
    parser.add_argument("--no-atlas", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    viz = [str(REPO / "visualize.py"), f"image={args.image}", f"ckpt={args.ckpt}", "atlas=none"]
    cold = {"XDG_CACHE_HOME": str(tmp / "cache")}
    seconds([*viz, f"out_dir={tmp / 'warmup'}", "explorer=false"])  # page cache, imports
    without = min(seconds([*viz, f"out_dir={tmp / 'a'}", "explorer=false"]) for _ in range(2))
    first = seconds([*viz, f"out_dir={tmp / 'b'}"], cold)  # new weights: nothing cached
    with_page = min(seconds([*viz, f"out_dir={tmp / 'c'}"], cold) for _ in range(2))
    size = (tmp / "c" / "index.html").stat().st_size
    print(
        f"visualize.py, one image: {without:.2f} s without index.html, {with_page:.2f} s with it "
        f"(+{100 * (with_page / without - 1):.0f}%); first run for new weights (empty cache): {first:.2f} s "
        f"(+{100 * (first / without - 1):.0f}%)"
    )
    print(f"index.html: {size / 1e6:.2f} MB (8 layers, {args.ckpt} weights, no atlas, no filter patterns)")
    patterns, _, out = run(["-m", "catdog.atlas", f"ckpt={args.ckpt}", "patterns=only"], cold)
    print(f"python -m catdog.atlas patterns=only: {patterns:.1f} s ({out.strip().splitlines()[-1]})")

    atlas_html = None
    if not args.no_atlas:
        command = [
            "-m", "catdog.atlas", f"ckpt={args.ckpt}", f"data.root={args.data}", "split=test",
            f"out_dir={tmp / 'atlas'}", "patterns=false",
        ]  # fmt: skip
        took, peak, out = run(command, cold)
        atlas_html = tmp / "atlas" / "atlas.html"
        import json

        images = json.loads((tmp / "atlas" / "atlas.json").read_text())["images"]
        report = next(line for line in out.splitlines() if " images in " in line)
        print(
            f"atlas: {images} images in {took:.1f} s (whole command), peak RSS {peak / 2**20:.0f} MB; "
            f"atlas.html {atlas_html.stat().st_size / 1e6:.2f} MB\n  its own report: {report}"
        )
        seconds([*viz[:-1], f"atlas={tmp / 'atlas'}", f"out_dir={tmp / 'd'}"], cold)  # patterns from the cache
        page = (tmp / "d" / "index.html").stat().st_size
        print(f"index.html with the atlas and the filter patterns: {page / 1e6:.2f} MB")
    figures = browser_figures(tmp / ("d" if atlas_html else "c") / "index.html", atlas_html)
    print(
        f"headless Chromium: interactive after {figures['ready_ms']:.0f} ms; channel switch median "
        f"{figures['switch_ms']:.1f} ms, max {figures['switch_max_ms']:.1f} ms"
        + (f"; atlas.html ready after {figures['atlas_ready_ms']:.0f} ms" if "atlas_ready_ms" in figures else "")
    )
    print(f"screenshots: docs/explorer.png{', docs/atlas.png' if atlas_html else ''}; files in {tmp}")


if __name__ == "__main__":
    main()
