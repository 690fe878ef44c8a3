"""Peak memory of ``visualize.py`` over a folder of N images, for a small and a large N, in one run.

    python bench/visualize_memory.py [--small 50] [--large 500]

Recorded tensors and figures are freed image by image, so the peak RSS should not grow with N.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def make_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        (folder / f"img{i:04d}.jpg").write_bytes(buffer.getvalue())


def peak_rss_mib(folder: Path, out: Path) -> tuple[float, float]:
    command = [sys.executable, str(REPO / "visualize.py"), f"image={folder}", "ckpt=none", f"out_dir={out}"]
    started = time.perf_counter()
    kib = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True).stdout
    return int(kib) / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--large", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in (args.small, args.large):
            make_images(Path(tmp) / f"in{n}", n)
            rss, seconds = peak_rss_mib(Path(tmp) / f"in{n}", Path(tmp) / f"out{n}")
            rows.append((n, rss, seconds))
    print("| images | peak RSS (MiB) | seconds | s/image |\n|---|---|---|---|")
    for n, rss, seconds in rows:
        print(f"| {n} | {rss:.0f} | {seconds:.1f} | {seconds / n:.2f} |")
    print(f"peak RSS ratio, {args.large} / {args.small} images: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
