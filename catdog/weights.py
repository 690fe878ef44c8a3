"""Weights and what travels with them: the network's shape, its preprocessing, its classes and its record.

As torchvision's ``Weights``: a file, the transforms it needs and its metrics together. Where they come from, by
the ``ckpt=`` setting of every entry point:

- ``latest``: the newest best checkpoint that train.py wrote under outputs/ or multirun/, else the shipped weights;
- ``pretrained``: the weights shipped with the package (``catdog/pretrained/catdog_cnn.safetensors``);
- ``none``: the untrained network (Keras initialisation, seed 0);
- a path: a train.py ``.ckpt`` (its moving average of the weights when it kept one), a ``.safetensors`` file
  written by ``save_weights``, or a Keras ``.keras`` / ``.h5`` file of the seed's model.

Nothing here unpickles: checkpoints are read with ``weights_only=True``, safetensors files hold only tensors and
a JSON header. Every key and shape is checked against the network before loading.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from catdog import CLASSES, CatDogError
from catdog.fast import FastCatDogCNN
from catdog.files import atomic_write
from catdog.keras_io import read_keras
from catdog.model import CatDogCNN
from catdog.preprocess import Preprocessing

FORMAT = "catdog-weights/1"
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "catdog_cnn.safetensors"
RUN_FOLDERS = ("outputs", "multirun")
SEED_PREPROCESSING = Preprocessing()  # the Keras seed's: 150 x 150, nearest, no EXIF turn, 1/255


@dataclass
class Weights:
    """A state dict for ``CatDogCNN``, the preprocessing it expects, where it came from and what is known of it."""

    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing = SEED_PREPROCESSING
    source: str = "none"
    metadata: dict = field(default_factory=dict)  # command, commit, metrics, ... (plain JSON values)
    classes: tuple[str, ...] = CLASSES

    def model(self, device: str | torch.device = "cpu", fast: bool = False) -> CatDogCNN | FastCatDogCNN:
        """The network in eval mode with these weights, every key and shape checked.

        ``fast``: ``catdog.fast.fast`` of it, the same computation arranged to score many images faster. Hooks on
        its layers do not fire: to record layers, take the plain network."""
        model = CatDogCNN(input_size=self.preprocessing.image_size)
        check_state(model, self.state_dict, self.source)
        model.load_state_dict(self.state_dict)
        model = model.eval().to(device)
        return FastCatDogCNN(model) if fast else model


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse, in one line naming ``source``, a state dict whose keys or shapes are not the network's."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} has shape {list(state[k].shape)} where {list(expected[k].shape)} is expected"
        else:
            detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise CatDogError(f"{source} is not a catdog CatDogCNN: {detail}")


def untrained() -> Weights:
    torch.manual_seed(0)
    return Weights(CatDogCNN().state_dict(), source="none (the untrained network: Keras initialisation, seed 0)")


def newest(pattern: str, search: tuple[str, ...] = RUN_FOLDERS) -> Path | None:
    """The most recently written file matching ``pattern`` (e.g. ``checkpoints/last.ckpt``) under ``search``."""
    found = [p for folder in search for p in Path(folder).glob(f"**/{pattern}")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_weights(spec: str | os.PathLike = "latest") -> Weights:
    """The weights that ``ckpt=spec`` names (see the module's docstring); ``source`` says which were used."""
    spec = str(spec)
    if spec == "none":
        return untrained()
    if spec == "pretrained":
        if not PRETRAINED.is_file():
            raise CatDogError(
                f"ckpt=pretrained: the shipped weights {PRETRAINED} are missing from this install; "
                "reinstall catdog, or give ckpt=PATH"
            )
        return read_safetensors(PRETRAINED, label="pretrained")
    if spec == "latest":
        found = newest("checkpoints/best-*.ckpt")
        if found is not None:
            return read_checkpoint(found)
        if PRETRAINED.is_file():
            weights = read_safetensors(PRETRAINED, label="pretrained")
            folders = " or ".join(f"{s}/" for s in RUN_FOLDERS)
            weights.source = f"pretrained (no trained run under {folders}): {PRETRAINED}"
            return weights
        raise CatDogError(
            f"ckpt=latest found no checkpoint under {' or '.join(f'{s}/' for s in RUN_FOLDERS)} and no shipped "
            "weights; train first (python train.py), or give ckpt=PATH, or ckpt=none for the untrained network"
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CatDogError(
            f"checkpoint {spec} not found; give ckpt=PATH to a .ckpt, .safetensors, .keras or .h5 file, "
            "ckpt=latest, ckpt=pretrained or ckpt=none"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in (".keras", ".h5", ".hdf5"):
        state, preprocessing, info = read_keras(path)
        return Weights(state, preprocessing, source=str(path), metadata={"keras": info})
    return read_checkpoint(path)


def read_checkpoint(path: Path) -> Weights:
    """A train.py checkpoint: the moving average of the weights when the run kept one (``model.ema_decay``), else
    the weights; the preprocessing from the datamodule's saved settings (the seed's for older checkpoints)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint["state_dict"]
    except Exception as err:
        raise CatDogError(f"cannot read checkpoint {path} ({type(err).__name__}); is it a catdog .ckpt file?") from err
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in saved) else "model."
    state = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    settings = {k: data[k] for k in ("image_size", "interpolation", "exif_transpose") if k in data}
    preprocessing = Preprocessing.from_dict(settings, str(path))
    what = " (the moving average of its weights)" if prefix == "ema.module." else ""
    metadata = {
        "model": dict(checkpoint.get("hyper_parameters") or {}),
        "data": dict(data),
        "epoch": checkpoint.get("epoch"),
    }
    return Weights(state, preprocessing, f"{path}{what}", metadata)


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Which weights these are: a SHA-256 of the names and the bytes of the tensors, in name order, whatever device
    or memory layout they are in. The safetensors header records it; atlases and cached filter patterns are keyed by
    it (``model.state_dict()`` for a model)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(weights: Weights, path: str | os.PathLike) -> Path:
    """Write ``weights`` as a safetensors file: the tensors, and a header with the format, the preprocessing, the
    classes, the network's input size, a SHA-256 of the tensors and ``weights.metadata`` (as JSON strings)."""
    state = {k: v.detach().cpu().contiguous() for k, v in weights.state_dict.items()}
    check_state(CatDogCNN(input_size=weights.preprocessing.image_size), state, "the weights to save")
    header = {
        "format": FORMAT,
        "preprocessing": json.dumps(weights.preprocessing.to_dict()),
        "classes": json.dumps(list(weights.classes)),
        "sha256": weights_sha256(state),
        **{k: json.dumps(v) for k, v in weights.metadata.items()},
    }
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=header))


def read_safetensors(path: Path, label: str | None = None) -> Weights:
    """A file written by ``save_weights``; refused in one line if it is truncated, tampered with, foreign or made
    for other preprocessing."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise CatDogError(f"cannot read weights file {path}: not a whole safetensors file ({err})") from err
    if header.get("format") != FORMAT:
        raise CatDogError(f"weights file {path} is not a catdog weights file (format {header.get('format')!r})")
    if header.get("sha256") != weights_sha256(state):
        raise CatDogError(f"weights file {path} has been altered: its tensors do not match their SHA-256")
    try:
        classes = tuple(json.loads(header["classes"]))
        preprocessing = json.loads(header["preprocessing"])
        metadata = {k: json.loads(v) for k, v in header.items() if k not in ("format", "sha256", "classes")}
    except (KeyError, ValueError) as err:
        raise CatDogError(f"weights file {path} has an unreadable header ({err})") from err
    if classes != CLASSES:
        raise CatDogError(f"weights file {path} is for classes {list(classes)}, not {list(CLASSES)}")
    metadata.pop("preprocessing")
    source = f"{label} ({path})" if label else str(path)
    weights = Weights(state, Preprocessing.from_dict(preprocessing, str(path)), source, metadata)
    check_state(CatDogCNN(input_size=weights.preprocessing.image_size), state, str(path))
    return weights


def run_folder(spec: str) -> Path | None:
    """The train.py run a ``ckpt=`` setting points into (``<run>/checkpoints/*.ckpt``), or None: where the atlas and
    the projector of those weights go."""
    if spec in ("none", "pretrained"):
        return None
    path = newest("checkpoints/best-*.ckpt") if spec == "latest" else Path(spec).expanduser()
    return path.parent.parent if path is not None and path.parent.name == "checkpoints" else None


def weights_fingerprint(model: torch.nn.Module, preprocessing: dict | None) -> str:
    """What an atlas or a projector is valid for: these weights (``weights_sha256``) seen through this
    preprocessing."""
    text = json.dumps({"weights": weights_sha256(model.state_dict()), "preprocessing": preprocessing}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
