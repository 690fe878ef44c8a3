"""Feature visualisation: for each channel of a conv layer, and for the output, an image that excites it most.

Olah et al., "Feature Visualization" (Distill 2017), as Lucid does it (``param/spatial.py``, ``param/color.py``,
``transform.py``), written small because torch-lucent pins kornia 0.4.1 and pulls scikit-learn, IPython and
pytest in at run time (see docs/featurevis.md). Plain gradient ascent on pixels finds high-frequency textures that
excite a channel without showing anything; three things make the patterns readable:

- the image is a Fourier spectrum scaled by 1/frequency (so every frequency learns at the rate a natural image's
  amplitude has) and mixed by the 3x3 square root of ImageNet's colour correlation, then passed through a sigmoid;
- each step sees it randomly moved (by up to an eighth of its side, ``JITTER``), scaled (0.9-1.1) and turned (up to
  10 degrees), so only what excites the unit wherever it lands survives;
- Adam, every channel of a layer in one batch (image c drives channel c): 128 steps at 0.1 draw what 256 at
  Lucid's 0.05 do, at half the time (docs/featurevis.md).

A conv channel's pattern is optimised at the size of its receptive field (conv1 3 px, conv2 8, conv3 18, conv4 38
for CatDogCNN: ``catdog.views.receptive``), for its pre-activation at the one position whose field that is, the
same number the atlas ranks dataset crops by: a position sees nothing else, so a larger canvas would only tile the
pattern, and small networks give blurred patterns when optimised beyond their fields (lucent #10). The output's two
patterns, "most dog" (the logit up) and "most cat" (the logit down), are at the input size.

Patterns depend on the weights alone: ``cached_patterns`` keeps them per weights' fingerprint in
``~/.cache/catdog/patterns``, and the shipped weights ship with theirs (``catdog/pretrained/patterns.npz``,
``python -m catdog.views.filters`` writes it), so they cost nothing for them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catdog.views.receptive import receptive_fields
from catdog.weights import weights_sha256

STEPS = 128
LR = 0.1
JITTER = 1 / 8  # of the canvas side, rounded, at most JITTER_MAX pixels: the shift each step may apply
JITTER_MAX = 8
FRAME = 8  # pixels: how far ``responses`` may move a pattern
SCALES = (0.9, 1.1)
DEGREES = 10.0
DECAY = 1.0  # spectrum ~ 1 / frequency ** DECAY: natural images' power law
CLASS_LAYER = "output"  # the layer name of the output's patterns
CLASS_NAMES = ("dog", "cat")  # the order of class_patterns: the logit maximised, then minimised
VERSION = 1  # part of the cache key: bump when the method changes what it draws
SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "patterns.npz"

# Lucid's square root of ImageNet's RGB covariance, its columns scaled to norm 1 at most: the optimiser moves
# along decorrelated colour axes, so it does not fight the correlation natural colours have
_COLOUR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=0).max()


def conv_layers(model: nn.Module) -> list[str]:
    """The names of ``model``'s conv layers, in registration (forward) order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _conv(model: nn.Module, layer: str) -> nn.Conv2d:
    module = dict(model.named_modules()).get(layer) if layer else None
    if not isinstance(module, nn.Conv2d):
        names = ", ".join([*conv_layers(model), CLASS_LAYER])
        raise KeyError(f"filter patterns need a conv layer or {CLASS_LAYER}; {layer!r} is not one of {names}")
    return module


def input_size(model: nn.Module) -> tuple[int, int]:
    """The input size ``model`` expects (CatDogCNN's ``input_size``; 150 x 150 when it does not say)."""
    return tuple(getattr(model, "input_size", (150, 150)))


def canvas_size(model: nn.Module, layer: str) -> tuple[int, int]:
    """The image size a pattern of ``layer`` is optimised at: the receptive field for a conv layer (never more than
    the input), the input size for the output."""
    limit = input_size(model)
    if layer == CLASS_LAYER:
        return limit
    _conv(model, layer)
    field = receptive_fields(model)[layer].size
    return tuple(min(f, s) for f, s in zip(field, limit, strict=True))


class _Reached(Exception):
    """Raised by a pre-hook to stop the forward pass at the layer whose input it captured."""


def pre_activation(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w): conv ``layer``'s output before its activation, the forward pass stopped there (so the canvas
    need not fit the layers after it, and they cost nothing). Before the ReLU, so a silent channel has a gradient."""
    conv = _conv(model, layer)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: tuple) -> None:
        captured.append(inputs[0])
        raise _Reached

    handle = conv.register_forward_pre_hook(capture)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return conv._conv_forward(captured[0], conv.weight, conv.bias)


def _spectrum_scale(size: tuple[int, int]) -> torch.Tensor:
    """(h, w // 2 + 1): 1 / frequency ** DECAY, the lowest frequency's value for the constant term (Lucid's)."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w)) ** DECAY


def _to_rgb(spectrum: torch.Tensor, scale: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, h, w) in (0, 1) from the (N, 3, h, w // 2 + 1, 2) spectrum parameters."""
    image = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=size, norm="ortho") / 4  # Lucid's 4
    image = F.conv2d(image, _COLOUR.to(image.device)[:, :, None, None])  # each pixel's colour through the matrix
    return torch.sigmoid(image)


def jitter_px(h: int, w: int) -> int:
    """How far (pixels) a step may move a canvas of ``h`` x ``w``: an eighth of its side, at most ``JITTER_MAX`` (none
    for conv1's 3 px: a pixel would be a third of what its channels see)."""
    return int(min(round(JITTER * max(h, w)), JITTER_MAX))


def _random_warp(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``jitter_px`` pixels, scaled by ``SCALES`` and turned by up to ``DEGREES``, each
    its own draw; the canvas keeps its size, its edges reflected where the warp reaches outside."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    scale = SCALES[0] + (SCALES[1] - SCALES[0]) * u[:, 0]
    angle = torch.deg2rad(DEGREES * (2 * u[:, 1] - 1))
    shift = jitter_px(h, w)
    dx, dy = shift * (2 * u[:, 2] - 1), shift * (2 * u[:, 3] - 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # the rotation is in pixels; affine_grid's coordinates run -1..1 across each side, so the off-diagonal terms
    # carry the aspect ratio and the shift is 2 * pixels / side
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, 2 * dx / w], dim=1),
            torch.stack([sin * w / h, cos, 2 * dy / h], dim=1),
        ],
        dim=1,
    ).to(x)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _objective(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """(N,): what image n is optimised for: channel n's pre-activation at the central position of conv ``layer``;
    for the output, the logit for image 0 ("most dog") and minus the logit for image 1 ("most cat")."""
    if layer == CLASS_LAYER:
        logit = model(x).reshape(len(x), -1)[:, 0]
        return logit * torch.tensor([1.0, -1.0], device=x.device)
    a = pre_activation(model, layer, x)
    h, w = a.shape[-2:]
    index = torch.arange(len(x), device=x.device)
    return a[index, index, h // 2, w // 2]


def _optimise(model: nn.Module, layer: str, n: int, size: tuple[int, int], steps: int, lr: float, seed: int):
    """(N, 3, h, w) float images in (0, 1), image n optimised for ``_objective``'s n-th value."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    scale = _spectrum_scale(size).to(device)
    spectrum = (0.01 * torch.randn(n, 3, size[0], size[1] // 2 + 1, 2, generator=generator)).to(device)
    spectrum.requires_grad_()
    optimiser = torch.optim.Adam([spectrum], lr=lr)
    training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # no weight gradients: they would cost a third of each step
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                optimiser.zero_grad(set_to_none=True)
                x = _random_warp(_to_rgb(spectrum, scale, size), generator)
                # a sum, so each image's gradient is its own whatever the batch
                (-_objective(model, layer, x).sum()).backward()
                optimiser.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(training)
    with torch.no_grad():
        return _to_rgb(spectrum, scale, size)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


def responses(model: nn.Module, layer: str, images: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """(N,) float: what each pattern does to its own unit, after the activation: for conv ``layer``, channel n's
    value at the central position of its map for image n (at a receptive field's size, the map's one position: the
    number the atlas ranks dataset crops by); for the output, the logit for image 0 and minus the logit for image 1.
    ``images``: (N, h, w, 3) uint8.

    ``shift``: (N, 2) pixels (down, right), each within ``FRAME``: for a conv layer each image is first laid in the
    middle of a mid-grey frame ``FRAME`` px wide and moved by that much, and the value is the channel's strongest
    position, as a convolution finds a feature wherever it is (the output's images are rolled instead)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255).to(device)
    if shift is not None:
        shift = np.asarray(shift, dtype=int).reshape(len(x), 2)
        if np.abs(shift).max(initial=0) > FRAME:
            raise ValueError(f"shifts go up to {FRAME} pixels")
        if layer != CLASS_LAYER:
            x = F.pad(x, [FRAME] * 4, value=0.5)  # grey around: moved pixels never wrap onto the pattern
        x = torch.stack([torch.roll(xi, (dy, dx), dims=(1, 2)) for xi, (dy, dx) in zip(x, shift.tolist(), strict=True)])
    with torch.no_grad():
        if layer == CLASS_LAYER:
            return _objective(model, layer, x).cpu().numpy()
        a = pre_activation(model, layer, x).clamp_min(0)
        index = torch.arange(len(x), device=x.device)
        h, w = a.shape[-2:]
        a = a[index, index]
        value = a[:, h // 2, w // 2] if shift is None else a.flatten(1).amax(dim=1)
    return value.cpu().numpy()


def patterns(
    model: nn.Module,
    layer: str,
    size: tuple[int, int] | None = None,
    steps: int = STEPS,
    lr: float = LR,
    seed: int = 0,
) -> np.ndarray:
    """(C, h, w, 3) uint8: for each channel of conv ``layer``, the image that excites its central position most
    (``layer="output"``: ``class_patterns``). ``size``: the canvas, ``canvas_size`` by default. Every channel gets
    one, so index c is channel c: a channel dead on every image may still have a pattern that excites it, and one
    that nothing in [0, 1] excites gets whatever the search ended on (``responses`` tells: 0). Seeded: on a CPU
    the same seed gives the same patterns; on CUDA the warp's backward pass adds in no fixed order, so two runs give
    patterns of the same strength but not the same pixels (the cache keeps one set per weights)."""
    if layer == CLASS_LAYER:
        if size is not None and tuple(size) != input_size(model):
            raise ValueError(f"the output's patterns are at the input size, {input_size(model)}, not {tuple(size)}")
        return class_patterns(model, steps, lr, seed)
    size = tuple(size) if size is not None else canvas_size(model, layer)
    channels = _conv(model, layer).out_channels
    return _to_uint8(_optimise(model, layer, channels, size, steps, lr, seed))


def class_patterns(model: nn.Module, steps: int = STEPS, lr: float = LR, seed: int = 0) -> np.ndarray:
    """(2, H, W, 3) uint8 at the input size (the dense layers take no other): "most dog" (the logit maximised), then
    "most cat" (the logit minimised)."""
    return _to_uint8(_optimise(model, CLASS_LAYER, len(CLASS_NAMES), input_size(model), steps, lr, seed))


def settings_key(size: tuple[int, int], steps: int = STEPS, lr: float = LR, seed: int = 0) -> str:
    """What a pattern depends on besides the weights and the layer, as a short text for file names."""
    text = json.dumps(
        {"version": VERSION, "size": list(size), "steps": steps, "lr": lr, "seed": seed, "decay": DECAY,
         "jitter": [JITTER, JITTER_MAX], "scales": SCALES, "degrees": DEGREES}, sort_keys=True
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where patterns are kept between runs: ``$XDG_CACHE_HOME/catdog`` (``~/.cache/catdog``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catdog"


def cache_path(fingerprint: str, layer: str, key: str) -> Path:
    return cache_dir() / "patterns" / f"{fingerprint[:32]}-{layer}-{key}.npy"


def _expected_shape(model: nn.Module, layer: str, size: tuple[int, int]) -> tuple[int, ...]:
    n = len(CLASS_NAMES) if layer == CLASS_LAYER else _conv(model, layer).out_channels
    return (n, *size, 3)


def shipped_patterns(layer: str, fingerprint: str, key: str, path: Path = SHIPPED) -> np.ndarray | None:
    """``layer``'s patterns from the file shipped beside the weights, if it was made for these weights
    (``fingerprint``) and settings (``key``); else None. The file holds ``fingerprint``, per layer its patterns and
    ``key_<layer>``."""
    try:
        with np.load(path, allow_pickle=False) as shipped:
            if str(shipped["fingerprint"]) != fingerprint or layer not in shipped.files:
                return None
            return shipped[layer] if str(shipped[f"key_{layer}"]) == key else None
    except (OSError, ValueError, KeyError):
        return None


def cached_patterns(
    model: nn.Module,
    layer: str,
    fingerprint: str | None = None,
    compute: bool = True,
    size: tuple[int, int] | None = None,
    steps: int = STEPS,
    lr: float = LR,
    seed: int = 0,
) -> np.ndarray | None:
    """``patterns(model, layer, ...)`` for the weights whose fingerprint is ``fingerprint``
    (``catdog.weights.weights_sha256`` of their state dict, computed when not given): from the shipped file when
    these are the shipped weights, else from the cache, else computed and kept there when ``compute`` (None when
    not: a page that must stay quick). A damaged or foreign cache file is recomputed."""
    fingerprint = fingerprint or weights_sha256(model.state_dict())
    size = tuple(size) if size is not None else canvas_size(model, layer)
    key = settings_key(size, steps, lr, seed)
    expected = _expected_shape(model, layer, size)
    for found in (shipped_patterns(layer, fingerprint, key), _read(cache_path(fingerprint, layer, key))):
        if found is not None and found.dtype == np.uint8 and found.shape == expected:
            return found
    if not compute:
        return None
    images = patterns(model, layer, size, steps, lr, seed)
    path = cache_path(fingerprint, layer, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, images)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets its patterns, just not kept
    return images


def _read(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing or damaged: recomputed


def all_patterns(model: nn.Module, steps: int = STEPS, lr: float = LR, seed: int = 0) -> dict[str, np.ndarray]:
    """Every conv layer's patterns and the output's, at their default canvases: ``{layer: (N, h, w, 3) uint8}``."""
    return {layer: patterns(model, layer, None, steps, lr, seed) for layer in [*conv_layers(model), CLASS_LAYER]}


def write_shipped(path: Path = SHIPPED) -> Path:
    """Compute the shipped weights' patterns at the default settings and write them to ``path`` (compressed npz:
    the fingerprint, the settings key and one array per layer)."""
    from catdog.files import atomic_write
    from catdog.weights import load_weights

    model = load_weights("pretrained").model()
    found = all_patterns(model)
    # each layer has its own canvas, so its own settings key
    keys = {f"key_{layer}": np.array(settings_key(canvas_size(model, layer))) for layer in found}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, fingerprint=np.array(weights_sha256(model.state_dict())), **keys, **found)

    return atomic_write(path, write)


if __name__ == "__main__":
    print(f"wrote {write_shipped()}")
