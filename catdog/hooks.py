"""Record what each conv and pool layer outputs, with forward hooks that are always removed."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

RECORDED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d)


class ActivationRecorder:
    """Context manager: while active, every forward pass stores a detached copy of each selected layer's output.

    Layers are found by type (``nn.Conv2d`` and ``nn.MaxPool2d``, in forward order) and named by their module
    names (``conv1``, ``pool1``, ...): a record is the layer's forward output (a ``ConvReLU``'s is after its ReLU,
    what the seed plots). ``layers`` selects some by name or glob (``["conv*"]``). Records are copies
    on ``device`` (the CPU by default), so an in-place op later in the network cannot change them and a GPU run
    does not keep them in GPU memory. A later forward pass replaces the records. Every hook handle is removed on
    exit, also when the forward pass raises; with no recorder active the model runs exactly as before.

    ``keep_graph=True`` (for Grad-CAM) instead records each layer's live output, on the autograd graph and on the
    model's device, so that gradients can be taken with respect to it.

    Record from the plain network (``catdog.model``): ``catdog.fast``'s arrangement does not call its layers' hooks.

        with ActivationRecorder(model) as recorder:
            model(x)
        recorder.records["conv1"]  # (N, 32, 148, 148)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Iterable[str] | None = None,
        device: str | torch.device | None = "cpu",
        types: tuple[type[nn.Module], ...] = RECORDED_TYPES,
        keep_graph: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.keep_graph = keep_graph
        candidates = [(name, m) for name, m in model.named_modules() if name and isinstance(m, types)]
        self.modules = select(candidates, layers)
        self.records: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.modules]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self.keep_graph:
                self.records[name] = output
            else:
                out = output.detach()
                self.records[name] = out.clone() if self.device is None else out.to(self.device, copy=True)

        return record

    def __enter__(self) -> ActivationRecorder:
        self.records = {}
        try:
            for name, module in self.modules:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def select(candidates: list[tuple[str, nn.Module]], layers: str | Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    """Keep the candidates whose names match ``layers`` (names or globs), in forward order; error on a miss."""
    if layers is None:
        return candidates
    patterns = [layers] if isinstance(layers, str) else list(layers)
    names = [name for name, _ in candidates]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise KeyError(f"no layer matches {pattern!r}; layers are {', '.join(names)}")
    return [(n, m) for n, m in candidates if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def record_activations(
    model: nn.Module, x: torch.Tensor, layers: str | Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """One forward pass of ``x`` (no gradients); returns ``{layer name: output}`` for the conv and pool layers."""
    with ActivationRecorder(model, layers) as recorder, torch.no_grad():
        model(x)
    return recorder.records
