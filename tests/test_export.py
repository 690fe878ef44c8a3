"""``catdog-export`` (run in this process: ``catdog.export.main``): the ONNX model gives PyTorch's outputs under
onnxruntime on real JPEGs, at any batch size, with the recorded activations as extra outputs and the preprocessing in
its metadata; the safetensors branch round-trips; the command's errors are one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from catdog.export import WithActivations, export_onnx, export_safetensors, main
from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN
from catdog.preprocess import Preprocessing
from catdog.weights import Weights, load_weights
from tests.conftest import REPO, jpeg_bytes

onnx = pytest.importorskip("onnx")  # in the dev extra; optional for a lean install
onnxruntime = pytest.importorskip("onnxruntime")

SHARED_PHOTOS = REPO.parent / "shared" / "data" / "dogs-vs-cats" / "train"
LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4"]


def photos(folder: Path, n: int = 3) -> list[Path]:
    """``n`` JPEG files: Kaggle photos from the shared data folder when it is there, else generated JPEGs."""
    if SHARED_PHOTOS.is_dir():
        return [SHARED_PHOTOS / f"{animal}.{i}.jpg" for i, animal in zip(range(n), ["cat", "dog"] * n, strict=False)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo{i}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        path.write_bytes(jpeg_bytes(i, size=(200, 160), label=["cats", "dogs"][i % 2]))
    return paths


def random_weights(seed: int = 0) -> Weights:
    """Glorot kernels and random (non-zero) biases, so that every part of the mapping shows."""
    torch.manual_seed(seed)
    model = CatDogCNN()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    return Weights(model.state_dict(), Preprocessing(), source="random weights for a test")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Weights, Path, Path]:
    """One set of weights exported twice: logit only, and with the activations."""
    tmp = tmp_path_factory.mktemp("export")
    weights = random_weights()
    return weights, export_onnx(weights, tmp / "plain.onnx"), export_onnx(weights, tmp / "acts.onnx", activations=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> torch.Tensor:
    """Three real JPEGs through the seed's preprocessing: (3, 3, 150, 150)."""
    return torch.stack([Preprocessing()(p) for p in photos(tmp_path_factory.mktemp("photos"))])


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_logit_equals_pytorch_on_real_images_at_batch_1_and_3(exported, images):
    weights, plain, _ = exported
    with torch.no_grad():
        reference = weights.model()(images).numpy()
    assert np.abs(reference).max() > 0.05  # a logit that shows the weights, not a constant
    run = session(plain)
    (batch3,) = run.run(None, {"image": images.numpy()})
    assert batch3.shape == (3, 1)
    np.testing.assert_allclose(batch3, reference, rtol=0, atol=1e-5)
    for i in range(3):
        (single,) = run.run(None, {"image": images[i : i + 1].numpy()})
        np.testing.assert_allclose(single, reference[i : i + 1], rtol=0, atol=1e-5)


def test_onnx_input_and_outputs_are_named_with_a_dynamic_batch(exported):
    _, plain, acts = exported
    run = session(plain)
    (image,) = run.get_inputs()
    assert image.name == "image" and image.shape[1:] == [3, 150, 150] and isinstance(image.shape[0], str)
    assert [o.name for o in run.get_outputs()] == ["logit"]
    outputs = session(acts).get_outputs()
    assert [o.name for o in outputs] == ["logit", *LAYERS]
    assert all(isinstance(o.shape[0], str) for o in outputs)
    assert outputs[1].shape[1:] == [32, 148, 148] and outputs[-1].shape[1:] == [128, 7, 7]


def test_onnx_activations_equal_the_recorders(exported, images):
    """The extra outputs are what ActivationRecorder records: the conv layers' outputs after ReLU, the pools'."""
    weights, _, acts = exported
    model = weights.model()
    with ActivationRecorder(model) as recorder, torch.no_grad():
        logit = model(images).numpy()
    outputs = session(acts).run(None, {"image": images.numpy()})
    np.testing.assert_allclose(outputs[0], logit, rtol=0, atol=1e-5)
    assert list(recorder.records) == LAYERS
    for name, ours in zip(LAYERS, outputs[1:], strict=True):
        theirs = recorder.records[name].numpy()
        assert ours.shape == theirs.shape and ours.min() >= 0 and ours.max() > 0.01
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * max(1.0, float(np.abs(theirs).max())))


def test_with_activations_returns_what_the_recorder_records(images):
    """The wrapper's extra outputs are the recorder's records (a conv layer's output after its ReLU), and its logit
    is the network's."""
    weights = random_weights(1)
    model = weights.model()
    with ActivationRecorder(model) as recorder, torch.no_grad():
        logit = model(images)
        outputs = WithActivations(model)(images)
    assert torch.equal(outputs[0], logit)
    for name, ours in zip(LAYERS, outputs[1:], strict=True):
        assert torch.equal(ours, recorder.records[name]), name
    assert outputs[1].min() == 0 and outputs[1].max() > 0  # conv1 after ReLU, as the seed plots


def test_onnx_metadata_says_how_to_feed_it(exported):
    weights, _, acts = exported
    proto = onnx.load(str(acts))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == "catdog-onnx/1"
    assert json.loads(meta["preprocessing"]) == {
        "image_size": [150, 150],
        "interpolation": "nearest",
        "exif_transpose": False,
        "scale": "1/255",
    }
    assert json.loads(meta["classes"]) == ["cats", "dogs"]
    assert json.loads(meta["activations"]) == LAYERS
    assert meta["source"] == weights.source
    onnx.checker.check_model(proto)


def test_safetensors_export_round_trips(tmp_path):
    weights = random_weights(2)
    path = export_safetensors(weights, tmp_path / "w.safetensors")
    back = load_weights(path)
    assert back.preprocessing == weights.preprocessing
    assert back.metadata["exported_from"] == weights.source
    for key, value in weights.state_dict.items():
        assert torch.equal(back.state_dict[key], value)


def test_export_command_writes_a_model_that_runs(tmp_path, images, monkeypatch, capsys):
    weights = random_weights(3)
    export_safetensors(weights, tmp_path / "trained.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(["ckpt=trained.safetensors", "out=model.onnx"]) == 0, capsys.readouterr().err[-2000:]
    assert "onnxruntime: logits within" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "trained.safetensors"]  # no Hydra leftovers
    (logit,) = session(tmp_path / "model.onnx").run(None, {"image": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logit, weights.model()(images).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=tflite"], "format must be onnx, safetensors, html, got 'tflite'"),
        (["format=html", "out=model.onnx", "overwrite=true"], "out=model.onnx has the suffix of format=onnx"),
        (["out=model.onnx"], "out=model.onnx exists; give another out=, or overwrite=true to replace it"),
        (["format=safetensors", "out=w.onnx"], "out=w.onnx has the suffix of format=onnx, but format=safetensors"),
        (["ckpt=missing.ckpt", "out=new.onnx"], "checkpoint missing.ckpt not found"),
        (["activations=maybe"], "activations must be true or false, got 'maybe'"),
        (["format=safetensors", "activations=true"], "activations=true is for format=onnx"),
        (["opset=1", "out=new.onnx"], "opset must be 9 to 20"),
        (["outt=x.onnx"], "Could not override 'outt'"),
    ],
)
def test_export_command_errors_are_one_line(tmp_path, overrides, message, monkeypatch, capsys):
    (tmp_path / "model.onnx").write_bytes(b"the user's file")
    monkeypatch.chdir(tmp_path)
    assert main(["ckpt=none", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert (tmp_path / "model.onnx").read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def page_weights(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The network description and the weights an explorer page holds, unpacked as its worker does."""
    from tests.test_explorer import page_data, unpack

    data = page_data(path)
    return data["network"], unpack(data["weights"])


def test_export_html_writes_the_explorer_of_a_checkpoint_or_weights_file(tmp_path, trained_run, monkeypatch, capsys):
    """format=html: the page holds the network of any ckpt= form with its preprocessing (the train.py checkpoint's
    moving average or weights; a safetensors file; the Keras seed's .keras/.h5 files: tests/test_keras_io.py)."""
    from catdog.views.network import page_state

    monkeypatch.chdir(tmp_path)
    checkpoint = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    bicubic = Weights(random_weights(4).state_dict, Preprocessing(interpolation="bicubic"), "random")
    export_safetensors(bicubic, tmp_path / "w.safetensors")
    for ckpt, out in ((checkpoint, "run.html"), (tmp_path / "w.safetensors", "w.html")):
        assert main([f"ckpt={ckpt}", "format=html", f"out={out}"]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        network, held = page_weights(tmp_path / out)
        expected = load_weights(ckpt)
        assert network["preprocessing"]["interpolation"] == expected.preprocessing.interpolation
        for name, value in page_state(expected.model(), network).items():
            np.testing.assert_array_equal(held[name], value.numpy())
    assert (tmp_path / "w.html").stat().st_size < 10_000_000
