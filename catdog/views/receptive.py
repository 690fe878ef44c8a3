"""Receptive fields: which square of the input each position of a conv or pool output sees.

For a stack of convs and pools the field grows layer by layer (Dumoulin & Visin, "A guide to convolution
arithmetic"; Araujo et al., Distill 2019). With ``k`` the kernel size, ``d`` the dilation, ``s`` the stride and
``p`` the padding of a layer, and ``jump`` the input pixels between two neighbouring positions of its input:

    span = d * (k - 1) + 1           size += (span - 1) * jump
    left -= p * jump                 jump *= s

``left`` is where position 0's field begins (negative where padding reaches outside the image), so the field of
position ``i`` covers the input pixels ``left + i * jump`` to ``left + i * jump + size - 1``; its centre is
``left + i * jump + (size - 1) / 2``. For CatDogCNN: conv1 3, pool1 4, conv2 8, pool2 10, conv3 18, pool3 22,
conv4 38, pool4 46 pixels. Computed from the modules (their ``kernel_size``, ``stride``, ``padding``,
``dilation``) in forward order, never written down.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

SPATIAL_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
# layers after which positions no longer map to a fixed square of the input
OPAQUE_TYPES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ConvTranspose2d,
    nn.Flatten,
    nn.Linear,
)


@dataclass(frozen=True)
class Field:
    """The receptive field of one layer's output positions along one axis: ``size`` pixels, ``jump`` pixels
    between neighbours, position 0 starting at pixel ``left`` (an integer, negative inside padding)."""

    size: int
    jump: int
    left: int

    def span(self, i: int) -> tuple[int, int]:
        """First and last input pixel (inclusive, unclipped) of position ``i``'s field."""
        first = self.left + i * self.jump
        return first, first + self.size - 1

    def centre(self, i: int) -> float:
        return self.left + i * self.jump + (self.size - 1) / 2


@dataclass(frozen=True)
class Geometry:
    """A layer's receptive field along height and width."""

    y: Field
    x: Field

    @property
    def size(self) -> tuple[int, int]:
        return self.y.size, self.x.size

    def box(self, i: int, j: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom and right exclusive: the field of position (i, j), clipped to an
        input of ``height`` x ``width``."""
        y0, y1 = self.y.span(i)
        x0, x1 = self.x.span(j)
        return max(y0, 0), max(x0, 0), min(y1 + 1, height), min(x1 + 1, width)

    def placement(self) -> dict:
        """Where a (H', W') map goes over the input so that each cell sits on its field's centre: cell (i, j)
        covers ``x0 + j * cell_w`` to ``x0 + (j + 1) * cell_w`` (input pixel units, pixel k spanning [k, k+1])."""
        return {
            "x0": self.x.left + (self.x.size - self.x.jump) / 2,
            "y0": self.y.left + (self.y.size - self.y.jump) / 2,
            "cell_w": self.x.jump,
            "cell_h": self.y.jump,
        }

    def to_dict(self) -> dict:
        return {
            "size": [self.y.size, self.x.size],
            "jump": [self.y.jump, self.x.jump],
            "left": [self.y.left, self.x.left],
            **self.placement(),
        }


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def layer_params(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of a conv or pool, each as (height, width)."""
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = module.padding
    if isinstance(padding, str):  # Conv2d's "valid" / "same" (PyTorch puts the odd pixel on the right)
        if padding == "valid":
            padding = (0, 0)
        else:
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    return kernel, stride, _pair(padding), dilation


def receptive_fields(model: nn.Module) -> dict[str, Geometry]:
    """``{module name: Geometry}`` for every conv and pool of ``model``, walking its modules in registration order
    (the forward order of a sequential stack, as the recorder assumes). Raises ``ValueError`` for a conv or pool
    that comes after a layer that breaks the position-to-input mapping (an adaptive pool, an upsampling)."""
    size, jump, left = [1, 1], [1, 1], [0, 0]
    fields: dict[str, Geometry] = {}
    opaque = None
    for name, module in model.named_modules():
        if isinstance(module, OPAQUE_TYPES):
            opaque = opaque or name
            continue
        if not isinstance(module, SPATIAL_TYPES):
            continue
        if opaque is not None:
            raise ValueError(f"the receptive field of {name} is unknown: it comes after {opaque}")
        kernel, stride, padding, dilation = layer_params(module)
        for axis in (0, 1):
            span = dilation[axis] * (kernel[axis] - 1) + 1
            size[axis] += (span - 1) * jump[axis]
            left[axis] -= padding[axis] * jump[axis]
            jump[axis] *= stride[axis]
        fields[name] = Geometry(Field(size[0], jump[0], left[0]), Field(size[1], jump[1], left[1]))
    return fields


def place_map(a, geometry: Geometry, height: int, width: int):
    """Draw a (H', W') map onto an (height, width) input canvas as the explorer's overlay does, nearest neighbour:
    each input pixel takes the cell whose area holds the pixel's centre; pixels no cell covers are NaN."""
    import numpy as np

    p = geometry.placement()
    rows = np.floor((np.arange(height) + 0.5 - p["y0"]) / p["cell_h"]).astype(int)
    cols = np.floor((np.arange(width) + 0.5 - p["x0"]) / p["cell_w"]).astype(int)
    out = np.full((height, width), np.nan, dtype=np.float64)
    ok_r = (rows >= 0) & (rows < a.shape[0])
    ok_c = (cols >= 0) & (cols < a.shape[1])
    out[np.ix_(ok_r, ok_c)] = np.asarray(a, dtype=np.float64)[np.ix_(rows[ok_r], cols[ok_c])]
    return out
