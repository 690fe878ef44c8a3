"""``CatDogDataModule``: ``{root}/{train,test}/{cats,dogs}`` in batches, preprocessed as the seed did.

Where the pictures come from and where they are augmented follow from ``data.cache`` alone, decided in one place
(``CatDogDataModule.holds``):

- ``cache=false``: loader workers decode the files; each training picture is augmented there (torchvision, seeded
  per sample).
- ``cache=true``: every picture is decoded once into ``root/.cache`` and the uint8 pictures are held in the training
  device's memory (a GPU's, or the RAM of a CPU run); batches are gathered there and augmented there, a whole batch
  at once (``BatchAffine``), with no loader workers. When they would take more than half of the free memory, the
  workers read the files as with ``cache=false`` (a line says so).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import Compose

from catdog import CLASSES, CatDogError
from catdog.data.augment import AugmentedIndices, BatchAffine, make_augment
from catdog.data.cache import CachedIndices, build_cache
from catdog.data.loading import EpochShuffle, Labelled, ResumableLoader, SeededSamples, ignore_interrupt
from catdog.model import INPUT_SIZE
from catdog.prepare import prepare
from catdog.preprocess import IMAGE_EXTENSIONS, Pictures, Preprocessing, default_workers, scaled


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


def image_folder(
    path: Path, preprocessing: Preprocessing, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Pictures:
    """The pictures under ``path``, which must hold exactly the class folders cats and dogs (cats=0, dogs=1), each
    with at least one image. Files are listed without following symlinked folders (no loops), hidden files
    (``.DS_Store``, ``._cat.1.jpg``) and other names than images' are left out; one that fails to decode is
    skipped with a warning (``Pictures``)."""
    if not path.is_dir():
        raise CatDogError(f"{path} is not a folder; expected {path}/cats and {path}/dogs")
    found = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if tuple(found) != CLASSES:
        raise CatDogError(f"{path} has class folders {found}; expected exactly {list(CLASSES)}")
    paths, targets = [], []
    for target, name in enumerate(CLASSES):
        before = len(paths)
        for dirpath, dirnames, filenames in os.walk(path / name):  # followlinks=False
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith(".") and Path(filename).suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(os.path.join(dirpath, filename))
        if len(paths) == before:
            raise CatDogError(f"class folder {path / name} holds no images")
        targets += [target] * (len(paths) - before)
    return Pictures(paths, preprocessing, transform, warn=True, targets=targets)


def val_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The indices of train/ carved out for validation, and the rest: deterministic for ``seed``."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(size * fraction)
    return order[:n_val], order[n_val:]


def _as_is(batch):
    return batch


class CatDogDataModule(pl.LightningDataModule):
    """Train on ``root/train``, validate (and test) on ``root/test``, as the seed did.

    ``val_fraction > 0`` instead carves a validation set out of ``train`` (deterministic for ``split_seed``),
    keeping ``test`` untouched for the final number. ``source`` is prepared into ``root`` when it is missing.
    ``cache``: see the module's docstring. Batches are ``(pictures, labels, count of files that did not decode)``.
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
        self.preprocessing = Preprocessing(tuple(image_size), interpolation, exif_transpose)
        self.augment = make_augment(**augment) if augment else None
        self.batch_augment = BatchAffine(**augment) if self.augment is not None else None
        self.cache = cache
        self.pixels: torch.Tensor | None = None  # the cached uint8 pictures on the device, when held there
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.test_fraction = test_fraction
        self.train_set: Dataset | None = None
        self.shuffle_seed = 0  # drawn in setup

    def holds(self, folders: list[Pictures], say: bool = True) -> bool:
        """Whether the cache holds the pictures of ``folders`` on the training device, which decides everything
        else (the module's docstring): with ``cache=true``, when they take at most half of its free memory (a
        GPU's, or the RAM a CPU run has). Held, batches need no loader workers, which on a CPU would take cores
        from the training step. ``say``: print why when they do not fit."""
        if not self.cache:
            return False
        h, w = self.preprocessing.image_size
        size = sum(len(folder) for folder in folders) * h * w * 3
        free = free_memory(self.device)
        if size > free / 2 and say:
            print(
                f"data.cache: {size / 2**30:.1f} GiB of decoded images would take over half of the free memory of "
                f"{self.device} ({free / 2**30:.1f} GiB); the loader workers read the files instead"
            )
        return size <= free / 2

    @property
    def device(self) -> torch.device:
        """The training device: the trainer's, or the CPU where there is none (a datamodule used on its own)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def prepare_data(self) -> None:
        if not self.root.exists():
            if not self.source:
                raise CatDogError(f"{self.root} does not exist; set data.source=/path/to/train.zip (or a URL)")
            prepare(self.source, self.root, test_fraction=self.test_fraction, seed=self.split_seed)
        if self.cache:  # once, on local rank 0, before setup
            folders = [image_folder(self.root / split, self.preprocessing) for split in ("train", "test")]
            if self.holds(folders, say=False):  # setup says why not
                for split, folder in zip(("train", "test"), folders, strict=True):
                    build_cache(self.root / split, folder, self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = (image_folder(self.root / split, self.preprocessing, scaled) for split in ("train", "test"))
        plain = train  # validation pictures carved from train/ are never augmented
        if self.holds([train, test]):
            caches = [build_cache(self.root / s, f, self.num_workers) for s, f in (("train", train), ("test", test))]
            self.pixels = torch.from_numpy(np.concatenate([np.load(c, mmap_mode="r") for c in caches]))
            self.pixels = self.pixels.to(self.device)
            train = plain = CachedIndices(train, caches[0], self.pixels, 0)  # augmented a batch at a time
            test = CachedIndices(test, caches[1], self.pixels, len(train))
        elif self.augment is not None:
            train = image_folder(self.root / "train", self.preprocessing, Compose([scaled, self.augment]))
        self.test_set = test
        if self.val_fraction > 0:
            val, rest = val_split(len(train), self.val_fraction, self.split_seed)
            self.train_set, self.val_set = Subset(train, rest), Subset(plain, val)
        else:
            self.train_set, self.val_set = train, test
        # drawn from torch's generator, so seed= fixes it; a resumed run takes the first's (load_state_dict)
        self.shuffle_seed = int(torch.randint(0, 2**31, (1,)))

    def state_dict(self) -> dict:
        return {"shuffle_seed": self.shuffle_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shuffle_seed = state_dict.get("shuffle_seed", self.shuffle_seed)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With the cache on the device, batches arrive as indices: gather and scale their pixels there
        (NHWC uint8 -> NCHW float in [0, 1], channels_last in memory, as the model wants it). Training batches
        with augmentation also carry each picture's affine matrix (``AugmentedIndices``): warp them there."""
        if self.pixels is None:
            return batch
        index, y, skipped, *theta = batch
        if len(index) == 0:
            return index, y, skipped
        x = scaled(self.pixels[index])
        if theta:
            x = self.batch_augment.warp(x, theta[0]).contiguous(memory_format=torch.channels_last)
        return x, y, skipped

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        held = self.pixels is not None
        workers = 0 if held else self.num_workers  # indices only: no work for workers
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        sampler = None
        if shuffle:  # the training loader: resumable, and augmentation seeded per sample when there is one
            seeded = self.augment is not None
            sampler = EpochShuffle(len(dataset), self.shuffle_seed, seeded=seeded)
            if seeded and held:  # augmented on the device, per batch
                dataset = AugmentedIndices(dataset, self.batch_augment, self.preprocessing.image_size)
            elif seeded:
                dataset = SeededSamples(dataset)
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory and not held,
            persistent_workers=workers > 0,
            collate_fn=_as_is if held else Labelled(base.targets),  # CachedIndices collates
            worker_init_fn=ignore_interrupt if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
