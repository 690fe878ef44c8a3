"""Which pixels the prediction rests on: Grad-CAM, Integrated Gradients, SmoothGrad and occlusion, for "dog" and "cat".

The network has one sigmoid output, so there is one target, the logit z: "dog" attributes z and "cat" attributes
-z. Every method here is linear in its target, so the cat map is the dog map with the sign flipped: each method
computes one signed map for z, and ``dog`` is its positive part, ``cat`` its negative part (as positive numbers).
Input-space maps (IG, SmoothGrad, occlusion) are summed over the three colour channels, giving one value a pixel.

The input-space methods are Captum's (``pip install 'catdog[attributions]'``), imported only when asked for.
Grad-CAM is ``catdog.views.gradcam``, which equals Captum's ``LayerGradCam`` and needs no Captum.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from catdog import CatDogError
from catdog.files import atomic_write
from catdog.model import prediction
from catdog.views.gradcam import gradcam, gradcam_maps
from catdog.views.plots import BACKGROUND, below, beside, heatmap_overlay, save_png, with_title

METHODS = ("gradcam", "ig", "smoothgrad", "occlusion")
TITLES = {
    "gradcam": "Grad-CAM",
    "ig": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "Occlusion",
}
# Display scale: a map is divided by the value above which this share of its positive mass lies (Captum's
# ``visualize_image_attr`` uses 2%), then clipped to [0, 1]. Per-pixel gradient maps put much of their mass in a
# few pixels, and scaled by their maximum they would show a few dots on black; Grad-CAM and occlusion are smooth
# (upsampled, averaged over windows), and scaled by their maximum as Grad-CAM always was.
OUTLIER_SHARE = {"gradcam": 0.0, "ig": 0.02, "smoothgrad": 0.02, "occlusion": 0.0}


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, in the order given, each once; ``CatDogError`` (one line) for an unknown name."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CatDogError(f"attribution: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _captum():
    try:
        import captum.attr
    except ImportError as err:
        raise CatDogError(
            "attribution=ig, smoothgrad and occlusion need Captum: pip install 'catdog[attributions]'"
        ) from err
    return captum.attr


def _twin(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as the many-pass methods should run it: on a CPU, a channels_last copy, whose convolutions are
    about 1.6x faster there (forward and backward); the caller's model is left as it was."""
    if device.type != "cpu":
        return model
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _split(signed: torch.Tensor) -> dict[str, np.ndarray]:
    """A signed (3, H, W) or (H, W) map for the logit -> ``{"dog": positive part, "cat": negative part}``."""
    if signed.dim() == 3:
        signed = signed.sum(0)  # one value a pixel: the colour channels together
    signed = signed.detach().float().cpu()
    return {"dog": signed.clamp_min(0).numpy(), "cat": (-signed).clamp_min(0).numpy()}


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    baseline: float = 0.0,
    steps: int = 64,
    max_steps: int = 1024,
    tolerance: float = 0.01,
) -> tuple[torch.Tensor, int, float, float]:
    """Integrated Gradients of the logit for one image ``x`` (1, 3, H, W) from a uniform ``baseline`` image (0.0:
    black, the choice of Sundararajan et al.: "no signal" for a network that reads pixel values in [0, 1]).

    Completeness: the attributions sum to logit(x) - logit(baseline). The path integral is a sum over ``steps``
    points (Gauss-Legendre); the network is piecewise linear (ReLU, max-pool), so the integrand jumps and the sum
    converges slowly and unevenly. So the steps double, from ``steps`` up to ``max_steps``, until the sum is
    within ``tolerance`` of |logit(x) - logit(baseline)| (or 1e-3 logits, when that difference is tiny).
    Returns the (3, H, W) attributions, the steps used, logit(x) - logit(baseline), and the sum's relative error.
    """
    attr = _captum()
    base = torch.full_like(x, baseline)
    with torch.no_grad():
        difference = float(model(x)[0, 0] - model(base)[0, 0])
    ig = attr.IntegratedGradients(model)
    n = min(steps, max_steps)
    while True:
        a = ig.attribute(x, baselines=base, target=0, n_steps=n, internal_batch_size=32)[0]
        gap = float(a.double().sum()) - difference
        if abs(gap) <= max(tolerance * abs(difference), 1e-3) or n >= max_steps:
            return a, n, difference, gap / max(abs(difference), 1e-12)
        n = min(2 * n, max_steps)


def smoothgrad(
    model: nn.Module, x: torch.Tensor, samples: int = 25, noise: float = 0.15, seed: int = 0
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the logit's gradient averaged over ``samples`` copies of ``x`` with
    Gaussian noise of standard deviation ``noise`` (0.15 of the [0, 1] pixel range; the paper finds 10-20% best),
    drawn from ``seed`` without touching the global random state. Signed (3, H, W): where brightening a pixel
    would raise the logit (dog) or lower it (cat)."""
    attr = _captum()
    tunnel = attr.NoiseTunnel(attr.Saliency(model))
    # manual_seed seeds the CPU and every GPU: fork all of them, so that every global state is restored after
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        a = tunnel.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
            nt_samples_batch_size=samples,
            stdevs=noise,
            target=0,
            abs=False,
        )
    return a[0]


def occlusion_windows(
    size: Sequence[int], window: int = 22, stride: int = 8
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Window and stride (per axis) that tile an input of ``size`` exactly: ``stride`` as asked, the window grown
    by less than one stride where needed, so that every pixel is occluded at least once (Captum would give an
    edge pixel that no window covers 0/0). At 150 x 150 the defaults tile as they are: 17 x 17 = 289 windows of
    22 px, about pool3's receptive field (22 px): an eye, an ear, a nose."""
    windows = []
    for side in size:
        if side < window:
            raise ValueError(f"occlusion window {window} is larger than the input side {side}")
        moves = (side - window) // stride
        windows.append(side - moves * stride)
    return (windows[0], windows[1]), (stride, stride)


def occlusion(
    model: nn.Module, x: torch.Tensor, baseline: float = 0.0, window: int = 22, stride: int = 8
) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus 2014): how much the logit falls when a ``window``-pixel square of the image
    is replaced by the ``baseline`` value (black, as Integrated Gradients' baseline), averaged over the windows
    that cover each pixel. Signed (H, W): positive where hiding the pixel lowers the logit (dog evidence)."""
    attr = _captum()
    (wh, ww), strides = occlusion_windows(x.shape[-2:], window, stride)
    with torch.no_grad():
        a = attr.Occlusion(model).attribute(
            x,
            sliding_window_shapes=(3, wh, ww),
            strides=(3, *strides),
            baselines=baseline,
            target=0,
            perturbations_per_eval=32,
        )
    # The same drop is spread to all three channels of the window: one channel's value is the pixel's.
    return a[0, 0]


def attributions(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str] = METHODS,
    target_layer: str = "conv4",
    *,
    normalise: bool = True,
    baseline: float = 0.0,
    ig_steps: int = 64,
    ig_max_steps: int = 1024,
    ig_tolerance: float = 0.01,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    window: int = 22,
    stride: int = 8,
    trace: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Attribution maps for one image ``x`` (1, 3, H, W) of a model with one logit output:
    ``{method: {"dog": (H, W) float32 array, "cat": (H, W) float32 array}}`` in the order of ``methods``.

    ``normalise`` (the default): each map scaled for display to [0, 1] (``display_map``). Otherwise the evidence
    itself: Grad-CAM's upsampled map; IG's attributions (logit units: for every image, ``dog.sum() - cat.sum()``
    is logit(x) - logit(baseline) to ``ig_tolerance``); SmoothGrad's mean gradient; occlusion's mean logit drop.
    The ``ig`` entry also holds 0-d arrays ``steps`` (steps used), ``difference`` (logit(x) - logit(baseline)) and
    ``error`` (the sum's relative error), so that the whole result saves to one ``.npz``.

    ``gradcam`` is on ``target_layer``; ``trace``, the layer's activation and the logit's gradient with respect to
    it from a pass the caller made already (as ``gradcam_maps`` takes them), saves another forward and backward.
    See ``integrated_gradients``, ``smoothgrad`` and ``occlusion`` for the other settings.
    """
    methods = check_methods(methods)
    device = next(model.parameters()).device
    x = x.to(device)
    size = tuple(x.shape[-2:])
    needs_captum = [m for m in methods if m != "gradcam"]
    if needs_captum:
        _captum()  # fail before any work
        fast = _twin(model, device)
    maps: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        if method == "gradcam":
            if trace is None:
                raw = gradcam(model, x, target_layer, normalise=False)
            else:
                raw = gradcam_maps(trace[0], trace[1], size, normalise=False)
            maps[method] = {k: raw[k].float().cpu().numpy() for k in ("dog", "cat")}
        elif method == "ig":
            a, steps, difference, error = integrated_gradients(fast, x, baseline, ig_steps, ig_max_steps, ig_tolerance)
            maps[method] = _split(a)
            maps[method].update(steps=np.array(steps), difference=np.array(difference), error=np.array(error))
        elif method == "smoothgrad":
            maps[method] = _split(smoothgrad(fast, x, samples, noise, seed))
        else:
            maps[method] = _split(occlusion(fast, x, baseline, window, stride))
    return display_maps(maps) if normalise else maps


def display_maps(maps: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """``attributions(..., normalise=False)``'s evidence scaled for display as ``normalise=True`` gives it: each
    method's dog and cat maps each by ``display_map`` with the method's ``OUTLIER_SHARE``."""
    return {
        method: {
            **entry,
            **{which: display_map(entry[which], OUTLIER_SHARE[method]) for which in ("dog", "cat")},
        }
        for method, entry in maps.items()
    }


def display_map(evidence: np.ndarray, outlier_share: float = 0.0) -> np.ndarray:
    """A non-negative map scaled to [0, 1] for display: divided by the value above which ``outlier_share`` of its
    total lies (0: its maximum), clipped to 1; all zeros when nothing is positive (never 0/0)."""
    evidence = np.asarray(evidence, dtype=np.float32)
    values = np.sort(evidence[evidence > 0], axis=None)[::-1]
    if values.size == 0:
        return np.zeros_like(evidence)
    if outlier_share <= 0:
        scale = values[0]
    else:
        mass = np.cumsum(values, dtype=np.float64)
        scale = values[min(int(np.searchsorted(mass, outlier_share * mass[-1])), values.size - 1)]
    return np.clip(evidence / scale, 0, 1).astype(np.float32)


def page_maps(maps: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """What a page needs from ``attributions(..., normalise=True)``: per method, ``dog`` and ``cat`` as (H, W)
    uint8 arrays (0..255)."""
    return {
        method: {which: np.round(entry[which] * 255).astype(np.uint8) for which in ("dog", "cat")}
        for method, entry in maps.items()
    }


def attributions_figure(
    image: Image.Image, maps: dict[str, dict[str, np.ndarray]], logit: float | None = None, layer: str | None = None
) -> Image.Image:
    """Rows: methods; columns: the input, the evidence for dog, the evidence for cat: ``attributions(...,
    normalise=True)``'s maps over ``image``, the network's input as a picture. ``logit`` puts the prediction in
    the input's column title, ``layer`` Grad-CAM's layer in its row title."""
    pixels = np.asarray(image.convert("RGB"))
    if logit is None:
        first = "input"
    else:
        p = prediction(logit)
        first = f"input: {p['label']} {p['probability']:.2f}"
    columns = [
        with_title(Image.new("RGB", (image.width, 1), BACKGROUND), t)
        for t in (first, "evidence for dog", "evidence for cat")
    ]
    rows = [beside(*columns)]
    for method, entry in maps.items():
        note = f" on {layer}" if method == "gradcam" and layer else ""
        if method == "ig":
            note = f": {int(entry['steps'])} steps, sum off by {100 * abs(float(entry['error'])):.1f}%"
        overlays = [heatmap_overlay(pixels, entry[which]) for which in ("dog", "cat")]
        rows.append(with_title(beside(image, *overlays), f"{TITLES[method]}{note}"))
    return below(*rows, gap=6)


def image_of(x: torch.Tensor) -> Image.Image:
    """The network's input (1, 3, H, W) in [0, 1] as a picture."""
    pixels = x[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8))


def save_attributions(
    model: nn.Module,
    x: torch.Tensor,
    image: Image.Image,
    out_dir: Path,
    methods: Sequence[str],
    layer: str = "conv4",
    logit: float | None = None,
    trace: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """``attributions.png`` (the figure) and ``attributions.npz`` (the evidence before display scaling, keys
    ``<method>_dog``, ``<method>_cat`` and ``ig_steps``, ``ig_difference``, ``ig_error``) in ``out_dir``, for
    ``visualize.py attribution=[...]``. Returns what the manifest records: the methods, Grad-CAM's layer and
    IG's steps and completeness, and the maps as a page shows them (``page_maps``). ``logit``: the prediction, for
    the figure's title; ``trace``: Grad-CAM's layer activation and gradient from the run's trace. A layer that the
    recorder does not find is a ``CatDogError``."""
    try:
        raw = attributions(model, x, methods, layer, normalise=False, trace=trace)
    except KeyError as err:
        raise CatDogError(f"gradcam_layer: {err.args[0]}") from err
    arrays = {f"{method}_{key}": value for method, entry in raw.items() for key, value in entry.items()}

    def save_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(out_dir / "attributions.npz", save_npz)
    shown = display_maps(raw)
    save_png(attributions_figure(image, shown, logit, layer), out_dir / "attributions.png")
    summary: dict = {"methods": list(raw), "layer": layer}
    if "ig" in raw:
        summary["ig"] = {key: raw["ig"][key].item() for key in ("steps", "difference", "error")}
    return summary, page_maps(shown)


def methods_setting(value: object) -> list[str]:
    """The ``attribution=`` setting (a list of names, one name, or empty/null) as ``check_methods`` returns it;
    checks that Captum is at hand when a method needs it, so that a run fails at once, not at each image."""
    if value is None:
        return []
    methods = check_methods([value] if isinstance(value, str) else [str(v) for v in value])
    if any(m != "gradcam" for m in methods):
        _captum()
    return methods
