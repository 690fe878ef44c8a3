"""The commands on a GPU, against the same commands on the CPU: what the CPU tests cannot see (device placement,
``device=auto``, the fast network's CUDA path, compile with CUDA graphs next to the recorder's hooks). Skipped where
CUDA is absent; ``pytest tests/test_cuda.py`` on a GPU machine runs them all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import catdog.atlas
import catdog.evaluate
import catdog.predict
import catdog.visualize
from catdog.model import pick_device
from tests.conftest import TRAINED_SIZE, make_tree, train
from tests.test_predict import rows

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU = "cuda"  # what device=auto must pick here


@pytest.fixture
def picked(monkeypatch) -> list[str]:
    """The device type each command picked, in order."""
    types: list[str] = []

    def spy(spec: str = "auto") -> torch.device:
        device = pick_device(spec)
        types.append(device.type)
        return device

    for command in (catdog.atlas, catdog.evaluate, catdog.predict, catdog.visualize):
        monkeypatch.setattr(command, "pick_device", spy)
    return types


def shipped(device: str) -> list[str]:
    return ["ckpt=pretrained", f"device={device}"]


def p_dog(path) -> list[float]:
    return [float(row["p_dog"]) for row in rows(path)]


def test_predict_and_evaluate_run_on_the_gpu_and_agree_with_the_cpu(tmp_path, image_tree, picked):
    for device in ("cpu", "auto"):
        out = tmp_path / device
        image = f"image={image_tree / 'test' / 'cats'}"
        assert catdog.predict.main([*shipped(device), image, f"out={out}.csv", "quiet=true"]) == 0
        assert catdog.evaluate.main([*shipped(device), f"data.root={image_tree}", f"out_dir={out}"]) == 0
    assert picked == ["cpu", "cpu", GPU, GPU]
    assert p_dog(tmp_path / "auto.csv") == pytest.approx(p_dog(tmp_path / "cpu.csv"), abs=1e-3)
    on_cpu, on_gpu = (json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("cpu", "auto"))
    assert on_gpu["confusion"] == on_cpu["confusion"] and on_gpu["loss"] == pytest.approx(on_cpu["loss"], abs=1e-3)


def test_visualize_records_on_the_gpu_and_writes_what_the_cpu_writes(tmp_path, picked):
    for device in ("cpu", "auto"):
        args = ["image=sample:dog", "gradcam=true", f"out_dir={tmp_path / device}"]
        assert catdog.visualize.main([*shipped(device), *args]) == 0
    assert picked == ["cpu", GPU]
    on_cpu, on_gpu = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("cpu", "auto"))
    assert on_gpu["prediction"]["p_dog"] == pytest.approx(on_cpu["prediction"]["p_dog"], abs=1e-4)
    assert on_gpu["layers"].keys() == on_cpu["layers"].keys()
    with np.load(tmp_path / "cpu" / "activations.npz") as a, np.load(tmp_path / "auto" / "activations.npz") as b:
        assert a.files == b.files
        for name in a.files:
            scale = max(float(np.abs(a[name]).max()), 1e-6)
            assert np.abs(a[name] - b[name]).max() <= 1e-3 * scale, name


def test_the_atlas_reads_a_folder_on_the_gpu_as_on_the_cpu(tmp_path, picked):
    data = make_tree(tmp_path / "data", 1, 4)
    for device in ("cpu", "auto"):
        args = [f"data.root={data}", "k=2", f"out_dir={tmp_path / device}", "patterns=false"]
        assert catdog.atlas.main([*shipped(device), *args]) == 0
    assert picked == ["cpu", GPU]
    on_cpu, on_gpu = (json.loads((tmp_path / d / "atlas.json").read_text()) for d in ("cpu", "auto"))
    for name, layer in on_cpu["layers"].items():
        for a, b in zip(layer["channels"], on_gpu["layers"][name]["channels"], strict=True):
            assert [t["value"] for t in b["top"]] == pytest.approx([t["value"] for t in a["top"]], rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_compiled_training_with_cuda_graphs_learns_and_its_snapshots_record(tmp_path, capsys, precision):
    """``model.compile=reduce-overhead`` records CUDA graphs of the steps while the snapshot callback records layers
    with forward hooks on the same network each epoch; the images and their augmentation stay on the GPU."""
    data, run = make_tree(tmp_path / "data", 24, 8), tmp_path / "run"
    code = train(
        f"data.root={data}",
        f"data.image_size=[{TRAINED_SIZE},{TRAINED_SIZE}]",
        "data.batch_size=8",
        "data.cache=true",
        "trainer.accelerator=gpu",
        f"trainer.precision={precision}",
        "model.compile=reduce-overhead",
        "trainer.max_epochs=2",
        "seed=0",
        f"hydra.run.dir={run}",
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test_acc"] >= 0.9
    assert sorted(p.name for p in (run / "snapshots" / "cat").iterdir())[-1] == "epoch_002.png"
    out = tmp_path / "seen"
    image, ckpt = data / "test" / "dogs", metrics["best_checkpoint"]
    assert catdog.visualize.main([f"image={image}", f"ckpt={ckpt}", f"out_dir={out}"]) == 0
    assert (out / "index.html").is_file()
