"""``python -m catdog.predict`` over a folder of JPEGs against the seed's ``model.predict`` over
``flow_from_directory`` of the same folder, each timed as a whole process (imports included), in one run: the sides
interleaved, ``--repeat`` times each, medians reported; catdog in float32 and with precision=bf16-mixed; and catdog's
peak memory over the folder and over one five times larger (the same files, linked again).

    python bench/predict.py --images /path/to/kaggle/train [--n 2500] [--repeat 3] [--keras-python PYTHON]
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side, interleaved; medians reported")
    parser.add_argument("--keras-python", default=str(REPO / ".venv-keras" / "bin" / "python"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = link_images(args.images, Path(tmp) / "flow" / "unlabelled", args.n)
        large = link_images(args.images, Path(tmp) / "large", args.n, copies=5)
        ours = [sys.executable, "-m", "catdog.predict", f"ckpt={args.ckpt}", "quiet=true", f"out={Path(tmp) / 'p.csv'}"]
        commands = {"float32": [*ours, f"image={folder}"], "bf16": [*ours, f"image={folder}", "precision=bf16-mixed"]}
        if Path(args.keras_python).exists():
            peer = [args.keras_python, str(REPO / "bench" / "keras_peer.py"), "predict", "--folder", str(folder.parent)]
            commands["keras"] = peer
        seconds = {name: [] for name in commands}
        rss = 0.0
        for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits every side alike
            for name, command in commands.items():
                wall, peak = timed(command)
                seconds[name].append(wall)
                rss = max(rss, peak) if name == "float32" else rss
        large_seconds, large_rss = timed([*ours, f"image={large}"])
    n = args.n
    median = {name: statistics.median(times) for name, times in seconds.items()}
    spread = {name: f"{min(times):.1f}-{max(times):.1f}" for name, times in seconds.items()}
    print(f"medians of {args.repeat} interleaved runs (range in brackets)\n")
    print("| measurement | result |\n|---|---|")
    keras = median.get("keras")
    if keras is not None:
        print(
            f"| Keras seed: model.predict over flow_from_directory, {n} JPEGs, whole process | "
            f"{keras:.1f} s [{spread['keras']}] ({n / keras:.0f} img/s) |"
        )
    for name, label in (
        ("float32", f"python -m catdog.predict, {n} JPEGs, whole process"),
        ("bf16", "the same, precision=bf16-mixed"),
    ):
        ratio = f"; {keras / median[name]:.2f}x Keras's speed" if keras else ""
        print(f"| {label} | {median[name]:.1f} s [{spread[name]}] ({n / median[name]:.0f} img/s{ratio}) |")
    print(f"| python -m catdog.predict, {5 * n} JPEGs | {large_seconds:.1f} s ({5 * n / large_seconds:.0f} img/s) |")
    print(f"| peak memory, {n} and {5 * n} images | {rss:.0f} MiB, {large_rss:.0f} MiB (ratio {large_rss / rss:.2f}) |")


if __name__ == "__main__":
    main()
