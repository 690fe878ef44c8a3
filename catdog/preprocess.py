"""The one preprocessing path, shared by training and every entry point: file -> RGB -> 150x150 -> floats in [0, 1].

It mirrors Keras's ``load_img`` + ``ImageDataGenerator(rescale=1/255)``: convert to RGB, resize ignoring the
aspect ratio with PIL (nearest by default), scale by 1/255. ``Preprocessing`` holds the settings and travels with the
weights; ``Pictures`` + ``collate_readable`` read many files and skip those that do not decode, for training,
evaluate, predict and the atlas alike. Only PIL, numpy and torch: no torchvision import, so ``visualize.py`` and
``predict`` start fast.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

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


@dataclass(frozen=True)
class Preprocessing:
    """How a picture file becomes the network's input; weights were trained with one, so it travels with them.

    ``preprocessing(path)`` is the (3, H, W) float tensor; ``preprocessing.image(path)`` the resized RGB image;
    ``preprocessing.pixels(path)`` its uint8 pixels. A file that is not an image raises ``CatDogError`` naming it
    (``Pictures`` turns that into an ``Unreadable`` item, for loaders that skip such files).
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

    def pixels(self, path: str | os.PathLike) -> torch.Tensor:
        """The (H, W, 3) uint8 pixels of ``image(path)``: what loader workers hand over (a quarter of the bytes of
        floats), scaled where the model runs (``scaled``)."""
        return torch.from_numpy(np.array(self.image(path), dtype=np.uint8))

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        return to_tensor(self.image(path))

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


class Unreadable(NamedTuple):
    """In place of a picture: the index of a file that failed to decode, and why (``cannot read image PATH: ...``).
    A bad file that slipped past ``prepare`` costs one picture, never the run."""

    index: int
    error: str


class Pictures(Dataset):
    """The files ``paths`` as ``preprocessing`` reads them: item ``i`` is ``(pixels, i)``, the (H, W, 3) uint8
    pixels passed through ``transform`` when given, or ``Unreadable(i, why)`` for a file that does not decode
    (warned about with ``warn``). ``collate_readable`` batches them. ``targets``: each file's class (cats 0,
    dogs 1) where the files have one. The one way training, evaluation, predict and the atlas skip bad files."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        preprocessing: Preprocessing,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        warn: bool = False,
        targets: Sequence[int] = (),
    ) -> None:
        self.paths, self.targets = [str(p) for p in paths], list(targets)
        self.preprocessing, self.transform, self.warn = preprocessing, transform, warn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Unreadable:
        try:
            pixels = self.preprocessing.pixels(self.paths[index])
        except CatDogError as err:
            if self.warn:
                warnings.warn(f"skipped: {err}", stacklevel=1)
            return Unreadable(index, str(err))
        return (pixels if self.transform is None else self.transform(pixels)), index


class ReadableBatch(NamedTuple):
    """``Pictures`` items batched: the good pictures stacked, their indices, and the files that did not decode."""

    pictures: torch.Tensor
    indices: list[int]
    unreadable: list[Unreadable]


def collate_readable(items: list[tuple[torch.Tensor, int] | Unreadable]) -> ReadableBatch:
    """Stack the pictures of ``Pictures`` items (an empty tensor when every file was bad) and set aside the rest."""
    unreadable = [item for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if not isinstance(item, Unreadable)]
    pictures = torch.stack([x for x, _ in good]) if good else torch.empty(0)
    return ReadableBatch(pictures, [i for _, i in good], unreadable)


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
