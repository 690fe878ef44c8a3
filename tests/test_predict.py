"""python -m catdog.predict: a row per picture, bad files as rows with their error; device= for every entry point."""

import csv

import pytest
import torch

from catdog.model import CatDogCNN
from catdog.predict import main
from catdog.weights import Weights, save_weights
from tests.conftest import jpeg_bytes


@pytest.fixture
def always_dog(tmp_path):
    model = CatDogCNN()
    with torch.no_grad():
        model.fc2.weight.zero_()
        model.fc2.bias.fill_(3.0)
    return save_weights(Weights(model.state_dict()), tmp_path / "dog.safetensors")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_streams_through_workers_and_a_bad_file_is_a_row(tmp_path, always_dog, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(7):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    (folder / "p3.jpg").write_bytes(b"not a picture")
    (folder / ".hidden.jpg").write_bytes(b"junk")
    out = tmp_path / "out.csv"
    args = [f"image={folder}", f"ckpt={always_dog}", f"out={out}", "data.batch_size=3", "data.num_workers=2"]
    assert main(args) == 0
    table = rows(out)
    assert [r["path"] for r in table] == [str(folder / f"p{i}.jpg") for i in range(7)]
    assert table[3]["label"] == "" and "cannot read image" in table[3]["error"]
    good = [r for i, r in enumerate(table) if i != 3]
    assert all(r["label"] == "dog" and abs(float(r["p_dog"]) - 0.952574) < 1e-5 for r in good)
    captured = capsys.readouterr()
    assert captured.out.count("dog 0.9526") == 6 and "error: cannot read image" in captured.out
    assert "6 dogs, 1 unreadable" in captured.err


def test_files_a_list_tta_and_one_line_errors(tmp_path, capsys):
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    a.write_bytes(jpeg_bytes(1, size=(80, 60)))
    b.write_bytes(jpeg_bytes(2, size=(60, 80)))  # a JPEG named .png decodes all the same
    out = tmp_path / "p.csv"
    assert main([f"image=[{a},{b}]", "ckpt=none", f"out={out}", "tta=true", "quiet=true", "device=cpu"]) == 0
    torch.manual_seed(0)
    model = CatDogCNN().eval()
    from catdog.preprocess import Preprocessing

    x = torch.stack([Preprocessing()(p) for p in (a, b)])
    with torch.no_grad():
        expected = torch.sigmoid((model(x) + model(x.flip(3))) / 2)[:, 0]
    assert [float(r["p_dog"]) for r in rows(out)] == pytest.approx(expected.tolist(), abs=1e-6)
    assert capsys.readouterr().out == ""
    bf16 = tmp_path / "bf16.csv"
    assert main([f"image=[{a},{b}]", "ckpt=none", f"out={bf16}", "tta=true", "quiet=true", "precision=bf16-mixed"]) == 0
    in_bf16 = [float(r["p_dog"]) for r in rows(bf16)]
    assert in_bf16 == pytest.approx(expected.tolist(), abs=2e-2)
    assert in_bf16 != pytest.approx(expected.tolist(), abs=1e-5)  # bfloat16 did run

    assert main([f"image={tmp_path / 'nothing.jpg'}", "ckpt=none", f"out={out}"]) == 2
    assert main([f"image={a}", "ckpt=none", f"out={out}", "precision=16"]) == 2
    assert main(["ckpt=none"]) == 2  # image is required
    assert main([f"image={a}", "ckpt=none", "device=tpu"]) == 2
    if not torch.cuda.is_available():
        assert main([f"image={a}", "ckpt=none", "device=cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == (5 if not torch.cuda.is_available() else 4) and "Traceback" not in "".join(err)
    assert len(rows(out)) == 2  # a failed run leaves the earlier file as it was


def test_the_sample_photos_by_name(tmp_path, capsys):
    out = tmp_path / "samples.csv"
    assert main(["image=[sample:cat,sample:dog]", "ckpt=pretrained", f"out={out}", "quiet=true"]) == 0
    table = rows(out)
    assert [(r["path"].rsplit("/", 1)[-1], r["label"]) for r in table] == [("cat.jpg", "cat"), ("dog.jpg", "dog")]
    assert float(table[0]["p_dog"]) < 0.01 and float(table[1]["p_dog"]) > 0.99
    assert main(["image=sample:cow", "ckpt=pretrained", f"out={out}"]) == 2
    assert "there is no such sample photo" in capsys.readouterr().err
