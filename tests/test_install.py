"""A non-editable install works from any folder: the wheel carries the configuration, the shipped weights and the
sample photos, and its console scripts run from an empty folder with nothing of the checkout at hand."""

import csv
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, make_tree

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment on top of the test environment's packages, with catdog installed from its wheel; its
    ``bin`` folder."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    shutil.copytree(REPO / "catdog", source / "catdog", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)]
    subprocess.run(build, check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = wheels.glob("catdog-*.whl")
    env = tmp / "env"
    venv.create(env, system_site_packages=True)  # pip, torch, ... come from the test environment
    python = env / "bin" / "python"
    # the test environment's catdog is an editable install of the checkout: --force-reinstall puts the wheel's copy
    # into the new environment (pip leaves an installation outside it alone)
    install = [str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=600)
    return env / "bin"


def run(bin_dir: Path, command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_CACHE_HOME"] = str(cwd / ".cache")
    result = subprocess.run([command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "anywhere"
    folder.mkdir()
    return folder


def test_the_wheel_holds_the_package_and_its_data(installed, empty):
    show = "import catdog, catdog.cli as cli; print(catdog.__file__, cli.CONF_DIR)"
    result = run(installed, "python", "-c", show, cwd=empty)
    package, conf = result.stdout.split()
    assert Path(package).is_relative_to(installed.parent) and "site-packages" in package  # not the checkout's
    assert Path(conf).parent == Path(package).parent
    for folder in ("conf", "pretrained", "samples", "views/web"):  # the package data, all of it
        files = {p.relative_to(REPO / "catdog" / folder) for p in (REPO / "catdog" / folder).rglob("*") if p.is_file()}
        found = (Path(conf).parent / folder).rglob("*")
        shipped = {p.relative_to(Path(conf).parent / folder) for p in found if p.is_file()}
        assert files and shipped == {p for p in files if "__pycache__" not in p.parts}, folder


def test_visualize_predict_and_evaluate_from_an_empty_folder(installed, empty):
    result = run(installed, "catdog-visualize", "ckpt=pretrained", cwd=empty)
    assert "cat 1.00" in result.stdout
    (manifest,) = empty.glob("outputs/visualize/*/*/manifest.json")
    record = json.loads(manifest.read_text())
    assert record["prediction"]["label"] == "cat" and Path(record["image"]).is_relative_to(installed.parent)
    assert (manifest.parent / "index.html").is_file() and (manifest.parent / "conv1.png").is_file()

    run(installed, "catdog-predict", "image=[sample:cat,sample:dog]", "ckpt=pretrained", "out=p.csv", cwd=empty)
    with open(empty / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["cat", "dog"] and float(rows[1]["p_dog"]) > 0.99

    data = make_tree(empty / "pictures", 1, 3)
    result = run(
        installed, "catdog-evaluate", "ckpt=pretrained", f"data.root={data}", "data.num_workers=0", cwd=empty
    )
    evaluation = json.loads((empty / "evaluation.json").read_text())
    assert evaluation["images"] == 6 and evaluation["checkpoint"].startswith("pretrained")
    assert sum(map(sum, evaluation["confusion"]["matrix"])) == 6 and "accuracy" in result.stdout
    written = {p.name for p in empty.iterdir()} - {"most_wrong.png"}  # drawn when an image is wrong
    assert written == {".cache", "evaluation.json", "outputs", "p.csv", "pictures"}  # and nothing else
