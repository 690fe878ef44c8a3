"""Interrupted runs, resumes, NaN losses and full disks."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, make_tree, run_script

FAST = ["data.num_workers=0", "callbacks.snapshots=null", "test=false"]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    data = make_tree(tmp_path / "data", 12, 4)
    common = [f"data.root={data}", "seed=3", "trainer.deterministic=true", "data.batch_size=8", *FAST]
    straight = run_script("train.py", *common, "trainer.max_epochs=2", "hydra.run.dir=straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = run_script("train.py", *common, "trainer.max_epochs=1", "hydra.run.dir=outputs/a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_script(
        "train.py", *common, "trainer.max_epochs=2", "ckpt_path=last", "hydra.run.dir=outputs/b", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from outputs/a/checkpoints/last.ckpt" in resumed.stdout
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "outputs" / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_kill_9_then_ckpt_path_last_continues(tmp_path):
    data = make_tree(tmp_path / "data", 40, 4)
    command = [sys.executable, str(REPO / "train.py"), f"data.root={data}", "trainer.max_epochs=3", *FAST]
    process = subprocess.Popen(
        [*command, "hydra.run.dir=outputs/killed"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "outputs" / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists()
    torch.load(last, map_location="cpu", weights_only=True)  # complete, not truncated
    resumed = subprocess.run(
        [*command, "ckpt_path=last", "hydra.run.dir=outputs/resumed"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = (tmp_path / "outputs" / "resumed" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]


def test_nan_loss_stops_with_the_step(tmp_path, image_tree):
    result = run_script(
        "train.py",
        f"data.root={image_tree}",
        "model.lr=1e30",
        "trainer.max_epochs=3",
        "hydra.run.dir=run",
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the training loss is") and "at step" in line


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, capsys):
    """ENOSPC while saving a checkpoint: one line, and the checkpoint already on disk is untouched."""
    import errno

    import pytorch_lightning as pl

    from catdog.cli import user_errors
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

    @user_errors
    def job(cfg):
        trainer.save_checkpoint(good)

    with pytest.raises(SystemExit) as exit_info:
        job({})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on device") and len(err.splitlines()) == 1
    assert good.read_bytes() == before
