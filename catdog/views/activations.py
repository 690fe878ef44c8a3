"""What ``visualize.py`` writes for an image: prediction, recorded activations, figures and files.

Imports only torch, numpy and PIL (no Lightning, no torchvision), so a run starts fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from catdog import CatDogError
from catdog.files import atomic_write, write_text
from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN
from catdog.preprocess import to_tensor
from catdog.views.explorer import PageImage
from catdog.views.plots import (
    below,
    beside,
    channel_stats,
    feature_grid,
    heatmap_overlay,
    layer_pages,
    save_png,
    tile,
    tile_scale,
    with_title,
)
from catdog.views.trace import Trace, trace
from catdog.weights import Weights

COMPARE_MAX = 8  # images shown side by side on a compare page


@dataclass
class Figures:
    """What to draw for each image (visualize.py's settings)."""

    layers: str | list[str] | None = None  # names or globs; None: every conv and pool layer
    per_row: int = 16
    norm: str = "channel"
    channel: int | None = None  # also draw this channel of each layer alone, large
    gradcam: bool = False  # gradcam.png
    gradcam_layer: str = "conv4"
    attribution: tuple[str, ...] = ()  # catdog.views.attributions.METHODS: attributions.png and .npz
    off: dict[str, list[int]] = field(default_factory=dict)  # channels to switch off: p(dog) before and after

    def check(self, model: nn.Module, size: tuple[int, int]) -> None:
        """Refuse, in one line and before any picture, a layer, channel or Grad-CAM layer that ``model`` (taking
        ``size`` inputs) lacks."""
        try:
            selected = ActivationRecorder(model, self.layers).names
        except KeyError as err:
            raise CatDogError(f"layers: {err.args[0]}") from err
        with ActivationRecorder(model) as recorder, torch.no_grad():  # one dummy pass: every layer's channels
            model(torch.zeros(1, 3, *size, device=next(model.parameters()).device))
        channels = {name: int(r.shape[1]) for name, r in recorder.records.items()}
        if self.gradcam_layer not in channels:
            raise CatDogError(f"gradcam_layer: no conv or pool layer {self.gradcam_layer!r} ({', '.join(channels)})")
        fewest = min(channels[name] for name in selected)
        if self.channel is not None and not 0 <= self.channel < fewest:
            raise CatDogError(f"channel={self.channel} is out of range: a layer shown has {fewest} channels")
        for name, cs in self.off.items():
            if channels.get(name, 0) <= max(cs):
                layers = ", ".join(channels)
                raise CatDogError(f"ablate: {name}:{max(cs)} is no channel of a conv or pool layer ({layers})")


def visualize_image(
    model: CatDogCNN, path: Path, out_dir: Path, weights: Weights, figures: Figures
) -> tuple[dict, dict[str, Image.Image], PageImage]:
    """Everything for one image into ``out_dir``; returns the manifest (also written as manifest.json), the layer
    pages and the picture as the explorer page takes it. One trace (``catdog.views.trace``) feeds them all; with
    channels switched off (``figures.off``), a second pass gives the prediction without them. The forward pass
    runs where ``model`` is (a GPU when there is one); the records land on the CPU."""
    preprocessing, checkpoint = weights.preprocessing, weights.source
    image = preprocessing.image(path)
    device = next(model.parameters()).device
    x = to_tensor(image)[None].to(device)
    wants_gradcam = figures.gradcam or "gradcam" in figures.attribution
    t = trace(model, x, figures.layers, figures.gradcam_layer if wants_gradcam else None)
    switched = trace(model, x, figures.layers, off=figures.off) if figures.off else None
    records = {name: r.numpy() for name, r in t.records.items()}
    p, norm = t.prediction, figures.norm

    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(image, out_dir / "input.png")
    pages = layer_pages(records, figures.per_row, norm)
    for name, page in pages.items():
        save_png(page, out_dir / f"{name}.png")
    header = with_title(image, f"{path.name}: {p['label']} {p['probability']:.2f}  ({norm} norm)")
    save_png(below(header, *pages.values(), gap=10), out_dir / "overview.png")
    channel = figures.channel
    if channel is not None:
        for name, a in records.items():
            one = feature_grid(a[channel : channel + 1], 1, "none", f"{name} channel {channel}", min_tile=300)
            save_png(one, out_dir / f"{name}_channel{channel}.png")

    def save_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **{name: a[None] for name, a in records.items()})  # float32, NCHW

    atomic_write(out_dir / "activations.npz", save_npz)
    if figures.gradcam:
        save_png(gradcam_page(image, t), out_dir / "gradcam.png")
    manifest = {
        "image": str(path),
        "checkpoint": checkpoint,
        "prediction": p,
        "preprocessing": preprocessing.to_dict(),
        "norm": norm,
        "layers": {name: channel_stats(a) for name, a in records.items()},
    }
    shown = {}
    if figures.attribution:
        from catdog.views.attributions import save_attributions

        manifest["attributions"], shown = save_attributions(  # methods, Grad-CAM's layer, IG's steps and error
            model, x, image, out_dir, figures.attribution, figures.gradcam_layer, t.logit, t.gradcam_inputs
        )
    if switched is not None:
        after = switched.prediction
        manifest["ablation"] = {"off": switched.off, "p_dog_before": p["p_dog"], "p_dog_after": after["p_dog"],
                                "label_after": after["label"]}  # fmt: skip
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest, pages, PageImage(path.name, np.asarray(image), shown)


def gradcam_page(image: Image.Image, t: Trace) -> Image.Image:
    """The input and the trace's Grad-CAM for dog and for cat, side by side (gradcam.png)."""
    pixels = np.asarray(image)
    p = t.prediction
    panels = [with_title(image, f"input: {p['label']} {p['probability']:.2f}")]
    for name in ("dog", "cat"):
        overlay = heatmap_overlay(pixels, t.gradcam[name].numpy())
        panels.append(with_title(overlay, f"evidence for {name} ({t.gradcam_layer})"))
    return beside(*panels)


def parse_off(setting: list | str | None) -> dict[str, list[int]]:
    """``ablate=[conv3:17,conv4:5]`` -> {"conv3": [17], "conv4": [5]}; a malformed item is one line."""
    items = [setting] if isinstance(setting, str) else list(setting or [])
    off: dict[str, list[int]] = {}
    for item in items:
        name, _, channel = str(item).partition(":")
        if not name or not channel.isdigit():
            raise CatDogError(f"ablate: {item!r} is not layer:channel (e.g. ablate=[conv3:17,conv4:5])")
        off.setdefault(name, []).append(int(channel))
    return off


def filters_page(
    model: CatDogCNN, layer: str, per_row: int, size: int | None, steps: int | None, step_size: float | None
):
    """What excites each channel of conv ``layer`` most, or the output's "most dog" and "most cat": the patterns of
    ``catdog.views.filters``, from the shipped file or the cache when they are there (``None``: its defaults)."""
    from catdog.views.filters import CLASS_LAYER, CLASS_NAMES, LR, STEPS, cached_patterns

    try:
        patterns = cached_patterns(
            model,
            layer,
            size=None if size is None or layer == CLASS_LAYER else (size, size),  # the output: the input size
            steps=STEPS if steps is None else steps,
            lr=LR if step_size is None else step_size,
        )
    except KeyError as err:
        raise CatDogError(f"layer: {err.args[0]}") from err
    if layer == CLASS_LAYER:
        panels = [with_title(Image.fromarray(p), f"most {n}") for p, n in zip(patterns, CLASS_NAMES, strict=True)]
        return beside(*panels)
    h, w = patterns.shape[1:3]
    k = tile_scale(min(h, w))  # nearest neighbour: conv1's 3 x 3 pixels stay pixels
    tiles = patterns.repeat(k, axis=1).repeat(k, axis=2)
    return with_title(Image.fromarray(tile(tiles, per_row)), f"{layer}: what excites each channel most ({h} x {w} px)")


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
