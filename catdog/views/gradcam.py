"""Grad-CAM for a single-logit (sigmoid) head: evidence for "dog" and, with the sign flipped, for "cat"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] by the maximum; all zeros when nothing is positive (never 0/0)."""
    peak = cam.max()
    return cam / peak if peak > 0 else torch.zeros_like(cam)


def gradcam(model: nn.Module, x: torch.Tensor, layer: str = "conv4") -> dict[str, torch.Tensor]:
    """Grad-CAM maps for one image ``x`` (1, 3, H, W), upsampled to (H, W), each in [0, 1].

    With one sigmoid output there is one logit z: its gradient points toward "dog". Channel weights are the
    spatial means of dz/dA; ``dog`` = ReLU(sum_k w_k A_k) and ``cat`` = ReLU(-sum_k w_k A_k) — the usual
    two-class Grad-CAM, since a softmax over (cat, dog) would use z_dog - z_cat = z. Also returns ``logit``.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(f"no layer named {layer!r}; layers are {', '.join(n for n in modules if n)}")
    captured: dict[str, torch.Tensor] = {}
    handle = modules[layer].register_forward_hook(lambda m, i, out: captured.__setitem__("A", out))
    try:
        with torch.enable_grad():
            logit = model(x)[0, 0]
            (grad,) = torch.autograd.grad(logit, captured["A"])
    finally:
        handle.remove()
    activation = captured["A"][0].detach()
    weighted = (grad[0].mean(dim=(1, 2))[:, None, None] * activation).sum(0)
    size = x.shape[-2:]
    maps = {}
    for name, cam in (("dog", F.relu(weighted)), ("cat", F.relu(-weighted))):
        up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        maps[name] = _normalise(up.clamp_min(0))
    maps["logit"] = logit.detach()
    return maps
