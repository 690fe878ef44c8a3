"""Grad-CAM for a single-logit (sigmoid) head: evidence for "dog" and, with the sign flipped, for "cat"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catdog.hooks import ActivationRecorder


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] by the maximum; all zeros when nothing is positive (never 0/0)."""
    peak = cam.max()
    return cam / peak if peak > 0 else torch.zeros_like(cam)


def gradcam(model: nn.Module, x: torch.Tensor, layer: str = "conv4") -> dict[str, torch.Tensor]:
    """Grad-CAM maps for one image ``x`` (1, 3, H, W), upsampled to (H, W), each in [0, 1].

    With one sigmoid output there is one logit z: its gradient points toward "dog". Channel weights are the
    spatial means of dz/dA; ``dog`` = ReLU(sum_k w_k A_k) and ``cat`` = ReLU(-sum_k w_k A_k) — the usual
    two-class Grad-CAM, since a softmax over (cat, dog) would use z_dog - z_cat = z. Also returns ``logit``.
    ``layer`` is a conv or pool layer that ``ActivationRecorder`` finds (``KeyError`` otherwise).
    """
    # Through the recorder, which finds the layer by type and keeps its output on the autograd graph: a layer that
    # defers its ReLU (relu_after_pool) is weighted after the ReLU it stands for, never on its pre-ReLU output.
    recorder = ActivationRecorder(model, [layer], device=None, keep_graph=True)
    if recorder.names != [layer]:
        raise KeyError(f"Grad-CAM needs one layer; {layer!r} matches {', '.join(recorder.names)}")
    with recorder, torch.enable_grad():
        logit = model(x)[0, 0]
        activation = recorder.records[layer]
        (grad,) = torch.autograd.grad(logit, activation)
    activation = activation[0].detach()
    weighted = (grad[0].mean(dim=(1, 2))[:, None, None] * activation).sum(0)
    size = x.shape[-2:]
    maps = {}
    for name, cam in (("dog", F.relu(weighted)), ("cat", F.relu(-weighted))):
        up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        maps[name] = _normalise(up.clamp_min(0))
    maps["logit"] = logit.detach()
    return maps
