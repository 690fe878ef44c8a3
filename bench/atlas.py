"""visualize.py and the atlas, measured in one run on this machine (the explorer page itself: bench/page.py):

    python bench/atlas.py [--image PATH] [--data data/processed_data] [--ckpt pretrained] [--no-atlas]

visualize.py's time for one image with and without the explorer page, ``python -m catdog.atlas patterns=only``
(every feature visualisation: from the shipped file for the shipped weights), the atlas of data/test (time, peak
memory, where the time went), the page with that atlas, and the atlas page's screenshot into docs/atlas.png.
"""

from __future__ import annotations

import argparse
import json
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


def atlas_screenshot(atlas: Path) -> float:
    """Seconds until atlas.html is ready in headless Chromium; its screenshot, sorted dogs first, into docs/."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        start = time.perf_counter()
        page.goto(atlas.as_uri())
        while not page.evaluate("Boolean(window.atlas && window.atlas.ready)"):  # its CSP forbids eval: poll
            time.sleep(0.02)
        ready = time.perf_counter() - start
        page.select_option("#sort", "dogs")
        page.screenshot(path=str(REPO / "docs" / "atlas.png"))
        browser.close()
    return ready


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="sample:dog")
    parser.add_argument("--data", default=str(REPO / "data/processed_data"))
    parser.add_argument("--ckpt", default="pretrained")
    parser.add_argument("--no-atlas", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    viz = [str(REPO / "visualize.py"), f"image={args.image}", f"ckpt={args.ckpt}", "atlas=none"]
    cold = {"XDG_CACHE_HOME": str(tmp / "cache")}
    seconds([*viz, f"out_dir={tmp / 'warmup'}", "explorer=false"])  # page cache, imports
    without = min(seconds([*viz, f"out_dir={tmp / 'a'}", "explorer=false"]) for _ in range(2))
    with_page = min(seconds([*viz, f"out_dir={tmp / 'c'}"], cold) for _ in range(2))
    size = (tmp / "c" / "index.html").stat().st_size
    print(
        f"visualize.py, one image: {without:.2f} s without index.html, {with_page:.2f} s with it "
        f"(+{100 * (with_page / without - 1):.0f}%); index.html {size / 1e6:.2f} MB"
    )
    patterns, _, out = run(["-m", "catdog.atlas", f"ckpt={args.ckpt}", "patterns=only"], cold)
    print(f"python -m catdog.atlas patterns=only: {patterns:.1f} s ({out.strip().splitlines()[-1]})")
    if args.no_atlas:
        return
    command = [
        "-m", "catdog.atlas", f"ckpt={args.ckpt}", f"data.root={args.data}", "split=test",
        f"out_dir={tmp / 'atlas'}", "patterns=false",
    ]  # fmt: skip
    took, peak, out = run(command, cold)
    atlas_html = tmp / "atlas" / "atlas.html"
    images = json.loads((tmp / "atlas" / "atlas.json").read_text())["images"]
    report = next(line for line in out.splitlines() if " images in " in line)
    print(
        f"atlas: {images} images in {took:.1f} s (whole command), peak RSS {peak / 2**20:.0f} MB; "
        f"atlas.html {atlas_html.stat().st_size / 1e6:.2f} MB\n  its own report: {report}"
    )
    seconds([*viz[:-1], f"atlas={tmp / 'atlas'}", f"out_dir={tmp / 'd'}"], cold)
    print(f"index.html with the atlas: {(tmp / 'd' / 'index.html').stat().st_size / 1e6:.2f} MB")
    ready = atlas_screenshot(atlas_html)
    print(f"atlas.html ready in headless Chromium after {ready:.2f} s; docs/atlas.png; files in {tmp}")


if __name__ == "__main__":
    main()
