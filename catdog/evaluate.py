"""Evaluate any checkpoint on any ImageFolder with classes cats and dogs.

    catdog-evaluate [ckpt=latest|pretrained|none|PATH] [data.root=data/processed_data] [split=test]
                    [out_dir=.] [wrong=16] [tta=false] [precision=32] [device=auto]

(or ``python -m catdog.evaluate``). Settings: catdog/conf/evaluate.yaml, with the data group that training uses
(data.root, data.batch_size, ...).

``split=val`` evaluates the validation set that training carves out of ``train/`` (the checkpoint's
``data.val_fraction`` and ``data.split_seed`` unless given), for choosing settings without test/.
``tta=true`` also predicts each image mirrored left-right and averages the two logits.
``precision=bf16-mixed`` runs the network in bfloat16, as training's ``trainer.precision=bf16-mixed``. Files that
do not decode are counted (``unreadable``) and left out. Scoring is ``catdog.scoring``'s, as predict's.
Prints accuracy, loss and the confusion matrix; writes ``evaluation.json`` and ``most_wrong.png`` (the images
the model got wrong with the most confidence) to ``out_dir``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from catdog import CLASSES, CatDogError
from catdog.cli import run
from catdog.files import write_text
from catdog.model import pick_device
from catdog.preprocess import default_workers
from catdog.scoring import check_precision, score_files
from catdog.views.plots import below, beside, save_png, with_title
from catdog.weights import load_weights


def evaluate(cfg: DictConfig) -> dict:
    """Score every image of the split; print nothing, write ``evaluation.json`` (and ``most_wrong.png``), return
    what the JSON holds."""
    # catdog.data imports Lightning, which takes about twice as long to import as torch itself (python -X
    # importtime): imported here, --help and a mistyped setting do not wait for it
    from catdog.data import image_folder, val_split

    if cfg.split not in ("test", "train", "val"):
        raise CatDogError(f"split must be test, train or val, got {cfg.split!r}")
    device = pick_device(cfg.device)
    check_precision(cfg.precision)
    weights = load_weights(cfg.ckpt)
    model = weights.model(device, fast=True)
    preprocessing = weights.preprocessing
    folder = Path(cfg.data.root) / ("train" if cfg.split == "val" else cfg.split)
    listing = image_folder(folder, preprocessing)
    samples = list(zip(listing.paths, listing.targets, strict=True))
    note = ""
    if cfg.split == "val":  # the checkpoint's own split unless the command line sets one
        trained = weights.metadata.get("data") or {}
        fraction = cfg.data.val_fraction or trained.get("val_fraction", 0.0)
        seed = cfg.data.split_seed if cfg.data.val_fraction else trained.get("split_seed", cfg.data.split_seed)
        if not 0 < fraction < 1:
            raise CatDogError(f"split=val needs 0 < data.val_fraction < 1, got {fraction}")
        samples = [samples[i] for i in val_split(len(samples), fraction, seed)[0]]
        note = f" (val: {fraction:g}, split_seed {seed})"
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    paths = [Path(path) for path, _ in samples]
    scored, unreadable = [], 0
    for indices, logits, failed in score_files(
        model, paths, preprocessing, cfg.data.batch_size, workers, cfg.tta, cfg.precision
    ):
        scored += zip(indices, logits, strict=True)
        unreadable += len(failed)
    if not scored:
        raise CatDogError(f"no readable images under {folder}")
    samples = [samples[i] for i, _ in scored]  # the files that decoded, in the order of their logits
    logit = torch.tensor([value for _, value in scored])
    label = torch.tensor([float(target) for _, target in samples])
    predicted = (logit > 0).float()
    confusion = [[int(((label == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    result = {
        "checkpoint": weights.source,
        "precision": str(cfg.precision),
        "data": str(folder) + note,
        "images": len(label),
        "unreadable": unreadable,
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
    if order:
        tiles = []
        for i in order:
            true, guess = CLASSES[int(label[i])][:-1], CLASSES[int(predicted[i])][:-1]
            title = f"{true}: {guess} {max(p_dog[i], 1 - p_dog[i]):.2f}"
            tiles.append(with_title(preprocessing.image(samples[i][0]), title, size=12))
        rows = [beside(*tiles[k : k + 8], gap=4) for k in range(0, len(tiles), 8)]
        save_png(below(*rows, gap=4), out_dir / "most_wrong.png")
        result["most_wrong"] = [samples[i][0] for i in order]
    write_text(out_dir / "evaluation.json", json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict) -> str:
    (tn, fp), (fn, tp) = result["confusion"]["matrix"]
    return "\n".join(
        [
            f"{result['data']}: {result['images']} images"
            + (f" ({result['unreadable']} unreadable, left out)" if result["unreadable"] else "")
            + f", checkpoint {result['checkpoint']}",
            f"accuracy {100 * result['accuracy']:.2f}%   loss {result['loss']:.4f}"
            + ("   (tta: logits averaged with the mirrored image's)" if result["tta"] else ""),
            "confusion (rows true, columns predicted):",
            "        cats   dogs",
            f"cats  {tn:5d}  {fp:5d}",
            f"dogs  {fn:5d}  {tp:5d}",
        ]
    )


def evaluate_and_report(cfg: DictConfig) -> dict:
    """The command: evaluate, then print the report."""
    result = evaluate(cfg)
    print(report(result))
    return result


def main(argv: list[str] | None = None) -> int:
    """``catdog-evaluate``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("evaluate", evaluate_and_report, argv)


if __name__ == "__main__":
    sys.exit(main())
