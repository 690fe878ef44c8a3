"""One description of a sequential CNN that Python writes and the explorer page runs (``web/network.js``).

``describe`` walks the model's layers in forward order and writes, for each: its type and parameters, its input and
output shapes, whether it is recorded (conv and pool layers, as ``ActivationRecorder`` finds them) and its
receptive field (``catdog.views.receptive``); and the preprocessing that turns a picture into the input. The page
reads nothing else, so Python and the page cannot disagree about the network. ``pack_weights`` packs the tensors
the description names into one base64 string.

What the page can run: ``Conv2d`` (any kernel, stride and zero padding; no groups, no dilation), catdog's
``ConvReLU`` and ``DenseReLU`` (the ReLU inside the layer, as Keras's ``activation='relu'``), ``ReLU``,
``MaxPool2d`` (no dilation, no ceil mode), ``Flatten``, ``Linear`` and ``Dropout`` (nothing, in eval mode), in an
``nn.Sequential`` (nested ones are walked). Anything else is refused in one line (``CatDogError``).
"""

from __future__ import annotations

import base64
import functools
import zlib

import numpy as np
import torch
from PIL import Image
from torch import nn

from catdog import CLASSES, CatDogError
from catdog.model import ConvReLU, DenseReLU
from catdog.preprocess import Preprocessing
from catdog.views.receptive import receptive_fields

HALF_ABOVE = 1 << 20  # dense weights with more elements travel as float16 (fc1: 3.2 M); everything else float32
FORMAT = "catdog-network/1"


@functools.cache
def pillow_vertical_first() -> bool:
    """Whether this Pillow resizes with the vertical pass first where it shrinks the height and
    2 * (new width - width) > new height - height (Pillow 13 does; older Pillows always go horizontal first).
    The page follows the Pillow that Python uses, so both make the same input of a photo."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 9, 3), dtype=np.uint8)
    image, bilinear = Image.fromarray(pixels), Image.Resampling.BILINEAR
    vertical_first = image.resize((9, 8), bilinear).resize((16, 8), bilinear)
    return bool(np.array_equal(np.asarray(image.resize((16, 8), bilinear)), np.asarray(vertical_first)))


def _layers(model: nn.Module, prefix: str = ""):
    for name, child in model.named_children():
        if type(child) is nn.Sequential:
            yield from _layers(child, f"{prefix}{name}.")
        else:
            yield prefix + name, child


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value), int(value)]


def _layer(name: str, module: nn.Module) -> dict:
    kind = type(module)
    if kind in (nn.Conv2d, ConvReLU):
        if module.groups != 1 or _pair(module.dilation) != [1, 1] or module.padding_mode != "zeros":
            raise CatDogError(f"the page cannot run {name}: a conv with groups, dilation or non-zero padding")
        if isinstance(module.padding, str):
            padding = [0, 0] if module.padding == "valid" else [(k - 1) // 2 for k in _pair(module.kernel_size)]
        else:
            padding = _pair(module.padding)
        return {
            "type": "conv",
            "kernel": _pair(module.kernel_size),
            "stride": _pair(module.stride),
            "padding": padding,
            "relu": kind is ConvReLU,
            "weight": f"{name}.weight",
            "bias": f"{name}.bias" if module.bias is not None else None,
        }
    if kind is nn.MaxPool2d:
        if _pair(module.dilation) != [1, 1] or module.ceil_mode or module.return_indices:
            raise CatDogError(f"the page cannot run {name}: a max-pool with dilation, ceil_mode or indices")
        stride = module.stride if module.stride is not None else module.kernel_size
        return {
            "type": "pool",
            "kernel": _pair(module.kernel_size),
            "stride": _pair(stride),
            "padding": _pair(module.padding),
        }
    if kind in (nn.Linear, DenseReLU):
        bias = f"{name}.bias" if module.bias is not None else None
        return {"type": "linear", "relu": kind is DenseReLU, "weight": f"{name}.weight", "bias": bias}
    if kind is nn.ReLU:
        return {"type": "relu"}
    if kind is nn.Flatten:
        if module.start_dim != 1 or module.end_dim != -1:
            raise CatDogError(f"the page cannot run {name}: a Flatten other than Flatten()")
        return {"type": "flatten"}
    if kind in (nn.Dropout, nn.Identity):
        return {"type": "identity"}
    raise CatDogError(
        f"the page cannot run layer {name} ({kind.__name__}); it runs sequential stacks of Conv2d, ReLU, "
        "MaxPool2d, Flatten and Linear"
    )


def describe(model: nn.Module, preprocessing: Preprocessing, gradcam: str | None = None) -> dict:
    """The network as the page runs it (see the module's docstring); ``gradcam``: the layer Grad-CAM weighs, by
    default the last conv layer. Raises ``CatDogError`` for a layer the page cannot run."""
    height, width = preprocessing.image_size
    fields = receptive_fields(model)
    layers, shape = [], [3, height, width]
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    with torch.no_grad():
        for name, module in _layers(model):
            entry = {"name": name, **_layer(name, module), "in_shape": list(shape)}
            x = x if isinstance(module, nn.Dropout) else module(x)
            shape = list(x.shape[1:])
            entry["shape"] = shape
            entry["record"] = isinstance(module, (nn.Conv2d, nn.MaxPool2d))
            if entry["record"]:
                entry["field"] = fields[name].to_dict()
            layers.append(entry)
    if shape != [1]:
        raise CatDogError(f"the page runs networks with one output (a logit), this one ends in {shape}")
    convs = [entry["name"] for entry in layers if entry["type"] == "conv"]
    if gradcam is not None and gradcam not in [entry["name"] for entry in layers if entry["record"]]:
        raise CatDogError(f"gradcam_layer: no conv or pool layer {gradcam!r}")
    return {
        "format": FORMAT,
        "input": {"size": [height, width], "channels": 3},
        "preprocessing": {**preprocessing.to_dict(), "vertical_first": pillow_vertical_first()},
        "classes": list(CLASSES),
        "layers": layers,
        "gradcam": gradcam or (convs[-1] if convs else None),
    }


def pack_weights(model: nn.Module, network: dict) -> dict:
    """The tensors the description names, as one zlib stream of byte planes in base64 (``web/worker.js`` reads it):
    float32, except dense weights with more than ``HALF_ABOVE`` elements, which travel as float16 to keep a page of
    the shipped weights under 10 MB (their logit moves by about 1e-4: tests/test_page.py)."""
    state = model.state_dict()
    tensors, chunks, offset = [], [], 0
    for layer in network["layers"]:
        for key in ("weight", "bias"):
            name = layer.get(key)
            if not name:
                continue
            values = state[name].detach().cpu().float().numpy()
            half = layer["type"] == "linear" and key == "weight" and values.size > HALF_ABOVE
            array = np.ascontiguousarray(values.astype(np.float16 if half else np.float32)).reshape(-1)
            planes = array.view(np.uint8).reshape(array.size, array.itemsize).T.tobytes()  # byte b of each, then b+1
            tensors.append({"name": name, "dtype": str(array.dtype), "shape": list(values.shape), "offset": offset})
            chunks.append(planes)
            offset += len(planes)
    data = base64.b64encode(zlib.compress(b"".join(chunks), 9)).decode()
    return {"encoding": "zlib+byteplanes+base64", "tensors": tensors, "data": data}


def page_state(model: nn.Module, network: dict) -> dict[str, torch.Tensor]:
    """The weights as the page holds them (float16 where ``pack_weights`` stores float16), for tests that compare
    the page with PyTorch."""
    state = {}
    for layer in network["layers"]:
        for key in ("weight", "bias"):
            name = layer.get(key)
            if name:
                value = model.state_dict()[name].detach().cpu().float()
                if layer["type"] == "linear" and key == "weight" and value.numel() > HALF_ABOVE:
                    value = value.half().float()
                state[name] = value
    return state
