"""NaN losses and full disks (interrupted and resumed runs: test_resume.py)."""

import torch

from tests.conftest import train

FAST = ["data.num_workers=0", "callbacks.snapshots=null", "test=false", "data.image_size=[46,46]"]


def test_nan_loss_stops_with_the_step(tmp_path, image_tree, capsys):
    args = [f"data.root={image_tree}", "model.lr=1e30", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}"]
    assert train(*args, *FAST) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: the training loss is") and "at step" in line


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, capsys):
    """ENOSPC while saving a checkpoint: one line, exit code 2, and the checkpoint already on disk is untouched."""
    import errno

    import pytorch_lightning as pl

    from catdog.cli import run
    from catdog.module import CatDogModule

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    module = CatDogModule()
    trainer.strategy.connect(module)
    good = tmp_path / "last.ckpt"
    trainer.save_checkpoint(good)
    before = good.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)

    def job(cfg):
        trainer.save_checkpoint(good)

    monkeypatch.chdir(tmp_path)
    assert run("train", job, ["hydra.run.dir=run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on device") and len(err.splitlines()) == 1
    assert good.read_bytes() == before
