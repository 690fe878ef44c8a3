"""The one preprocessing path, shared by training and visualize: file -> RGB -> 150x150 -> floats in [0, 1].

It mirrors Keras's ``load_img`` + ``ImageDataGenerator(rescale=1/255)``: convert to RGB, resize ignoring the
aspect ratio with PIL (nearest by default), scale by 1/255. Only PIL, numpy and torch: no torchvision import,
so ``visualize.py`` starts fast.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

from catdog.model import INPUT_SIZE

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def load_rgb(path: str | os.PathLike, exif_transpose: bool = False) -> Image.Image:
    """Decode an image file fully and return it in RGB, as Keras's ``load_img`` does.

    Grayscale, CMYK, palette and RGBA are converted by PIL; 16/32-bit integer images are scaled to 8 bits first
    (PIL would clip them). ``exif_transpose`` turns a photo upright by its EXIF orientation (Keras ignores it).
    Raises PIL's errors for files that are not images, and ``Image.DecompressionBombError`` for huge ones.
    """
    with Image.open(path) as img:
        img.load()
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16-bit PNGs and friends
            array = np.asarray(img, dtype=np.float64)
            img = Image.fromarray((array / (257 if array.max() > 255 else 1)).clip(0, 255).astype(np.uint8), "L")
        return img if img.mode == "RGB" else img.convert("RGB")


def resize(img: Image.Image, size: tuple[int, int] = INPUT_SIZE, interpolation: str = "nearest") -> Image.Image:
    """Resize to ``size`` (height, width), ignoring the aspect ratio, as Keras's ``target_size`` does."""
    try:
        resample = INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}") from None
    h, w = size
    return img if img.size == (w, h) else img.resize((w, h), resample)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, H, W) scaled by 1/255."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().mul_(1 / 255)


class Preprocess:
    """Callable ``PIL image -> tensor``: resize then scale. Picklable, so DataLoader workers can use it."""

    def __init__(self, size: tuple[int, int] = INPUT_SIZE, interpolation: str = "nearest") -> None:
        resize(Image.new("RGB", (1, 1)), (1, 1), interpolation)  # fail early on a bad interpolation name
        self.size, self.interpolation = tuple(size), interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(resize(img, self.size, self.interpolation))
