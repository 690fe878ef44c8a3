"""Export trained weights for use elsewhere: an ONNX model, or a safetensors weights file.

    catdog-export [ckpt=latest|pretrained|none|PATH] [format=onnx|safetensors] [out=catdog.onnx]
                  [activations=false] [overwrite=false]

(or ``python -m catdog.export``). Settings: catdog/conf/export.yaml. ``ckpt`` is read by
``catdog.weights.load_weights``, so a train.py checkpoint, a safetensors file or a Keras ``.keras`` / ``.h5`` file of
the seed's model all export the same way.

ONNX: input ``image``, float32 (N, 3, H, W), RGB in [0, 1] (the preprocessing, stored in the model's metadata,
says how a picture becomes it); output ``logit`` (N, 1), ``sigmoid(logit)`` being the probability of "dogs";
with ``activations=true`` also ``conv1``, ``pool1``, ..., ``pool4``: what the ``ActivationRecorder`` records (a
conv layer's output after its ReLU). The batch size is dynamic. The file is checked with onnx's checker and, when
onnxruntime is installed, run on random images and compared with PyTorch.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from catdog import CatDogError
from catdog.cli import run
from catdog.files import atomic_write
from catdog.hooks import ActivationRecorder
from catdog.views.explorer import explorer_data, known_patterns, write_explorer
from catdog.weights import Weights, load_weights, save_weights

FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors", "html": ".html"}
ONNX_FORMAT = "catdog-onnx/1"
ONNX_OPSET = 17
ONNX_OPSETS = (9, 20)  # those torch's TorchScript-based exporter writes
CHECK_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted for the logits of the export's own check


class WithActivations(nn.Module):
    """The network returning ``(logit, conv1, pool1, ..., pool4)``: the recorded layers' outputs as plain outputs
    (no hooks, so a tracer sees them), the same tensors the ``ActivationRecorder`` records (a conv's after ReLU)."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.model = model
        children = dict(model.named_children())
        self.recorded = ActivationRecorder(model).names  # conv and pool layers by type, in forward order
        if not set(self.recorded) <= set(children):
            raise ValueError("WithActivations needs the recorded layers to be direct children of the model")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        activations = []
        for name, child in self.model.named_children():
            x = child(x)
            if name in self.recorded:
                activations.append(x)
        return (x, *activations)


def onnx_metadata(weights: Weights, activations: list[str]) -> dict[str, str]:
    """What the ONNX file's ``metadata_props`` hold: how to feed it and how to read its outputs."""
    return {
        "format": ONNX_FORMAT,
        "preprocessing": json.dumps(weights.preprocessing.to_dict()),
        "input": "image: float32 (N, 3, H, W), RGB, pixel values / 255 (see preprocessing)",
        "classes": json.dumps(list(weights.classes)),
        "output": f"logit: (N, 1); sigmoid(logit) is the probability of {weights.classes[1]!r}",
        "activations": json.dumps(activations),
        "source": weights.source,
    }


def write_onnx(weights: Weights, path: str | os.PathLike, activations: bool = False, opset: int = ONNX_OPSET) -> None:
    """Write ``weights`` as an ONNX model at ``path`` (see the module's docstring), metadata included, checked by
    onnx's checker."""
    try:
        import onnx
    except ImportError:
        raise CatDogError("format=onnx needs the onnx package: pip install 'catdog[onnx]'") from None
    if not ONNX_OPSETS[0] <= opset <= ONNX_OPSETS[1]:
        raise CatDogError(f"opset must be {ONNX_OPSETS[0]} to {ONNX_OPSETS[1]} (what torch's ONNX exporter writes)")
    model = weights.model("cpu")
    module = WithActivations(model) if activations else model
    names = ["logit", *(module.recorded if activations else [])]
    example = torch.zeros(2, 3, *weights.preprocessing.image_size)
    # The TorchScript-based exporter: the dynamo one (torch >= 2.9's default) would need onnxscript, for the same graph
    # of this network. torch < 2.5 has no ``dynamo`` argument and uses it anyway.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # it warns that it is the legacy exporter
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            **legacy,
            input_names=["image"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["image", *names]},
            opset_version=opset,
        )
    proto = onnx.load(str(path))
    proto.doc_string = f"catdog CatDogCNN, cats vs dogs, from {weights.source}"
    for key, value in onnx_metadata(weights, names[1:]).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def export_onnx(weights: Weights, out: str | os.PathLike, activations: bool = False, opset: int = ONNX_OPSET) -> Path:
    """``write_onnx`` to ``out`` atomically (a failed export leaves no partial file); returns ``out``."""
    return atomic_write(out, lambda tmp: write_onnx(weights, tmp, activations, opset))


def check_onnx(path: str | os.PathLike, weights: Weights, batch: int = 2) -> float | None:
    """Run the ONNX file with onnxruntime on ``batch`` random images; the largest |difference| of its logits from
    PyTorch's, or None when onnxruntime is not installed. Raises ``CatDogError`` above ``CHECK_TOLERANCE``."""
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.rand(batch, 3, *weights.preprocessing.image_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(["logit"], {"image": x.numpy()})[0]
    with torch.no_grad():
        reference = weights.model("cpu")(x).numpy()
    difference = float(abs(ours - reference).max())
    if not difference <= CHECK_TOLERANCE:
        raise CatDogError(f"{path}: onnxruntime's logits differ from PyTorch's by {difference:.2g}; the export failed")
    return difference


def export_safetensors(weights: Weights, out: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``weights`` with ``catdog.weights.save_weights``; its metadata also says where they came from, plus
    ``extra`` (e.g. the command that trained them, the commit, the test accuracy)."""
    metadata = {**weights.metadata, "exported_from": weights.source, **(extra or {})}
    return save_weights(Weights(weights.state_dict, weights.preprocessing, weights.source, metadata), out)


def export_html(weights: Weights, out: Path) -> Path:
    """The explorer page of ``weights`` (``catdog.views.explorer``): one offline HTML file in which the network runs on
    any photo or the webcam; with the weights' feature visualisations when they are at hand."""
    model = weights.model("cpu")
    data = explorer_data(model, weights.preprocessing, "catdog explorer", weights.source, **known_patterns(model))
    write_explorer(out, data)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): open it in a browser, drop a photo or start the webcam")
    return out


def output_path(fmt: str, out: str | None, ckpt: str, overwrite: bool) -> Path:
    """The file to write: ``out``, or ``catdog.<format's suffix>``. Refuses a suffix of the other format, the
    checkpoint itself, and an existing file unless ``overwrite``."""
    if fmt not in FORMATS:
        raise CatDogError(f"format must be {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(out if out else f"catdog{FORMATS[fmt]}").expanduser()
    other = {suffix: name for name, suffix in FORMATS.items() if name != fmt}
    if path.suffix.lower() in other:
        raise CatDogError(f"out={path} has the suffix of format={other[path.suffix.lower()]}, but format={fmt}")
    if Path(ckpt).expanduser().exists() and path.resolve() == Path(ckpt).expanduser().resolve():
        raise CatDogError(f"out={path} is the checkpoint being exported; give another out=")
    if path.exists() and not overwrite:
        raise CatDogError(f"out={path} exists; give another out=, or overwrite=true to replace it")
    return path


def export(cfg: DictConfig) -> Path:
    """The command: load ``cfg.ckpt``, write it in ``cfg.format`` to ``cfg.out``, check it, say what was done."""
    for key in ("activations", "check", "overwrite"):
        if not isinstance(cfg[key], bool):
            raise CatDogError(f"{key} must be true or false, got {cfg[key]!r}")
    if isinstance(cfg.opset, bool) or not isinstance(cfg.opset, int):
        raise CatDogError(f"opset must be an integer, {ONNX_OPSETS[0]} to {ONNX_OPSETS[1]}, got {cfg.opset!r}")
    fmt = str(cfg.format)
    out = output_path(fmt, cfg.out, str(cfg.ckpt), cfg.overwrite)
    if cfg.activations and fmt != "onnx":
        raise CatDogError("activations=true is for format=onnx (a weights file has no outputs)")
    weights = load_weights(cfg.ckpt)
    print(f"weights: {weights.source}")
    if fmt == "safetensors":
        extra = OmegaConf.to_container(cfg.metadata) if cfg.get("metadata") else None
        print(f"wrote {export_safetensors(weights, out, extra)}")
        return out
    if fmt == "html":
        return export_html(weights, out)
    difference = None

    def write(tmp: str) -> None:
        nonlocal difference
        write_onnx(weights, tmp, cfg.activations, cfg.opset)
        if cfg.check:  # before the file takes its name: a failed check leaves nothing behind
            difference = check_onnx(tmp, weights)

    atomic_write(out, write)
    outputs = "logit" + (", conv1, pool1, ..., pool4" if cfg.activations else "")
    height, width = weights.preprocessing.image_size
    print(f"wrote {out} (ONNX opset {cfg.opset}; input image (N, 3, {height}, {width}); outputs {outputs}; any N)")
    if cfg.check:
        if difference is None:
            print("onnxruntime is not installed: the file was not run (pip install 'catdog[onnx]')")
        else:
            print(f"onnxruntime: logits within {difference:.1e} of PyTorch's on 2 random images")
    return out


def main(argv: list[str] | None = None) -> int:
    """``catdog-export``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("export", export, argv)


if __name__ == "__main__":
    sys.exit(main())
