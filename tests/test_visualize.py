import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from catdog import CatDogError
from catdog.model import CatDogCNN
from catdog.views.gradcam import gradcam
from catdog.visualize import main as visualize
from tests.conftest import REPO, TRAINED_SIZE, jpeg_bytes, train
from tests.test_explorer import page_data

LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``catdog-visualize args`` in this process: exit code, stdout, stderr."""
    code = visualize(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(capsys, *args: str) -> str:
    code, _, err = run(capsys, *args)
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "my cat.jpg"
    path.write_bytes(jpeg_bytes(7, size=(200, 160)))
    return path


def test_visualize_end_to_end_with_a_trained_checkpoint(trained_run, picture, tmp_path, capsys):
    """trained_run's network (64 x 64 pictures) on a generated cat: short of red, as the cats it learnt from."""
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    side = TRAINED_SIZE - 2
    out = tmp_path / "viz"
    code, stdout, err = run(
        capsys, f"image={picture}", f"ckpt={ckpt}", f"out_dir={out}", "gradcam=true", "channel=31",
        "ablate=[conv3:17,conv4:5]",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    label, probability = stdout.splitlines()[1].split()
    assert label == "cat" and 0.5 <= float(probability) <= 1
    assert "with conv3:17, conv4:5 off: p(dog) " in stdout

    files = {p.name for p in out.iterdir()}
    expected = {"input.png", "overview.png", "activations.npz", "manifest.json", "gradcam.png", "index.html"}
    expected |= {f"{n}.png" for n in LAYERS} | {f"{n}_channel31.png" for n in LAYERS}
    assert expected <= files

    arrays = np.load(out / "activations.npz")
    assert list(arrays) == LAYERS and arrays["conv1"].shape == (1, 32, side, side)
    assert arrays["conv1"].dtype == np.float32
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"] == str(ckpt) and manifest["prediction"]["label"] == label
    assert manifest["layers"]["pool4"]["shape"] == [128, 2, 2]

    # the saved arrays are what the network computes from the saved input (npz round trip, same preprocessing)
    from catdog.views.trace import trace
    from catdog.weights import load_weights

    model = load_weights(ckpt).model()
    x = torch.from_numpy(np.asarray(Image.open(out / "input.png"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        np.testing.assert_allclose(model.conv1(x).numpy(), arrays["conv1"], rtol=1e-5, atol=1e-6)
    assert manifest["layers"]["conv1"]["dead_channels"] == int((arrays["conv1"][0].reshape(32, -1).std(1) == 0).sum())
    switched = trace(model, x, off={"conv3": [17], "conv4": [5]})  # what the page and the manifest report
    assert manifest["ablation"]["off"] == {"conv3": [17], "conv4": [5]}
    assert manifest["ablation"]["p_dog_after"] == pytest.approx(switched.prediction["p_dog"], abs=1e-6)
    assert manifest["ablation"]["p_dog_before"] == manifest["prediction"]["p_dog"]
    page = page_data(out / "index.html")
    assert [i["name"] for i in page["images"]] == [picture.name] and page["off"] == {"conv3": [17], "conv4": [5]}


def test_latest_checkpoint_folder_of_images_one_page_and_compare_pages(trained_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "outputs" / "run" / "checkpoints").mkdir(parents=True)
    best = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    (tmp_path / "outputs" / "run" / "checkpoints" / best.name).write_bytes(best.read_bytes())
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "zz_broken.jpg").write_bytes(b"")  # one bad file does not stop the others
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, f"image={folder}", "out_dir=out", "layers=[conv1,pool*]", "norm=layer")
    assert code == 0, err[-3000:]
    assert "skipped: cannot read image" in stdout and "(1 of 4 images skipped)" in stdout
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"p0", "p1", "p2"}
    assert {p.name for p in out.glob("compare_*.png")} == {
        f"compare_{n}.png" for n in ("conv1", "pool1", "pool2", "pool3", "pool4")
    }
    assert list(np.load(out / "p0" / "activations.npz")) == ["conv1", "pool1", "pool2", "pool3", "pool4"]
    assert not list(out.glob("*/index.html"))  # one page holds every picture, their network inputs lossless
    assert [i["name"] for i in page_data(out / "index.html")["images"]] == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_untrained_network_says_so_and_filters_mode(tmp_path, picture, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the patterns' cache: this test's own
    code, stdout, _ = run(capsys, f"image={picture}", "ckpt=none", "out_dir=o")
    assert code == 0 and "untrained" in stdout
    code, _, err = run(capsys, "ckpt=none", "mode=filters", "layer=conv1", "filters.steps=3", "out_dir=f")
    assert code == 0, err[-2000:]
    assert (tmp_path / "f" / "filters_conv1.png").exists()


def test_user_errors_are_one_line(tmp_path, picture, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "not found" in one_line(capsys, "image=nope.jpg", "ckpt=none")
    with pytest.raises(CatDogError, match="nope.jpg"):  # the full story (the exception, raised) when asked for
        visualize(["image=nope.jpg", "ckpt=none", "debug=true"])
    code, stdout, _ = run(capsys, f"image={picture}", f"out_dir={tmp_path / 'shipped'}")
    assert code == 0 and "weights: pretrained (no trained run under outputs/ or multirun/)" in stdout
    # no run yet: the shipped weights, and it says so (test_weights.py covers a missing file)
    assert "norm must be" in one_line(capsys, f"image={picture}", "ckpt=none", "norm=global")
    assert "conv9" in one_line(capsys, f"image={picture}", "ckpt=none", "layers=[conv9]")
    assert "gradcam_layer" in one_line(capsys, f"image={picture}", "ckpt=none", "gradcam_layer=fc1")
    assert "channel=40 is out of range" in one_line(capsys, f"image={picture}", "ckpt=none", "channel=40")
    assert "ablate: conv3:400" in one_line(capsys, f"image={picture}", "ckpt=none", "ablate=[conv3:400]")
    assert "is not layer:channel" in one_line(capsys, f"image={picture}", "ckpt=none", "ablate=[conv3]")
    (tmp_path / "empty").mkdir()
    assert "no images" in one_line(capsys, "image=empty", "ckpt=none")
    (tmp_path / "notes.jpg").write_text("not a picture")
    assert "cannot read image" in one_line(capsys, "image=notes.jpg", "ckpt=none")
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    assert "cannot read checkpoint" in one_line(capsys, f"image={picture}", "ckpt=bad.ckpt")


def test_gradcam_signs_on_a_hand_built_model():
    """Channel 0 pushes the logit up (dog), channel 1 down (cat); they fire on the left and right halves."""
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(2, 2, 1))
    net.add_module("gap", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(2, 1))
    with torch.no_grad():
        net.conv.weight.copy_(torch.eye(2)[:, :, None, None])
        net.conv.bias.zero_()
        net.fc.weight.copy_(torch.tensor([[1.0, -1.0]]))
        net.fc.bias.zero_()
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, :, :4] = 1  # dog evidence on the left
    x[0, 1, :, 4:] = 1  # cat evidence on the right
    maps = gradcam(net, x, "conv")
    assert maps["dog"][:, :3].min() > 0.9 and maps["dog"][:, 5:].max() < 0.1
    assert maps["cat"][:, 5:].min() > 0.9 and maps["cat"][:, :3].max() < 0.1
    x[0, 1] = 0  # no cat evidence anywhere: the cat map is all zeros, not NaN
    maps = gradcam(net, x, "conv")
    assert torch.all(maps["cat"] == 0) and not torch.isnan(maps["dog"]).any()
    assert all(not m._forward_hooks for m in net.modules())


class RunsCode:
    """Unpickling this would create a folder: the proof that a checkpoint ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_checkpoints_never_run_pickled_code(tmp_path, picture, image_tree, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(tmp_path / "pwned")}, evil)
    assert "cannot read checkpoint" in one_line(capsys, f"image={picture}", f"ckpt={evil}", f"out_dir={tmp_path / 'v'}")
    assert train(f"data.root={image_tree}", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: refused to load a checkpoint") and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_foreign_checkpoints(trained_run, tmp_path, picture, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    assert "cannot read checkpoint" in one_line(capsys, f"image={picture}", "ckpt=truncated.ckpt")
    other = nn.Sequential(nn.Conv2d(3, 8, 3))
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "other.ckpt")
    assert "not a catdog" in one_line(capsys, f"image={picture}", "ckpt=other.ckpt")
    assert "not found" in one_line(capsys, f"image={picture}", "ckpt=nope.ckpt")
    assert "Could not override" in one_line(capsys, f"image={picture}", "ckpt=none", "nrom=layer")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    from catdog.prepare import decodes
    from catdog.views.activations import Figures, visualize_image
    from catdog.weights import untrained

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 40x30 picture now counts as a bomb
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_bytes(1))
    assert decodes(path.read_bytes()).startswith("refused, too many pixels")
    with pytest.raises(CatDogError, match="too many pixels"):
        visualize_image(CatDogCNN(), path, tmp_path / "out", untrained(), Figures())


def test_compare_models_prints_silent_channels_and_draws_both_models(trained_run, tmp_path, capsys, monkeypatch):
    """``python docs/compare_models.py``, run in this process (runpy, as ``python`` runs a script)."""
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    test = trained_run.parent / "data" / "test"
    figure = tmp_path / "cmp.png"
    script = REPO / "docs" / "compare_models.py"
    argv = [str(script), str(ckpt), str(ckpt), str(test), "--n", "10"]
    monkeypatch.setattr(sys, "argv", [*argv, "--images", "cats/cat.0.jpg", "dogs/dog.0.jpg", "--figure", str(figure)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the checkout first
    runpy.run_path(str(script), run_name="__main__")
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| conv")]
    assert [r[0].split()[0] for r in rows] == ["conv1", "conv2", "conv3", "conv4"]
    for _, seed_share, best_share, seed_dead, best_dead in rows:
        assert seed_share == best_share and seed_dead == best_dead  # the same checkpoint twice
    assert Image.open(figure).size[1] > 4 * TRAINED_SIZE  # four rows: two images x two models
