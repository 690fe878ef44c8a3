"""Steady-state training throughput of ``python train.py`` on a GPU; prints a Markdown table.

    python bench/gpu.py --images /path/to/kaggle/train [--train-images 20000]

The images are prepared with ``catdog.prepare`` into a temporary folder, and the training split is repeated
(hard links) up to ``--train-images`` so that each epoch is long. Every row is a real ``train.py`` run with
``data.cache=true`` (so the uint8 images sit on the GPU unless augmentation needs the loader workers); img/s
counts the optimizer steps after a warm-up, between two CUDA synchronisations, epoch boundaries included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import train_command  # noqa: E402

# (label, batch, extra overrides), the most telling first: a GPU session may end before the last rows
RUNS = [
    ("batch 256, bf16-mixed", 256, ["trainer.precision=bf16-mixed"]),
    (
        "batch 256, bf16-mixed, +trainer.benchmark=true (cuDNN autotuning)",
        256,
        ["trainer.precision=bf16-mixed", "+trainer.benchmark=true"],
    ),
    ("batch 256, float32", 256, ["trainer.precision=32-true"]),
    ("batch 20, float32", 20, ["trainer.precision=32-true"]),
    ("batch 20, bf16-mixed", 20, ["trainer.precision=bf16-mixed"]),
    (
        "batch 256, bf16-mixed, cache read by loader workers",
        256,
        ["trainer.precision=bf16-mixed", "data.cache_on_device=false"],
    ),
    (
        "batch 20, float32, experiment=best augmentation in the workers",
        20,
        ["experiment=best", "callbacks.early_stopping=null"],
    ),
]


class StepRate(pl.Callback):
    """Writes ``img_per_s.json``: images per second over the optimizer steps after ``warmup``."""

    def __init__(self, warmup: int = 50) -> None:
        self.warmup, self.start = warmup, None

    @staticmethod
    def _sync(trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(trainer)
        steps = trainer.global_step - self.warmup
        rate = steps * trainer.datamodule.batch_size / (time.perf_counter() - self.start)
        Path(trainer.default_root_dir, "img_per_s.json").write_text(json.dumps({"img_per_s": rate}))


def make_root(images: Path, dest: Path, train_images: int) -> Path:
    """Prepare ``images`` into ``dest`` (catdog's 80/20 split), then repeat the training files up to
    ``train_images`` with hard links."""
    from catdog.prepare import prepare

    prepare(str(images), dest)
    files = sorted((dest / "train").rglob("*.jpg"))
    for k in range(1, math.ceil(train_images / len(files))):
        for f in files:
            os.link(f, f.with_name(f"{f.stem}.copy{k}.jpg"))
    return dest


def train_rate(root: Path, run_dir: Path, batch: int, steps: int, warmup: int, extra: list[str], accelerator: str):
    command = train_command(
        root,
        run_dir,
        "data.cache=true",
        f"data.batch_size={batch}",
        f"trainer.accelerator={accelerator}",
        f"+trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "callbacks.progress_bar=null",  # its per-step read of the loss would make the host wait for the GPU
        "+callbacks.rate._target_=bench.gpu.StepRate",
        f"+callbacks.rate.warmup={warmup}",
        *extra,
    )
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads((run_dir / "img_per_s.json").read_text())["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a Kaggle-style folder of cat.N.jpg, dog.N.jpg")
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--images-per-run", type=int, default=120_000, help="images trained on in each row")
    parser.add_argument("--accelerator", default="gpu", help="cpu makes a smoke run of this script")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"device: {name}; torch {torch.__version__}, {os.cpu_count()} CPU cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_root(args.images, Path(tmp) / "data", args.train_images)
        for i, (label, batch, extra) in enumerate(RUNS):
            steps = max(args.images_per_run // batch, 4)
            rate = train_rate(root, Path(tmp) / f"run{i}", batch, steps, steps // 5, extra, args.accelerator)
            result = "failed (see stderr)" if rate is None else f"{rate:,.0f} img/s"
            print(f"{label}: {result}", file=sys.stderr, flush=True)
            rows.append((label, result))
    print(f"\n| python train.py on {name} | steady-state training |\n|---|---|")
    for label, result in rows:
        print(f"| {label} | {result} |")


if __name__ == "__main__":
    main()
