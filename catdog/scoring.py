"""Scoring many pictures: the one path that ``catdog.predict`` and ``catdog.evaluate`` share.

Files go through a DataLoader in batches. On the CPU each worker process decodes *and* scores whole batches on its
share of the cores (one thread each when there are as many workers as cores): independent batches keep every core
busy, where one process would wait between layers for its threads (``bench/predict.py``). On a GPU the workers
decode and the model runs in the main process. A file that does not decode is reported with its index and error,
never raised.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from catdog import CatDogError
from catdog.preprocess import Pictures, Preprocessing, Unreadable, collate_readable, cores, scaled

PRECISIONS = ("32", "32-true", "bf16-mixed")


def check_precision(precision) -> str:
    """``32``: exact float32; ``bf16-mixed``: bfloat16, as training's ``trainer.precision=bf16-mixed`` (about twice
    as fast on CPUs with AVX-512 BF16 or AMX, and on GPUs; probabilities move in the second or third decimal)."""
    if str(precision) not in PRECISIONS:
        raise CatDogError(f"precision must be 32 or bf16-mixed, got {precision!r}")
    return str(precision)


def logits_of(model: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The model's logits for a batch (N,); with ``tta`` averaged with those of the mirrored images."""
    logit = model(x)[:, 0]
    return (logit + model(x.flip(3))[:, 0]) / 2 if tta else logit


class Scorer:
    """Float32 logits, on the CPU, of a batch of (N, H, W, 3) uint8 pictures; picklable for worker processes.

    ``bf16-mixed`` scores a bfloat16 copy of the network: the same numbers as bfloat16 autocast of the float32
    network (convolutions and dense layers in bfloat16, pooling on their bfloat16 outputs), without casting the
    weights again for every batch."""

    def __init__(self, model: torch.nn.Module, tta: bool = False, precision: str = "32") -> None:
        self.dtype = torch.bfloat16 if check_precision(precision) == "bf16-mixed" else torch.float32
        self.model = model if self.dtype == torch.float32 else copy.deepcopy(model).to(self.dtype)
        self.tta = tta

    def __call__(self, pictures: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return logits_of(self.model, scaled(pictures, device).to(self.dtype), self.tta).float().cpu()


class Batches(Dataset):
    """Item ``b``: the ``b``-th run of ``batch_size`` paths, decoded (and scored by ``score`` when given) in the
    process that loads it: ``(pictures (N, H, W, 3) uint8 or logits, indices of the good files, [Unreadable(index,
    error)])``, the files that do not decode skipped as everywhere (``catdog.preprocess.Pictures``)."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing, batch_size: int, score: Scorer | None) -> None:
        self.pictures, self.batch_size, self.score = Pictures(paths, preprocessing), batch_size, score

    def __len__(self) -> int:
        return -(-len(self.pictures) // self.batch_size)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, list[int], list[Unreadable]]:
        run = range(b * self.batch_size, min(len(self.pictures), (b + 1) * self.batch_size))
        x, good, failed = collate_readable([self.pictures[i] for i in run])
        return (self.score(x) if self.score and good else x), good, failed


def share_cores(workers: int, worker_id: int = 0) -> None:
    """A scoring worker's threads: its share of the cores (DataLoader starts every worker on one thread)."""
    torch.set_num_threads(max(1, cores() // workers))


def score_files(
    model: torch.nn.Module,
    paths: list[Path],
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    tta: bool = False,
    precision: str = "32",
) -> Iterator[tuple[list[int], list[float], list[tuple[int, str]]]]:
    """Per batch, in order: the indices of the files that decoded, their logits, and ``(index, error)`` of the
    others. ``model``: ``Weights.model(device, fast=True)``."""
    device = next(model.parameters()).device
    score = Scorer(model, tta, precision)
    in_workers = workers > 0 and device.type == "cpu"
    batches = Batches(paths, preprocessing, batch_size, score if in_workers else None)
    share = partial(share_cores, workers) if in_workers else None
    loader = DataLoader(
        batches, batch_size=None, num_workers=workers, worker_init_fn=share, pin_memory=device.type == "cuda"
    )
    for x, indices, failed in loader:
        yield indices, (x if in_workers else score(x)).tolist() if indices else [], failed
