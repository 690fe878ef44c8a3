"""What ``visualize.py`` writes for an image: prediction, recorded activations, figures and files.

Imports only torch, numpy and PIL (no Lightning, no torchvision), so a run starts fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catdog import CatDogError
from catdog.files import atomic_write, write_text
from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN, describe
from catdog.preprocess import Preprocessing, to_tensor
from catdog.views.plots import (
    below,
    beside,
    channel_stats,
    feature_grid,
    heatmap_overlay,
    layer_pages,
    save_png,
    tile,
    with_title,
)

COMPARE_MAX = 8  # images shown side by side on a compare page


@dataclass
class Figures:
    """What to draw for each image (visualize.py's settings)."""

    layers: str | list[str] | None = None  # names or globs; None: every conv and pool layer
    per_row: int = 16
    norm: str = "channel"
    channel: int | None = None  # also draw this channel of each layer alone, large
    gradcam_layer: str | None = None
    explorer: bool = True  # index.html, the interactive page (catdog.views.explorer)
    atlas: dict | None = None  # an atlas of the same weights, shown in index.html


def visualize_image(
    model: CatDogCNN, path: Path, out_dir: Path, preprocessing: Preprocessing, figures: Figures, checkpoint: str
) -> tuple[dict, dict[str, Image.Image]]:
    """Everything for one image into ``out_dir``; returns the manifest (also written as manifest.json) and the
    layer pages.
    The forward pass runs where ``model`` is (a GPU when there is one); the records land on the CPU."""
    image = preprocessing.image(path)
    device = next(model.parameters()).device
    x = to_tensor(image)[None].to(device)
    layers, per_row, norm, channel = figures.layers, figures.per_row, figures.norm, figures.channel
    with ActivationRecorder(model, layers) as recorder, torch.no_grad():
        output = model(x)
    logit = float(output[0, 0])
    records = {name: r[0].numpy() for name, r in recorder.records.items()}
    label, probability = describe(logit)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(image, out_dir / "input.png")
    pages = layer_pages(records, per_row, norm)
    for name, page in pages.items():
        save_png(page, out_dir / f"{name}.png")
    header = with_title(image, f"{path.name}: {label} {probability:.2f}  ({norm} norm)")
    save_png(below(header, *pages.values(), gap=10), out_dir / "overview.png")
    if channel is not None:
        for name, a in records.items():
            if channel >= len(a):
                raise CatDogError(f"channel={channel} is out of range: {name} has {len(a)} channels")
            one = feature_grid(a[channel : channel + 1], 1, "none", f"{name} channel {channel}", min_tile=300)
            save_png(one, out_dir / f"{name}_channel{channel}.png")
    arrays = {name: r.numpy() for name, r in recorder.records.items()}  # float32, NCHW

    def save_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(out_dir / "activations.npz", save_npz)
    if figures.gradcam_layer:
        save_png(gradcam_page(model, x, image, figures.gradcam_layer), out_dir / "gradcam.png")
    manifest = {
        "image": str(path),
        "checkpoint": checkpoint,
        "prediction": {"label": label, "probability": probability, "p_dog": float(torch.sigmoid(torch.tensor(logit)))},
        "preprocessing": preprocessing.to_dict(),
        "norm": norm,
        "layers": {name: channel_stats(a) for name, a in records.items()},
    }
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    if figures.explorer:
        from catdog.views.explorer import explorer_data, write_index

        data = explorer_data(
            model,
            x,
            image,
            path.name,
            layers,
            figures.gradcam_layer,
            atlas=figures.atlas,
            source=checkpoint,
            recorded=(recorder.records, output),
        )
        write_index(out_dir / "index.html", data)
    return manifest, pages


def gradcam_page(model: CatDogCNN, x: torch.Tensor, image, layer: str):
    from catdog.views.gradcam import gradcam

    try:
        maps = gradcam(model, x, layer)
    except KeyError as err:
        raise CatDogError(f"gradcam_layer: {err.args[0]}") from err
    pixels = np.asarray(image)
    label, probability = describe(float(maps["logit"]))
    panels = [with_title(image, f"input: {label} {probability:.2f}")]
    for name in ("dog", "cat"):
        panels.append(with_title(heatmap_overlay(pixels, maps[name].cpu().numpy()), f"evidence for {name} ({layer})"))
    return beside(*panels)


def filters_page(model: CatDogCNN, layer: str, per_row: int, size: int, steps: int, step_size: float):
    from catdog.views.filters import filter_patterns

    try:
        patterns = filter_patterns(model, layer, size=size, steps=steps, step_size=step_size)
    except KeyError as err:
        raise CatDogError(f"layer: {err.args[0]}") from err
    tiles = (patterns.numpy() * 255).round().astype(np.uint8)
    return with_title(Image.fromarray(tile(tiles, per_row)), f"{layer}: patterns that maximise each channel")


def compare_pages(shown: list[tuple[dict, dict[str, Image.Image]]], out_dir: Path) -> None:
    """``compare_<layer>.png``: the same layer for each image (at most COMPARE_MAX), side by side; ``shown`` holds
    each image's manifest and its layer pages."""
    for name in shown[0][1]:
        panels = []
        for manifest, pages in shown:
            p = manifest["prediction"]
            title = f"{Path(manifest['image']).name}: {p['label']} {p['probability']:.2f}"
            panels.append(with_title(pages[name], title))
        save_png(beside(*panels, gap=24), out_dir / f"compare_{name}.png")


def unique_dirs(paths: list[Path]) -> list[str]:
    """A subfolder name per image: its stem, made unique when two images share one."""
    names, seen = [], {}
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return names
