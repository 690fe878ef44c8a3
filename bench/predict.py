"""``python -m catdog.predict`` over a folder of JPEGs against the seed's ``model.predict`` over
``flow_from_directory`` of the same folder, each timed as a whole process (imports included), in one run; and
catdog's peak memory over the folder and over one five times larger (the same files, linked again); catdog in float32
and with precision=bf16-mixed.

    python bench/predict.py --images /path/to/kaggle/train [--n 2500] [--keras-python .venv-keras/bin/python]
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
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL,"
    " stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def link_images(images: Path, dest: Path, n: int, copies: int = 1) -> Path:
    """``n`` JPEGs of ``images`` (cats and dogs alike), linked ``copies`` times under new names into ``dest``."""
    dest.mkdir(parents=True)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
    for copy in range(copies):
        for path in files:
            target = dest / f"{copy}_{path.name}"
            try:
                os.link(path, target)
            except OSError:
                target.write_bytes(path.read_bytes())
    return dest


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command`` run as a child process."""
    started = time.perf_counter()
    kib = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, int(kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEGs (e.g. Kaggle's train/)")
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--ckpt", default="pretrained")
    parser.add_argument("--keras-python", default=str(REPO / ".venv-keras" / "bin" / "python"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = link_images(args.images, Path(tmp) / "flow" / "unlabelled", args.n)
        large = link_images(args.images, Path(tmp) / "large", args.n, copies=5)
        ours = [sys.executable, "-m", "catdog.predict", f"ckpt={args.ckpt}", "quiet=true"]
        seconds, rss = timed([*ours, f"image={folder}", f"out={Path(tmp) / 'p.csv'}"])
        bf16_seconds, _ = timed([*ours, f"image={folder}", f"out={Path(tmp) / 'b.csv'}", "precision=bf16-mixed"])
        large_seconds, large_rss = timed([*ours, f"image={large}", f"out={Path(tmp) / 'large.csv'}"])
        keras_seconds = None
        if Path(args.keras_python).exists():
            peer = [args.keras_python, str(REPO / "bench" / "keras_peer.py"), "predict", "--folder", str(folder.parent)]
            keras_seconds, _ = timed(peer)
    n = args.n
    print("| measurement | result |\n|---|---|")
    if keras_seconds is not None:
        print(
            f"| Keras seed: model.predict over flow_from_directory, {n} JPEGs, whole process | "
            f"{keras_seconds:.1f} s ({n / keras_seconds:.0f} img/s) |"
        )
    ratio = f" ({keras_seconds / seconds:.2f}x Keras's speed)" if keras_seconds else ""
    print(f"| python -m catdog.predict, {n} JPEGs, whole process | {seconds:.1f} s ({n / seconds:.0f} img/s){ratio} |")
    ratio = f" ({keras_seconds / bf16_seconds:.2f}x Keras's speed)" if keras_seconds else ""
    print(f"| the same, precision=bf16-mixed | {bf16_seconds:.1f} s ({n / bf16_seconds:.0f} img/s){ratio} |")
    print(f"| python -m catdog.predict, {5 * n} JPEGs | {large_seconds:.1f} s ({5 * n / large_seconds:.0f} img/s) |")
    print(f"| peak memory, {n} and {5 * n} images | {rss:.0f} MiB, {large_rss:.0f} MiB (ratio {large_rss / rss:.2f}) |")


if __name__ == "__main__":
    main()
