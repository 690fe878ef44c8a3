"""Shared test helpers: small generated pictures in every source layout (no downloaded data needed)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One epoch of ``python train.py logger=tensorboard`` on 160 train + 40 test images; its run folder."""
    tmp = tmp_path_factory.mktemp("train")
    data = make_tree(tmp / "data", 80, 20)
    run_dir = tmp / "run"
    result = run_script(
        "train.py",
        f"data.root={data}",
        "trainer.max_epochs=1",
        "seed=1",
        f"hydra.run.dir={run_dir}",
        "logger=tensorboard",
        cwd=tmp,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Total params: 3,453,121" in result.stdout
    return run_dir
