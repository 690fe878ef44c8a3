"""Evaluate any checkpoint on any ImageFolder with classes cats and dogs.

    python -m catdog.evaluate ckpt=PATH|latest [data.root=data/processed_data] [split=test] [out_dir=.] [wrong=16]
                              [tta=false]

``split=val`` evaluates the validation set that training carves out of ``train/`` (``data.val_fraction``,
``data.split_seed``: the same images as ``experiment=best`` validated on), for choosing settings without test/.
``tta=true`` also predicts each image mirrored left-right and averages the two logits.
Prints accuracy, loss and the confusion matrix; writes ``evaluation.json`` and ``most_wrong.png`` (the images
the model got wrong with the most confidence) to ``out_dir``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from catdog import CLASSES, CatDogError


@dataclass
class DataConfig:
    root: str = "data/processed_data"
    batch_size: int = 64
    num_workers: int | None = None
    val_fraction: float = 0.1  # for split=val
    split_seed: int = 0


@dataclass
class EvaluateConfig:
    ckpt: str = "latest"
    split: str = "test"
    out_dir: str = "."
    wrong: int = 16
    tta: bool = False
    data: DataConfig = field(default_factory=DataConfig)


def evaluate(cfg: EvaluateConfig) -> dict:
    from torch.utils.data import DataLoader, Subset

    from catdog.allocator import reuse_freed_memory
    from catdog.data import collate_skipping_bad, default_workers, image_folder, val_split
    from catdog.plots import below, beside, save_png, with_title
    from catdog.preprocess import Preprocess, load_rgb, resize
    from catdog.visualize import find_checkpoint, load_model

    reuse_freed_memory()
    ckpt = find_checkpoint(cfg.ckpt)
    model, preprocessing = load_model(ckpt)
    preprocess = Preprocess(tuple(preprocessing["image_size"]), preprocessing["interpolation"])
    folder = Path(cfg.data.root) / ("train" if cfg.split == "val" else cfg.split)
    dataset = image_folder(folder, preprocess, preprocessing["exif_transpose"])
    samples = dataset.samples
    if cfg.split == "val":
        if not 0 < cfg.data.val_fraction < 1:
            raise CatDogError(f"split=val needs 0 < data.val_fraction < 1, got {cfg.data.val_fraction}")
        indices = val_split(len(dataset), cfg.data.val_fraction, cfg.data.split_seed)[0]
        dataset, samples = Subset(dataset, indices), [samples[i] for i in indices]
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=workers, collate_fn=collate_skipping_bad)
    logits, labels = [], []
    with torch.no_grad():
        for x, y, _ in loader:
            if len(x):
                logit = model(x)[:, 0]
                logits.append((logit + model(x.flip(3))[:, 0]) / 2 if cfg.tta else logit)
                labels.append(y[:, 0])
    if not logits:
        raise CatDogError(f"no readable images under {folder}")
    logit, label = torch.cat(logits), torch.cat(labels)
    predicted = (logit > 0).float()
    confusion = [[int(((label == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    result = {
        "checkpoint": str(ckpt) if ckpt else "none",
        "data": str(folder)
        + (f" (val: {cfg.data.val_fraction:g}, split_seed {cfg.data.split_seed})" if cfg.split == "val" else ""),
        "images": len(label),
        "tta": cfg.tta,
        "accuracy": float((predicted == label).float().mean()),
        "loss": float(F.binary_cross_entropy_with_logits(logit, label)),
        "confusion": {"rows: true, columns: predicted": list(CLASSES), "matrix": confusion},
    }
    # the most confidently wrong: largest distance between the probability and the true label
    p_dog = torch.sigmoid(logit)
    wrong = torch.nonzero(predicted != label)[:, 0]
    order = wrong[torch.argsort((p_dog[wrong] - label[wrong]).abs(), descending=True)][: cfg.wrong].tolist()
    out_dir = Path(cfg.out_dir)
    if order and len(samples) == len(label):  # in the loader's order; misaligned only if a file failed to decode
        tiles = []
        for i in order:
            image = load_rgb(samples[i][0], preprocessing["exif_transpose"])
            image = resize(image, preprocess.size, preprocess.interpolation)
            true, guess = CLASSES[int(label[i])][:-1], CLASSES[int(predicted[i])][:-1]
            tiles.append(with_title(image, f"{true}: {guess} {max(p_dog[i], 1 - p_dog[i]):.2f}", size=12))
        rows = [beside(*tiles[k : k + 8], gap=4) for k in range(0, len(tiles), 8)]
        save_png(below(*rows, gap=4), out_dir / "most_wrong.png")
        result["most_wrong"] = [samples[i][0] for i in order]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict) -> str:
    (tn, fp), (fn, tp) = result["confusion"]["matrix"]
    return "\n".join(
        [
            f"{result['data']}: {result['images']} images, checkpoint {result['checkpoint']}",
            f"accuracy {100 * result['accuracy']:.2f}%   loss {result['loss']:.4f}"
            + ("   (tta: logits averaged with the mirrored image's)" if result["tta"] else ""),
            "confusion (rows true, columns predicted):",
            "        cats   dogs",
            f"cats  {tn:5d}  {fp:5d}",
            f"dogs  {fn:5d}  {tp:5d}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    from catdog.cli import run_dotlist

    return run_dotlist(
        EvaluateConfig, lambda cfg: print(report(evaluate(cfg))), "python -m catdog.evaluate ckpt=PATH", argv
    )


if __name__ == "__main__":
    sys.exit(main())
