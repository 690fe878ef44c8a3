"""What ``visualize.py`` does: checkpoint + images -> prediction, recorded activations, figures and files.

Imports only torch, numpy and PIL (no Lightning, no torchvision), so a run starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catdog import CatDogError
from catdog.checkpoints import RUN_FOLDERS, newest
from catdog.files import atomic_write, write_text
from catdog.hooks import ActivationRecorder
from catdog.model import INPUT_SIZE, CatDogCNN
from catdog.plots import (
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
from catdog.prepare import IMAGE_EXTENSIONS
from catdog.preprocess import load_rgb, resize, to_tensor

COMPARE_MAX = 8  # images shown side by side on a compare page


def find_checkpoint(spec: str) -> Path | None:
    """``latest``: the newest ``best-*.ckpt`` written by train.py under outputs/ or multirun/; ``none``: None;
    anything else: that file."""
    if spec == "none":
        return None
    if spec != "latest":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise CatDogError(f"checkpoint {spec} not found; give ckpt=PATH to a .ckpt file, ckpt=latest or ckpt=none")
        return path
    found = newest("checkpoints/best-*.ckpt")
    if found is None:
        raise CatDogError(
            f"ckpt=latest found no checkpoint under {' or '.join(f'{s}/' for s in RUN_FOLDERS)}; "
            "train first (python train.py), or give ckpt=PATH, or ckpt=none for the untrained network"
        )
    return found


def load_model(ckpt: Path | None) -> tuple[CatDogCNN, dict]:
    """The network from a train.py checkpoint (read with ``weights_only``: no pickled code runs) and the
    preprocessing it was trained with; ``None`` gives the untrained network (Keras init, seed 0)."""
    preprocessing = {"image_size": list(INPUT_SIZE), "interpolation": "nearest", "exif_transpose": False}
    if ckpt is None:
        torch.manual_seed(0)
        return CatDogCNN().eval(), preprocessing
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    except Exception as err:
        raise CatDogError(f"cannot read checkpoint {ckpt} ({type(err).__name__}); is it a catdog .ckpt file?") from err
    model = CatDogCNN()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CatDogError(f"checkpoint {ckpt} is not a catdog CatDogCNN (its weights do not fit)") from err
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    preprocessing.update({k: data[k] for k in preprocessing if k in data})
    return model.eval(), preprocessing


def image_paths(spec: str | list[str]) -> list[Path]:
    """A file, a folder (its images, sorted, not recursive) or a list of files."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    paths: list[Path] = []
    for item in specs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.name[0] != ".")
            if not found:
                raise CatDogError(f"folder {item} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise CatDogError(f"image {item} not found; give image=PATH to a picture, a folder or a list")
    return paths


def describe(logit: float) -> tuple[str, float]:
    """('dog', 0.93): the predicted class and its probability, from the single logit."""
    p_dog = float(torch.sigmoid(torch.tensor(logit)))
    return ("dog", p_dog) if p_dog >= 0.5 else ("cat", 1 - p_dog)


def visualize_image(
    model: CatDogCNN,
    path: Path,
    out_dir: Path,
    preprocessing: dict,
    layers: str | list[str] | None = None,
    per_row: int = 16,
    norm: str = "channel",
    channel: int | None = None,
    gradcam_layer: str | None = None,
    checkpoint: str = "none",
) -> dict:
    """Everything for one image into ``out_dir``; returns the manifest (also written as manifest.json)."""
    try:
        image = load_rgb(path, preprocessing.get("exif_transpose", False))
        image = resize(image, tuple(preprocessing["image_size"]), preprocessing["interpolation"])
    except Image.DecompressionBombError as err:
        raise CatDogError(f"refused image {path}: too many pixels, a possible decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for files that are not images
        raise CatDogError(f"cannot read image {path}: {err}") from err
    x = to_tensor(image)[None]
    with ActivationRecorder(model, layers) as recorder, torch.no_grad():
        logit = float(model(x)[0, 0])
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
    if gradcam_layer:
        save_png(gradcam_page(model, x, image, gradcam_layer), out_dir / "gradcam.png")
    manifest = {
        "image": str(path),
        "checkpoint": checkpoint,
        "prediction": {"label": label, "probability": probability, "p_dog": float(torch.sigmoid(torch.tensor(logit)))},
        "preprocessing": preprocessing,
        "norm": norm,
        "layers": {name: channel_stats(a) for name, a in records.items()},
    }
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    manifest["pages"] = pages  # for compare pages; not written
    return manifest


def gradcam_page(model: CatDogCNN, x: torch.Tensor, image, layer: str):
    from catdog.gradcam import gradcam

    try:
        maps = gradcam(model, x, layer)
    except KeyError as err:
        raise CatDogError(f"gradcam_layer: {err.args[0]}") from err
    pixels = np.asarray(image)
    label, probability = describe(float(maps["logit"]))
    panels = [with_title(image, f"input: {label} {probability:.2f}")]
    for name in ("dog", "cat"):
        panels.append(with_title(heatmap_overlay(pixels, maps[name].numpy()), f"evidence for {name} ({layer})"))
    return beside(*panels)


def filters_page(model: CatDogCNN, layer: str, per_row: int, size: int, steps: int, step_size: float):
    from catdog.filters import filter_patterns

    try:
        patterns = filter_patterns(model, layer, size=size, steps=steps, step_size=step_size)
    except KeyError as err:
        raise CatDogError(f"layer: {err.args[0]}") from err
    tiles = (patterns.numpy() * 255).round().astype(np.uint8)
    from PIL import Image

    return with_title(Image.fromarray(tile(tiles, per_row)), f"{layer}: patterns that maximise each channel")


def compare_pages(manifests: list[dict], out_dir: Path) -> None:
    """``compare_<layer>.png``: the same layer for each image (at most COMPARE_MAX), side by side."""
    for name in manifests[0]["pages"]:
        panels = []
        for m in manifests:
            p = m["prediction"]
            panels.append(with_title(m["pages"][name], f"{Path(m['image']).name}: {p['label']} {p['probability']:.2f}"))
        save_png(beside(*panels, gap=24), out_dir / f"compare_{name}.png")


def unique_dirs(paths: list[Path]) -> list[str]:
    """A subfolder name per image: its stem, made unique when two images share one."""
    names, seen = [], {}
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return names
