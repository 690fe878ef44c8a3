"""The one preprocessing path, shared by training and every entry point: file -> RGB -> 150x150 -> floats in [0, 1].

It mirrors Keras's ``load_img`` + ``ImageDataGenerator(rescale=1/255)``: convert to RGB, resize ignoring the
aspect ratio with PIL (nearest by default), scale by 1/255. Only PIL, numpy and torch: no torchvision import,
so ``visualize.py`` starts fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from catdog import CatDogError
from catdog.model import INPUT_SIZE

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# what PIL raises for a file that is not a (whole) image, and for a decompression bomb
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


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
    return scaled(torch.from_numpy(np.array(img, dtype=np.uint8)))


def scaled(pixels: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1] (times 1/255), on ``device`` when given; for a
    batch, in channels-last memory order (a view of the pixels as they come: no reordering copy)."""
    if device is not None:
        pixels = pixels.to(device, non_blocking=True)
    return pixels.movedim(-1, -3).float().mul_(1 / 255)


class Preprocess:
    """Callable ``PIL image -> tensor``: resize then scale. Picklable, so DataLoader workers can use it."""

    def __init__(self, size: tuple[int, int] = INPUT_SIZE, interpolation: str = "nearest") -> None:
        resize(Image.new("RGB", (1, 1)), (1, 1), interpolation)  # fail early on a bad interpolation name
        self.size, self.interpolation = tuple(size), interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(resize(img, self.size, self.interpolation))


@dataclass(frozen=True)
class Preprocessing:
    """How a picture file becomes the network's input; weights were trained with one, so it travels with them.

    ``preprocessing(path)`` is the (3, H, W) float tensor; ``preprocessing.image(path)`` the resized RGB image.
    A file that is not an image raises ``CatDogError`` naming it.
    """

    image_size: tuple[int, int] = INPUT_SIZE
    interpolation: str = "nearest"
    exif_transpose: bool = False

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.image_size)
        object.__setattr__(self, "image_size", size)
        if len(size) != 2 or min(size) < 1:
            raise CatDogError(f"image size must be [height, width], got {list(self.image_size)}")
        if self.interpolation not in INTERPOLATIONS:
            raise CatDogError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def image(self, path: str | os.PathLike) -> Image.Image:
        try:
            return resize(load_rgb(path, self.exif_transpose), self.image_size, self.interpolation)
        except Image.DecompressionBombError as err:
            raise CatDogError(f"refused image {path}: too many pixels, a possible decompression bomb ({err})") from err
        except BAD_IMAGE_ERRORS as err:
            raise CatDogError(f"cannot read image {path}: {err}") from err

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        return to_tensor(self.image(path))

    def transform(self) -> Preprocess:
        """The PIL image -> tensor part, for datasets whose loader already decoded the file."""
        return Preprocess(self.image_size, self.interpolation)

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "interpolation": self.interpolation,
            "exif_transpose": self.exif_transpose,
            "scale": "1/255",
        }

    @classmethod
    def from_dict(cls, settings: dict, source: str = "") -> Preprocessing:
        """The inverse of ``to_dict``; refuses settings that catdog cannot apply (another scaling, unknown keys)."""
        settings = dict(settings)
        scale = settings.pop("scale", "1/255")
        unknown = set(settings) - {"image_size", "interpolation", "exif_transpose"}
        if scale != "1/255" or unknown:
            what = f"scale {scale}" if scale != "1/255" else f"settings {sorted(unknown)}"
            raise CatDogError(f"{source or 'weights'} were saved with preprocessing catdog does not apply ({what})")
        try:
            return cls(**settings)
        except (TypeError, ValueError) as err:
            raise CatDogError(f"{source or 'weights'} have unreadable preprocessing settings ({err})") from err


def image_paths(spec: str | os.PathLike | list) -> list[Path]:
    """A file, a folder (its images, sorted, not recursive, no hidden files) or a list of files."""
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
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


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Loader processes: one per core, at most 8 (decode + resize of a 20-image batch is cheap next to a step)."""
    return min(8, cores())
