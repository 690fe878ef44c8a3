"""Feature visualisation's figures, measured in one run on this machine (docs/featurevis.md):

    python bench/featurevis.py --atlas outputs/atlas/<fingerprint>/atlas.json [--ckpt pretrained] [--grids docs]

Computes every conv channel's pattern and the two class patterns with ``catdog.views.filters``' defaults, timed
(c), and then, for the live channels of the atlas (those that at least one of its images excites):

(a) the share whose pattern excites its channel at least as much as the channel's most exciting dataset crop: the
    pattern's value at its one position against the atlas's top value (the strongest position of the best image);
(b) the mean share of a pattern's activation that survives a random shift of up to 8 px: the pattern laid in a
    mid-grey frame 8 px wide and moved by a random (down, right) in -8..8, the channel's strongest position after
    against before (capped at 1; ``--shifts`` draws a channel);
(c) seconds for all of it, with the load average and the CPU seconds beside them, since other work on the machine
    stretches the wall time.

Make the atlas first: ``python -m catdog.atlas ckpt=pretrained data.root=data/processed_data split=test
patterns=false``. ``--grids DIR`` also writes the patterns as one PNG per layer (featurevis_<layer>.png), channels
dead on every image of the atlas crossed out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catdog.views import filters
from catdog.views.plots import beside, save_png, tile, tile_scale, with_title
from catdog.weights import load_weights, weights_fingerprint

DEAD = (220, 30, 30)


def top_values(atlas: dict, layer: str) -> np.ndarray:
    """(C,) the atlas's strongest value per channel of ``layer``; NaN for a channel no image excites."""
    channels = atlas["layers"][layer]["channels"]
    return np.array([c["top"][0]["value"] if c["top"] else np.nan for c in channels], dtype=np.float64)


def shift_survival(model, layer: str, images: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(C,) per channel the mean over ``draws`` random shifts of min(after, before) / before (0 where before is 0)."""
    before = filters.responses(model, layer, images, np.zeros((len(images), 2), dtype=int))
    kept = []
    for _ in range(draws):
        shift = rng.integers(-filters.FRAME, filters.FRAME + 1, size=(len(images), 2))
        after = filters.responses(model, layer, images, shift)
        kept.append(np.where(before > 0, np.minimum(after, before) / np.maximum(before, 1e-12), 0.0))
    return np.mean(kept, axis=0)


def grid(images: np.ndarray, dead: np.ndarray, title: str, per_row: int = 16) -> Image.Image:
    """The patterns enlarged (nearest neighbour, so a 3 px field stays 3 by 3 blocks) and tiled, dead ones crossed."""
    k = tile_scale(images.shape[1])
    big = images.repeat(k, axis=1).repeat(k, axis=2)
    side = min(big.shape[1], big.shape[2])
    diagonal = np.arange(side)
    for c in np.flatnonzero(dead):
        big[c, diagonal, diagonal] = DEAD
        big[c, diagonal, side - 1 - diagonal] = DEAD
    return with_title(Image.fromarray(tile(big, per_row)), title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", required=True, help="atlas.json of the same weights (python -m catdog.atlas)")
    parser.add_argument("--ckpt", default="pretrained")
    parser.add_argument("--shifts", type=int, default=4, help="random shifts per channel for (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=filters.STEPS)
    parser.add_argument("--lr", type=float, default=filters.LR)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's (one a core)")
    parser.add_argument("--grids", type=Path, default=None, help="write featurevis_<layer>.png here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    weights = load_weights(args.ckpt)
    model = weights.model()
    atlas = json.loads(Path(args.atlas).read_text())
    if atlas.get("fingerprint") != weights_fingerprint(model, weights.preprocessing.to_dict()):
        sys.exit(f"{args.atlas} is not an atlas of {weights.source}: make one with python -m catdog.atlas")

    load_before = os.getloadavg()
    cpu, wall, found, seconds = time.process_time(), time.perf_counter(), {}, {}
    for layer in [*filters.conv_layers(model), filters.CLASS_LAYER]:
        start = time.perf_counter()
        found[layer] = filters.patterns(model, layer, steps=args.steps, lr=args.lr, seed=args.seed)
        seconds[layer] = time.perf_counter() - start
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load_after = os.getloadavg()

    rng = np.random.default_rng(args.seed)
    rows, below, totals = [], [], {"channels": 0, "live": 0, "a": 0, "b": 0.0}
    for layer in filters.conv_layers(model):
        images = found[layer]
        top = top_values(atlas, layer)
        live = np.isfinite(top)
        value = filters.responses(model, layer, images)
        survival = shift_survival(model, layer, images, args.shifts, rng)
        beats = value[live] >= top[live]
        ratio = np.median(value[live] / top[live]) if live.any() else float("nan")
        dead = f"{int((~live).sum())} ({int((value[~live] > 0).sum())})"
        rows.append(
            (layer, len(images), int(live.sum()), dead, beats.mean(), survival[live].mean(), ratio, seconds[layer])
        )
        below += [f"{layer}/{c} {value[c] / top[c]:.2f}" for c in np.flatnonzero(live & ~(value >= top))]
        totals["channels"] += len(images)
        totals["live"] += int(live.sum())
        totals["a"] += int(beats.sum())
        totals["b"] += float(survival[live].sum())
        if args.grids:
            h, w = images.shape[1:3]
            title = f"{layer}: {len(images)} patterns, {h} x {w} px (the receptive field); crossed: dead on the atlas"
            save_png(grid(images, ~live, title), args.grids / f"featurevis_{layer}.png")
    logits = filters.responses(model, filters.CLASS_LAYER, found[filters.CLASS_LAYER]) * np.array([1, -1])
    if args.grids:
        panels = [
            with_title(Image.fromarray(image), f"most {name}: logit {logit:+.0f}")
            for image, name, logit in zip(found[filters.CLASS_LAYER], filters.CLASS_NAMES, logits, strict=True)
        ]
        save_png(beside(*panels), args.grids / f"featurevis_{filters.CLASS_LAYER}.png")

    print(f"weights: {weights.source}; atlas: {args.atlas} ({atlas['images']} images)")
    print("| layer | channels | live | dead on the atlas (pattern excites) | (a) pattern >= best crop "
          "| (b) kept after a shift <= 8 px | median pattern / best crop | seconds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for layer, n, live, dead, a, b, ratio, s in rows:
        print(f"| {layer} | {n} | {live} | {dead} | {a:.1%} | {b:.1%} | {ratio:.2f} | {s:.1f} |")
    live = totals["live"]
    print(
        f"| all conv | {totals['channels']} | {live} | | {totals['a'] / live:.1%} | {totals['b'] / live:.1%} | | "
        f"{sum(seconds[layer] for layer, *_ in rows):.1f} |"
    )
    print(
        f"| output | 2 | | | most dog: logit {logits[0]:+.1f} | most cat: logit {logits[1]:+.1f} | | "
        f"{seconds[filters.CLASS_LAYER]:.1f} |"
    )
    print(f"live channels below their best crop (pattern / crop): {', '.join(below) or 'none'}")
    # the first layer sees pixels, so its largest value on [0, 1] inputs is known: 1 under positive weights
    first = filters.conv_layers(model)[0]
    conv = dict(model.named_modules())[first]
    bound = (conv.bias + conv.weight.clamp_min(0).sum(dim=(1, 2, 3))).detach().cpu().numpy()
    top = top_values(atlas, first)
    at_bound = [f"{first}/{c}" for c in np.flatnonzero(np.isfinite(top) & (top >= bound - 1e-4))]
    print(f"best crops at the largest value any input gives: {', '.join(at_bound) or 'none'}")
    print(
        f"(c) all {totals['channels']} conv channels and the 2 class patterns: {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"({torch.get_num_threads()} threads, {os.cpu_count()} cores; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after); {args.steps} steps, Adam {args.lr}"
    )


if __name__ == "__main__":
    main()
