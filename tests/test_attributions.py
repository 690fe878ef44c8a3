"""Attributions: Grad-CAM equals Captum's LayerGradCam, Integrated Gradients is complete, every method's dog and cat
maps point where a hand-built model says they must, and visualize.py writes them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from catdog import CatDogError
from catdog.hooks import ActivationRecorder
from catdog.model import CatDogCNN
from catdog.views.attributions import (
    attributions,
    attributions_figure,
    check_methods,
    display_map,
    image_of,
    integrated_gradients,
    methods_setting,
    occlusion_windows,
    page_maps,
    smoothgrad,
)
from catdog.views.gradcam import gradcam, gradcam_maps
from catdog.weights import load_weights

captum_attr = pytest.importorskip("captum.attr")
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats" / "train"


def small_model(seed: int = 0, side: int = 64) -> CatDogCNN:
    """A random CatDogCNN at 64 x 64 with PyTorch's initialisation: its biases are not zero. (With zero biases a
    ReLU network is positively homogeneous, f(ax) = a f(x), so IG from black would be exact at any step count.)"""
    torch.manual_seed(seed)
    model = CatDogCNN(init="torch", input_size=(side, side)).eval()
    with torch.no_grad():  # logits of a trained network's size (|logit(x) - logit(black)| ~ 0.1 - 1), not ~0.001
        model.fc2.weight.mul_(300)
        model.fc2.bias.mul_(300)
    return model


def picture(seed: int, size: int = 150) -> torch.Tensor:
    """A smooth, photo-like input (1, 3, size, size) in [0, 1]: a coarse random colour field upsampled, plus a
    little grain."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.05 * torch.randn(1, 3, size, size, generator=g)).clamp(0, 1)


def shipped() -> nn.Module:
    return load_weights("pretrained").model("cpu")


def trace(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a run's one trace holds for Grad-CAM: the layer's live output and the logit's gradient."""
    with ActivationRecorder(model, [layer], device=None, keep_graph=True) as recorder, torch.enable_grad():
        logit = model(x)[0, 0]
        activation = recorder.records[layer]
        (grad,) = torch.autograd.grad(logit, activation)
    return activation, grad


def captum_gradcam(model: nn.Module, x: torch.Tensor, layer: str) -> dict[str, torch.Tensor]:
    """Captum's Grad-CAM, upsampled and scaled as ours: dog attributes the logit, cat the negated logit."""
    maps = {}
    for name, forward in (("dog", model), ("cat", lambda inputs: -model(inputs))):
        cam = captum_attr.LayerGradCam(forward, getattr(model, layer)).attribute(x, target=0, relu_attributions=True)
        up = captum_attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[0, 0].clamp_min(0)
        maps[name] = up / up.max() if up.max() > 0 else torch.zeros_like(up)
    return maps


@pytest.mark.parametrize("which", ["small", "shipped"])
def test_gradcam_from_a_trace_equals_captum_layergradcam(which):
    model, x, layers = (
        (small_model(), picture(1, 64), ("conv4", "conv2")) if which == "small" else (shipped(), picture(2), ("conv4",))
    )
    for layer in layers:
        activation, grad = trace(model, x, layer)
        ours = gradcam_maps(activation, grad, x.shape[-2:])
        theirs = captum_gradcam(model, x, layer)
        for name in ("dog", "cat"):
            assert ours[name].max() == 1  # both maps have something to show, so the comparison means something
            torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=0)
        wrapped = gradcam(model, x, layer)  # the forward-and-backward entry point gives the same maps
        assert all(torch.equal(wrapped[n], ours[n]) for n in ("dog", "cat"))


def test_attributions_take_gradcam_from_a_trace_or_compute_it():
    model, x = small_model(), picture(3, 64)
    computed = attributions(model, x, ["gradcam"], "conv3")["gradcam"]
    given = attributions(model, x, ["gradcam"], "conv3", trace=trace(model, x, "conv3"))["gradcam"]
    np.testing.assert_array_equal(computed["dog"], given["dog"])
    np.testing.assert_array_equal(computed["cat"], given["cat"])
    expected = gradcam(model, x, "conv3")
    np.testing.assert_array_equal(computed["cat"], expected["cat"].numpy())


def test_ig_is_complete_and_doubles_its_steps_until_it_is():
    model = small_model(0, 48)  # 48 x 48: the least input of four conv+pool stages but 46, for speed
    for seed, start in ((11, 64), (10, 32)):
        x = picture(seed, 48)
        a, steps, difference, error = integrated_gradients(model, x, steps=start)
        with torch.no_grad():
            expected = float(model(x)[0, 0] - model(torch.zeros_like(x))[0, 0])
        assert difference == pytest.approx(expected, abs=1e-5) and abs(difference) > 0.5  # 1% of it is above 1e-3
        assert abs(float(a.double().sum()) - difference) <= 0.01 * abs(difference) and abs(error) <= 0.01
    # 32 points are too few for the second picture: the steps doubled until the sum held; capped, they stay put
    assert steps == 64
    *_, capped_error = integrated_gradients(model, x, steps=32, max_steps=32)
    assert abs(capped_error) > 0.01


@pytest.mark.slow
def test_ig_is_complete_on_the_shipped_weights():
    """Within 1% at the steps chosen, on the two sample photos that come with catdog and, where the data folder is
    at hand, on 3 more. (Generated colour fields work too, but there the shipped network changes its logit little
    from black, |difference| ~ 0.5, and the steps climb to hundreds: minutes on a CPU.)"""
    from catdog.cli import SAMPLES, SAMPLES_DIR
    from catdog.preprocess import to_tensor

    model = shipped()
    preprocessing = load_weights("pretrained").preprocessing
    paths = [SAMPLES_DIR / name for name in SAMPLES.values()]
    if PHOTOS.is_dir():
        paths += [PHOTOS / name for name in ("cat.3.jpg", "dog.3.jpg", "cat.4.jpg")]
    for path in paths:
        x = to_tensor(preprocessing.image(path))[None]
        maps = attributions(model, x, ["ig"], normalise=False)["ig"]
        with torch.no_grad():
            difference = float(model(x)[0, 0] - model(torch.zeros_like(x))[0, 0])
        total = float(maps["dog"].astype(np.float64).sum() - maps["cat"].astype(np.float64).sum())
        assert abs(total - difference) <= 0.01 * abs(difference), (path.name, int(maps["steps"]), total, difference)


def linear_model(size: int = 32) -> nn.Sequential:
    """logit = sum over pixels and channels of W * x, W = +1 on the left half, -1 on the right: brightness on the
    left is evidence for dog, on the right for cat (the conv is there for Grad-CAM to have a layer)."""
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 3, 1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(3 * size * size, 1))
    w = torch.ones(3, size, size)
    w[:, :, size // 2 :] = -1
    with torch.no_grad():
        net.conv.weight.copy_(torch.eye(3)[:, :, None, None])
        net.conv.bias.zero_()
        net.fc.weight.copy_(w.reshape(1, -1) / size)
        net.fc.bias.zero_()
    return net.eval()


def test_every_input_method_finds_dog_on_the_left_and_cat_on_the_right():
    net, x = linear_model(), torch.full((1, 3, 32, 32), 0.5)
    maps = attributions(net, x, ["ig", "smoothgrad", "occlusion"], normalise=False, window=8, stride=4, samples=8)
    for method, entry in maps.items():
        dog, cat = entry["dog"], entry["cat"]
        assert dog.shape == cat.shape == (32, 32) and np.isfinite(dog).all() and np.isfinite(cat).all()
        # columns 0-7 see only windows on the left half (and 24-31 only on the right), for occlusion too
        assert dog[:, :8].min() > 0 and cat[:, :8].max() == 0, method
        assert cat[:, 24:].min() > 0 and dog[:, 24:].max() == 0, method
    # For a linear model IG is exact: x * W, summed over the three channels
    np.testing.assert_allclose(maps["ig"]["dog"][:, :16], 3 * 0.5 / 32, rtol=1e-5)
    assert int(maps["ig"]["steps"]) == 64 and abs(float(maps["ig"]["error"])) < 1e-5


def test_cat_is_the_attribution_of_the_negated_logit():
    """Captum's attributions of -logit, positive part, summed over colour: exactly our cat maps."""
    model, x = small_model(2, 48), picture(30, 48)
    negated = lambda inputs: -model(inputs)  # noqa: E731
    maps = attributions(model, x, ["ig", "occlusion"], normalise=False, ig_max_steps=16, window=16, stride=16)
    ig = captum_attr.IntegratedGradients(negated).attribute(x, baselines=0.0, target=0, n_steps=16)
    occ = captum_attr.Occlusion(negated).attribute(x, (3, 16, 16), strides=(3, 16, 16), baselines=0.0, target=0)
    for ours, theirs in ((maps["ig"]["cat"], ig[0].sum(0)), (maps["occlusion"]["cat"], occ[0, 0])):
        theirs = theirs.clamp_min(0).numpy()
        assert theirs.max() > 0 and (theirs == 0).any()  # the sign matters here
        # to float rounding: ours runs a channels_last copy of the model, whose sums round differently
        np.testing.assert_allclose(ours, theirs, atol=1e-3 * theirs.max())


def test_smoothgrad_is_seeded_and_leaves_the_global_random_state_alone():
    model, x = small_model(), picture(4, 64)
    state = torch.random.get_rng_state()
    a, b = smoothgrad(model, x, samples=4, seed=7), smoothgrad(model, x, samples=4, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, smoothgrad(model, x, samples=4, seed=8))


def test_occlusion_windows_tile_the_input_exactly():
    assert occlusion_windows((150, 150)) == ((22, 22), (8, 8))  # 17 x 17 windows
    assert occlusion_windows((64, 100)) == ((24, 28), (8, 8))  # grown by less than a stride
    for side in range(22, 160):
        (window, _), (stride, _) = occlusion_windows((side, side))
        assert 22 <= window < 22 + 8 and (side - window) % stride == 0
    with pytest.raises(ValueError, match="larger than the input"):
        occlusion_windows((20, 64))


def test_display_scaling_matches_captums_and_never_divides_by_zero():
    rng = np.random.default_rng(0)
    evidence = rng.exponential(1.0, (40, 40)).astype(np.float32) ** 3  # heavy-tailed, as pixel attributions are
    evidence[rng.random((40, 40)) < 0.3] = 0
    by_max = display_map(evidence)
    assert by_max.max() == 1 and np.allclose(by_max, evidence / evidence.max())
    # Captum's visualize_image_attr(sign="positive", outlier_perc=2) scales by this threshold (a long-stable helper)
    from captum.attr._utils.visualization import _cumulative_sum_threshold

    theirs = np.clip(evidence / _cumulative_sum_threshold(evidence, 98), 0, 1)
    np.testing.assert_allclose(display_map(evidence, 0.02), theirs, atol=1e-6)
    # 100 pixels of 1 and one of 1.5, which holds less than 2% of the total: clipped, and the rest scale by 1
    one_bright = np.ones((101, 1), np.float32)
    one_bright[0] = 1.5
    assert np.all(display_map(one_bright, 0.02) == 1) and display_map(one_bright)[1:].max() == np.float32(1 / 1.5)
    assert not display_map(np.zeros((5, 5))).any()


def test_normalised_maps_page_maps_and_figure():
    model, x = small_model(), picture(5, 64)
    maps = attributions(model, x, ["gradcam", "smoothgrad"], samples=4)
    assert list(maps) == ["gradcam", "smoothgrad"]
    for entry in maps.values():
        for which in ("dog", "cat"):
            assert entry[which].dtype == np.float32 and 0 <= entry[which].min() and entry[which].max() == 1
    page = page_maps(maps)
    assert page["gradcam"]["dog"].dtype == np.uint8 and page["gradcam"]["dog"].shape == (64, 64)
    assert page["gradcam"]["dog"].max() == 255
    figure = attributions_figure(image_of(x), maps, logit=0.3, layer="conv4")
    assert isinstance(figure, Image.Image) and figure.width >= 3 * 64 and figure.height >= 2 * 64
    # rows are drawn as given: a figure of one method is shorter
    assert attributions_figure(image_of(x), {"gradcam": maps["gradcam"]}).height < figure.height


def test_unknown_method_or_missing_captum_is_one_clear_error(monkeypatch):
    assert check_methods(["ig", "gradcam", "ig"]) == ["ig", "gradcam"]
    with pytest.raises(CatDogError, match="unknown method 'lime'.*gradcam, ig, smoothgrad, occlusion"):
        check_methods(["gradcam", "lime"])
    assert methods_setting(OmegaConf.create({"a": []}).a) == [] and methods_setting("ig") == ["ig"]
    monkeypatch.setitem(sys.modules, "captum", None)  # as if Captum were not installed
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    assert methods_setting(OmegaConf.create({"a": ["gradcam"]}).a) == ["gradcam"]  # Grad-CAM needs no Captum
    with pytest.raises(CatDogError, match=r"pip install 'catdog\[attributions\]'"):
        methods_setting(OmegaConf.create({"a": ["gradcam", "occlusion"]}).a)


@pytest.mark.slow  # Integrated Gradients and SmoothGrad on the shipped network, at 150 x 150
def test_visualize_writes_attributions(tmp_path, capsys, monkeypatch):
    from catdog.visualize import main

    monkeypatch.chdir(tmp_path)  # no trained run under outputs/ here

    photo = tmp_path / "pet.png"
    Image.fromarray((picture(6)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photo)
    assert main([f"image={photo}", "attribution=[gradcam,lime]", f"out_dir={tmp_path / 'no'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown method 'lime'" in err and len(err.splitlines()) == 1
    out = tmp_path / "out"
    methods = "attribution=[gradcam,ig,smoothgrad,occlusion]"
    assert main([f"image={photo}", "ckpt=pretrained", f"out_dir={out}", methods, "explorer=false"]) == 0
    assert (out / "attributions.png").is_file()
    arrays = np.load(out / "attributions.npz")
    for method in ("gradcam", "ig", "smoothgrad", "occlusion"):
        assert arrays[f"{method}_dog"].shape == arrays[f"{method}_cat"].shape == (150, 150)
    total = arrays["ig_dog"].sum(dtype=np.float64) - arrays["ig_cat"].sum(dtype=np.float64)
    assert abs(total - float(arrays["ig_difference"])) <= 0.01 * abs(float(arrays["ig_difference"]))
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attributions"]["methods"] == ["gradcam", "ig", "smoothgrad", "occlusion"]
    assert manifest["attributions"]["ig"]["steps"] == int(arrays["ig_steps"])
