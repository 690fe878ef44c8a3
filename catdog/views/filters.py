"""Filter patterns: for each channel of a conv layer, the input that excites it most (gradient ascent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def filter_patterns(
    model: nn.Sequential, layer: str, size: int = 150, steps: int = 40, step_size: float = 0.01, seed: int = 0
) -> torch.Tensor:
    """(C, size, size, 3) images in [0, 1], one per output channel of conv ``layer``.

    As the Keras book does for VGG: start from a grey image with a little noise and climb the gradient of the
    channel's mean response, the gradient normalised by its RMS each step; then standardise each image for display.
    The response is taken before the ReLU so that a channel silent on grey still gets a gradient.
    """
    names = [name for name, _ in model.named_children()]
    if layer not in names or not isinstance(getattr(model, layer), nn.Conv2d):
        convs = [n for n, m in model.named_children() if isinstance(m, nn.Conv2d)]
        raise KeyError(f"filter patterns need a conv layer; {layer!r} is not one of {', '.join(convs)}")
    head = list(model.children())[: names.index(layer)]
    conv: nn.Conv2d = getattr(model, layer)
    channels = conv.out_channels
    generator = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.08 * (torch.rand(channels, 3, size, size, generator=generator) - 0.5)
    x = x.to(conv.weight.device).requires_grad_()
    index = torch.arange(channels, device=x.device)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            h = x
            for module in head:
                h = module(h)
            response = F.conv2d(h, conv.weight, conv.bias)  # pre-ReLU
            loss = response[index, index].mean(dim=(1, 2)).sum()  # image c drives channel c
            (grad,) = torch.autograd.grad(loss, x)
            grad = grad / (grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
            with torch.no_grad():
                x += step_size * grad
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    with torch.no_grad():
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-5)
        return ((x - mean) / std * 0.15 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
