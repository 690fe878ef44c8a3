"""One way into every command (catdog.cli.run): composed once, one-line errors with exit code 2, tracebacks on
request, Hydra's flags, run folders and sweeps; and the sample photos that make ``visualize`` work with no image."""

import csv
import json
import logging
import re
import sys
from pathlib import Path

import pytest
from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig

from catdog import CatDogError
from catdog.cli import SAMPLES_DIR, compose, image_setting, run
from tests.conftest import run_script

COMMANDS = ("train", "visualize", "predict", "evaluate", "atlas", "export", "prepare")


def errors(captured: str) -> list[str]:
    lines = captured.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), captured
    return lines


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # run folders (outputs/, multirun/) land here
    return tmp_path


SHARED = {  # a setting defined once (conf/shared/<name>.yaml), and the commands that take it
    "debug": COMMANDS,
    "ckpt": ("visualize", "predict", "evaluate", "atlas", "export"),
    "device": ("visualize", "predict", "evaluate", "atlas"),
    "precision": ("predict", "evaluate"),
}


def test_shared_settings_are_defined_once_and_every_command_takes_its_own():
    from omegaconf import OmegaConf

    from catdog.cli import CONF_DIR

    defined: dict[str, list[str]] = {}  # top-level keys: the commands' own files and the _global_ ones
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        if path.parent == CONF_DIR or path.read_text().startswith("# @package _global_"):
            for key in OmegaConf.load(path):
                defined.setdefault(str(key), []).append(path.relative_to(CONF_DIR).as_posix())
    composed = {name: compose(name, ["image=x.jpg"] if name == "predict" else []) for name in COMMANDS}
    for key, takers in SHARED.items():
        assert defined[key] == [f"shared/{key}.yaml"], key
        for name, cfg in composed.items():
            assert (key in cfg) == (name in takers), (name, key)
    # the same name for the same setting: the batch and the data source are the data group's, as for training
    assert "batch_size" not in compose("atlas") and "batch_size" in compose("atlas").data
    assert "source" not in compose("prepare") and "source" in compose("prepare").data


def test_a_run_composes_once_and_gets_its_settings(in_tmp, monkeypatch):
    composed = []
    real = Hydra.compose_config

    def counting(self, *args, **kwargs):
        composed.append(args[0] if args else kwargs.get("config_name"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counting)
    seen = {}

    def task(cfg):
        seen.update(image=cfg.image, batch=cfg.data.batch_size, out=HydraConfig.get().runtime.output_dir)
        return 3

    handlers = logging.root.handlers[:]
    assert run("predict", task, ["image=a.jpg", "data.batch_size=5"]) == 0
    assert logging.root.handlers == handlers  # the job's logging setup is undone: in-process runs leave no trace
    assert composed == ["predict"]  # once: no check before the run
    assert seen == {"image": "a.jpg", "batch": 5, "out": str(in_tmp)}  # no run folder: the current one
    assert sorted(p.name for p in in_tmp.iterdir()) == []  # no .hydra/, no log file


@pytest.mark.parametrize(
    "args, expected",
    [
        (["kk=3"], "Could not override 'kk'"),  # an unknown key
        (["data=nope"], "Could not find 'data/nope' Available options in 'data': default"),  # an unknown option
        (["k=[1,"], "no viable alternative"),  # a malformed value
        (["--bogus"], "unrecognized arguments: --bogus"),  # an unknown flag
    ],
)
def test_a_bad_setting_is_one_line_and_exit_code_2(in_tmp, capsys, args, expected):
    ran = []
    assert run("atlas", ran.append, args) == 2
    (line,) = errors(capsys.readouterr().err)
    assert expected in line and line.endswith("(catdog-atlas --help lists the settings)")
    assert ran == []


def test_user_errors_are_one_line_and_tracebacks_come_on_request(in_tmp, capsys, monkeypatch):
    def fails(cfg):
        raise CatDogError("the thing the user can fix")

    assert run("export", fails, []) == 2
    assert errors(capsys.readouterr().err) == ["error: the thing the user can fix"]
    with pytest.raises(CatDogError):
        run("export", fails, ["debug=true"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(CatDogError):
        run("export", fails, [])
    with pytest.raises(Exception, match="Could not override 'kk'"):  # a bad setting, too, when asked
        run("export", fails, ["kk=1"])
    monkeypatch.delenv("HYDRA_FULL_ERROR")

    def bug(cfg):
        return {}["missing"]

    with pytest.raises(KeyError):  # a bug is not a user error: it keeps its traceback
        run("export", bug, [])
    assert run("predict", lambda cfg: cfg.image, []) == 2  # image: ??? never given
    assert errors(capsys.readouterr().err) == ["error: image is required: add image=... to the command line"]


def test_help_and_cfg_flags(in_tmp, capsys):
    from catdog.predict import predict

    ran = []
    assert run("predict", predict, ["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Classify pictures") and "== Groups (group=option) ==\ndata: default\n" in text
    assert "trainer:" not in text and "image: ???" in text and "precision: 32" in text  # its own groups, settings
    assert run("train", ran.append, ["--help"]) == 0
    text = capsys.readouterr().out
    assert "experiment: best, seed" in text and "trainer: ddp, default" in text and "shared" not in text
    assert run("atlas", ran.append, ["--cfg", "job", "k=4"]) == 0
    out = capsys.readouterr().out
    assert "k: 4" in out and "hydra:" not in out
    assert ran == [] and list(in_tmp.iterdir()) == []


def test_train_run_folders_and_a_sweep_that_survives_a_failed_job(in_tmp, capsys):
    folders = []
    assert run("train", lambda cfg: folders.append(HydraConfig.get().runtime.output_dir), []) == 0
    (run_dir,) = folders
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", str(Path(run_dir).relative_to(in_tmp)))
    assert (Path(run_dir) / ".hydra" / "overrides.yaml").is_file()

    tried = []

    def job(cfg):
        tried.append(cfg.model.lr)
        if cfg.model.lr > 1:
            raise CatDogError("the training loss is nan")
        return cfg.model.lr

    assert run("train", job, ["-m", "model.lr=1e-3,1e30,1e-4", "hydra.sweep.dir=sweep"]) == 0
    assert tried == [1e-3, 1e30, 1e-4]  # the job after the failed one ran
    assert "error: the training loss is nan" in capsys.readouterr().err
    failed = json.loads((in_tmp / "sweep" / "1" / "metrics.json").read_text())
    assert failed == {"status": "failed", "error": "the training loss is nan"}
    with open(in_tmp / "sweep" / "summary.csv") as f:  # the sweep callback still runs
        assert [row["status"] for row in csv.DictReader(f)] == ["failed or running", "failed", "failed or running"]


def test_the_scripts_exit_codes(tmp_path):
    """The process boundary: python train.py's exit code and its single stderr line."""
    result = run_script("train.py", "model.lrr=1", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: Could not override 'model.lrr'. To append to your config use +model.lrr=1 "
        "(python train.py --help lists the settings)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_image_setting_names_the_samples():
    cat, dog = image_setting("sample:cat"), image_setting("sample:dog")
    assert Path(cat).is_file() and Path(dog).is_file() and cat != dog
    assert image_setting("me.jpg") == "me.jpg" and image_setting(["sample:dog", "me.jpg"]) == [dog, "me.jpg"]
    assert image_setting(compose("visualize").image) == cat  # visualize's default: the sample cat
    with pytest.raises(CatDogError, match="sample:horse: there is no such sample photo; there are sample:cat"):
        image_setting("sample:horse")


def test_the_sample_photos_are_small_and_the_shipped_weights_are_sure_of_them():
    import torch

    from catdog.weights import load_weights

    photos = sorted(SAMPLES_DIR.iterdir())
    assert [p.name for p in photos] == ["cat.jpg", "dog.jpg"] and sum(p.stat().st_size for p in photos) <= 100_000
    weights = load_weights("pretrained")
    model = weights.model()
    with torch.no_grad():
        p_dog = torch.sigmoid(model(torch.stack([weights.preprocessing(p) for p in photos])))[:, 0]
    assert p_dog[0] < 0.01 and p_dog[1] > 0.99


@pytest.mark.slow
def test_visualize_with_nothing_else_shows_the_sample_cat(in_tmp, capsys):
    from catdog.visualize import main

    assert main(["ckpt=pretrained"]) == 0
    assert "cat 1.00" in capsys.readouterr().out
    (manifest,) = in_tmp.glob("outputs/visualize/*/*/manifest.json")
    record = json.loads(manifest.read_text())
    assert record["prediction"]["label"] == "cat" and Path(record["image"]).name == "cat.jpg"
    assert main(["ckpt=pretrained", "image=sample:dog", f"out_dir={in_tmp / 'dog'}"]) == 0
    assert json.loads((in_tmp / "dog" / "manifest.json").read_text())["prediction"]["label"] == "dog"


def test_program_names_follow_how_the_command_was_started(monkeypatch):
    from catdog.cli import program

    monkeypatch.setattr(sys, "argv", ["/venv/bin/catdog-predict"])
    assert program("predict") == "catdog-predict"
    monkeypatch.setattr(sys, "argv", [str(SAMPLES_DIR.parent / "predict.py")])
    assert program("predict") == "python -m catdog.predict"
    monkeypatch.setattr(sys, "argv", ["train.py"])
    assert program("train") == "python train.py"
