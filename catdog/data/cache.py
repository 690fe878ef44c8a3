"""The decoded cache (``data.cache=true``): every image of a split decoded and resized once into a uint8 ``.npy``
file beside the data, then held in the training device's memory and gathered a batch at a time there."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from catdog.prepare import locked
from catdog.preprocess import Pictures, Unreadable, scaled


def build_cache(folder: Path, pictures: Pictures, workers: int) -> Path:
    """Decode and resize every picture of ``pictures`` (the files of ``folder``) once into
    ``<folder>/../.cache/<split>-<key>.npy``, a uint8 (N, H, W, 3) array, and ``.valid.npy`` beside it, one flag per
    picture (False: it did not decode, and was warned about). The key covers the file list (names, sizes,
    modification times) and the preprocessing, so any change makes a new cache; older ones for the split are
    removed. Written to a temporary file and renamed: an interrupted build leaves no cache behind. A damaged cache
    is rebuilt with a one-line warning; two runs building the same one take turns (a lock file)."""
    listing = [(os.path.relpath(p, folder), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in pictures.paths]
    preprocessing = pictures.preprocessing
    settings = [list(preprocessing.image_size), preprocessing.interpolation, preprocessing.exif_transpose]
    key = hashlib.sha1(json.dumps([listing, settings]).encode()).hexdigest()[:16]
    cache_dir = folder.parent / ".cache"
    cache = cache_dir / f"{folder.name}-{key}.npy"
    h, w = preprocessing.image_size
    with locked(cache_dir / f".{folder.name}.lock", str(cache_dir)):  # another run building it: wait for it
        damage = cache_damage(cache, (len(listing), h, w, 3)) if cache.exists() else "missing"
        if damage is None:
            return cache
        if damage != "missing":
            print(f"warning: the cached images {cache} are damaged ({damage}); rebuilding them", file=sys.stderr)
        _write_cache(pictures, cache, workers)
    return cache


def cache_damage(cache: Path, shape: tuple[int, ...]) -> str | None:
    """None if ``cache`` and its ``.valid.npy`` are whole uint8 images of ``shape`` and one flag per image, else
    what is wrong with them (truncated, not .npy, another shape)."""
    try:
        pixels = np.load(cache, mmap_mode="r")
        valid = np.load(cache.with_suffix(".valid.npy"))
    except (OSError, ValueError, EOFError) as err:  # truncated or not .npy at all (pickles are refused)
        return f"{type(err).__name__}: {err}"
    if not isinstance(pixels, np.ndarray) or not isinstance(valid, np.ndarray):  # e.g. a .npz archive
        return "not a .npy array"
    if pixels.dtype != np.uint8 or pixels.shape != shape or valid.dtype != bool or valid.shape != shape[:1]:
        return f"{pixels.dtype}{list(pixels.shape)} and {valid.dtype}{list(valid.shape)}, expected uint8{list(shape)}"
    return None


def _decode(pictures: Pictures) -> list[np.ndarray | None]:
    """A pool worker's share: each picture's pixels, None for a file that did not decode."""
    items = (pictures[i] for i in range(len(pictures)))
    return [None if isinstance(item, Unreadable) else item[0].numpy() for item in items]


def _write_cache(pictures: Pictures, cache: Path, workers: int) -> None:
    cache_dir, split = cache.parent, cache.name.rsplit("-", 1)[0]
    cache_dir.mkdir(exist_ok=True)
    h, w = pictures.preprocessing.image_size
    tmp = cache_dir / f".{cache.name}.tmp.npy"
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(pictures), h, w, 3))
    valid = np.zeros(len(pictures), dtype=bool)
    starts = range(0, len(pictures), 64)  # runs of 64 files a task: a task carries its own paths, not all of them
    chunks = [Pictures(pictures.paths[i : i + 64], pictures.preprocessing, warn=True) for i in starts]
    with multiprocessing.get_context("spawn").Pool(max(1, workers)) as pool:
        for start, arrays in zip(starts, pool.imap(_decode, chunks), strict=True):
            for i, array in enumerate(arrays, start):
                if array is not None:
                    pixels[i], valid[i] = array, True
    pixels.flush()
    del pixels
    for old in cache_dir.glob(f"{split}-*.npy"):
        old.unlink()
    np.save(cache.with_suffix(".valid.npy"), valid)
    os.replace(tmp, cache)


class CachedIndices(Dataset):
    """The pictures of ``folder`` as ``pixels[offset:]``, the cached images the datamodule holds on the device
    (every split's, one after the other). The DataLoader fetches a whole batch with ``__getitems__`` (its collate
    passes it on): ``(indices into pixels, labels, bad count)``, two tensors per batch instead of a tensor per
    image, ~3 ms less host time per batch of 256 on a slow CPU; ``on_after_batch_transfer`` gathers and scales the
    pictures on the device, so no worker decodes, scales or copies images. One item at a time (``dataset[i]``,
    as the snapshot probes take it) is ``(picture, i)``, or ``Unreadable`` as ``Pictures`` gives it."""

    def __init__(self, folder: Pictures, cache: Path, pixels: torch.Tensor, offset: int) -> None:
        self.folder, self.pixels, self.offset = folder, pixels, offset
        self.targets = folder.targets
        self.valid = torch.from_numpy(np.load(cache.with_suffix(".valid.npy")))
        self.labels = torch.tensor(self.targets, dtype=torch.float32)[:, None]  # (N, 1), like the model's logit

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Unreadable:
        if not self.valid[index]:
            return Unreadable(index, f"cannot read image {self.folder.paths[index]} (when the cache was built)")
        return scaled(self.pixels[self.offset + index]), index

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices)
        good = index[self.valid[index]]  # images that failed to decode when the cache was built are left out
        return self.offset + good, self.labels[good], torch.tensor(len(index) - len(good))
