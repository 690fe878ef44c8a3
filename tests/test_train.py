"""``catdog-train`` end to end, in this process (``catdog.train.main``): it learns, and a run folder holds everything
it promises. The process boundary (the script's exit code, Ctrl-C, kill -9): test_cli.py and test_resume.py."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TRAINED_SIZE, make_tree, train

SMALL = [f"data.image_size=[{TRAINED_SIZE},{TRAINED_SIZE}]", "data.num_workers=0", "callbacks.snapshots=null"]


def test_training_learns_the_colour_that_tells_cats_from_dogs(trained_run):
    """The generated cats are short of red, the dogs of blue: two seeded epochs at the seed's learning rate separate
    the 16 test pictures, which a network that does not learn gets half right (with model.lr=0: 0.5)."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test_acc"] >= 0.9 and metrics["best_val_acc"] >= 0.9
    rows = [line.split(",") for line in (trained_run / "history.csv").read_text().splitlines()[1:]]
    train_loss = [float(row[3]) for row in rows]
    assert train_loss[-1] < train_loss[0] / 2


def test_a_run_folder_holds_every_output(trained_run):
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics.csv", "history.csv", "curves.png", "metrics.json", "checkpoints/last.ckpt"} <= names
    assert any(n.startswith("checkpoints/best-epoch") for n in names)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["status"] == "completed"
    assert Path(metrics["best_checkpoint"]).exists() and metrics["tested"] == metrics["best_checkpoint"]
    history = (trained_run / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_acc,val_acc,train_loss,val_loss" and len(history) == 3
    assert (trained_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_activation_snapshots_per_epoch_gif_and_tensorboard(trained_run):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for probe in ("cat", "dog"):
        pages = sorted(p.name for p in (trained_run / "snapshots" / probe).iterdir())
        assert pages == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]  # before training, after each epoch
        with Image.open(trained_run / "snapshots" / f"{probe}.gif") as gif:
            assert gif.n_frames == 3
    events = EventAccumulator(str(trained_run / "tensorboard")).Reload()
    assert {"snapshots/cat", "snapshots/dog"} <= set(events.Tags()["images"])
    assert "val_acc" in events.Tags()["scalars"]


def test_checkpoint_loads_without_config(trained_run):
    from catdog.module import CatDogModule

    module = CatDogModule.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.hparams.lr == 1e-3 and module.model.input_size == (TRAINED_SIZE, TRAINED_SIZE)
    assert sum(p.numel() for p in module.model.parameters()) == 504_001


def test_resume_from_checkpoint(trained_run, tmp_path, capsys):
    data = make_tree(tmp_path / "data", 4, 2)
    last = trained_run / "checkpoints" / "last.ckpt"
    run = tmp_path / "run"
    code = train(f"data.root={data}", *SMALL, "trainer.max_epochs=3", f"ckpt_path={last}", f"hydra.run.dir={run}",
                 "test=false")  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    assert f"resuming from {last}" in capsys.readouterr().out
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]  # epochs 1, 2 restored, only 3 trained


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err[-3000:]
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: nothing to refuse")
def test_gpu_without_a_gpu_is_one_clear_line(tmp_path, image_tree, capsys):
    assert train(f"data.root={image_tree}", "trainer.accelerator=gpu", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert "gpu" in one_line(capsys).lower()


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    assert train(f"data.root={tmp_path / 'none'}", "data.source=null", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert "data.source" in one_line(capsys)


def test_experiment_best_runs_with_augmentation_dropout_schedule_and_early_stopping(tmp_path, capsys):
    data = make_tree(tmp_path / "data", 10, 2)
    run = tmp_path / "run"
    assert train("experiment=best", f"data.root={data}", *SMALL, "trainer.max_epochs=2", f"hydra.run.dir={run}") == 0
    config = (run / "config.yaml").read_text()
    assert "dropout: 0.5" in config and "lr_schedule: cosine" in config and "EarlyStopping" in config
    assert "rotation: 15" in config and "val_fraction: 0.1" in config
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2


def test_without_a_best_checkpoint_the_last_weights_are_tested_and_labelled(tmp_path, capsys):
    data, run = make_tree(tmp_path / "data", 4, 2), tmp_path / "r"
    args = [f"data.root={data}", *SMALL, "callbacks.checkpoint=null", "trainer.max_epochs=1"]
    code = train(*args, f"hydra.run.dir={run}")
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "no best checkpoint (callbacks.checkpoint=null): testing the last weights" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tested"] == "last weights" and metrics["best_checkpoint"] is None and "best_val_acc" not in metrics
    assert "test_acc" in metrics
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
