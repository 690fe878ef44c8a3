"""Steady-state training throughput of ``python train.py`` on a GPU against its peers; prints a Markdown table.

    python bench/gpu.py --images /path/to/kaggle/train [--peers DIR] [--only 1,2,compile] [--train-images 20480]
    python bench/gpu.py --quick                     # a smoke run on the CPU: generated images, tiny batches

The images are prepared with ``catdog.prepare`` into a temporary folder, and the training split is repeated
(hard links) up to ``--train-images``, a multiple of 1,280 so that every batch of 20 or 256 is whole (a last,
smaller batch would make a compiled network compile again inside the timed steps). Every row is a real
``train.py`` run with ``data.cache=true`` (so the uint8 images sit on the GPU unless a row sets it false); img/s
counts the optimizer steps after a warm-up (compilation and CUDA-graph recording included), between two CUDA
synchronisations, epoch boundaries included.

The peers, from ``--peers`` (a folder with ``keras_jax.py`` and ``torch_plain.py``; the GPU kit's, by default
``.gpu/kit`` or ``../shared/gpu``): the seed's model in Keras 3 on JAX (``model.fit``, skipped with a line when
Keras or JAX cannot be imported) and catdog's network in a bare PyTorch loop, eager and ``torch.compile``d. Each
train.py row is then also given as a ratio to Keras-JAX at its batch and precision, to Keras-JAX's best at its
batch, and to the compiled plain loop at batch 256 (bf16), all from this one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
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

BF16, FP32 = "trainer.precision=bf16-mixed", "trainer.precision=32-true"
BEST = ["experiment=best", "callbacks.early_stopping=null"]  # no validation while timing: nothing to monitor
WHOLE_BATCHES = 1280  # the training images are a multiple of this: lcm(20, 256)

# (label, batch, precision, extra overrides); the most telling first: a GPU session may end before the last rows
RUNS = [
    ("batch 256, bf16-mixed", 256, "bf16", [BF16]),
    ("batch 256, bf16-mixed, model.compile=reduce-overhead", 256, "bf16", [BF16, "model.compile=reduce-overhead"]),
    ("batch 20, float32", 20, "fp32", [FP32]),
    ("batch 20, float32, model.compile=reduce-overhead", 20, "fp32", [FP32, "model.compile=reduce-overhead"]),
    (
        "batch 256, bf16-mixed, experiment=best, augmentation on the device (data.cache=true)",
        256,
        "bf16",
        [BF16, *BEST],
    ),
    (
        "batch 256, bf16-mixed, experiment=best, augmentation in the workers (data.cache=false)",
        256,
        "bf16",
        [BF16, *BEST, "data.cache=false"],
    ),
    (
        "batch 256, bf16-mixed, model.compile=max-autotune-no-cudagraphs",
        256,
        "bf16",
        [BF16, "model.compile=max-autotune-no-cudagraphs"],
    ),
    ("batch 256, bf16-mixed, model.compile=default", 256, "bf16", [BF16, "model.compile=default"]),
    ("batch 256, float32", 256, "fp32", [FP32]),
    ("batch 256, float32, tf32=true", 256, "fp32", [FP32, "tf32=true"]),
    ("batch 20, bf16-mixed", 20, "bf16", [BF16]),
    ("batch 20, float32, tf32=true", 20, "fp32", [FP32, "tf32=true"]),
    (
        "batch 256, bf16-mixed, +trainer.benchmark=true (cuDNN autotuning)",
        256,
        "bf16",
        [BF16, "+trainer.benchmark=true"],
    ),
    ("batch 256, bf16-mixed, files read by loader workers", 256, "bf16", [BF16, "data.cache=false"]),
]
QUICK_BATCH = {256: 16, 20: 4}  # --quick: the same rows at CPU-sized batches


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


def make_root(images: Path, dest: Path, train_images: int, multiple: int = WHOLE_BATCHES) -> Path:
    """Prepare ``images`` into ``dest`` (catdog's 80/20 split), then repeat the training files with hard links
    up to ``train_images`` rounded up to a multiple of ``multiple`` (the extra links are removed)."""
    from catdog.prepare import prepare

    prepare(str(images), dest)
    files = sorted((dest / "train").rglob("*.jpg"))
    target = math.ceil(train_images / multiple) * multiple
    copies = []
    for k in range(1, math.ceil(target / len(files))):
        for f in files:
            copies.append(f.with_name(f"{f.stem}.copy{k}.jpg"))
            os.link(f, copies[-1])
    extra = len(files) + len(copies) - target
    if extra > len(copies):
        raise SystemExit(f"--train-images {train_images}: fewer than {target} would need removing originals")
    for f in copies[len(copies) - extra :]:
        f.unlink()
    return dest


def quick_images(folder: Path, n: int = 160) -> Path:
    """``n`` small generated JPEGs in the Kaggle layout (cat.N.jpg, dog.N.jpg), for --quick."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n // 2):
        for animal in ("cat", "dog"):
            pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{animal}.{i}.jpg")
    return folder


def train_rate(root: Path, run_dir: Path, batch: int, steps: int, warmup: int, extra: list[str], accelerator: str):
    command = train_command(
        root,
        run_dir,
        "data.cache=true",
        f"data.batch_size={batch}",
        f"trainer.accelerator={accelerator}",
        f"+trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",  # else Lightning adds a bar of its own
        "+callbacks.rate._target_=bench.gpu.StepRate",
        f"+callbacks.rate.warmup={warmup}",
        *extra,
    )
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads((run_dir / "img_per_s.json").read_text())["img_per_s"]


# "keras jax fit, batch 256, mixed_bfloat16: 11,038 img/s", "torch plain loop, batch 256, bf16 autocast,
# torch.compile: 52,610 img/s"
PEER_LINE = re.compile(r"^(keras \w+ fit|torch plain loop), batch (\d+), ([^:]+): ([\d,.]+) img/s")


def run_peer(command: list[str], timeout: float) -> list[str]:
    """The output lines of a peer script, those printed before ``timeout`` seconds included."""
    try:
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        text, note = out.stdout, "" if out.returncode == 0 else f"(exit code {out.returncode}) {out.stderr[-300:]}"
    except subprocess.TimeoutExpired as err:
        text = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        note = f"(stopped after {timeout:.0f} s)"
    if note:
        print(f"{Path(command[1]).name}: {note.strip()}", file=sys.stderr, flush=True)
    return text.splitlines()


def peer_rates(peers: Path | None, quick: bool, timeout: float) -> dict[tuple[str, int, str], float]:
    """{(peer, batch, configuration): img/s} from keras_jax.py and torch_plain.py in ``peers``."""
    rates: dict[tuple[str, int, str], float] = {}
    if peers is None:
        print("peers: no folder with keras_jax.py and torch_plain.py (--peers); peer rows skipped", file=sys.stderr)
        return rates
    lines = []
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("keras") is None:
        print("peers: Keras 3 on JAX cannot be imported here; Keras-JAX rows skipped", file=sys.stderr, flush=True)
    else:
        lines += run_peer([sys.executable, str(peers / "keras_jax.py"), "4" if quick else "40"], timeout)
    lines += run_peer([sys.executable, str(peers / "torch_plain.py"), str(REPO)], timeout)
    for line in lines:
        match = PEER_LINE.match(line.strip())
        if match:
            peer = "keras" if match[1].startswith("keras") else "plain"
            rates[(peer, int(match[2]), match[3].strip())] = float(match[4].replace(",", ""))
            print(line.strip(), file=sys.stderr, flush=True)
    return rates


def keras_config(precision: str) -> str:
    return "mixed_bfloat16" if precision == "bf16" else "float32"


def ratios(rate: float, batch: int, precision: str, peers: dict) -> list[str]:
    """This row's img/s as multiples of Keras-JAX at the same batch and precision, of Keras-JAX's best at this
    batch, and of the compiled plain loop (batch 256, bf16): '' where the peer did not run."""
    same = peers.get(("keras", batch, keras_config(precision)))
    best = max((v for (p, b, _), v in peers.items() if p == "keras" and b == batch), default=None)
    compiled = peers.get(("plain", 256, "bf16 autocast, torch.compile"))
    return [f"{rate / ref:.2f}x" if ref else "" for ref in (same, best, compiled)]


def selected(only: str | None) -> list[tuple[int, tuple]]:
    """RUNS by 1-based number or label substring (``--only 1,3,compile``); all without ``--only``."""
    rows = list(enumerate(RUNS, 1))
    if not only:
        return rows
    keys = [k.strip() for k in only.split(",") if k.strip()]
    return [(i, run) for i, run in rows if str(i) in keys or any(k in run[0] for k in keys if not k.isdigit())]


def default_peers() -> Path | None:
    for folder in (REPO / ".gpu" / "kit", REPO.parent / "shared" / "gpu"):
        if (folder / "torch_plain.py").exists():
            return folder
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a Kaggle-style folder of cat.N.jpg, dog.N.jpg")
    parser.add_argument("--train-images", type=int, default=20480)
    parser.add_argument("--images-per-run", type=int, default=120_000, help="images trained on in each row")
    parser.add_argument("--accelerator", default="gpu", help="cpu makes a smoke run of this script")
    parser.add_argument("--peers", type=Path, default=default_peers(), help="folder with keras_jax.py, torch_plain.py")
    parser.add_argument("--no-peers", action="store_true", help="only the train.py rows")
    parser.add_argument("--peer-timeout", type=float, default=300, help="seconds each peer script may run")
    parser.add_argument("--only", help="rows to run, by number or label substring: 1,3,compile")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: generated images, batches 16 and 4")
    parser.add_argument("--budget", type=float, help="seconds: start no row after this (the table still prints)")
    args = parser.parse_args()
    if args.quick:
        args.accelerator, args.train_images = "cpu", 128
        args.peer_timeout = min(args.peer_timeout, 90)
    elif args.images is None:
        parser.error("--images is required (or --quick)")
    started = time.monotonic()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"device: {name}; torch {torch.__version__}, {os.cpu_count()} CPU cores", flush=True)
    peers = {} if args.no_peers else peer_rates(args.peers, args.quick, args.peer_timeout)  # first: every ratio
    rows = []
    runs = selected(args.only)
    if args.quick:  # compiling the 150x150 network on a CPU takes minutes a row
        for i, run in runs:
            if any(o.startswith("model.compile") for o in run[3]):
                print(f"{i}. {run[0]}: skipped by --quick (compiling on a CPU takes minutes)", file=sys.stderr)
        runs = [(i, r) for i, r in runs if not any(o.startswith("model.compile") for o in r[3])]
    with tempfile.TemporaryDirectory() as tmp:
        images = quick_images(Path(tmp) / "images") if args.quick else args.images
        root = make_root(images, Path(tmp) / "data", args.train_images, 16 if args.quick else WHOLE_BATCHES)
        for i, (label, batch, precision, extra) in runs:
            if args.budget is not None and time.monotonic() - started > args.budget:
                print(f"{i}. {label}: not run (--budget {args.budget:.0f} s spent)", file=sys.stderr, flush=True)
                continue
            run_batch = QUICK_BATCH[batch] if args.quick else batch
            steps = 5 if args.quick else max(args.images_per_run // batch, 4)
            warmup = 2 if args.quick else steps // 5
            rate = train_rate(root, Path(tmp) / f"run{i}", run_batch, steps, warmup, extra, args.accelerator)
            shown = label if not args.quick else f"{label} (ran at batch {run_batch})"
            result = "failed (see stderr)" if rate is None else f"{rate:,.0f} img/s"
            if rate is not None:  # the ratios at once, in case the session ends before the table
                peer_names = ("Keras-JAX", "Keras-JAX's best", "compiled plain loop")
                named = zip(ratios(rate, batch, precision, peers), peer_names, strict=True)
                result += "".join(f", {ratio} {peer}" for ratio, peer in named if ratio)
            print(f"{i}. {shown}: {result}", file=sys.stderr, flush=True)
            rows.append((shown, rate, batch, precision))

    print(f"\n| python train.py on {name} | img/s | x Keras-JAX, same batch and precision | x Keras-JAX's best at this "
          "batch | x compiled plain loop (batch 256 bf16) |\n|---|---|---|---|---|")  # fmt: skip
    for label, rate, batch, precision in rows:
        if rate is None:
            print(f"| {label} | failed | | | |")
        else:
            print(f"| {label} | {rate:,.0f} | " + " | ".join(ratios(rate, batch, precision, peers)) + " |")
    for (peer, batch, config), rate in sorted(peers.items()):
        what = "Keras 3 on JAX, model.fit" if peer == "keras" else "plain PyTorch loop"
        print(f"| peer: {what}, batch {batch}, {config} | {rate:,.0f} | | | |")


if __name__ == "__main__":
    main()
