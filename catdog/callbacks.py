"""Lightning callbacks that write a run's outputs: the last checkpoint, the curves, the activation snapshots."""

from __future__ import annotations

import csv
import io
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from catdog.files import atomic_write, write_text
from catdog.preprocess import Unreadable

CURVE_METRICS = ("train_acc", "val_acc", "train_loss", "val_loss")


class LastCheckpoint(pl.callbacks.Checkpoint):
    """``checkpoints/last.ckpt`` for ``ckpt_path=last``: after every training epoch and, for long epochs, also every
    ``every_n_train_steps`` steps and/or ``every_n_minutes`` minutes, so that a crash or ``kill -9`` loses at most
    that much. A mid-epoch checkpoint holds the loop's and the training loader's position: resumed, the rest of the
    epoch is replayed exactly (``catdog.data.loading.ResumableLoader``).

    Ctrl-C (SIGINT) stops the run at the end of the current training step (of the epoch, on its last step or during
    validation), with ``last.ckpt`` saved there first; a second Ctrl-C stops at once. Lightning then reports
    ``trainer.interrupted`` and exits, which ``train.py`` turns into exit code 130.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, every_n_minutes: float | None = None):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_seconds = 60 * every_n_minutes if every_n_minutes else None
        self.stop_requested = False
        self._saved = (-1, time.monotonic())  # global step and time of the last save
        self._previous_handler = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved = (-1, time.monotonic())
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.stop_requested = True
        print(
            f"\nCtrl-C: stopping at the end of this training step, after saving {self.path} (Ctrl-C again: now)",
            file=sys.stderr,
            flush=True,
        )

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handler()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's end comes next (validation, schedules, curves): save and stop there
        step, saved_at = self._saved
        due = bool(self.every_n_train_steps) and trainer.global_step % self.every_n_train_steps == 0
        if self.every_n_seconds is not None:
            due = due or trainer.strategy.broadcast(time.monotonic() - saved_at >= self.every_n_seconds)
        self._save_or_stop(trainer, due and trainer.global_step != step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_or_stop(trainer, True)

    def _save_or_stop(self, trainer: pl.Trainer, due: bool) -> None:
        stop = self.stop_requested
        if trainer.world_size > 1:  # every process stops at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if (due or stop) and not trainer.sanity_checking and not trainer.fast_dev_run:
            trainer.save_checkpoint(self.path)
            self._saved = (trainer.global_step, time.monotonic())
        if stop:
            raise KeyboardInterrupt


class TrainingCurves(pl.Callback):
    """After each epoch, (re)writes ``curves.png`` (accuracy and loss, train vs validation) and ``history.csv``.

    Rewriting every epoch means an interrupted run still leaves its curves; it costs one small figure per epoch.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        row.update({k: float(metrics[k]) for k in CURVE_METRICS if k in metrics})
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=["epoch", *CURVE_METRICS], restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.dirpath / "history.csv", table.getvalue())
        plot_curves(self.history, self.dirpath / "curves.png")

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict["history"]


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Two panels like the seed's book: accuracy and loss per epoch, training dots vs validation line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    for ax, what in zip(axes, ("acc", "loss"), strict=True):
        for stage, style in (("train", "bo"), ("val", "b-")):
            values = [r.get(f"{stage}_{what}") for r in history]
            if any(v is not None for v in values):
                label = "Training" if stage == "train" else "Validation"
                ax.plot(epochs, values, style, label=f"{label} {'accuracy' if what == 'acc' else 'loss'}")
        ax.set_xlabel("epoch")
        ax.set_title(f"Training and validation {'accuracy' if what == 'acc' else 'loss'}")
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


class ActivationSnapshots(pl.Callback):
    """Every ``every_n_epochs`` epochs, records all conv and pool layers for two fixed probe images (the first
    cat and the first dog of the validation set that decode) and saves each probe's overview page as
    ``snapshots/<probe>/epoch_NNN.png`` (epoch 000 is the untrained network); logs them to TensorBoard when that
    logger is on; at the end of training writes ``snapshots/<probe>.gif``, the pages epoch by epoch.

    Cost: two forward passes of single images and drawing two pages (about a second on a CPU) per snapshot.
    Runs on global rank 0 only.
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1, norm: str = "channel", gif_width: int = 1200) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.norm = norm
        self.gif_width = gif_width
        self.probes: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.val_set if trainer.datamodule is not None else None
        if dataset is None:
            return
        for probe, indices in probe_indices(dataset).items():
            samples = (dataset[i] for i in indices)
            sample = next((s for s in samples if not isinstance(s, Unreadable)), None)  # skip bad files
            if sample is not None:
                self.probes[probe] = sample[0]
        if trainer.current_epoch == 0:  # not when resuming
            self._snapshot(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.is_global_zero and self.probes and epoch % self.every_n_epochs == 0:
            self._snapshot(trainer, pl_module, epoch)

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        from catdog.hooks import ActivationRecorder
        from catdog.views.plots import below, layer_pages, save_png, with_title

        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            for probe, x in self.probes.items():
                x = x[None].to(pl_module.device)
                with ActivationRecorder(model) as recorder, torch.no_grad():
                    p_dog = float(torch.sigmoid(pl_module(x).float())[0, 0])
                records = {k: v[0].float().numpy() for k, v in recorder.records.items()}
                pages = layer_pages(records, norm=self.norm)
                page = below(
                    with_title(pages.pop("conv1"), f"{probe} probe, epoch {epoch}: p(dog) = {p_dog:.2f}"),
                    *pages.values(),
                    gap=8,
                )
                save_png(page, self.dirpath / probe / f"epoch_{epoch:03d}.png")
                for logger in trainer.loggers:
                    if isinstance(logger, pl.loggers.TensorBoardLogger):
                        logger.experiment.add_image(f"snapshots/{probe}", np.asarray(page), epoch, dataformats="HWC")
        finally:
            model.train(was_training)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from PIL import Image

        for probe in self.probes:
            frames = []
            for path in sorted((self.dirpath / probe).glob("epoch_*.png")):
                with Image.open(path) as page:
                    scale = min(1.0, self.gif_width / page.width)
                    frames.append(page.resize((int(page.width * scale), int(page.height * scale)), Image.BILINEAR))
            if frames:
                atomic_write(
                    self.dirpath / f"{probe}.gif",
                    lambda tmp, frames=frames: frames[0].save(
                        tmp, format="GIF", save_all=True, append_images=frames[1:], duration=1000, loop=0
                    ),
                )


def probe_indices(dataset) -> dict[str, list[int]]:
    """The indices of the cats (class 0) and of the dogs (1), in order, in a dataset with ``targets`` (``Pictures``,
    ``CachedIndices``) or a Subset of one, without decoding."""
    base, order = dataset, None
    if hasattr(dataset, "indices"):  # torch Subset
        base, order = dataset.dataset, list(dataset.indices)
    targets = list(base.targets) if order is None else [base.targets[i] for i in order]
    return {probe: [i for i, t in enumerate(targets) if t == c] for c, probe in enumerate(("cat", "dog"))}
