"""The seed's network as a plain ``nn.Module``: four conv+ReLU / max-pool stages, then two dense layers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catdog import CatDogError

INPUT_SIZE = (150, 150)


class ConvReLU(nn.Conv2d):
    """A 3x3 valid convolution whose output is taken after ReLU, like Keras's ``Conv2D(activation='relu')``.

    Being a ``Conv2d`` subclass keeps the parameter names (``conv1.weight``) and lets hooks find it by type;
    a forward hook on it sees the post-ReLU output, which is what the seed plots.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place is safe: convolution's backward needs its input, not its output.
        return F.relu(super().forward(x), inplace=True)


class DenseReLU(nn.Linear):
    """A dense layer with ReLU, like Keras's ``Dense(activation='relu')``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


class CatDogCNN(nn.Sequential):
    """The seed's CNN. Children, in forward order: conv1, pool1, ..., conv4, pool4, flatten, fc1, fc2.

    ``input_size`` (height, width) sets fc1's inputs: 128 x 7 x 7 at the seed's 150 x 150.
    ``dropout > 0`` adds a ``dropout`` layer between flatten and fc1 (the book's regularised model).
    ``catdog.fast.fast(model)`` runs the same computation faster, sharing these parameters.

    Input: (N, 3, 150, 150) floats in [0, 1]. Output: the logit, shape (N, 1); ``sigmoid`` of it is the seed's
    output (probability of "dogs"). 3,453,121 parameters, as the Keras summary.

    Porting Keras weights (see ``load_keras_weights``): a Keras conv kernel (kh, kw, in, out) becomes
    ``weight.permute(3, 2, 0, 1)`` (out, in, kh, kw); a dense kernel (in, out) is transposed; and because
    Keras flattens (7, 7, 128) in NHWC order while PyTorch flattens (128, 7, 7) in NCHW order, fc1's input
    columns are permuted: torch column ``c*49 + h*7 + w`` takes Keras row ``(h*7 + w)*128 + c``. Biases copy as is.
    """

    def __init__(
        self,
        init: str = "keras",
        dropout: float = 0.0,
        input_size: tuple[int, int] = INPUT_SIZE,
    ) -> None:
        layers: list[tuple[str, nn.Module]] = []
        channels = [3, 32, 64, 128, 128]
        for i in range(4):
            layers.append((f"conv{i + 1}", ConvReLU(channels[i], channels[i + 1], kernel_size=3)))
            layers.append((f"pool{i + 1}", nn.MaxPool2d(2)))
        layers.append(("flatten", nn.Flatten()))
        if dropout:  # as the book's second model: dropout before the dense layers
            layers.append(("dropout", nn.Dropout(dropout)))
        h, w = feature_size(input_size)
        layers += [("fc1", DenseReLU(128 * h * w, 512)), ("fc2", nn.Linear(512, 1))]
        super().__init__(OrderedDict(layers))
        self.input_size = tuple(input_size)
        if init == "keras":
            self.apply(_keras_init)
        elif init != "torch":
            raise ValueError(f"model init must be 'keras' or 'torch', got {init!r}")


def feature_size(input_size: Sequence[int]) -> tuple[int, int]:
    """Height and width of pool4's output for an input of ``input_size``: each stage is a 3x3 valid conv (-2)
    and a 2x2 pool (//2). Raises ``ValueError`` for an input too small to leave one position."""
    out = []
    for side in input_size:
        for _ in range(4):
            side = (side - 2) // 2
        out.append(side)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"image size {list(input_size)} is too small for four conv+pool stages; 46 x 46 is the least")
    return out[0], out[1]


def prediction(logit: float | torch.Tensor) -> dict[str, str | float]:
    """The one record of a prediction, from the network's single logit (sigmoid of it: p(dog)):
    ``{"label": "dog", "probability": 0.93, "p_dog": 0.93}``, ``probability`` being that of ``label``."""
    p_dog = float(torch.sigmoid(torch.as_tensor(float(logit))))
    label, probability = ("dog", p_dog) if p_dog >= 0.5 else ("cat", 1 - p_dog)
    return {"label": label, "probability": probability, "p_dog": p_dog}


def pick_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cpu``; ``cuda`` (or ``cuda:N``), which must be available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise CatDogError(f"device must be auto, cpu or cuda, got {spec!r}")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise CatDogError(f"device={spec}, but CUDA is not available here; use device=auto or device=cpu")
    return torch.device(spec)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels, zero biases (PyTorch's fan computation matches Keras's)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def load_keras_weights(model: CatDogCNN, weights: Sequence[np.ndarray]) -> None:
    """Copy the Keras model's ``get_weights()`` list (kernel, bias per layer, in layer order) into ``model``."""
    trainable = [m for m in model.children() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(weights) != 2 * len(trainable):
        raise ValueError(f"expected {2 * len(trainable)} arrays (kernel, bias per layer), got {len(weights)}")
    with torch.no_grad():
        for module, kernel, bias in zip(trainable, weights[0::2], weights[1::2], strict=True):
            k = torch.as_tensor(np.asarray(kernel, dtype=np.float32))
            if isinstance(module, nn.Conv2d):
                k = k.permute(3, 2, 0, 1)
            else:
                k = k.t()
                if module is model.fc1:  # NHWC-flatten rows -> NCHW-flatten columns
                    h, w = feature_size(model.input_size)
                    k = k.reshape(512, h, w, 128).permute(0, 3, 1, 2).reshape(512, -1)
            b = torch.as_tensor(np.asarray(bias, dtype=np.float32))
            name = next(n for n, m in model.named_children() if m is module)
            for what, value, target in (("kernel", k, module.weight), ("bias", b, module.bias)):
                if value.shape != target.shape:  # copy_ would broadcast a wrongly shaped bias
                    raise ValueError(f"{name} {what} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            module.weight.copy_(k)
            module.bias.copy_(b)


def summary(model: nn.Sequential, input_size: tuple[int, int] | None = None) -> str:
    """A Keras-style table (layer, output shape, params) from one dummy forward pass, child by child, at the
    model's ``input_size`` unless given."""
    input_size = input_size or getattr(model, "input_size", INPUT_SIZE)
    x = torch.zeros(1, 3, *input_size, device=next(model.parameters()).device)
    rows, total = [], 0
    with torch.no_grad():
        for name, child in model.named_children():
            x = child(x)
            params = sum(p.numel() for p in child.parameters())
            total += params
            rows.append((f"{name} ({type(child).__name__})", str(tuple(x.shape[1:])), f"{params:,}"))
    widths = [max(len(r[i]) for r in rows + [("Layer (type)", "Output shape", "Param #")]) for i in range(3)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format("Layer (type)", "Output shape", "Param #"), "-" * (sum(widths) + 4)]
    out += [line.format(*r) for r in rows]
    out.append(f"Total params: {total:,}")
    return "\n".join(out)
