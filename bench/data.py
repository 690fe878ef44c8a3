"""Where the pictures live, measured: ``data.cache=false`` (loader workers decode, and augment each picture) against
``data.cache=true`` (the decoded pictures held on the training device, gathered and augmented there a batch at a
time), with the training step included; prints a Markdown table.

    python bench/data.py --images /path/to/kaggle/train                        # this CPU, all its cores
    taskset -c 0,1 python bench/data.py --images /path/to/kaggle/train        # as on a 2-core machine
    python bench/data.py --images /path/to/kaggle/train --device cuda --batch 256 --n 8000

``--n`` training pictures (the folder's first, linked again when it has fewer) in ``{train,test}/{cats,dogs}``; each
setting trains a plain loop (forward, backward, RMSprop step; the datamodule's own batches, as ``train.py`` gets them)
for a warm-up epoch and a timed one (loader workers started, caches built), in ``--rounds`` rounds that take turns,
so a drift of the machine's speed hits every setting. Each figure is the median of the rounds; each ratio is to
``data.cache=false`` in the same round, then the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catdog.data import CatDogDataModule  # noqa: E402
from catdog.model import CatDogCNN  # noqa: E402

BEST = {"hflip": True, "rotation": 15, "shift": 0.1, "zoom": 0.2, "shear": 0}  # experiment=best's augmentation
SETTINGS = [  # (label, augment, cache)
    ("no augmentation, data.cache=false", None, False),
    ("no augmentation, data.cache=true", None, True),
    ("experiment=best's augmentation, data.cache=false", BEST, False),
    ("experiment=best's augmentation, data.cache=true", BEST, True),
]


def tree(images: Path, root: Path, n: int, n_test: int) -> Path:
    """Link ``n`` training and ``n_test`` test pictures, half cats, half dogs, from a Kaggle-style folder."""
    for split, count, first in (("train", n, 0), ("test", n_test, n)):
        for label in ("cat", "dog"):
            sources = sorted(images.glob(f"{label}.*.jpg"), key=lambda p: int(p.name.split(".")[1]))
            (root / split / f"{label}s").mkdir(parents=True)
            for i in range(count // 2):
                source = sources[(first // 2 + i) % len(sources)]
                os.link(source, root / split / f"{label}s" / f"{label}.{first // 2 + i}.jpg")
    return root


def epoch_rate(root: Path, device: torch.device, batch: int, augment: dict | None, cache: bool, bf16: bool) -> float:
    """img/s of the second of two training epochs."""
    dm = CatDogDataModule(root=str(root), source=None, batch_size=batch, augment=augment, cache=cache)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device))  # where train.py would train
    dm.prepare_data()
    dm.setup("fit")
    model = CatDogCNN().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loader = dm.train_dataloader()
    rate = 0.0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        start, images = time.perf_counter(), 0
        for batch_on_host in loader:
            batch_on_device = [t.to(device, non_blocking=True) for t in batch_on_host]
            x, y, _ = dm.on_after_batch_transfer(batch_on_device, 0)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.binary_cross_entropy_with_logits(model(x.contiguous(memory_format=torch.channels_last)), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            images += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a Kaggle-style folder of cat.N.jpg, dog.N.jpg")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000, help="training pictures")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], action="append", help="default: both")
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = args.precision or ["32", "bf16-mixed"]
    with tempfile.TemporaryDirectory() as tmp:
        root = tree(args.images, Path(tmp) / "data", args.n, 2 * args.batch)
        rates = {(p, label): [] for p in precisions for label, *_ in SETTINGS}
        for _ in range(args.rounds):
            for precision in precisions:
                for label, augment, cache in SETTINGS:
                    rate = epoch_rate(root, device, args.batch, augment, cache, precision == "bf16-mixed")
                    rates[precision, label].append(rate)
                    print(f"{precision} {label}: {rate:.1f} img/s", file=sys.stderr, flush=True)
    cores = len(os.sched_getaffinity(0))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {cores} cores"
    print(f"\n{args.n} training pictures, batch {args.batch}, {name}, {args.rounds} rounds (median; ratio to false)\n")
    print("| precision | setting | img/s | ratio |\n|---|---|---|---|")
    for (precision, label), values in rates.items():
        plain = rates[precision, label.replace("data.cache=true", "data.cache=false")]
        ratio = statistics.median(v / p for v, p in zip(values, plain, strict=True))
        print(f"| {precision} | {label} | {statistics.median(values):.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
