"""``CatDogDataModule``: ImageFolder over ``{root}/{train,test}/{cats,dogs}``, preprocessed as the seed did."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchvision.datasets import ImageFolder
from torchvision.transforms import Compose, InterpolationMode, RandomAffine, RandomHorizontalFlip

from catdog import CLASSES, CatDogError
from catdog.model import INPUT_SIZE
from catdog.prepare import locked, prepare
from catdog.preprocess import (
    BAD_IMAGE_ERRORS,
    IMAGE_EXTENSIONS,
    Preprocess,
    default_workers,
    load_rgb,
    resize,
    to_tensor,
)


def free_memory(device: torch.device) -> int:
    """Bytes that ``device`` can still hold: a GPU's free memory, or the RAM the system has available (0 where
    that is unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return 0
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return 0


class CatDogImageFolder(ImageFolder):
    """ImageFolder that lists files without following symlinked folders (no loops), ignores hidden files
    (``.DS_Store``, ``._cat.1.jpg``) and returns ``None`` for a file that fails to decode, so that a bad file
    that slipped past prepare costs one sample, not the run (``collate_skipping_bad`` drops and counts it)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples = []
        for name, index in sorted(class_to_idx.items()):
            for dirpath, dirnames, filenames in os.walk(os.path.join(directory, name)):  # followlinks=False
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    if not filename.startswith(".") and Path(filename).suffix.lower() in IMAGE_EXTENSIONS:
                        samples.append((os.path.join(dirpath, filename), index))
            if not any(i == index for _, i in samples):
                raise CatDogError(f"class folder {os.path.join(directory, name)} holds no images")
        return samples

    cache: Path | None = None  # set by use_cache: decoded pixels instead of files
    _pixels = _valid = None

    def use_cache(self, cache: Path, augment: Compose | None) -> None:
        """Read the decoded, resized uint8 pixels from ``cache`` (see ``build_cache``), then ``augment``."""
        self.cache, self.augment = cache, augment

    def __getstate__(self) -> dict:  # DataLoader workers map the cache themselves, never copy it
        return {**self.__dict__, "_pixels": None, "_valid": None}

    def __getitem__(self, index: int):
        if self.cache is not None:
            if self._pixels is None:
                self._pixels = np.load(self.cache, mmap_mode="r")
                self._valid = np.load(self.cache.with_suffix(".valid.npy"))
            if not self._valid[index]:
                return None  # failed to decode when the cache was built (and warned then)
            x = to_tensor(self._pixels[index])
            x = x if self.augment is None else self.augment(x)
            return x, self.target_transform(self.targets[index])
        try:
            return super().__getitem__(index)
        except BAD_IMAGE_ERRORS as err:
            warnings.warn(f"skipped {self.samples[index][0]}: {type(err).__name__}: {err}", stacklevel=1)
            return None


def _decode_resized(job: tuple[str, tuple[int, int], str, bool]) -> np.ndarray | None:
    path, size, interpolation, exif_transpose = job
    try:
        return np.asarray(resize(load_rgb(path, exif_transpose), size, interpolation))
    except BAD_IMAGE_ERRORS as err:
        warnings.warn(f"skipped {path}: {type(err).__name__}: {err}", stacklevel=1)
        return None


def build_cache(dataset: CatDogImageFolder, preprocess: Preprocess, exif_transpose: bool, workers: int) -> Path:
    """Decode and resize every image of ``dataset`` once into ``<folder>/../.cache/<split>-<key>.npy``, a uint8
    (N, H, W, 3) array that later epochs and runs memory-map. The key covers the file list (names, sizes,
    modification times) and the preprocessing, so any change makes a new cache; older ones for the split are
    removed. Written to a temporary file and renamed: an interrupted build leaves no cache behind."""
    folder = Path(dataset.root)
    listing = [(os.path.relpath(p, folder), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p, _ in dataset.samples]
    settings = [list(preprocess.size), preprocess.interpolation, exif_transpose]
    key = hashlib.sha1(json.dumps([listing, settings]).encode()).hexdigest()[:16]
    cache_dir = folder.parent / ".cache"
    cache = cache_dir / f"{folder.name}-{key}.npy"
    h, w = preprocess.size
    with locked(cache_dir / f".{folder.name}.lock", str(cache_dir)):  # another run building it: wait for it
        damage = cache_damage(cache, (len(listing), h, w, 3)) if cache.exists() else "missing"
        if damage is None:
            return cache
        if damage != "missing":
            print(f"warning: the cached images {cache} are damaged ({damage}); rebuilding them", file=sys.stderr)
        _write_cache(dataset, cache, preprocess, exif_transpose, workers)
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


def _write_cache(dataset: CatDogImageFolder, cache: Path, preprocess: Preprocess, exif: bool, workers: int) -> None:
    cache_dir, name = cache.parent, Path(dataset.root).name
    cache_dir.mkdir(exist_ok=True)
    h, w = preprocess.size
    tmp = cache_dir / f".{cache.name}.tmp.npy"
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(dataset.samples), h, w, 3))
    valid = np.zeros(len(dataset.samples), dtype=bool)
    jobs = [(p, (h, w), preprocess.interpolation, exif) for p, _ in dataset.samples]
    with multiprocessing.get_context("spawn").Pool(max(1, workers)) as pool:
        for i, array in enumerate(pool.imap(_decode_resized, jobs, chunksize=64)):
            if array is not None:
                pixels[i], valid[i] = array, True
    pixels.flush()
    del pixels
    for old in cache_dir.glob(f"{name}-*.npy"):
        old.unlink()
    np.save(cache.with_suffix(".valid.npy"), valid)
    os.replace(tmp, cache)


class CachedIndices(Dataset):
    """Batches of ``(indices, labels, bad count)`` into the cached images of ``folder``, ``offset`` into the pixels
    the datamodule holds on the device: ``on_after_batch_transfer`` gathers each batch there, so no worker decodes,
    scales or copies images. The DataLoader fetches a whole batch with ``__getitems__`` (its collate passes it on):
    two tensors per batch instead of a tensor per image, ~3 ms less host time per batch of 256 on a slow CPU.
    One item at a time (``dataset[i]``, as the snapshot probes take it) is the folder's own ``(image, label)``."""

    def __init__(self, folder: CatDogImageFolder, offset: int) -> None:
        self.folder = folder
        self.targets = folder.targets
        self.valid = torch.from_numpy(np.load(folder.cache.with_suffix(".valid.npy")))
        self.labels = torch.stack([folder.target_transform(t) for t in folder.targets])  # the folder's labels
        self.offset = offset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.folder[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices)
        good = index[self.valid[index]]  # images that failed to decode when the cache was built are left out
        return self.offset + good, self.labels[good], torch.tensor(len(index) - len(good))


def _as_is(batch):
    return batch


def collate_skipping_bad(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Default collation of the good samples, plus how many were bad (``None``), for the module to log."""
    good = [s for s in samples if s is not None]
    if not good:
        return torch.empty(0), torch.empty(0, 1), torch.tensor(len(samples))
    x, y = default_collate(good)
    return x, y, torch.tensor(len(samples) - len(good))


def make_augment(
    hflip: bool = False, rotation: float = 0, shift: float = 0, zoom: float = 0, shear: float = 0
) -> Compose | None:
    """Keras-like ``ImageDataGenerator`` augmentation on the 150x150 tensor: random horizontal flip, rotation up
    to ``rotation`` degrees, shifts up to ``shift`` of the size, zoom in [1 - zoom, 1 + zoom], shear up to
    ``shear`` degrees (bilinear; uncovered pixels are black, where Keras repeats the edge). None when all are off."""
    steps = [RandomHorizontalFlip()] if hflip else []
    if rotation or shift or zoom or shear:
        steps.append(
            RandomAffine(
                degrees=rotation,
                translate=(shift, shift) if shift else None,
                scale=(1 - zoom, 1 + zoom) if zoom else None,
                shear=shear or None,
                interpolation=InterpolationMode.BILINEAR,
            )
        )
    return Compose(steps) if steps else None


class BatchAffine:
    """``make_augment``'s augmentation for a whole batch at once, on the batch's device (``data.augment_on``).

    ``sample`` draws each image's parameters from the distributions of ``RandomHorizontalFlip`` and
    ``RandomAffine.get_params`` (flip with p 0.5; angle in [-rotation, rotation]; shifts rounded to whole pixels,
    up to ``shift`` of the width and height; scale in [1 - zoom, 1 + zoom]; an x shear in [-shear, shear]) and
    turns them into the 2x3 matrices that ``torch.nn.functional.affine_grid`` takes (align_corners=False, as
    torchvision's tensor ``affine``). ``warp`` applies them in one ``affine_grid`` + ``grid_sample`` (bilinear) and
    blacks out what falls outside the image as ``RandomAffine(fill=0)`` does on a tensor (the bilinear weight of
    the inside, a mask torchvision gets from an extra channel, computed here from the grid).
    """

    def __init__(
        self, hflip: bool = False, rotation: float = 0, shift: float = 0, zoom: float = 0, shear: float = 0
    ) -> None:
        self.hflip, self.rotation, self.shift, self.zoom, self.shear = bool(hflip), rotation, shift, zoom, shear
        self.affine = bool(rotation or shift or zoom or shear)

    def parameters(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` images' random parameters (float64 on the CPU): flip (0 or 1), angle and shear (degrees), tx and
        ty (whole pixels), scale; as ``RandomHorizontalFlip`` + ``RandomAffine.get_params`` draw them."""
        h, w = size
        u = torch.rand(6, n, generator=generator, dtype=torch.float64)

        def symmetric(row: int, bound: float) -> torch.Tensor:  # uniform in [-bound, bound]
            return (2 * u[row] - 1) * bound

        return {
            "flip": (u[0] < 0.5).double() if self.hflip else torch.zeros(n, dtype=torch.float64),
            "angle": symmetric(1, self.rotation),
            "tx": torch.round(symmetric(2, self.shift * w)),  # round half to even, as Python's round
            "ty": torch.round(symmetric(3, self.shift * h)),
            "scale": 1 + symmetric(4, self.zoom),
            "shear": symmetric(5, self.shear),
        }

    @staticmethod
    def theta(params: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(n, 2, 3) float32 matrices for ``affine_grid(align_corners=False)``: for each output pixel, where to
        sample the input. torchvision's inverse affine matrix (``_get_inverse_affine_matrix``, centre of the image,
        no y shear) in pixels centred on the image, rescaled to the grid's [-1, 1] coordinates; a flip (which
        ``make_augment`` applies before the affine) negates the sampled x."""
        h, w = size
        rot, sx = torch.deg2rad(params["angle"]), torch.deg2rad(params["shear"])
        a, c = torch.cos(rot), torch.sin(rot)
        b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
        d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
        s, tx, ty = params["scale"], params["tx"], params["ty"]
        m0, m1, m3, m4 = d / s, -b / s, -c / s, a / s
        m2, m5 = -(m0 * tx + m1 * ty), -(m3 * tx + m4 * ty)
        sign = 1 - 2 * params["flip"]
        theta = torch.stack(
            [
                torch.stack([m0, m1 * h / w, 2 * m2 / w], -1) * sign[:, None],
                torch.stack([m3 * w / h, m4, 2 * m5 / h], -1),
            ],
            1,
        )
        return theta.float()

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """``theta(parameters(...))``: the matrices of ``n`` random draws."""
        return self.theta(self.parameters(n, size, generator), size)

    def warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) float, each image transformed by its matrix in ``theta`` (N, 2, 3), on x's device."""
        theta = theta.to(x.device, torch.float32)
        if not self.affine:  # flips only: exact, no resampling
            return torch.where(theta[:, :1, :1, None] < 0, x.flip(-1), x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # the bilinear weight that falls inside the image, per axis: 1 inside, 0 beyond half a pixel out
        h, w = x.shape[-2:]
        px = ((grid[..., 0] + 1) * w - 1) / 2
        py = ((grid[..., 1] + 1) * h - 1) / 2
        inside = torch.minimum(px + 1, w - px).clamp_(0, 1) * torch.minimum(py + 1, h - py).clamp_(0, 1)
        return out.mul_(inside[:, None])


class EpochShuffle(torch.utils.data.Sampler):
    """A random order that depends only on (seed, epoch): a run resumed from a checkpoint sees the same order
    in its later epochs as an uninterrupted run. Lightning calls ``set_epoch`` before each epoch.

    ``seeded=True`` yields ``(sample seed, index)`` pairs for ``SeededSamples``: each sample's seed is drawn from
    (seed, epoch, index) alone. ``start`` skips the first samples of the next ``__iter__`` (a mid-epoch resume)."""

    def __init__(self, size: int, seed: int, seeded: bool = False) -> None:
        self.size, self.seed, self.epoch, self.seeded, self.start = size, seed, 0, seeded, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)[self.start :].tolist()
        self.start = 0
        if not self.seeded:
            return iter(order)
        seeds = torch.randint(2**62, (self.size,), generator=generator).tolist()
        return iter([(seeds[i], i) for i in order])

    def __len__(self) -> int:
        return self.size


class SeededSamples(Dataset):
    """``dataset[(seed, index)]`` is ``dataset[index]`` drawn with torch's CPU generator seeded with ``seed`` (see
    ``EpochShuffle``), so a sample's augmentation depends on (seed, epoch, index) and on nothing else: not on which
    loader worker draws it, nor on what that worker drew before (a resumed run, a restarted worker)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        with torch.random.fork_rng(devices=[]):  # the caller's random stream (num_workers=0) is left as it was
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


class AugmentedIndices(Dataset):
    """The training images of the cache held on the device, with their augmentation drawn on the host and applied
    on the device: keys are ``(sample seed, index)`` pairs from ``EpochShuffle(seeded=True)``; each batch is
    ``CachedIndices``' (indices, labels, bad count) plus the images' affine matrices (``BatchAffine.sample``),
    drawn from a generator seeded with the batch's first sample seed. That seed depends on (seed, epoch, batch)
    alone, so a resumed run draws the same augmentation; the matrices travel to the device with the indices and
    ``CatDogDataModule.on_after_batch_transfer`` warps the gathered images there (training batches only: the
    validation and test loaders never carry matrices)."""

    def __init__(self, dataset: Dataset, augment: BatchAffine, size: tuple[int, int]) -> None:
        self.dataset, self.augment, self.size = dataset, augment, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        return self.dataset[key[1]]  # one image as the folder gives it, not augmented

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
        index, labels, skipped = self.dataset.__getitems__([i for _, i in keys])
        generator = torch.Generator().manual_seed(keys[0][0])
        return index, labels, skipped, self.augment.sample(len(index), self.size, generator)


class ResumableLoader(DataLoader):
    """The training DataLoader. Lightning saves its ``state_dict`` (epoch, batches done) in every checkpoint and
    restores it when resuming mid-epoch: the rest of that epoch is replayed exactly, the done batches skipped.
    Its iterator starts at the first batch, not when it is made: Lightning makes it before ``set_epoch``, and
    with workers it would draw the previous epoch's order then (a resumed run trained on epoch 0's order)."""

    position = 0  # batches of the current epoch handed out
    _resume: dict[int, int] = {}  # {epoch: batches already done}, from a checkpoint

    def __iter__(self):
        sampler = self.sampler if isinstance(self.sampler, EpochShuffle) else None  # DDP wraps it: no skipping
        resume, self._resume = self._resume, {}
        self.position = resume.get(sampler.epoch, 0) if sampler is not None else 0
        if self.position:
            sampler.start = self.position * self.batch_size
        for batch in super().__iter__():
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        sampler = self.sampler if isinstance(self.sampler, EpochShuffle) else None
        return {} if sampler is None else {"epoch": sampler.epoch, "batches": self.position}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {state["epoch"]: state["batches"]} if state else {}


def _ignore_interrupt(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: the loader workers live on, so that the run stops
    cleanly at the end of its step (``catdog.callbacks.LastCheckpoint``); they end with the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def image_folder(path: Path, transform: Preprocess, exif_transpose: bool = False) -> CatDogImageFolder:
    """The images under ``path``, which must hold exactly the class folders cats and dogs (cats=0, dogs=1)."""
    if not path.is_dir():
        raise CatDogError(f"{path} is not a folder; expected {path}/cats and {path}/dogs")
    found = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if tuple(found) != CLASSES:
        raise CatDogError(f"{path} has class folders {found}; expected exactly {list(CLASSES)}")
    loader = partial(load_rgb, exif_transpose=exif_transpose)
    return CatDogImageFolder(str(path), transform=transform, loader=loader, target_transform=_as_float)


def val_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The indices of train/ carved out for validation, and the rest: deterministic for ``seed``."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(size * fraction)
    return order[:n_val], order[n_val:]


def _as_float(label: int) -> torch.Tensor:
    return torch.tensor([float(label)])  # shape (1,), like the model's logit


class CatDogDataModule(pl.LightningDataModule):
    """Train on ``root/train``, validate (and test) on ``root/test``, as the seed did.

    ``val_fraction > 0`` instead carves a validation set out of ``train`` (deterministic for ``split_seed``),
    keeping ``test`` untouched for the final number. ``source`` is prepared into ``root`` when it is missing.

    ``augment_on``: where the training images are augmented. ``workers``: each image in the loader workers
    (torchvision's transforms on the CPU); ``device``: whole batches where the cache holds the images (a GPU, or
    the RAM of a CPU run; ``BatchAffine``), which needs ``cache=true`` and the images held there; ``auto``:
    ``device`` when the cache holds them on a GPU (or ``cache_on_device=true`` holds them anywhere), else
    ``workers``.
    """

    def __init__(
        self,
        root: str = "data/processed_data",
        source: str | None = "microsoft",
        batch_size: int = 20,
        image_size: tuple[int, int] = INPUT_SIZE,
        interpolation: str = "nearest",
        exif_transpose: bool = False,
        augment: dict | None = None,
        cache: bool = False,
        cache_on_device: bool | str = "auto",
        augment_on: str = "auto",
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        test_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # checkpoints keep image_size and interpolation for visualize.py
        self.root = Path(root)
        self.source = source
        self.batch_size = batch_size
        self.preprocess = Preprocess(tuple(image_size), interpolation)
        self.exif_transpose = exif_transpose
        self.augment = make_augment(**augment) if augment else None
        self.batch_augment = BatchAffine(**augment) if self.augment is not None else None
        if augment_on not in ("auto", "workers", "device"):
            raise CatDogError(f"data.augment_on must be auto, workers or device, got {augment_on!r}")
        if augment_on == "device" and self.augment is not None and (not cache or cache_on_device is False):
            raise CatDogError(
                "data.augment_on=device augments the images where the cache holds them: "
                "set data.cache=true (and data.cache_on_device auto or true), or data.augment_on=workers"
            )
        self.augment_on = augment_on
        self.cache = cache
        if cache_on_device not in (True, False, "auto"):
            raise CatDogError(f"data.cache_on_device must be true, false or auto, got {cache_on_device!r}")
        self.cache_on_device = cache_on_device
        self.pixels: torch.Tensor | None = None  # the cached uint8 images on the device, when held there
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.test_fraction = test_fraction
        self.train_set: Dataset | None = None
        self.shuffle_seed = 0  # drawn in setup

    def prepare_data(self) -> None:
        if not self.root.exists():
            if not self.source:
                raise CatDogError(f"{self.root} does not exist; set data.source=/path/to/train.zip (or a URL)")
            prepare(self.source, self.root, test_fraction=self.test_fraction, seed=self.split_seed)
        if self.cache:  # once, on local rank 0, before setup
            for split in ("train", "test"):
                folder = image_folder(self.root / split, self.preprocess, self.exif_transpose)
                build_cache(folder, self.preprocess, self.exif_transpose, self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = self._folder("train", self.augment)
        self.test_set = self._folder("test", None)
        device = self._cache_device(train, self.test_set)
        if device is None and self.augment is not None and self.augment_on == "device":
            raise CatDogError(
                "data.augment_on=device: the cached images are not held on the device (see above); "
                "set data.augment_on=workers or data.cache_on_device=true"
            )
        if device is not None:
            pixels = [np.load(folder.cache, mmap_mode="r") for folder in (train, self.test_set)]
            self.pixels = torch.from_numpy(np.concatenate(pixels)).to(device)
            train.use_cache(train.cache, None)  # the device augments whole batches (AugmentedIndices)
            train, self.test_set = CachedIndices(train, 0), CachedIndices(self.test_set, len(pixels[0]))
        if self.val_fraction > 0:
            val, rest = val_split(len(train), self.val_fraction, self.split_seed)
            plain = train if self.augment is None or self.pixels is not None else self._folder("train", None)
            self.train_set, self.val_set = Subset(train, rest), Subset(plain, val)
        else:
            self.train_set, self.val_set = train, self.test_set
        # drawn from torch's generator, so seed= fixes it; a resumed run takes the first's (load_state_dict)
        self.shuffle_seed = int(torch.randint(0, 2**31, (1,)))

    def state_dict(self) -> dict:
        return {"shuffle_seed": self.shuffle_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shuffle_seed = state_dict.get("shuffle_seed", self.shuffle_seed)

    def _cache_device(self, *folders: CatDogImageFolder) -> torch.device | None:
        """Where to hold the cached images: the training device when ``cache_on_device`` is true, or when it is
        auto and they fit in half of the device's free memory (a GPU's, or the RAM a CPU run has); else None
        (workers read the memory-mapped file). Held, the batches need no loader workers, which on a CPU would take
        cores from the training step, and augmentation runs there on whole batches. Augmented images are held by
        auto only on a GPU (on a CPU, augmenting in the training process would make the step wait for it; the
        workers augment beside it) or with ``augment_on=device``, and never with ``augment_on=workers``."""
        if not self.cache or self.cache_on_device is False:
            return None
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.augment is not None and self.augment_on == "workers":
            if self.cache_on_device is True:
                raise CatDogError(
                    "data.cache_on_device=true holds the images on the device, where data.augment_on=workers "
                    "cannot augment them; set data.augment_on=device (or auto)"
                )
            return None
        if self.cache_on_device is True:
            return device
        if self.augment is not None and self.augment_on == "auto" and device.type != "cuda":
            return None  # a CPU run: the workers augment beside the training step, not in its way
        size = sum(folder.cache.stat().st_size for folder in folders)
        if size > free_memory(device) / 2:
            print(
                f"data.cache_on_device=auto: {size / 2**30:.1f} GiB of cached images would take over half of the "
                f"free memory of {device}; the loader workers read them from the cache file"
            )
            return None
        return device

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With the cache on the device, batches arrive as indices: gather and scale their pixels there
        (NHWC uint8 -> NCHW float in [0, 1], channels_last in memory, as the model wants it). Training batches
        with augmentation also carry each image's affine matrix (``AugmentedIndices``): warp them there."""
        if self.pixels is None:
            return batch
        index, y, skipped, *theta = batch
        if len(index) == 0:
            return index, y, skipped
        x = self.pixels[index].permute(0, 3, 1, 2).float().mul_(1 / 255)
        if theta:
            x = self.batch_augment.warp(x, theta[0]).contiguous(memory_format=torch.channels_last)
        return x, y, skipped

    def _folder(self, split: str, augment: Compose | None) -> CatDogImageFolder:
        transform = self.preprocess if augment is None else Compose([self.preprocess, augment])
        folder = image_folder(self.root / split, transform, self.exif_transpose)
        if self.cache:
            folder.use_cache(build_cache(folder, self.preprocess, self.exif_transpose, self.num_workers), augment)
        return folder

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = 0 if self.pixels is not None else self.num_workers  # indices only: no work for workers
        sampler = None
        if shuffle:  # the training loader: resumable, and augmentation seeded per sample when there is one
            seeded = self.augment is not None
            sampler = EpochShuffle(len(dataset), self.shuffle_seed, seeded=seeded)
            if seeded and self.pixels is not None:  # augmented on the device, per batch
                dataset = AugmentedIndices(dataset, self.batch_augment, self.preprocess.size)
            elif seeded:
                dataset = SeededSamples(dataset)
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory and self.pixels is None,
            persistent_workers=workers > 0,
            collate_fn=collate_skipping_bad if self.pixels is None else _as_is,  # CachedIndices collates
            worker_init_fn=_ignore_interrupt if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
