"""Shared test helpers: small generated pictures in every source layout (no downloaded data needed)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

# One thread per process, for this process and the scripts it starts (they inherit the environment): the tests' problems
# are small, and on a busy machine OpenMP's threads wait on each other at every operator (a 46 x 46 training run took
# 11 s on 2 threads and 1 s on 1, with other work on both cores). A value the user set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

THREADS = int(os.environ["OMP_NUM_THREADS"])
torch.set_num_threads(THREADS)  # in case a plugin imported torch first

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python <script> overrides...`` as a user would, from ``cwd``; a module name (``catdog.atlas``) runs as
    ``python -m catdog.atlas``."""
    command = ["-m", script] if script.startswith("catdog.") else [str(REPO / script)]
    return subprocess.run(
        [sys.executable, *command, *overrides], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30), label: str = "cats") -> bytes:
    """A small JPEG whose colour depends on the class, so a tiny training run has something to learn."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    array[..., 0 if label == "cats" else 2] //= 4
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def kaggle_names(n: int) -> dict[str, str]:
    """{file name: class} in Kaggle's layout: cat.0.jpg, dog.0.jpg, ..."""
    return {f"{animal}.{i}.jpg": f"{animal}s" for animal in ("cat", "dog") for i in range(n)}


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(autouse=True)
def same_threads() -> Iterator[None]:
    """Every test starts on ``THREADS`` threads, as the scripts the tests start do: a command run in this process may
    set its own (catdog-projector, catdog-atlas: ``threads=``), and sums split over other thread counts round
    differently (a resumed run compared bit for bit with an uninterrupted one)."""
    yield
    torch.set_num_threads(THREADS)


def stop_workers(*loaders) -> None:
    """Stop DataLoaders' persistent workers now, as Lightning does after a fit. Left to the garbage collector, a
    loader's queues can be finalised before its iterator, whose workers then miss the stop signal and wait out
    DataLoader's 5-second timeout in whatever test happens to be running."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()


@pytest.fixture
def forked_pool(monkeypatch):
    """The decoded cache is built by a process pool; a spawned one (the command's) imports catdog for seconds, a
    forked one does not."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: fork)


@pytest.fixture
def kaggle_files() -> dict[str, bytes]:
    """20 cats and 20 dogs as in Kaggle's train.zip, plus junk that prepare must skip or ignore."""
    files = {f"train/{name}": jpeg_bytes(i, label=label) for i, (name, label) in enumerate(kaggle_names(20).items())}
    files["train/cat.100.jpg"] = b""  # empty
    files["train/dog.100.jpg"] = jpeg_bytes(1)[:200]  # truncated
    files["train/dog.101.jpg"] = b"not an image at all" * 10  # random bytes named .jpg
    files["train/.DS_Store"] = b"junk"
    files["train/Thumbs.db"] = b"junk"
    return files


def make_tree(root: Path, n_train: int, n_test: int) -> Path:
    """A prepared ``{train,test}/{cats,dogs}`` tree of tiny JPEGs, ``n_train`` + ``n_test`` per class."""
    for part, n in (("train", n_train), ("test", n_test)):
        for k, label in enumerate(("cats", "dogs")):
            for i in range(n):
                path = root / part / label / f"{label[:-1]}.{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg_bytes(1000 * k + i + (500 if part == "test" else 0), label=label))
    return root


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A prepared tree of 24 + 8 images per class."""
    return make_tree(tmp_path / "processed", 24, 8)


@contextmanager
def hermetic() -> Iterator[None]:
    """A command run in this process leaves what a run sets for itself as it found it: the environment (Lightning's
    ``PL_GLOBAL_SEED``, ``PL_SEED_WORKERS``), the deterministic-algorithms switch, the thread count and the folder."""
    env, cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.set_num_threads(threads)
        os.chdir(cwd)


def train(*overrides: str) -> int:
    """``catdog-train overrides...`` in this process (``catdog.train.main``), as lightning-hydra-template's tests run
    their training; its exit code. Output goes where the caller captures it (``capsys``)."""
    from catdog.train import main

    with hermetic():
        return main(list(overrides))


TRAINED_SIZE = 64  # trained_run's pictures: 64 x 64 (pool4 is 2 x 2), a second's training a run on one core


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """``catdog-train logger=tensorboard`` as a user runs it (loader workers, snapshots, checkpoints), in this
    process: 2 epochs on 48 + 16 generated pictures whose colour tells the class (``jpeg_bytes``) at 64 x 64,
    seeded. Its run folder; its data beside it in ``data/``."""
    tmp = tmp_path_factory.mktemp("train")
    data = make_tree(tmp / "data", 24, 8)
    run_dir = tmp / "run"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = train(
            f"data.root={data}",
            f"data.image_size=[{TRAINED_SIZE},{TRAINED_SIZE}]",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "seed=0",
            f"hydra.run.dir={run_dir}",
            "logger=tensorboard",
        )
    assert code == 0, err.getvalue()[-3000:]
    assert "Total params: 504,001" in out.getvalue()  # fc1 takes 128 x 2 x 2
    return run_dir

