"""How two checkpoints' layers differ on the same images: the README's "seed vs best" section.

    python docs/compare_models.py SEED.ckpt BEST.ckpt /path/to/processed_data/test [--n 200] [--figure out.png]
        [--images cats/cat.10021.jpg dogs/dog.10028.jpg]

Prints, per conv layer and model, the share of channels that are silent (all zeros after ReLU) on an image,
averaged over ``--n`` test images, and how many channels are silent on every one of them (dead units); writes a
figure with both models' Grad-CAM maps (rows: image x model) for ``--images``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catdog.hooks import record_activations  # noqa: E402
from catdog.preprocess import Preprocessing, to_tensor  # noqa: E402
from catdog.views.activations import gradcam_page  # noqa: E402
from catdog.views.plots import below, save_png, with_title  # noqa: E402
from catdog.views.trace import trace  # noqa: E402
from catdog.weights import load_weights  # noqa: E402


def silence(model, preprocessing: Preprocessing, paths: list[Path]) -> dict[str, tuple[float, int, int]]:
    """Per conv layer: mean share of channels silent on an image, channels silent on all images, channels."""
    silent: dict[str, list[np.ndarray]] = {}
    for path in paths:
        records = record_activations(model, preprocessing(path)[None], layers="conv*")
        for name, a in records.items():
            silent.setdefault(name, []).append((a[0].flatten(1).amax(1) == 0).numpy())
    return {
        name: (float(np.mean(s)), int(np.all(s, axis=0).sum()), len(s[0]))
        for name, s in ((n, np.stack(v)) for n, v in silent.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=Path)
    parser.add_argument("best", type=Path)
    parser.add_argument("folder", type=Path, help="a split folder holding cats/ and dogs/")
    parser.add_argument("--n", type=int, default=200, help="images for the statistics, half cats, half dogs")
    parser.add_argument("--images", nargs="*", default=["cats/cat.10021.jpg", "dogs/dog.10028.jpg"])
    parser.add_argument("--figure", type=Path, default=Path("gradcam_seed_vs_best.png"))
    args = parser.parse_args()
    paths = [p for label in ("cats", "dogs") for p in sorted((args.folder / label).iterdir())[: args.n // 2]]
    weights = {name: load_weights(ckpt) for name, ckpt in (("seed", args.seed), ("best", args.best))}
    models = {name: (w.model(), w.preprocessing) for name, w in weights.items()}
    stats = {name: silence(model, pre, paths) for name, (model, pre) in models.items()}
    print(f"| layer | silent channels per image, seed | best | dead on all {len(paths)} images, seed | best |")
    print("|---|---|---|---|---|")
    for layer in stats["seed"]:
        (ms, ds, c), (mb, db, _) = stats["seed"][layer], stats["best"][layer]
        print(f"| {layer} ({c} channels) | {100 * ms:.0f}% | {100 * mb:.0f}% | {ds} | {db} |")
    rows = []
    for image in args.images:
        for name, (model, pre) in models.items():
            picture = pre.image(args.folder / image)
            traced = trace(model, to_tensor(picture)[None], gradcam_layer="conv4")
            rows.append(with_title(gradcam_page(picture, traced), f"{name} model"))
    save_png(below(*rows, gap=8), args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
