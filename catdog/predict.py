"""Classify pictures: the label and the probability of "dog" for each, printed and written as CSV.

    catdog-predict image=PATH|FOLDER|[a.jpg,b.jpg] [ckpt=latest|pretrained|none|PATH] [tta=false]
                   [precision=32] [out=predictions.csv] [device=auto] [quiet=false]

(or ``python -m catdog.predict``); ``image=sample:cat`` and ``image=sample:dog`` are the photos that come with catdog.
Settings: catdog/conf/predict.yaml (data.batch_size and data.num_workers set the loader). A folder is streamed through a
DataLoader with workers and each row is written as soon as its batch is done, so memory does not grow with the
folder. A file that cannot be read becomes a row with its error, never a crash.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig

from catdog.cli import image_setting, run
from catdog.files import atomic_write
from catdog.model import pick_device, prediction
from catdog.preprocess import Preprocessing, default_workers, image_paths
from catdog.scoring import check_precision, score_files
from catdog.weights import load_weights

COLUMNS = ("path", "label", "p_dog", "error")


def predict_rows(
    model: torch.nn.Module,
    paths: list[Path],
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    tta: bool,
    precision: str = "32",
) -> Iterator[dict]:
    """One row per path, in order: ``path, label, p_dog`` or ``path, error`` (``catdog.scoring.score_files``)."""
    for indices, logits, failed in score_files(model, paths, preprocessing, batch_size, workers, tta, precision):
        rows = {i: {"path": str(paths[i]), "label": "", "p_dog": "", "error": e} for i, e in failed}
        for i, logit in zip(indices, logits, strict=True):
            p = prediction(logit)
            rows[i] = {"path": str(paths[i]), "label": p["label"], "p_dog": f"{p['p_dog']:.6f}", "error": ""}
        yield from (rows[i] for i in sorted(rows))


def predict(cfg: DictConfig) -> dict:
    """Write ``cfg.out`` (atomically: a temporary file renamed at the end); returns counts per label."""
    paths = image_paths(image_setting(cfg.image))
    device = pick_device(cfg.device)
    check_precision(cfg.precision)  # a bad setting stops here, before the work
    weights = load_weights(cfg.ckpt)
    model = weights.model(device, fast=True)
    print(f"weights: {weights.source}", file=sys.stderr)
    workers = cfg.data.num_workers
    if workers is None:  # no worker processes to start for a handful of pictures
        workers = default_workers() if len(paths) > cfg.data.batch_size else 0
    counts = {"cat": 0, "dog": 0, "error": 0}
    batch = cfg.data.batch_size

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in predict_rows(model, paths, weights.preprocessing, batch, workers, cfg.tta, cfg.precision):
                writer.writerow(row)
                counts[row["label"] or "error"] += 1
                if not cfg.quiet:
                    what = f"{row['label']} {float(row['p_dog']):.4f}" if row["label"] else f"error: {row['error']}"
                    print(f"{what}  {row['path']}")

    out = atomic_write(Path(cfg.out), write)
    print(f"wrote {out}: {counts['cat']} cats, {counts['dog']} dogs, {counts['error']} unreadable", file=sys.stderr)
    return counts


def main(argv: list[str] | None = None) -> int:
    """``catdog-predict``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("predict", predict, argv)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # every file is written and closed: skip the interpreter's teardown of torch (about 0.5 s)
