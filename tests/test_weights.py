"""Weights with their preprocessing: safetensors files, checkpoints, the ckpt= fallback order, refusals."""

import json
import pickle

import pytest
import torch

import catdog.weights as weights_module
from catdog import CatDogError
from catdog.model import CatDogCNN
from catdog.preprocess import Preprocessing
from catdog.weights import Weights, load_weights, read_checkpoint, save_weights


def random_weights(seed: int = 0, **preprocessing) -> Weights:
    torch.manual_seed(seed)
    return Weights(CatDogCNN().state_dict(), Preprocessing(**preprocessing), "test", {"command": "python train.py"})


def test_safetensors_round_trip_keeps_preprocessing_and_metadata_without_unpickling(tmp_path, monkeypatch):
    path = save_weights(random_weights(interpolation="bilinear", exif_transpose=True), tmp_path / "w.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_weights(path)
    assert loaded.preprocessing == Preprocessing(interpolation="bilinear", exif_transpose=True)
    assert loaded.metadata == {"command": "python train.py"} and loaded.source == str(path)
    x = torch.rand(2, 3, 150, 150)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model()(x), random_weights().model()(x), rtol=0, atol=0)


def test_damaged_foreign_or_other_preprocessing_files_are_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    path = save_weights(random_weights(), tmp_path / "w.safetensors")
    data = path.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "not a whole safetensors file"),
        "tampered": (data[:-100] + bytes(b ^ 1 for b in data[-100:]), "altered"),
        "garbage": (b"\x00" * 64, "not a whole safetensors file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(content)
        with pytest.raises(CatDogError, match=message) as err:
            load_weights(tmp_path / f"{name}.safetensors")
        assert f"{name}.safetensors" in str(err.value) and "\n" not in str(err.value)

    save_file({"w": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CatDogError, match="not a catdog weights file"):
        load_weights(tmp_path / "foreign.safetensors")

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    other = json.loads(header["preprocessing"]) | {"scale": "1/127.5 - 1"}
    save_file(state, tmp_path / "other.safetensors", metadata=header | {"preprocessing": json.dumps(other)})
    with pytest.raises(CatDogError, match="preprocessing catdog does not apply"):
        load_weights(tmp_path / "other.safetensors")

    state["fc2.bias"] = torch.zeros(2)
    with pytest.raises(CatDogError, match="fc2.bias has shape"):
        Weights(state, source="odd").model()


def test_a_checkpoint_gives_its_moving_average_and_its_preprocessing(tmp_path):
    model, average = CatDogCNN(), CatDogCNN()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state |= {f"ema.module.{k}": v for k, v in average.state_dict().items()}
    data = {"image_size": [150, 150], "interpolation": "bicubic", "exif_transpose": True, "val_fraction": 0.1}
    torch.save({"state_dict": state, "datamodule_hyper_parameters": data}, tmp_path / "run.ckpt")
    loaded = read_checkpoint(tmp_path / "run.ckpt")
    assert "moving average" in loaded.source and loaded.metadata["data"]["val_fraction"] == 0.1
    assert loaded.preprocessing == Preprocessing((150, 150), "bicubic", True)
    torch.testing.assert_close(loaded.state_dict["conv1.weight"], average.conv1.weight)


def test_latest_takes_the_newest_run_then_the_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "shipped" / "catdog_cnn.safetensors"
    monkeypatch.setattr(weights_module, "PRETRAINED", shipped)
    with pytest.raises(CatDogError, match="no checkpoint under outputs/ or multirun/ and no shipped weights"):
        load_weights("latest")
    with pytest.raises(CatDogError, match="ckpt=pretrained: the shipped weights .* are missing"):
        load_weights("pretrained")

    save_weights(random_weights(1), shipped)
    assert load_weights("latest").source.startswith("pretrained (no trained run")
    assert load_weights("pretrained").source == f"pretrained ({shipped})"

    ckpt = tmp_path / "outputs" / "day" / "time" / "checkpoints" / "best-epoch01-val_acc0.5000.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in CatDogCNN().state_dict().items()}}, ckpt)
    assert load_weights("latest").source == str(ckpt.relative_to(tmp_path))
    assert load_weights("none").source.startswith("none")


def test_the_network_follows_the_image_size():
    model = CatDogCNN(input_size=(128, 96))
    assert model.fc1.in_features == 128 * 6 * 4
    assert model(torch.rand(1, 3, 128, 96)).shape == (1, 1)
    assert CatDogCNN().fc1.in_features == 128 * 7 * 7
    with pytest.raises(ValueError, match="too small"):
        CatDogCNN(input_size=(45, 150))


def test_the_fast_arrangement_scores_as_the_plain_network():
    from catdog.fast import FastCatDogCNN
    from catdog.scoring import logits_of

    weights = random_weights()
    plain, fast = weights.model(), weights.model(fast=True)
    assert isinstance(fast, FastCatDogCNN) and not fast.training
    assert fast.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 150, 150)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(fast, x, tta=True), logits_of(plain, x, tta=True), rtol=1e-5, atol=1e-5)
