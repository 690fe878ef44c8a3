"""Lightning callbacks that write a run's human-facing outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl

CURVE_METRICS = ("train_acc", "val_acc", "train_loss", "val_loss")


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
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *CURVE_METRICS], restval="")
            writer.writeheader()
            writer.writerows(self.history)
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
    fig.savefig(path, dpi=80)
    plt.close(fig)
