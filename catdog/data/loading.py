"""Samplers and loading: a shuffle that depends on (seed, epoch) only, augmentation seeded per sample, a training
loader that resumes mid-epoch exactly, and the collation of file batches (bad files skipped and counted)."""

from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, Dataset

from catdog.preprocess import Unreadable, collate_readable


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


class Labelled:
    """The collation of ``Pictures`` items into ``(pictures, labels (N, 1), bad count)``, the batches the module
    takes: the files that failed to decode are left out and counted (``catdog.preprocess.collate_readable``).
    Picklable, for the loader workers."""

    def __init__(self, targets: list[int]) -> None:
        self.labels = torch.tensor(targets, dtype=torch.float32)[:, None]  # (N, 1), like the model's logit

    def __call__(self, items: list[tuple[torch.Tensor, int] | Unreadable]) -> tuple[torch.Tensor, ...]:
        batch = collate_readable(items)
        return batch.pictures, self.labels[batch.indices], torch.tensor(len(batch.unreadable))


def ignore_interrupt(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: the loader workers live on, so that the run stops
    cleanly at the end of its step (``catdog.callbacks.LastCheckpoint``); they end with the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
