import json
import os
import stat

import pytest
import torch
from torch import nn

from catdog import CatDogError
from catdog.views.channel_atlas import AtlasBuilder, build_atlas, load_atlas, write_atlas
from catdog.views.receptive import receptive_fields
from tests.conftest import make_tree
from tests.test_explorer import page_data


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Filter patterns are cached under $XDG_CACHE_HOME: a folder of the test's own, never the user's home (also
    for the scripts a test runs, which inherit the environment)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1))
    with torch.no_grad():
        net[0].weight[3].zero_()
        net[0].bias[3] = -1.0  # channel 3: a constant -1 at conv "0" (recorded pre-ReLU), 0 after ReLU and pool
    return net.eval()


def batches(images: torch.Tensor, labels: torch.Tensor, size: int):
    for s in range(0, len(images), size):
        yield images[s : s + size], labels[s : s + size], [f"img{i}.png" for i in range(s, min(s + size, len(images)))]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])  # the command runs channels-last
def test_running_top_k_equals_the_whole_dataset_sorted(layout):
    net = tiny_net().to(memory_format=layout)
    generator = torch.Generator().manual_seed(1)
    images = ((torch.rand(37, 3, 12, 12, generator=generator) * 255).round() / 255).contiguous(memory_format=layout)
    labels = torch.arange(37) % 2
    atlas = build_atlas(net, batches(images, labels, 8), k=4)
    fields = receptive_fields(net)
    with torch.no_grad():
        maps = {"0": net[0](images), "3": net[:4](images), "2": net[:3](images)}
    assert set(atlas["layers"]) == {"0", "2", "3"} and atlas["images"] == 37
    for name, a in maps.items():
        layer = atlas["layers"][name]
        flat = a.flatten(2)
        peaks = flat.max(2).values
        for c, channel in enumerate(layer["channels"]):
            constant = flat[:, c].max(1).values == flat[:, c].min(1).values
            expected = torch.sort(peaks[~constant, c], descending=True).values[:4]
            got = torch.tensor([t["value"] for t in channel["top"]], dtype=torch.float32)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
            means = flat[:, c].mean(1)
            cats, dogs = float(means[labels == 0].mean()), float(means[labels == 1].mean())
            assert channel["cats"] == pytest.approx(cats, abs=1e-5) and channel["dogs"] == pytest.approx(dogs, abs=1e-5)
            selectivity = (dogs - cats) / (abs(dogs) + abs(cats)) if dogs or cats else 0.0  # silent: neither
            assert channel["selectivity"] == pytest.approx(selectivity, abs=1e-3)
            assert channel["dead_share"] == pytest.approx(float(constant.float().mean()), abs=1e-4)
            for t in channel["top"]:  # each file is the image with that peak, at its strongest position
                n = int(t["file"][3:-4])
                i, j = t["position"]
                assert float(a[n, c, i, j]) == pytest.approx(t["value"], abs=1e-5)
                assert t["box"] == list(fields[name].box(i, j, 12, 12))
    dead = atlas["layers"]["0"]["channels"][3]
    assert dead["top"] == [] and dead["dead_share"] == 1.0  # a channel dead everywhere ranks no image


def test_maps_are_read_before_a_later_in_place_op_changes_them():
    """The builder reduces each output inside the forward pass: an in-place ReLU after a conv (as in torchvision's
    VGG) must not turn the conv's negative responses into zeros (and its channels into dead ones)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)).eval()
    with torch.no_grad():
        net[0].bias[0] = -50.0  # channel 0: negative everywhere before the ReLU
    images = torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    atlas = build_atlas(net, batches(images, torch.arange(6) % 2, 3), k=2)
    with torch.no_grad():
        peaks = torch.conv2d(images, net[0].weight, net[0].bias).flatten(2).max(2).values[:, 0]
    top = atlas["layers"]["0"]["channels"][0]
    assert [t["value"] for t in top["top"]] == pytest.approx(sorted(peaks.tolist(), reverse=True)[:2], abs=1e-5)
    assert top["dead_share"] == 0 and top["cats"] < -40
    assert atlas["layers"]["2"]["channels"][0]["dead_share"] == 1.0  # after the ReLU and the pool: zeros


def test_crops_are_the_input_under_the_strongest_positions_field():
    net = tiny_net()
    images = torch.rand(10, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    builder = AtlasBuilder(net, ["3"], k=3)
    for x, y, files in batches(images, torch.zeros(10), 4):
        builder.update(x, y, files)
    state = builder.layers["3"]
    g = state.geometry
    pixels = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for c in range(5):
        for slot in range(3):
            n, (i, j) = int(state.ids[c, slot]), state.positions[c, slot].tolist()
            y0, y1 = g.y.span(i)
            x0, x1 = g.x.span(j)
            crop = state.crops[c, slot]
            for yy in range(y0, y1 + 1):  # inside the image: the pixels; outside (padding): grey
                for xx in range(x0, x1 + 1):
                    expected = pixels[n, yy, xx] if 0 <= yy < 12 and 0 <= xx < 12 else [128, 128, 128]
                    assert (crop[yy - y0, xx - x0] == expected).all()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_is_flat_over_a_thousand_images_and_hooks_are_left_as_found():
    net = tiny_net()
    user_hook = net[0].register_forward_hook(lambda *args: None)
    builder = AtlasBuilder(net, k=9)
    generator = torch.Generator().manual_seed(3)
    sizes, memory = [], []
    for _ in range(20):  # 1,000 images of 16 x 16
        builder.update(torch.rand(50, 3, 16, 16, generator=generator), torch.arange(50) % 2, ["x.png"] * 50)
        sizes.append(builder.nbytes)
        memory.append(rss())
    assert len(set(sizes)) == 1  # the running state does not grow with the number of images
    assert memory[-1] - memory[2] < 20 * 2**20
    atlas = builder.result("data", "tiny")
    assert atlas["images"] == 1000
    assert [len(m._forward_hooks) for m in net] == [1, 0, 0, 0]  # the user's hook, and only it
    user_hook.remove()


def test_vgg11_features_atlas(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["A"]).eval()  # vgg11(weights=None).features, without its 120 M-weight classifier
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))  # a crop per channel: k=1
    atlas = build_atlas(features, batches(images, torch.arange(4) % 2, 2), k=1, data="random")
    assert len(atlas["layers"]) == 13  # 8 convs and 5 pools
    last = atlas["layers"]["20"]
    assert last["crops"]["cell"] == [64, 64] and len(last["channels"]) == 512  # a 150-px field, shrunk
    json_path, html_path = write_atlas(tmp_path, atlas)
    assert load_atlas(tmp_path)["images"] == 4 and html_path.stat().st_size > 0


def test_load_atlas_refuses_other_weights(tmp_path):
    (tmp_path / "atlas.json").write_text(json.dumps({"format": "catdog-atlas/1", "fingerprint": "abc", "source": "x"}))
    with pytest.raises(CatDogError, match="other weights or preprocessing"):
        load_atlas(tmp_path / "atlas.json", expected="def")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CatDogError, match="not a catdog atlas"):
        load_atlas(tmp_path / "other.json")
    with pytest.raises(CatDogError, match="not found"):
        load_atlas(tmp_path / "nope.json")


def test_atlas_settings_share_their_names_with_the_other_commands(tmp_path, capsys):
    """The batch is data.batch_size, as for training, evaluate and predict; bad values are one line."""
    from catdog.atlas import main

    data = make_tree(tmp_path / "data", 1, 3)
    args = ["ckpt=none", f"data.root={data}", "data.num_workers=0", "patterns=false"]
    assert main([*args, "batch_size=4"]) == 2  # the old top-level name is gone
    assert main([*args, "data.batch_size=0"]) == 2
    assert main([*args, "k=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: Could not override 'batch_size'")
    assert err[1:] == [
        "error: data.batch_size must be a whole number of at least 1, got 0",
        "error: k must be a whole number of at least 1, got 'abc'",
    ]
    assert main([*args, "data.batch_size=4", "k=2", f"out_dir={tmp_path / 'a'}"]) == 0
    assert load_atlas(tmp_path / "a")["images"] == 6


@pytest.mark.slow  # the feature visualisations of conv1 and conv2 (patterns=only) take most of its time
def test_atlas_command_line(tmp_path, cache, capsys, monkeypatch):
    from catdog.atlas import main
    from catdog.visualize import main as visualize

    def one_line_error(*args: str) -> str:
        assert main(list(args)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("error:") and "Traceback" not in "".join(lines)
        return lines[-1]

    monkeypatch.chdir(tmp_path)
    data = make_tree(tmp_path / "data", 1, 4)
    (data / "test" / "dogs" / "broken.jpg").write_bytes(b"not a picture")
    assert main(["ckpt=none", f"data.root={data}", "k=2", "out_dir=a", "patterns=false"]) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and "1 unreadable files skipped" in out
    atlas = load_atlas(tmp_path / "a")
    assert atlas["class_counts"] == {"cats": 4, "dogs": 4} and list(atlas["layers"])[-1] == "pool4"
    assert (tmp_path / "a" / "atlas.html").is_file()
    assert not any("patterns" in layer for layer in atlas["layers"].values()) and not (cache / "catdog").exists()
    # the documented path to feature visualisations: patterns=only fills the cache (no data needed), and a page of
    # these weights then shows those conv channels' patterns next to the atlas's crops
    assert main(["ckpt=none", "patterns=only", "layers=[conv1,conv2]", "data.root=nowhere"]) == 0
    assert "feature visualisations of 96 channels in 2 conv layers and of the 2 classes" in capsys.readouterr().out
    image = data / "test" / "dogs" / "dog.0.jpg"
    assert visualize([f"image={image}", "ckpt=none", "atlas=a", "out_dir=v"]) == 0
    page = page_data(tmp_path / "v" / "index.html")
    assert list(page["patterns"]) == ["conv1", "conv2"] and page["patterns"]["conv2"]["size"] == [8, 8]
    assert page["class_patterns"] and "mode=filters" in page["patterns_help"]  # conv3 and conv4: not at hand
    assert list(page["atlas"]["layers"]) == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4"]
    umask = os.umask(0o022)
    os.umask(umask)
    for written in (tmp_path / "v" / "index.html", tmp_path / "a" / "atlas.json"):  # as open() makes a file
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    assert "no layer matches 'conv9'" in one_line_error("ckpt=none", f"data.root={data}", "layers=[conv9]")
    for f in (data / "test" / "cats").iterdir():
        f.unlink()
    assert "holds no images" in one_line_error("ckpt=none", f"data.root={data}")
    assert "Could not override" in one_line_error("ckpt=none", f"data.root={data}", "kk=3")
