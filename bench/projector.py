"""The projector's layout, measured in one run on this machine (docs/projector.md):

    python bench/projector.py [--data data/processed_data] [--split test] [--ckpt pretrained] [--layer fc1]
                              [--no-layouts] [--no-command] [--screenshot docs/projector.jpg]

Embeds every image of ``data/split`` once (cached in outputs/bench/), then lays the embedding out with openTSNE
and with UMAP at a few settings, each in a fresh process (so import and compile times count, as they do for a
user's command), and prints a table: the seconds, the two figures that ``python -m catdog.projector`` prints
(neighbours kept: the share of each image's 10 nearest in the map among its 20 nearest in the embedding; the
10-nearest class agreement in the map against in the embedding) and scikit-learn's trustworthiness at 10. Then
runs ``python -m catdog.projector`` end to end (wall and CPU seconds) and measures its page: size, time to
interactive in headless Chromium (/usr/bin/chromium) and network requests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNS = [  # (label, settings for catdog.views.projector.layout_2d)
    ("openTSNE, perplexity 30", {"method": "tsne", "perplexity": 30}),
    ("openTSNE, perplexity 50", {"method": "tsne", "perplexity": 50}),
    ("UMAP, n_neighbors 15, min_dist 0.1", {"method": "umap", "n_neighbors": 15, "min_dist": 0.1}),
    ("UMAP, n_neighbors 30, min_dist 0.1", {"method": "umap", "n_neighbors": 30, "min_dist": 0.1}),
    ("UMAP, n_neighbors 15, min_dist 0.5", {"method": "umap", "n_neighbors": 15, "min_dist": 0.5}),
]


def embed(data: Path, ckpt: str, layer: str, cache: Path) -> Path:
    """fc1 (or ``layer``) vectors, labels and the seconds it took, of every image under ``data``; cached."""
    if cache.is_file():
        return cache
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from catdog.data import image_folder
    from catdog.preprocess import collate_readable, default_workers, scaled
    from catdog.views.projector import Embedder
    from catdog.weights import load_weights

    start = time.perf_counter()
    weights = load_weights(ckpt)
    model = weights.model()
    embedder = Embedder(model, layer)
    model.to(memory_format=torch.channels_last)
    listing = image_folder(data, weights.preprocessing)
    loader = DataLoader(listing, batch_size=64, num_workers=default_workers(), collate_fn=collate_readable)
    features, labels = [], []
    for pixels, indices, _ in loader:
        features.append(embedder(scaled(pixels).contiguous(memory_format=torch.channels_last))[0].numpy())
        labels += [listing.targets[i] for i in indices]
    cache.parent.mkdir(parents=True, exist_ok=True)
    took = time.perf_counter() - start
    np.savez(cache, features=np.concatenate(features), labels=np.array(labels), seconds=took)
    return cache


def one(cache: Path, settings: dict) -> dict:
    """In a fresh process: import the library, lay out, measure (the figures are not part of the time)."""
    start = time.perf_counter()
    import numpy as np

    from catdog.views.projector import layout_2d, neighbour_figures

    settings = dict(settings)
    repeat = settings.pop("repeat", False)
    saved = np.load(cache)
    features, labels = saved["features"], saved["labels"]
    begin, cpu = time.perf_counter(), time.process_time()
    positions, used = layout_2d(features, seed=0, threads=os.cpu_count(), **settings)
    layout_s, layout_cpu = time.perf_counter() - begin, time.process_time() - cpu
    figures = neighbour_figures(features, positions, labels)
    from sklearn.manifold import trustworthiness

    trust = trustworthiness(features, positions, n_neighbors=10, metric="cosine")
    again = None
    if repeat:  # seeded: a second run in the same process must give the same map
        again = float(np.abs(layout_2d(features, seed=0, threads=os.cpu_count(), **settings)[0] - positions).max())
    return {**figures, "layout_s": layout_s, "layout_cpu": layout_cpu, "process_s": time.perf_counter() - start,
            "trust": float(trust), "used": used, "same_again": again}  # fmt: skip


def page_figures(html: Path, screenshot: Path | None = None) -> dict:
    """Size, and milliseconds from navigation to ``window.projector.ready`` in headless Chromium (median of 3);
    a screenshot of the page, zoomed in a little, with the tooltip of one misclassified image."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            page.on("request", lambda r, requests=requests: requests.append(r.url))
            page.goto(html.as_uri())
            for _ in range(600):  # the page's CSP forbids eval, which wait_for_function needs: poll instead
                if page.evaluate("window.projector && window.projector.ready"):
                    break
                page.wait_for_timeout(10)
            times.append(page.evaluate("window.projector.readyMs"))
            if screenshot and len(times) == 3:
                page.mouse.move(700, 560)
                page.mouse.wheel(0, -700)
                page.wait_for_timeout(300)
                shown = page.evaluate("window.projector.shownMisclassified()")
                if shown >= 0:
                    x, y = page.evaluate(f"window.projector.screenPosition({shown})")
                    page.mouse.move(x, y)
                    page.wait_for_timeout(200)
                jpeg = {"quality": 80} if screenshot.suffix.lower() in (".jpg", ".jpeg") else {}  # photographs
                page.screenshot(path=str(screenshot), **jpeg)
            page.close()
        browser.close()
    return {"bytes": html.stat().st_size, "ready_ms": sorted(times)[1], "requests": len(requests) - 1}


def command(folder: Path, ckpt: str, layer: str, out_dir: Path) -> tuple[float, float, float, str]:
    """``python -m catdog.projector`` end to end, as a user runs it: wall seconds, CPU seconds (its own and its
    loader workers'), its own peak memory in bytes, and what it printed."""
    args = [sys.executable, "-m", "catdog.projector", f"ckpt={ckpt}", f"data.root={folder.parent}",
            f"split={folder.name}", f"layer={layer}", f"out_dir={out_dir}"]  # fmt: skip
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # its rusage: itself and the workers it waited for
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            sys.exit(err.read()[-2000:])
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/processed_data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ckpt", default="pretrained")
    parser.add_argument("--layer", default="fc1")
    parser.add_argument("--no-layouts", action="store_true", help="skip the table of layouts")
    parser.add_argument("--no-command", action="store_true", help="skip the end-to-end run of the command")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page there (docs/projector.jpg)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one layout run, in its own process
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.cache, json.loads(args.one))))
        return
    folder = Path(args.data).resolve() / args.split
    key = hashlib.sha256(f"{folder}|{args.ckpt}|{args.layer}".encode()).hexdigest()[:12]
    cache = REPO / "outputs" / "bench" / f"projector_{args.layer}_{key}.npz"
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start")
    if not args.no_layouts:
        import numpy as np

        saved = np.load(embed(folder, args.ckpt, args.layer, cache))
        n, dims = saved["features"].shape
        print(f"{n} images of {folder} at {args.layer} ({dims} values), ckpt={args.ckpt}")
        print()
        print("| layout | layout: wall s (CPU s) | whole process: wall s | neighbours kept (10 in 20) | class "
              "agreement, map (embedding) | trustworthiness@10 | same map when rerun |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for label, settings in RUNS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps({**settings, "repeat": True}), "--cache", str(cache)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode:
                print(f"| {label} | failed: {out.stderr.strip().splitlines()[-1]} | | | | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            same = "yes" if r["same_again"] == 0 else f"no (moved up to {r['same_again']:.2g})"
            agreement = f"{r['class_agreement_map']:.3f} ({r['class_agreement_full']:.3f})"
            print(f"| {label} | {r['layout_s']:.1f} ({r['layout_cpu']:.1f}) | {r['process_s']:.1f} | "
                  f"{r['neighbours_kept']:.3f} | {agreement} | {r['trust']:.3f} | {same} |")  # fmt: skip
        print(f"\nload average {os.getloadavg()[0]:.2f}")
    out_dir = REPO / "outputs" / "bench" / "projector"
    if not args.no_command:
        wall, cpu, peak, printed = command(folder, args.ckpt, args.layer, out_dir)
        print(f"\npython -m catdog.projector: {wall:.1f} s wall, {cpu:.1f} s CPU (with its loader workers), peak "
              f"memory {peak / 1e9:.2f} GB; load average {os.getloadavg()[0]:.2f} after it. It printed:\n"
              f"{printed.rstrip()}")  # fmt: skip
    html = out_dir / "projector.html"
    if html.is_file():
        p = page_figures(html, args.screenshot)
        print(f"\n{html}: {p['bytes'] / 1e6:.2f} MB, interactive {p['ready_ms']:.0f} ms after navigation (median of "
              f"3, headless Chromium), {p['requests']} network requests besides the page")  # fmt: skip


if __name__ == "__main__":
    main()
