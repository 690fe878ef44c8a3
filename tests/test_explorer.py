import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from catdog.model import CatDogCNN
from catdog.views import explorer
from catdog.views.explorer import channel_patterns, explorer_data, write_folder_index, write_index
from catdog.views.gradcam import gradcam


def small_catdog(relu_after_pool: bool = False) -> CatDogCNN:
    torch.manual_seed(0)
    model = CatDogCNN(input_size=(64, 64), relu_after_pool=relu_after_pool).eval()
    with torch.no_grad():  # channel 5 of conv2 is dead: always 0 after its ReLU
        model.conv2.weight[5].zero_()
        model.conv2.bias[5] = -1.0
    return model


def part(model: nn.Module, start: int, stop: int | None = None) -> nn.Sequential:
    return nn.Sequential(*list(model.children())[start:stop])


def page_data(path) -> dict:
    text = path.read_text()
    match = re.search(r"<script type='application/json' id='data'>(.*?)</script>", text, re.S)
    return json.loads(match.group(1))


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Filter patterns are cached under $XDG_CACHE_HOME: a folder of the test's own, never the user's home (also
    for the scripts a test runs, which inherit the environment)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gradcam_goes_through_the_recorder_and_weights_post_relu_maps():
    """With relu_after_pool=true conv4's hook output is pre-ReLU; Grad-CAM must weight the post-ReLU map it stands
    for (the recorder's ``recorded_activation``), as a hand computation does, not the pre-ReLU one."""
    model = small_catdog(relu_after_pool=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def cam_by_hand(post_relu: bool) -> torch.Tensor:
        with torch.enable_grad():
            pre = model.conv4._conv_forward(part(model, 0, 6)(x), model.conv4.weight, model.conv4.bias)
            a = (torch.relu(pre) if post_relu else pre).detach().requires_grad_()
            (grad,) = torch.autograd.grad(part(model, 7)(torch.relu(a))[0, 0], a)
        cam = torch.relu((grad[0].mean((1, 2))[:, None, None] * a[0].detach()).sum(0))
        up = torch.nn.functional.interpolate(cam[None, None], size=(64, 64), mode="bilinear")[0, 0]
        return up / up.max()

    maps = gradcam(model, x, "conv4")
    torch.testing.assert_close(maps["dog"], cam_by_hand(True), atol=1e-5, rtol=1e-4)
    assert (maps["dog"] - cam_by_hand(False)).abs().max() > 0.05  # what hooking on its own used to weight
    with torch.no_grad():
        torch.testing.assert_close(maps["logit"], model(x)[0, 0])  # the forward pass computed the same logit
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(KeyError, match="conv9"):
        gradcam(model, x, "conv9")


def test_page_has_every_layer_no_nan_or_blank_map_and_leaves_hooks_as_found(tmp_path, cache):
    model = small_catdog()
    user_hook = model.conv1.register_forward_hook(lambda *args: None)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    image = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    data = explorer_data(model, x, image, "a.jpg", patterns="none")
    assert [len(m._forward_hooks) for m in model.children()][:2] == [1, 0]
    user_hook.remove()
    path = write_index(tmp_path / "index.html", data)
    data = page_data(path)
    names = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4"]
    assert [layer["name"] for layer in data["layers"]] == names
    assert data["prediction"]["label"] in ("cat", "dog") and data["gradcam"]["layer"] == "conv4"
    for layer in data["layers"]:
        sheet = decode(layer["sprite"])
        h, w, cols = layer["height"], layer["width"], layer["cols"]
        for c in range(layer["channels"]):
            tile = sheet[(c // cols) * h : (c // cols + 1) * h, (c % cols) * w : (c % cols + 1) * w]
            assert np.isfinite(layer["min"][c]) and np.isfinite(layer["max"][c])
            if layer["dead"][c]:
                assert (tile == 128).all() and layer["min"][c] == layer["max"][c]  # flat, never NaN or empty
            else:
                assert tile.min() == 0 and tile.max() == 255  # the whole range is used
    conv2 = data["layers"][2]
    assert conv2["dead"][5] and conv2["min"][5] == 0.0
    assert data["layers"][7]["field"]["size"] == [46, 46]


def test_file_names_are_escaped(tmp_path, cache):
    model = small_catdog()
    x = torch.rand(1, 3, 64, 64)
    evil = "</script><img src=x onerror=alert(1)>&.jpg"
    path = write_index(
        tmp_path / "index.html", explorer_data(model, x, Image.new("RGB", (64, 64)), evil, patterns="none")
    )
    text = path.read_text()
    assert "<img src=x" not in text and "</script><img" not in text and page_data(path)["title"] == evil
    folder = write_folder_index(
        tmp_path / "all.html", [{"name": evil, "href": f"{evil}/index.html", "label": "cat", "probability": 0.7}]
    )
    text = folder.read_text()
    assert "<img src=x" not in text and "&lt;/script&gt;" in text and "%3C/script%3E" in text


def test_filter_patterns_excite_their_channel_and_are_cached(tmp_path, cache, monkeypatch):
    model = small_catdog()
    patterns = channel_patterns(model, "conv2", (8, 8), steps=10)
    assert patterns.shape == (64, 8, 8, 3) and patterns.dtype == np.uint8
    x = torch.rand(1, 3, 64, 64)
    explorer_data(model, x, Image.new("RGB", (64, 64)), "a", layers=["conv1", "conv2"], patterns="compute")
    assert len(list((cache / "catdog" / "patterns").glob("*.npy"))) == 2
    monkeypatch.setattr(explorer, "channel_patterns", lambda *a, **k: pytest.fail("recomputed a cached pattern"))
    data = explorer_data(model, x, Image.new("RGB", (64, 64)), "a", layers=["conv1", "conv2"])
    assert data["layers"][1]["patterns"]["size"] == [8, 8]
    # the page shows what the cache holds, the patterns of the top-left channel of the sprite among them
    sheet = decode(data["layers"][1]["patterns"]["sprite"]).astype(int)
    assert np.abs(sheet[:8, :8] - patterns[0].astype(int)).mean() < 10  # JPEG: close, not exact
    # gradient ascent raised each live channel's response at the centre above what grey gives
    with torch.no_grad():
        w, b = model.conv2.weight, model.conv2.bias
        g = model.conv2._conv_forward(part(model, 0, 2)(torch.full((1, 3, 8, 8), 0.5)), w, b)[0, :, 0, 0]
        shown = torch.from_numpy(patterns).permute(0, 3, 1, 2).float() / 255
        p = model.conv2._conv_forward(part(model, 0, 2)(shown), w, b)[:, :, 0, 0].diagonal()
    live = torch.ones(64, dtype=torch.bool)
    live[5] = False
    assert (p[live] > g[live]).float().mean() > 0.8


def test_a_page_never_computes_patterns_it_takes_them_from_the_atlas_or_the_cache(monkeypatch):
    model = small_catdog()
    x = torch.rand(1, 3, 64, 64)
    image = Image.new("RGB", (64, 64))
    computed = []
    real = explorer.channel_patterns
    monkeypatch.setattr(explorer, "channel_patterns", lambda *a, **k: computed.append(a[1]) or real(*a, **k))
    data = explorer_data(model, x, image, "a")  # the default: cached only, and the cache is empty
    assert computed == [] and not any("patterns" in layer for layer in data["layers"])
    assert data["patterns_help"] == "python -m catdog.atlas patterns=only"  # what the page tells the user
    assert explorer_data(model, x, image, "a", patterns="none")["patterns_help"] == ""
    # an atlas of these weights brings its patterns (computed by the atlas run) and the page uses them as they are
    from catdog.views.atlas import build_atlas

    atlas = build_atlas(model, [(x, torch.zeros(1), ["a.jpg"])], k=1)
    assert explorer.attach_patterns(model, atlas["layers"], (64, 64)) == 4 and computed == [
        f"conv{i}" for i in range(1, 5)
    ]
    data = explorer_data(model, x, image, "a", atlas=atlas)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert computed == [f"conv{i}" for i in range(1, 5)]  # nothing more computed
    assert all(("patterns" in layer) == (layer["type"] == "conv") for layer in layers.values())
    assert layers["conv3"]["patterns"] == atlas["layers"]["conv3"]["patterns"]
    assert "patterns" not in layers["conv3"]["atlas"]  # the patterns travel once, not again inside the atlas part
    top = atlas["layers"]["conv3"]["channels"][0]["top"]
    slim = layers["conv3"]["atlas"]["channels"][0]["top"]
    assert [data["atlas"]["files"][i] for i, _ in slim] == [t["file"] for t in top]
    # and the atlas run left them in the cache, where a page without the atlas finds them
    data = explorer_data(model, x, image, "a")
    assert sum("patterns" in layer for layer in data["layers"]) == 4 and len(computed) == 4


def test_vgg11_features_page(tmp_path, cache):
    from torchvision.models import vgg11

    features = vgg11(weights=None).features.eval()
    x = torch.rand(1, 3, 48, 48)
    data = explorer_data(features, x, Image.new("RGB", (48, 48)), "vgg", patterns="none")
    assert len(data["layers"]) == 13 and data["prediction"] is None and data["gradcam"] is None
    assert data["layers"][0]["field"]["left"] == [-1, -1]  # padding 1: the first field starts outside the image
    write_index(tmp_path / "index.html", data)


def test_visualize_writes_the_pages_and_refuses_an_atlas_of_other_weights(tmp_path, cache):
    from tests.conftest import jpeg_bytes, run_script

    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("<i>cat&.jpg", "dog.jpg"):
        (folder / name).write_bytes(jpeg_bytes(1, size=(60, 50)))
    result = run_script("visualize.py", f"image={folder}", "ckpt=none", "out_dir=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = (tmp_path / "out" / "index.html").read_text()
    assert "&lt;i&gt;cat&amp;.jpg" in text and "<i>cat" not in text
    assert "href='%3Ci%3Ecat%26/index.html'" in text and "href='dog/index.html'" in text
    first = page_data(tmp_path / "out" / "dog" / "index.html")  # new weights: no patterns computed for a page
    assert not any("patterns" in layer for layer in first["layers"]) and first["patterns_help"]
    assert not (tmp_path / "cache" / "catdog" / "patterns").exists()
    (tmp_path / "foreign.json").write_text(json.dumps({"format": "catdog-atlas/1", "fingerprint": "0", "source": "x"}))
    result = run_script(
        "visualize.py", f"image={folder}/dog.jpg", "ckpt=none", "atlas=foreign.json", "out_dir=o", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: atlas foreign.json was made for other weights")
