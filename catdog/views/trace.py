"""One picture, recorded once: a forward pass that records every conv and pool layer, plus the one backward pass
Grad-CAM needs. Every figure, the manifest and the page of a ``visualize.py`` run read this trace; nothing runs
the network for a picture a second time.

Channels can be switched off for the pass (``off``): a forward hook zeroes them in the layer's output, so every
later layer, the prediction and Grad-CAM see the network without them, as the explorer page's ablation does.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from catdog.hooks import ActivationRecorder
from catdog.model import prediction
from catdog.views.gradcam import gradcam_maps


@dataclass
class Trace:
    """What one pass of one picture leaves: ``records`` ({layer: (C, H, W) float32 on the CPU}), the ``logit``, its
    ``prediction`` ({"label", "probability", "p_dog"}) and ``gradcam`` ({"dog", "cat"}: (H, W) maps in [0, 1] on
    the CPU) with what it was computed from (``gradcam_inputs``: the layer's activation and the logit's gradient
    with respect to it), and the channels that were switched off (``off``)."""

    records: dict[str, torch.Tensor]
    logit: float
    prediction: dict
    gradcam: dict[str, torch.Tensor] | None = None
    gradcam_layer: str | None = None
    gradcam_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
    off: dict[str, list[int]] = field(default_factory=dict)


def _switch_off(channels: list[int]):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()  # a copy: an in-place zeroing would also change what autograd saved
        output[:, channels] = 0
        return output

    return hook


def trace(
    model: nn.Module,
    x: torch.Tensor,
    layers: str | Iterable[str] | None = None,
    gradcam_layer: str | None = None,
    off: dict[str, list[int]] | None = None,
) -> Trace:
    """Record ``x`` (1, 3, H, W) through ``model``: the conv and pool layers ``layers`` selects (all by default), and,
    with ``gradcam_layer``, Grad-CAM on that layer from the same pass. ``off``: {layer: [channels]} to switch off.
    Raises ``KeyError`` for a layer name that matches nothing."""
    off = {name: sorted(set(channels)) for name, channels in (off or {}).items() if channels}
    modules = dict(model.named_modules())
    for name in off:
        if name not in modules or not isinstance(modules[name], (nn.Conv2d, nn.MaxPool2d)):
            raise KeyError(f"no conv or pool layer {name!r} to switch channels off in")
    recorder = ActivationRecorder(model, layers)
    live: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for name, channels in off.items():  # first: the recorder and Grad-CAM then see the zeroed output
            stack.callback(modules[name].register_forward_hook(_switch_off(channels)).remove)
        if gradcam_layer is not None:
            found = ActivationRecorder(model, [gradcam_layer]).modules
            if len(found) != 1:
                raise KeyError(f"Grad-CAM needs one layer; {gradcam_layer!r} matches {len(found)}")

            def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                live["activation"] = output

            stack.callback(found[0][1].register_forward_hook(keep).remove)
        stack.enter_context(recorder)
        with torch.set_grad_enabled(gradcam_layer is not None):
            output = model(x)
    logit = output[0, 0]
    maps = inputs = None
    if gradcam_layer is not None:
        (grad,) = torch.autograd.grad(logit, live["activation"])
        inputs = (live["activation"].detach(), grad)
        maps = {k: v.cpu() for k, v in gradcam_maps(*inputs, tuple(x.shape[-2:])).items()}
    records = {name: r[0].float() for name, r in recorder.records.items()}
    value = float(logit.detach())
    return Trace(records, value, prediction(value), maps, gradcam_layer, inputs, off)
