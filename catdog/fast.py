"""``fast(model)``: the seed's network arranged to run faster, computing the same outputs and gradients.

``catdog.model`` holds the network as the seed defines it, so that a hook on ``conv1`` sees conv1's output after
its ReLU. Training and scoring call the network through ``fast(model)`` instead, which shares the model's
parameters (training it trains the model) and changes only how the work is done:

- ReLU after pooling: ReLU is monotone, so ``relu(max(window)) == max(relu(window))``; the element-wise ReLU then
  runs on a 4x smaller tensor. Gradients agree too: a window's maximum is positive exactly where the ReLU passes it.
- channels_last: the convolutions and pools of this network run faster on NHWC memory on CPUs and GPUs
  (``bench/run.py``); the parameters are laid out once, the input on the way in.
- index-free pooling when no gradient is needed on a CPU: ``F.max_pool2d`` also computes the argmax indices that
  only a backward pass reads; two element-wise maxima give the same values up to 2.3x faster.
- bfloat16 pooling as int16 bit patterns when scoring in bfloat16, with the ReLU folded in (see ``relu_max_pool``).

Hooks on the model's layers do not fire here (its modules are called by their arithmetic, not their ``forward``):
record activations from the plain model, as ``catdog.hooks`` does, or, over many pictures (the atlas, the
projector), from ``recordable(model)``: the same layers under the same names, where hooks fire, with the pools
index-free and the tensors channels_last.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from catdog.model import ConvReLU


class FastCatDogCNN(nn.Module):
    """The conv+ReLU / max-pool stages of a ``CatDogCNN`` as conv, max-pool, ReLU on channels_last tensors, then
    its own head (flatten, dropout, dense layers). Holds the model's layers themselves, not copies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        children = list(model.named_children()) if isinstance(model, nn.Sequential) else []
        convs: list[ConvReLU] = []
        while len(children) >= 2 and isinstance(children[0][1], ConvReLU):
            (conv_name, conv), (pool_name, pool) = children[:2]
            if not _is_2x2_max_pool(pool):
                raise ValueError(f"fast() needs a 2x2 max-pool after {conv_name}, found {pool_name} ({pool})")
            convs.append(conv)
            children = children[2:]
        stray = [name for name, m in children if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
        if not convs or stray:
            where = f"; {', '.join(stray)} is not a ConvReLU followed by a 2x2 max-pool" if stray else ""
            raise ValueError(f"fast() rearranges a CatDogCNN (ConvReLU, 2x2 max-pool, ..., head){where}")
        self.convs = nn.ModuleList(convs)
        self.head = nn.Sequential(*(m for _, m in children))
        self.input_size = getattr(model, "input_size", None)
        self.training = model.training  # in the model's mode, as its layers are
        # Once: the convolutions' weights in NHWC order, as cuDNN and oneDNN want them. Module.to keeps each Parameter
        # object (it replaces its .data), so an optimizer over the plain model's parameters still holds them.
        model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            # nn.Conv2d.forward: the convolution without ConvReLU's ReLU, which relu_max_pool applies after pooling
            x = relu_max_pool(nn.Conv2d.forward(conv, x))
        return self.head(x)


def fast(model: nn.Module) -> FastCatDogCNN:
    """An exact, faster equivalent of ``model`` (a ``CatDogCNN``, any input size, with or without dropout) that
    shares its parameters; see the module's docstring. Lays ``model``'s parameters out channels_last (the values
    stay). Raises ``ValueError`` for a network it cannot rearrange."""
    return FastCatDogCNN(model)


class IndexFreeMaxPool2d(nn.MaxPool2d):
    """A 2x2 max-pool (a ``MaxPool2d``, so the recorder finds it) that pools without indices where no gradient is
    needed on a CPU (``max_pool_nhwc``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return max_pool_nhwc(x)


def recordable(model: nn.Sequential) -> nn.Sequential:
    """``model``'s layers under their names, in order (so hooks and ``catdog.hooks.ActivationRecorder`` see every
    conv output after its ReLU, as on the plain model), with each 2x2 max-pool index-free and the parameters laid out
    channels_last: recording a folder of pictures about twice as fast (``bench/atlas.py``). Feed it channels_last
    batches; the values are the plain model's."""
    layers = [
        (name, IndexFreeMaxPool2d(2) if _is_2x2_max_pool(m) else m) for name, m in model.named_children()
    ]
    out = nn.Sequential(OrderedDict(layers)).to(memory_format=torch.channels_last)
    out.input_size = getattr(model, "input_size", None)
    return out.train(model.training)


def _is_2x2_max_pool(m: nn.Module) -> bool:
    def pair(v) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (
        type(m) is nn.MaxPool2d
        and pair(m.kernel_size) == (2, 2)
        and pair(m.stride) == (2, 2)
        and pair(m.padding) == (0, 0)
        and pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and not m.return_indices
    )


def relu_max_pool(x: torch.Tensor) -> torch.Tensor:
    """``relu(max_pool2d(x, 2))``, which equals ``max_pool2d(relu(x), 2)``, the seed's conv ReLU then pool."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
        # In place is safe: max-pool's backward reads its input and indices, not its output.
        return F.relu(F.max_pool2d(x, 2), inplace=True)
    if x.dtype == torch.bfloat16:
        # Non-negative bfloat16 values order as their bit patterns read as int16, and every negative one reads as
        # a negative int16: so the int16 maximum of a window, with negatives set to 0 (the bits of +0.0), is
        # max-pool + ReLU, about twice as fast as pooling bfloat16 (NaN apart, which only a broken network makes).
        return max_pool_nhwc(x.view(torch.int16)).clamp_min_(0).view(torch.bfloat16)
    return F.relu(max_pool_nhwc(x), inplace=True)


def max_pool_nhwc(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool (stride 2, odd edges dropped) of a channels_last batch as two element-wise maxima: first of
    neighbouring columns, then of neighbouring rows. The same values as ``F.max_pool2d(x, 2)``; on a CPU up to 2.3x
    faster than it, which also computes the indices that only a backward pass needs (``docs/benchmarks.md``)."""
    n, c, height, width = x.shape
    h, w = height // 2, width // 2
    rows = x.permute(0, 2, 3, 1)[:, : 2 * h, : 2 * w]  # (N, H, W, C), a view of the same memory
    pairs = rows.unflatten(2, (w, 2))
    cols = torch.maximum(pairs[:, :, :, 0], pairs[:, :, :, 1]).unflatten(1, (h, 2))  # (N, h, 2, w, C)
    return torch.maximum(cols[:, :, 0], cols[:, :, 1]).permute(0, 3, 1, 2)
