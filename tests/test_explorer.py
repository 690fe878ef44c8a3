"""The explorer page's Python side: the one description of the network, the packed weights, the page file, and the
trace of one picture that figures and page read. (The page itself, in a browser: tests/test_page.py.)"""

import base64
import io
import json
import re
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from catdog import CatDogError
from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN
from catdog.preprocess import Preprocessing
from catdog.views import pages
from catdog.views.explorer import PageImage, explorer_data, write_explorer
from catdog.views.gradcam import gradcam
from catdog.views.network import describe, pack_weights, page_state
from catdog.views.trace import trace


def small_catdog() -> CatDogCNN:
    torch.manual_seed(0)
    model = CatDogCNN(input_size=(64, 64)).eval()
    with torch.no_grad():  # channel 5 of conv2 is dead: always 0 after its ReLU
        model.conv2.weight[5].zero_()
        model.conv2.bias[5] = -1.0
    return model


def page_data(path) -> dict:
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


def unpack(packed: dict) -> dict[str, np.ndarray]:
    """What web/worker.js does with the packed weights, in numpy."""
    raw = zlib.decompress(base64.b64decode(packed["data"]))
    out = {}
    for t in packed["tensors"]:
        dtype = np.dtype(t["dtype"])
        n = int(np.prod(t["shape"]))
        planes = np.frombuffer(raw, np.uint8, n * dtype.itemsize, t["offset"]).reshape(dtype.itemsize, n)
        out[t["name"]] = planes.T.copy().view(dtype).reshape(t["shape"]).astype(np.float32)
    return out


def test_the_description_of_catdog_has_every_layer_with_shapes_fields_and_preprocessing():
    network = describe(small_catdog(), Preprocessing(image_size=(64, 64), interpolation="bilinear"))
    names = [layer["name"] for layer in network["layers"]]
    assert names == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "flatten", "fc1", "fc2"]
    recorded = {layer["name"]: layer for layer in network["layers"] if layer["record"]}
    assert list(recorded) == ActivationRecorder(small_catdog()).names
    assert recorded["conv1"]["shape"] == [32, 62, 62] and recorded["conv1"]["relu"]
    assert [recorded[n]["field"]["size"][0] for n in recorded] == [3, 4, 8, 10, 18, 22, 38, 46]
    assert network["layers"][-2]["relu"] and not network["layers"][-1]["relu"]
    assert network["preprocessing"]["interpolation"] == "bilinear" and network["input"]["size"] == [64, 64]
    assert network["gradcam"] == "conv4"


@pytest.mark.parametrize(
    "layer, what",
    [
        (nn.BatchNorm2d(4), "BatchNorm2d"),
        (nn.Conv2d(4, 4, 3, groups=2), "groups"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.AdaptiveAvgPool2d(2), "AdaptiveAvgPool2d"),
    ],
)
def test_a_layer_the_page_cannot_run_is_one_line_naming_it(layer, what):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Flatten(), nn.LazyLinear(1))
    model(torch.zeros(1, 3, 16, 16))
    with pytest.raises(CatDogError, match=f"the page cannot run.*1.*{what}") as err:
        describe(model, Preprocessing(image_size=(16, 16)))
    assert "\n" not in str(err.value)


def test_packed_weights_are_the_weights_with_big_dense_layers_in_float16():
    model = CatDogCNN().eval()
    network = describe(model, Preprocessing())
    unpacked = unpack(pack_weights(model, network))
    expected = page_state(model, network)
    assert set(unpacked) == set(model.state_dict())
    for name, value in expected.items():
        assert np.array_equal(unpacked[name], value.numpy()), name
    assert np.array_equal(unpacked["conv3.weight"], model.conv3.weight.detach().numpy())  # convs exactly
    fc1 = model.fc1.weight.detach()
    assert not np.array_equal(unpacked["fc1.weight"], fc1.numpy())  # 3.2 M weights: float16
    assert np.abs(unpacked["fc1.weight"] - fc1.numpy()).max() <= 2**-11 * fc1.abs().max()


def test_the_page_is_one_offline_file_with_its_pictures_lossless(tmp_path):
    model = small_catdog()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    title = "</script><script>alert(1)</script>"
    data = explorer_data(model, Preprocessing(image_size=(64, 64)), title, images=[PageImage("a&b.png", pixels)])
    path = write_explorer(tmp_path / "page.html", data)
    text = path.read_text()
    assert text.count("</script>") == text.count("<script")  # the title closed nothing
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)  # every script and style inline
    shown = page_data(path)
    webp = base64.b64decode(shown["images"][0]["webp"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(webp)).convert("RGB")), pixels)
    assert shown["title"] == title and shown["images"][0]["name"] == "a&b.png"


def test_a_web_file_that_would_close_its_script_is_refused(tmp_path, monkeypatch):
    (tmp_path / "p.html").write_text('<title></title><script type="application/json" id="data"></script>'
                                     '<script src="bad.js"></script>')  # fmt: skip
    (tmp_path / "bad.js").write_text("const s = '</script>';")
    monkeypatch.setattr(pages, "WEB", tmp_path)
    with pytest.raises(ValueError, match="bad.js"):
        pages.render_page("p.html", {}, "t")


def test_one_trace_records_every_layer_and_gradcam_and_leaves_no_hook():
    model = small_catdog()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t = trace(model, x, gradcam_layer="conv4")
    with ActivationRecorder(model) as recorder, torch.no_grad():
        logit = model(x)
    assert list(t.records) == list(recorder.records)
    for name, record in recorder.records.items():
        assert torch.equal(t.records[name], record[0])
    assert t.logit == pytest.approx(float(logit))
    assert t.prediction["p_dog"] == pytest.approx(float(torch.sigmoid(logit)))
    reference = gradcam(model, x, "conv4")
    for which in ("dog", "cat"):
        torch.testing.assert_close(t.gradcam[which], reference[which])
    assert bool(torch.all(t.records["conv2"][5] == 0))  # the dead channel, recorded after its ReLU
    assert all(not m._forward_hooks for m in model.modules())


def test_switched_off_channels_are_zero_and_change_what_follows():
    model = small_catdog()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    clean = trace(model, x)
    off = trace(model, x, gradcam_layer="conv4", off={"conv3": [0, 7]})
    assert bool(torch.all(off.records["conv3"][[0, 7]] == 0))
    assert torch.equal(off.records["conv2"], clean.records["conv2"])
    assert not torch.equal(off.records["conv4"], clean.records["conv4"])
    with pytest.raises(KeyError, match="fc9"):
        trace(model, x, off={"fc9": [1]})
    assert all(not m._forward_hooks for m in model.modules())


def test_a_page_names_where_its_weights_came_from_without_this_machines_folders(tmp_path):
    model = small_catdog()
    source = "pretrained (no trained run under outputs/): /home/someone/catdog/pretrained/catdog_cnn.safetensors"
    path = write_explorer(tmp_path / "p.html", explorer_data(model, Preprocessing(image_size=(64, 64)), "t", source))
    assert page_data(path)["source"] == "pretrained (no trained run under outputs/): catdog_cnn.safetensors"
    assert "/home/someone" not in path.read_text()
