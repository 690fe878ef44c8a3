"""End to end: ``python train.py`` as a user runs it, on ~200 generated images."""

import json
from pathlib import Path

from tests.conftest import make_tree, run_script


def run_train(*overrides: str, cwd: Path):
    return run_script("train.py", *overrides, cwd=cwd)


def test_a_run_folder_holds_every_output(trained_run):
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics.csv", "history.csv", "curves.png", "metrics.json", "checkpoints/last.ckpt"} <= names
    assert any(n.startswith("checkpoints/best-epoch00-val_acc") for n in names)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["best_val_acc"] <= 1
    assert Path(metrics["best_checkpoint"]).exists() and metrics["tested"] == metrics["best_checkpoint"]
    history = (trained_run / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_acc,val_acc,train_loss,val_loss" and len(history) == 2
    assert (trained_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_activation_snapshots_per_epoch_gif_and_tensorboard(trained_run):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for probe in ("cat", "dog"):
        pages = sorted(p.name for p in (trained_run / "snapshots" / probe).iterdir())
        assert pages == ["epoch_000.png", "epoch_001.png"]  # before training, after epoch 1
        with Image.open(trained_run / "snapshots" / f"{probe}.gif") as gif:
            assert gif.n_frames == 2
    events = EventAccumulator(str(trained_run / "tensorboard")).Reload()
    assert {"snapshots/cat", "snapshots/dog"} <= set(events.Tags()["images"])
    assert "val_acc" in events.Tags()["scalars"]


def test_checkpoint_loads_without_config(trained_run):
    from catdog.module import CatDogModule

    module = CatDogModule.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.hparams.lr == 1e-3 and sum(p.numel() for p in module.parameters()) == 3_453_121


def test_resume_from_checkpoint(trained_run, tmp_path):
    data = make_tree(tmp_path / "data", 10, 10)
    result = run_train(
        f"data.root={data}",
        "trainer.max_epochs=2",
        f"ckpt_path={trained_run}/checkpoints/last.ckpt",
        f"hydra.run.dir={tmp_path / 'run'}",
        "test=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]  # epoch 1 restored, only epoch 2 trained


def test_gpu_without_a_gpu_is_one_clear_line(tmp_path, image_tree):
    result = run_train(
        f"data.root={image_tree}", "trainer.accelerator=gpu", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_train(
        f"data.root={tmp_path / 'none'}", "data.source=null", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 2 and "data.source" in result.stderr and "Traceback" not in result.stderr


def test_experiment_best_runs_with_augmentation_dropout_schedule_and_early_stopping(tmp_path):
    data = make_tree(tmp_path / "data", 20, 4)
    result = run_train(
        "experiment=best",
        f"data.root={data}",
        "trainer.max_epochs=2",
        "data.num_workers=0",
        "callbacks.snapshots=null",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "dropout: 0.5" in config and "lr_schedule: cosine" in config and "EarlyStopping" in config
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2


def test_without_a_best_checkpoint_the_last_weights_are_tested_and_labelled(tmp_path, image_tree):
    result = run_train(
        f"data.root={image_tree}",
        "callbacks.checkpoint=null",
        "callbacks.snapshots=null",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no best checkpoint (callbacks.checkpoint=null): testing the last weights" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["tested"] == "last weights" and metrics["best_checkpoint"] is None and "best_val_acc" not in metrics
    assert 0 <= metrics["test_acc"] <= 1
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
