"""A resumed run ends with the uninterrupted run's weights, bit for bit: with the default loader workers and
snapshots, with augmentation (in the workers, or on the device where the cache holds the images), with the decoded
cache held on the device, from an epoch's end and from the middle of one (a periodic checkpoint,
``kill -9``, Ctrl-C). Training runs in this process (``catdog.train.main``), but where the process boundary is the
point: a run killed with SIGKILL, or stopped by Ctrl-C and its exit code."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, make_tree, stop_workers, train

# 4 steps per epoch; dropout and the weights' moving average as experiment=best has them; the least image size the
# network takes (bit-for-bit equality does not depend on it)
COMMON = ["seed=3", "trainer.deterministic=true", "data.batch_size=4", "test=false", "model.dropout=0.5"]
COMMON += ["model.ema_decay=0.9", "data.image_size=[46,46]"]
VARIANTS = {
    "workers": [],  # the defaults: loader workers, snapshots
    "augment_workers": [  # each picture, in the workers
        "data.augment.hflip=true",
        "data.augment.rotation=20",
        "callbacks.snapshots=null",
    ],
    "cache_device": ["data.cache=true", "callbacks.snapshots=null"],
    "augment_cache_device": [  # augmented on the device, whole batches (here the RAM: a CPU run)
        "data.augment.hflip=true",
        "data.augment.rotation=20",
        "data.augment.shift=0.1",
        "data.cache=true",
        "callbacks.snapshots=null",
    ],
}


@pytest.fixture(autouse=True)
def fast_cache_builds(forked_pool):
    """The runs in this process build the decoded cache with a forked pool (see conftest.forked_pool)."""


def weights(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a, b) -> None:
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("resume") / "data", 8, 2)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """``uninterrupted(variant)``: the last.ckpt of a straight 2-epoch run with those settings (run once)."""
    done = {}

    def run(variant: str):
        if variant not in done:
            run_dir = tmp_path_factory.mktemp(variant) / "run"
            args = [f"data.root={data}", *COMMON, *VARIANTS[variant], f"hydra.run.dir={run_dir}"]
            assert train(*args, "trainer.max_epochs=2") == 0
            done[variant] = run_dir / "checkpoints" / "last.ckpt"
        return done[variant]

    return run


@pytest.mark.parametrize(  # the defaults' snapshots cost seconds a run: that variant is checked in the slow lane
    "variant", [pytest.param(v, marks=pytest.mark.slow) if v == "workers" else v for v in VARIANTS]
)
def test_resumed_at_an_epoch_end_equals_uninterrupted(variant, data, uninterrupted, tmp_path, capsys):
    settings = [f"data.root={data}", *COMMON, *VARIANTS[variant]]
    assert train(*settings, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'first'}") == 0
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert train(*settings, "trainer.max_epochs=2", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}") == 0
    assert f"resuming from {last}" in capsys.readouterr().out
    assert_same_weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt", uninterrupted(variant))


def test_loader_resumed_mid_epoch_gives_the_rest_of_that_epoch(image_tree):
    """The training loader's state after k batches, loaded into a fresh one (another process, fresh workers), gives
    the epoch's remaining batches, augmentation included: it depends on (seed, epoch, index), not on the workers'
    history."""
    from catdog.data import CatDogDataModule

    def loader():
        dm = CatDogDataModule(root=str(image_tree), source=None, num_workers=2, batch_size=4, augment={"hflip": True})
        dm.setup("fit")
        dm.shuffle_seed = 7
        return dm.train_dataloader()

    straight = loader()
    for epoch in (0, 1):  # workers that have drawn a whole epoch already
        straight.sampler.set_epoch(epoch)
        batches = list(straight)
        if epoch == 1:
            position = straight.state_dict()
            assert position == {"epoch": 1, "batches": len(batches)}
    assert len(batches) == 12
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 5})
    resumed.sampler.set_epoch(1)
    rest = list(resumed)
    assert len(rest) == 7 and resumed.state_dict() == {"epoch": 1, "batches": 12}
    for got, want in zip(rest, batches[5:], strict=True):
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    resumed.sampler.set_epoch(2)  # the next epoch is whole again
    assert len(list(resumed)) == 12
    stop_workers(straight, resumed)


def start_training(tmp_path, data, run_dir: str) -> subprocess.Popen:
    """A 2-epoch run with the defaults, saving last.ckpt after every step, in its own process group (as a shell
    starts a foreground job: Ctrl-C reaches the loader workers too)."""
    command = [sys.executable, str(REPO / "train.py"), f"data.root={data}", *COMMON, "trainer.max_epochs=2"]
    command += ["callbacks.last.every_n_train_steps=1", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for(path, process: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), process.communicate()[1][-3000:]


def resume_last(data, capsys) -> str:
    """``catdog-train ... ckpt_path=last`` from the current folder (the test's), in this process; its output."""
    args = [f"data.root={data}", *COMMON, "trainer.max_epochs=2", "ckpt_path=last", "hydra.run.dir=outputs/resumed"]
    capsys.readouterr()
    assert train(*args) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_kill_9_mid_epoch_then_ckpt_path_last_equals_uninterrupted(data, uninterrupted, tmp_path, monkeypatch, capsys):
    process = start_training(tmp_path, data, "outputs/killed")
    last = tmp_path / "outputs" / "killed" / "checkpoints" / "last.ckpt"
    wait_for(last, process)  # the first is saved after step 1 of 4
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= 1  # lost at most a step
    monkeypatch.chdir(tmp_path)
    assert "resuming from outputs/killed/checkpoints/last.ckpt" in resume_last(data, capsys)
    history = (tmp_path / "outputs" / "resumed" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    assert_same_weights(tmp_path / "outputs" / "resumed" / "checkpoints" / "last.ckpt", uninterrupted("workers"))


@pytest.mark.slow
def test_ctrl_c_saves_the_moment_says_how_to_resume_and_exits_130(data, uninterrupted, tmp_path, monkeypatch, capsys):
    process = start_training(tmp_path, data, "outputs/stopped")
    run = tmp_path / "outputs" / "stopped"
    wait_for(run / "checkpoints" / "last.ckpt", process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    stopped = re.fullmatch(r"interrupted at epoch (\d+), step (\d+); resume with python train.py (.*)", line)
    assert stopped, stderr[-3000:]
    assert stopped[3] == shlex.join([*process.args[2:], "ckpt_path=last"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and (metrics["epoch"], metrics["step"]) == (
        int(stopped[1]),
        int(stopped[2]),
    )
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == metrics["step"]  # the checkpoint of the moment it stopped
    monkeypatch.chdir(tmp_path)
    resume_last(data, capsys)
    assert_same_weights(tmp_path / "outputs" / "resumed" / "checkpoints" / "last.ckpt", uninterrupted("workers"))
