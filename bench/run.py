"""catdog's speed against the Keras seed, measured in one run on this machine; prints a Markdown table.

    python bench/run.py --images /path/to/kaggle/train [--keras-python .venv-keras/bin/python] [--quick]
    python bench/run.py --steps-only [--step-batches 20 64] [--quick]   # the training-step rows alone, no images

The Keras peer is optional (its rows are skipped with a note when absent). To create it:

    python -m venv .venv-keras && .venv-keras/bin/pip install tensorflow-cpu keras scipy pillow matplotlib

``--images``: a folder of Kaggle-style ``cat.N.jpg``/``dog.N.jpg`` files; 2,000 of them are linked into a
temporary ``{cats,dogs}`` tree for the data-pipeline and epoch rows. Figures are medians of several repeats;
the training-step rows take turns with Keras's in rounds, and their ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catdog.allocator import reuse_freed_memory  # noqa: E402
from catdog.fast import fast  # noqa: E402
from catdog.model import CatDogCNN  # noqa: E402
from catdog.module import KerasRMSprop  # noqa: E402

# (label, arrangement, reuse_freed_memory, autocast dtype); each adds to the row before. Arrangements: "plain", the
# network of catdog.model as the seed writes it; "channels_last", the same with its weights and input in NHWC memory;
# "fast", catdog.fast's arrangement (channels_last and ReLU after max-pool), as train.py runs it by default.
STEP_VARIANTS = [
    ("float32, plain (the seed's arrangement, glibc's default malloc)", "plain", False, None),
    ("float32, + channels_last", "channels_last", False, None),
    ("float32, + ReLU after pool: catdog.fast (exact)", "fast", False, None),
    ("float32, + freed memory reused (catdog's default)", "fast", True, None),
    ("bf16-mixed, + the same", "fast", True, torch.bfloat16),
]
DEFAULT = 3  # the row of catdog's default step in STEP_VARIANTS

# the data pipeline's settings: (label, CatDogDataModule arguments)
PIPELINES = [
    ("JPEG files, default workers", {}),
    ("data.cache=true (held in RAM, no workers)", {"cache": True}),
]
BF16 = "trainer.precision=bf16-mixed"


def median_rate(run, items: int, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return items / statistics.median(times)


def isolated(fn, *args):
    """``fn(*args)`` in a fresh Python process: each row starts from the same allocator state."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def train_step_rate(batch: int, arrangement: str, reuse: bool, dtype, repeats: int) -> float:
    """img/s of catdog's training step: forward, BCE-with-logits, backward, Keras RMSprop, zero_grad; the network in
    ``arrangement`` (see ``STEP_VARIANTS``)."""
    if reuse:
        reuse_freed_memory()
    torch.manual_seed(0)
    model = CatDogCNN()
    optimizer = KerasRMSprop(model.parameters())  # the plain model's parameters: fast() trains them
    memory = torch.contiguous_format if arrangement == "plain" else torch.channels_last
    network = fast(model) if arrangement == "fast" else model.to(memory_format=memory)
    x = torch.rand(batch, 3, 150, 150).contiguous(memory_format=memory)
    y = torch.randint(0, 2, (batch, 1)).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.binary_cross_entropy_with_logits(network(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_rate(step, batch, repeats)


def step_rounds(keras: str | None, batch: int, repeats: int, rounds: int) -> tuple[list[float], list[list[float]]]:
    """Training-step img/s, in ``rounds`` rounds of: the Keras peer, then each of ``STEP_VARIANTS``, each in a
    fresh process. Returns Keras's rate per round (empty without the peer) and each variant's rates per round."""
    keras_rates: list[float] = []
    rates: list[list[float]] = [[] for _ in STEP_VARIANTS]
    for _ in range(rounds):
        keras_rate = (peer(keras, "step", "--batch", str(batch), "--repeats", str(repeats)) or {}).get("img_per_s")
        if keras_rate:
            keras_rates.append(keras_rate)
        for (_, *variant), variant_rates in zip(STEP_VARIANTS, rates, strict=True):
            variant_rates.append(isolated(train_step_rate, batch, *variant, repeats))
    return (keras_rates if len(keras_rates) == rounds else []), rates


def peer(keras_python: str | None, *args: str) -> dict | None:
    if not keras_python:
        return None
    out = subprocess.run([keras_python, str(REPO / "bench" / "keras_peer.py"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"keras peer failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def sample_tree(images: Path, dest: Path, n: int) -> Path:
    """Link n/2 cats and n/2 dogs from a Kaggle-style folder into dest/{cats,dogs}."""
    for label in ("cat", "dog"):
        (dest / f"{label}s").mkdir(parents=True)
        for i in range(n // 2):
            source = images / f"{label}.{i}.jpg"
            try:
                os.link(source, dest / f"{label}s" / source.name)
            except OSError:
                (dest / f"{label}s" / source.name).write_bytes(source.read_bytes())
    return dest


def loaded(folder: Path, batch: int, **settings):
    """The datamodule on ``folder``'s parent (prepared, set up) and a function giving one epoch of its training
    batches, as the model receives them."""
    from catdog.data import CatDogDataModule

    dm = CatDogDataModule(root=str(folder.parent), source=None, batch_size=batch, **settings)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm._loader(dm.train_set, shuffle=True)
    return lambda: (dm.on_after_batch_transfer(b, 0) for b in loader)


def pipeline_rate(folder: Path, batch: int, repeats: int, **settings) -> float:
    """img/s of the datamodule's batches (decode, resize, scale, collate; default workers)."""
    epoch = loaded(folder, batch, **settings)
    rates = []
    for _ in range(repeats):
        start, count = time.perf_counter(), 0
        for x, _, _ in epoch():
            count += len(x)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates[1:] if len(rates) > 1 else rates)  # the first epoch starts the workers


def data_wait_fraction(folder: Path, batch: int, **settings) -> float:
    """Share of a training epoch (the second: workers started) spent waiting for the next batch."""
    epoch = loaded(folder, batch, **settings)
    model = CatDogCNN()
    optimizer = KerasRMSprop(model.parameters())
    network = fast(model)
    for _epoch in range(2):  # the second epoch counts: workers started
        waited, start = 0.0, time.perf_counter()
        batches = epoch()
        while True:
            before = time.perf_counter()
            try:
                x, y, _ = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - before
            F.binary_cross_entropy_with_logits(network(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return waited / (time.perf_counter() - start)


def train_command(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """``python train.py`` on ``root`` for timing: no validation, no test, no figures; ``extra`` overrides."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"data.root={root}",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "test=false",
        "callbacks.snapshots=null",
        "callbacks.curves=null",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def epoch_rate(root: Path, batch: int, extra: list[str]) -> float:
    """img/s of one training epoch of ``python train.py`` (no validation), from the fit's own timing."""
    run_dir = root / f"run{len(list(root.glob('run*')))}"
    command = train_command(
        root, run_dir, "trainer.max_epochs=2", "+callbacks.timer._target_=bench.run.EpochTimer", *extra
    )
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    seconds = json.loads((run_dir / "epoch_seconds.json").read_text())
    images = sum(1 for _ in (root / "train").rglob("*.jpg"))
    return images / seconds[-1]  # the second epoch: workers and caches warm, as in a long run


class EpochTimer(pl.Callback):
    """A Lightning callback (used by epoch_rate) that writes each training epoch's wall time."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        Path(trainer.default_root_dir, "epoch_seconds.json").write_text(json.dumps(self.seconds))


def visualize_seconds(image: Path, out: Path, ckpt: str = "none") -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "visualize.py"), f"image={image}", f"ckpt={ckpt}", f"out_dir={out}"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def recorder_overhead(repeats: int) -> float:
    from catdog.hooks import ActivationRecorder

    model = CatDogCNN().eval()
    x = torch.rand(1, 3, 150, 150)
    with torch.no_grad():
        plain = median_rate(lambda: model(x), 1, repeats)

        def recorded() -> None:
            with ActivationRecorder(model):
                model(x)

        hooked = median_rate(recorded, 1, repeats)
    return plain / hooked - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a Kaggle-style folder of cat.N.jpg, dog.N.jpg")
    parser.add_argument("--keras-python", default=str(REPO / ".venv-keras" / "bin" / "python"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images (a smoke run)")
    parser.add_argument("--steps-only", action="store_true", help="only the training-step rows (no --images needed)")
    parser.add_argument("--step-batches", type=int, nargs="+", default=[20, 64], help="batch sizes of the step rows")
    args = parser.parse_args()
    if args.images is None and not args.steps_only:
        parser.error("--images is required, except with --steps-only")
    reuse_freed_memory()  # as train.py does (the step rows run in their own processes)
    keras = args.keras_python if Path(args.keras_python).exists() else None
    repeats = 3 if args.quick else 10
    n_images = 200 if args.quick else 2000
    rows: list[tuple[str, str]] = []

    def row(what: str, value: str) -> None:
        rows.append((what, value))
        print(f"{what}: {value}", file=sys.stderr, flush=True)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        f"{'' if keras else '; Keras peer absent: its rows are skipped'}"
    )
    default_step = {}  # batch -> img/s of catdog's default step
    for batch in args.step_batches:
        keras_rates, rates = step_rounds(keras, batch, repeats, rounds=2 if args.quick else 3)
        default_step[batch] = statistics.median(rates[DEFAULT])
        if keras_rates:
            row(
                f"training step, batch {batch}: Keras seed (TensorFlow CPU)",
                f"{statistics.median(keras_rates):.1f} img/s",
            )
        for (label, *_), ours in zip(STEP_VARIANTS, rates, strict=True):
            ratio = ""
            if keras_rates:  # the median of each round's ratio: slow drift of the machine's speed cancels out
                ratio = f" ({statistics.median([o / k for o, k in zip(ours, keras_rates, strict=True)]):.2f}x Keras)"
            row(f"training step, batch {batch}: catdog {label}", f"{statistics.median(ours):.1f} img/s{ratio}")
    if args.steps_only:
        print_table(rows)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tree = sample_tree(args.images, Path(tmp) / "data" / "train", n_images)
        sample_tree(args.images, Path(tmp) / "data" / "test", 20)
        for label, settings in PIPELINES:
            rate = pipeline_rate(tree, 20, 3, **settings)
            ratio = rate / default_step.get(20, default_step[args.step_batches[0]])
            row(f"data pipeline, batches of 20: {label}", f"{rate:.0f} img/s ({ratio:.1f}x the step)")
            wait = data_wait_fraction(tree, 20, **settings)
            row(f"share of a training epoch (the 2nd) waiting for data: {label}", f"{100 * wait:.1f}%")
        keras_epoch = (peer(keras, "epoch", "--folder", str(tree), "--batch", "20") or {}).get("img_per_s")
        if keras_epoch:
            row(f"epoch on {n_images} JPEG files: Keras flow_from_directory + fit", f"{keras_epoch:.1f} img/s")
        for extra in ([], [BF16], ["data.cache=true"], [BF16, "data.cache=true"]):
            ours = epoch_rate(Path(tmp) / "data", 20, extra)
            ratio = f" ({ours / keras_epoch:.2f}x Keras)" if keras_epoch else ""
            row(
                f"epoch on {n_images} JPEG files: python train.py {' '.join(extra)}".rstrip(),
                f"{ours:.1f} img/s{ratio}",
            )

        image = next((tree / "cats").iterdir())
        ours_s = statistics.median(visualize_seconds(image, Path(tmp) / f"viz{i}") for i in range(3))
        keras_s = None
        if keras:
            model = Path(tmp) / "seed.keras"
            peer(keras, "save", "--model", str(model))
            times = []
            for i in range(3):
                start = time.perf_counter()
                if (
                    peer(keras, "visualize", "--model", str(model), "--image", str(image), "--out", f"{tmp}/kviz{i}")
                    is None
                ):
                    break
                times.append(time.perf_counter() - start)
            keras_s = statistics.median(times) if len(times) == 3 else None
            if keras_s:
                row("visualize one image, command to files: the seed's step 4 in Keras", f"{keras_s:.2f} s")
        ratio = f" ({ours_s / keras_s:.2f}x Keras's time)" if keras_s else ""
        row("visualize one image, command to files: python visualize.py", f"{ours_s:.2f} s{ratio}")
    row("ActivationRecorder overhead on a forward pass (batch 1)", f"{100 * recorder_overhead(repeats * 3):.1f}%")
    print_table(rows)


def print_table(rows: list[tuple[str, str]]) -> None:
    print("\n| measurement | result |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
