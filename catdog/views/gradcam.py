"""Grad-CAM for a single-logit (sigmoid) head: evidence for "dog" and, with the sign flipped, for "cat".

``gradcam_maps`` is the arithmetic, from a layer's activation and the logit's gradient with respect to it: what a
run's one recorded trace (a forward pass, one ``torch.autograd.grad``) already holds. ``gradcam`` makes that
forward and backward pass itself for callers without a trace. The maps equal Captum's ``LayerGradCam`` followed by
``LayerAttribution.interpolate(..., "bilinear")`` to 1e-6 (tests/test_attributions.py); Captum is not needed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catdog.hooks import ActivationRecorder


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] by the maximum; all zeros when nothing is positive (never 0/0)."""
    peak = cam.max()
    return cam / peak if peak > 0 else torch.zeros_like(cam)


def gradcam_maps(
    activation: torch.Tensor, grad: torch.Tensor, size: tuple[int, int], normalise: bool = True
) -> dict[str, torch.Tensor]:
    """Grad-CAM maps ``{"dog", "cat"}`` of shape ``size`` (the input's height and width) from one image's layer
    ``activation`` and ``grad``, the logit's gradient with respect to it: each (C, h, w) or (1, C, h, w).

    With one sigmoid output there is one logit z: its gradient points toward "dog". Channel weights are the
    spatial means of dz/dA; ``dog`` = ReLU(sum_k w_k A_k) and ``cat`` = ReLU(-sum_k w_k A_k) — the usual
    two-class Grad-CAM, since a softmax over (cat, dog) would use z_dog - z_cat = z. Each is upsampled bilinearly
    to ``size`` and, with ``normalise``, scaled by its maximum to [0, 1] (all zeros when nothing is positive).
    """
    if activation.dim() == 4:
        activation, grad = activation[0], grad[0]
    weighted = (grad.mean(dim=(1, 2))[:, None, None] * activation.detach()).sum(0)
    maps = {}
    for name, cam in (("dog", F.relu(weighted)), ("cat", F.relu(-weighted))):
        # Split into dog and cat before upsampling, as Captum does (ReLU, then interpolate); bilinear weights are
        # non-negative, so the clamp only removes rounding noise.
        up = F.interpolate(cam[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
        maps[name] = _normalise(up) if normalise else up
    return maps


def gradcam(model: nn.Module, x: torch.Tensor, layer: str = "conv4", normalise: bool = True) -> dict[str, torch.Tensor]:
    """Grad-CAM maps for one image ``x`` (1, 3, H, W), upsampled to (H, W), each in [0, 1] unless not
    ``normalise`` (see ``gradcam_maps``); also returns ``logit``. ``layer`` is a conv or pool layer that
    ``ActivationRecorder`` finds (``KeyError`` otherwise)."""
    # Through the recorder, which finds the layer by type and keeps its output on the autograd graph. ``model`` is
    # the plain network: a ConvReLU's output, and so the map weighted here, is after its ReLU.
    recorder = ActivationRecorder(model, [layer], device=None, keep_graph=True)
    if recorder.names != [layer]:
        raise KeyError(f"Grad-CAM needs one layer; {layer!r} matches {', '.join(recorder.names)}")
    with recorder, torch.enable_grad():
        logit = model(x)[0, 0]
        activation = recorder.records[layer]
        (grad,) = torch.autograd.grad(logit, activation)
    maps = gradcam_maps(activation, grad, x.shape[-2:], normalise)
    maps["logit"] = logit.detach()
    return maps
