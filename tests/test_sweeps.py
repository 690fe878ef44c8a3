"""Hydra multirun sweeps, Optuna search, launcher configs and DDP on the CPU. Sweeps run in this process
(``catdog.train.main(["-m", ...])``); DDP starts its own processes, so that run is a script's."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from catdog.cli import CONF_DIR
from catdog.files import natural_key
from catdog.sweep import write_summary
from tests.conftest import make_tree, run_script, train

FAST = ["trainer.max_epochs=1", "data.num_workers=0", "callbacks.snapshots=null", "data.image_size=[46,46]"]


def summary_rows(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_by_two_sweep_with_a_failing_job_writes_a_summary(tmp_path, capsys):
    data = make_tree(tmp_path / "data", 10, 4)
    args = ["-m", f"data.root={data}", "model.lr=1e-3,1e30", "data.batch_size=8,1000"]
    assert train(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", *FAST) == 0
    assert "error: the training loss is nan" in capsys.readouterr().err
    rows = summary_rows(tmp_path / "sweep")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert all((tmp_path / "sweep" / r["job"] / "metrics.json").exists() for r in rows)
    by_overrides = {(("model.lr=0.001" in r["overrides"]), ("batch_size=8 " in r["overrides"] + " ")): r for r in rows}
    failed = by_overrides[(False, True)]  # lr 1e30 with batch 8 diverges at step 1: that job fails
    assert failed["status"] == "failed" and "training loss is nan" in failed["error"]
    for key, row in by_overrides.items():
        if key != (False, True):
            assert row["status"] == "completed" and 0 <= float(row["best_val_acc"]) <= 1 and row["epochs"] == "1"
            assert float(row["seconds"]) > 0 and row["test_acc"] != ""
    assert "| failed |" in (tmp_path / "sweep" / "summary.md").read_text()


@pytest.mark.slow
def test_optuna_search_runs_two_trials(tmp_path):
    data = make_tree(tmp_path / "data", 10, 4)
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"data.root={data}"]
    assert train(*args, f"hydra.sweep.dir={tmp_path / 'search'}", *FAST) == 0
    rows = summary_rows(tmp_path / "search")
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    assert all("model.lr=" in r["overrides"] and "data.augment.rotation=" in r["overrides"] for r in rows)
    best = (tmp_path / "search" / "optimization_results.yaml").read_text()
    assert "best_params" in best and math.isclose(
        float(best.split("best_value:")[1].split()[0]), max(float(r["best_val_acc"]) for r in rows)
    )


def test_launcher_and_trainer_configs_build_what_they_name():
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf
    from pytorch_lightning.strategies import DDPStrategy

    from catdog.cli import compose as compose_command

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        joblib = compose("train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    # the plugins are installed (the sweep extra) and the configs name their launchers
    assert get_class(joblib.hydra.launcher._target_).__name__ == "JoblibLauncher"
    assert get_class(slurm.hydra.launcher._target_).__name__ == "SlurmLauncher"
    trainer = instantiate(compose_command("train", ["trainer=ddp", "trainer.accelerator=cpu"]).trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    # experiment=seed spells out the seed's settings, which are also the defaults
    seed, default = compose_command("train", ["experiment=seed"]), compose_command("train")
    for group in ("data", "model", "trainer"):
        assert OmegaConf.to_container(seed[group]) == OmegaConf.to_container(default[group]), group


@pytest.mark.slow
def test_ddp_on_cpu_syncs_validation_and_writes_once(tmp_path):
    data = make_tree(tmp_path / "data", 10, 4)
    result = run_script(  # Lightning's DDP starts the second process by running the command line again
        "train.py",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"data.root={data}",
        "trainer.max_epochs=1",
        "data.num_workers=0",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run / "checkpoints").iterdir())) == 2 and len(list((run / "snapshots" / "cat").iterdir())) == 2
    assert result.stdout.count("Run folder:") == 1  # rank 0 only

    # the logged validation numbers are over the whole validation set, not rank 0's half
    history = next(csv.DictReader(open(run / "history.csv")))
    from catdog.data import CatDogDataModule
    from catdog.module import CatDogModule

    module = CatDogModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    dm = CatDogDataModule(root=str(data), source=None, num_workers=0)
    dm.setup("fit")
    x, y, _ = next(iter(dm._loader(dm.val_set, shuffle=False)))
    with torch.no_grad():
        logits = module(x)
    assert math.isclose(float(history["val_loss"]), float(F.binary_cross_entropy_with_logits(logits, y)), rel_tol=1e-4)
    assert math.isclose(float(history["val_acc"]), float(((logits > 0).float() == y).float().mean()), rel_tol=1e-6)


def test_the_summary_lists_jobs_in_numeric_order(tmp_path):
    """Job 10 comes after job 9, not after job 1 (catdog.files.natural_key, also the order of a Keras layer's
    variables); folders that are not numbers come last."""
    for job in [*map(str, range(12)), "extra"]:
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- model.lr={job}\n")
    (tmp_path / "3" / "metrics.json").write_text('{"status": "completed", "best_val_acc": 0.5}')
    write_summary(tmp_path)
    rows = summary_rows(tmp_path)
    assert [r["job"] for r in rows] == [*map(str, range(12)), "extra"]
    assert rows[3]["status"] == "completed" and rows[3]["overrides"] == "model.lr=3"
    assert rows[4]["status"] == "failed or running"
    assert sorted(["job10", "job9", "job1", "a"], key=natural_key) == ["a", "job1", "job9", "job10"]
    assert sorted(["10", "9", "x", "1"], key=natural_key) == ["1", "9", "10", "x"]
