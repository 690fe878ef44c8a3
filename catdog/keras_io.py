"""Open a model trained with the Keras seed: a ``.keras`` file (Keras 3) or an ``.h5`` file (Keras 2, tf.keras, or
Keras 3's legacy ``model.save("model.h5")``), read with ``h5py`` alone; no TensorFlow, no Keras.

The architecture is checked layer by layer against the seed's (4 Conv2D 3x3 relu with 32/64/128/128 filters, each
followed by MaxPooling2D 2x2, Flatten, Dense 512 relu, Dense 1 sigmoid; Dropout layers anywhere, since they do
nothing at inference): first from the model's config in the file, then from the arrays' shapes. A mismatch is a
``CatDogError`` naming the layer. The arrays are ported by ``catdog.model.load_keras_weights``; the preprocessing is
the seed's (nearest resize, 1/255), at the input size the config gives (150 x 150 when it gives none).

File layouts read:

- ``.keras``: a zip holding ``config.json`` (the model's config) and ``model.weights.h5`` whose group
  ``layers/<key>/vars`` holds datasets ``0``, ``1``, ... in the layer's variable order (kernel, bias); the key is
  the layer's class in snake case, numbered per class (``conv2d``, ``conv2d_1``, ...), not its name;
- ``.h5`` (legacy HDF5): the config as JSON in the root's ``model_config`` attribute, the weights in group
  ``model_weights`` (``layer_names`` attribute; per layer, a ``weight_names`` attribute naming its datasets in order).
  A weights-only file (``model.save_weights`` in Keras 2) has ``layer_names`` on the root and no config: then only
  the arrays' shapes are checked.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catdog import CatDogError
from catdog.files import natural_key
from catdog.model import INPUT_SIZE, CatDogCNN, feature_size, load_keras_weights
from catdog.preprocess import Preprocessing

CONV_FILTERS = (32, 64, 128, 128)
IGNORED = ("InputLayer", "Dropout")  # no weights and no effect at inference


@dataclass(frozen=True)
class SeedLayer:
    """One layer of the seed's Keras model, as the file's config must describe it."""

    kind: str  # Keras class name
    units: int = 0  # Conv2D filters or Dense units
    activation: str = ""

    def __str__(self) -> str:
        if self.kind == "Conv2D":
            return f"Conv2D({self.units}, 3x3, relu)"
        if self.kind == "Dense":
            return f"Dense({self.units}, {self.activation})"
        return "MaxPooling2D(2x2)" if self.kind == "MaxPooling2D" else self.kind


SEED_LAYERS: tuple[SeedLayer, ...] = (
    *(layer for n in CONV_FILTERS for layer in (SeedLayer("Conv2D", n, "relu"), SeedLayer("MaxPooling2D"))),
    SeedLayer("Flatten"),
    SeedLayer("Dense", 512, "relu"),
    SeedLayer("Dense", 1, "sigmoid"),
)


@dataclass
class KerasLayer:
    """A layer as the file gives it: its name, class and config (both None in a weights-only file), its arrays."""

    name: str
    kind: str | None
    config: dict | None
    arrays: list[np.ndarray]


def read_keras(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Preprocessing, dict]:
    """The state dict of a Keras file of the seed's model, the seed's preprocessing, and what the file says of itself
    (Keras version, layout): ``catdog.weights.load_weights`` makes them a ``Weights`` whose source is the path.

    Raises ``CatDogError`` (one line naming the file, and the layer where it matters) for a file that is not a
    Keras model file, or is one of another architecture."""
    path = Path(path)
    label = str(path)
    try:
        import h5py  # noqa: F401  (an optional dependency: say how to get it before anything else fails)
    except ImportError:
        raise CatDogError(f"reading the Keras file {label} needs h5py: pip install 'catdog[keras]'") from None
    try:
        if zipfile.is_zipfile(path):
            config, layers, info = _read_keras_zip(path, label)
        else:
            config, layers, info = _read_legacy_h5(path, label)
    except (OSError, KeyError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        raise CatDogError(f"cannot read the Keras file {label}: {err}") from err

    weighted = _check_layers(layers, label, config is not None)
    image_size = _input_size(config, label) if config is not None else INPUT_SIZE
    try:
        model = CatDogCNN(input_size=image_size)
    except ValueError as err:
        raise CatDogError(f"{label}: {err}") from err
    _check_shapes(weighted, model, label)
    try:
        load_keras_weights(model, [array for layer in weighted for array in layer.arrays])
    except ValueError as err:  # the shape checks above should have said it in Keras's terms already
        raise CatDogError(f"{label}: {err}") from err
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, Preprocessing(image_size=image_size), info


# ---- reading the two file layouts -------------------------------------------------------------------------------


def _read_keras_zip(path: Path, label: str) -> tuple[dict, list[KerasLayer], dict]:
    """A Keras 3 ``.keras`` archive: config.json and model.weights.h5."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "config.json" not in names or "model.weights.h5" not in names:
            raise CatDogError(
                f"{label} is a zip file but not a Keras model archive (no config.json and model.weights.h5)"
            )
        config = _json(archive.read("config.json"), label)
        info = _json(archive.read("metadata.json"), label) if "metadata.json" in names else {}
        weights_h5 = io.BytesIO(archive.read("model.weights.h5"))
    info = {"format": ".keras", "keras_version": str(info.get("keras_version", "unknown"))}
    entries = _config_layers(config, label)
    with h5py.File(weights_h5, "r") as f:
        roots = [f[key] for key in ("layers", "_layer_checkpoint_dependencies") if key in f]
        layers, used = [], {}
        for kind, name, layer_config in entries:
            key = _storage_key(kind, used)
            group = next((root[key] for root in roots if key in root), None)
            arrays = []
            if group is not None and "vars" in group:
                variables = group["vars"]
                arrays = [np.asarray(variables[k]) for k in sorted(variables, key=natural_key)]
            layers.append(KerasLayer(name, kind, layer_config, arrays))
    return config, layers, info


def _read_legacy_h5(path: Path, label: str) -> tuple[dict | None, list[KerasLayer], dict]:
    """A legacy HDF5 file: a whole model (``model_config`` + ``model_weights``) or only weights (``layer_names``)."""
    import h5py

    if not h5py.is_hdf5(path):
        raise CatDogError(f"{label} is neither a Keras 3 .keras archive nor a Keras HDF5 (.h5) file")
    with h5py.File(path, "r") as f:
        if "layers" in f and "layer_names" not in f.attrs and "model_weights" not in f:
            raise CatDogError(
                f"{label} holds only weights, in Keras 3's model.save_weights layout, without the model's config; "
                'save the whole model instead: model.save("model.keras")'
            )
        weights_group = f["model_weights"] if "model_weights" in f else f
        if not _has_attr_list(weights_group, "layer_names"):
            raise CatDogError(f"{label} is an HDF5 file but not a Keras model (no model_weights or layer_names)")
        backend = _text(weights_group.attrs.get("backend", f.attrs.get("backend", "")))
        if backend == "theano":
            raise CatDogError(
                f"{label} was saved by Keras on Theano, whose conv kernels are flipped; load it with Keras 2 on "
                "TensorFlow and save it again"
            )
        info = {
            "format": ".h5",
            "keras_version": _text(weights_group.attrs.get("keras_version", f.attrs.get("keras_version", "unknown"))),
        }
        config = _json(_text(f.attrs["model_config"]), label) if "model_config" in f.attrs else None
        stored = {}
        for name in _attr_list(weights_group, "layer_names"):
            group = weights_group[name]
            stored[name] = [np.asarray(group[w]) for w in _attr_list(group, "weight_names")]
    if config is None:  # weights only: the layers that hold arrays, in the file's order
        return None, [KerasLayer(name, None, None, arrays) for name, arrays in stored.items() if arrays], info
    return config, [KerasLayer(n, k, c, stored.get(n, [])) for k, n, c in _config_layers(config, label)], info


def _config_layers(config: dict, label: str) -> list[tuple[str, str, dict]]:
    """(class name, layer name, layer config) for each layer of a Sequential or Functional model's config."""
    kind = config.get("class_name")
    body = config.get("config")
    layers = body if isinstance(body, list) else (body or {}).get("layers")  # Keras <= 2.2: Sequential's is a list
    if kind not in ("Sequential", "Functional", "Model") or not isinstance(layers, list):
        raise CatDogError(f"{label} holds a {kind} model; only a Sequential or Functional model of the seed's layers")
    out = []
    for entry in layers:
        layer_config = entry.get("config") or {}
        name = layer_config.get("name") or entry.get("name") or "?"
        out.append((str(entry.get("class_name")), str(name), layer_config))
    return out


# ---- checking the architecture ----------------------------------------------------------------------------------


def _input_size(config: dict, label: str) -> tuple[int, int]:
    """(height, width) of the model's input from its config: an InputLayer's batch shape, the first layer's
    ``batch_input_shape`` (Keras 2's ``input_shape=``) or Sequential's ``build_input_shape``; else 150 x 150."""
    body = config.get("config")
    body = body if isinstance(body, dict) else {}
    shape = None
    for _, _, layer_config in _config_layers(config, label):
        shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
        if shape:
            break
    shape = shape or body.get("build_input_shape")
    if not shape or len(shape) != 4:
        return INPUT_SIZE
    _, height, width, channels = shape
    if channels is not None and channels != 3:
        raise CatDogError(f"{label}: the model's input has {channels} channels, the seed's has 3 (RGB)")
    if height is None or width is None:
        return INPUT_SIZE
    return int(height), int(width)


def _check_layers(layers: list[KerasLayer], label: str, has_config: bool) -> list[KerasLayer]:
    """Compare the file's layers with the seed's, in order; return the layers that hold weights (conv, dense)."""
    if not has_config:  # a weights-only file: 4 conv kernels and 2 dense ones, checked by shape later
        if len(layers) != 6:
            names = ", ".join(layer.name for layer in layers)
            raise CatDogError(f"{label} holds weights for {len(layers)} layers ({names}); the seed's model has 6")
        return layers
    used = [layer for layer in layers if layer.kind not in IGNORED]
    for position, seed in enumerate(SEED_LAYERS):
        if position >= len(used):
            last = f"ends after layer {used[-1].name}" if used else "has no layers"
            raise CatDogError(f"{label}: the model {last}; the seed's goes on with {seed}")
        _check_layer(used[position], seed, label)
    if len(used) > len(SEED_LAYERS):
        extra = used[len(SEED_LAYERS)]
        raise CatDogError(f"{label}: layer {extra.name} ({extra.kind}) comes after the seed's last layer, Dense(1)")
    return [layer for layer in used if layer.kind in ("Conv2D", "Dense")]


def _check_layer(layer: KerasLayer, seed: SeedLayer, label: str) -> None:
    cfg = layer.config or {}
    where = f"{label}: layer {layer.name}"
    if layer.kind != seed.kind:
        raise CatDogError(f"{where} is {_a(str(layer.kind))}, the seed's has {_a(str(seed))} there")

    def expect(key: str, wanted: Any, default: Any, what: str) -> None:
        value = cfg.get(key, default)
        if value is None:
            value = default
        if isinstance(wanted, tuple):
            value = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
        if value != wanted:
            shown = "x".join(map(str, value)) if isinstance(value, tuple) else value
            expected = "x".join(map(str, wanted)) if isinstance(wanted, tuple) else wanted
            raise CatDogError(f"{where} has {what} {shown}, the seed's has {expected}")

    if seed.kind == "Conv2D":
        filters = cfg.get("filters")
        if filters != seed.units:
            raise CatDogError(f"{where} has {filters} filters, the seed's has {seed.units}")
        expect("kernel_size", (3, 3), None, "kernel size")
        expect("strides", (1, 1), (1, 1), "strides")
        expect("padding", "valid", "valid", "padding")
        expect("dilation_rate", (1, 1), (1, 1), "dilation rate")
        expect("groups", 1, 1, "groups")
    elif seed.kind == "MaxPooling2D":
        expect("pool_size", (2, 2), (2, 2), "pool size")
        expect("strides", (2, 2), cfg.get("pool_size", (2, 2)), "strides")
        expect("padding", "valid", "valid", "padding")
    elif seed.kind == "Dense":
        units = cfg.get("units")
        if units != seed.units:
            raise CatDogError(f"{where} has {units} units, the seed's has {seed.units}")
    if seed.kind in ("Conv2D", "MaxPooling2D", "Flatten"):
        # channels_first would flatten (C, H, W) where the port expects Keras's default (H, W, C)
        expect("data_format", "channels_last", "channels_last", "data format")
    if seed.kind in ("Conv2D", "Dense"):
        activation = cfg.get("activation", "linear")
        activation = activation if isinstance(activation, str) else json.dumps(activation)
        if activation != seed.activation:
            raise CatDogError(f"{where} has activation {activation}, the seed's has {seed.activation}")
        expect("use_bias", True, True, "use_bias")


def _check_shapes(weighted: list[KerasLayer], model: CatDogCNN, label: str) -> None:
    """Each conv and dense layer holds a kernel and a bias of the seed's shapes (Keras's layout) at this input size."""
    h, w = feature_size(model.input_size)
    channels = (3, *CONV_FILTERS)
    expected = [((3, 3, channels[i], channels[i + 1]), (channels[i + 1],)) for i in range(4)]
    expected += [((h * w * 128, 512), (512,)), ((512, 1), (1,))]
    size = "x".join(map(str, model.input_size))
    for layer, shapes in zip(weighted, expected, strict=True):
        got = tuple(tuple(a.shape) for a in layer.arrays)
        if len(got) != 2:
            raise CatDogError(f"{label}: layer {layer.name} holds {len(got)} arrays, the seed's has 2 (kernel, bias)")
        for what, shape, wanted in zip(("kernel", "bias"), got, shapes, strict=True):
            if shape != wanted:
                at = f" for a {size} input" if layer is weighted[4] and what == "kernel" else ""
                raise CatDogError(
                    f"{label}: layer {layer.name} has a {what} of shape {shape}, the seed's has {wanted}{at}"
                )
        for array in layer.arrays:
            if not np.issubdtype(array.dtype, np.floating):
                raise CatDogError(f"{label}: layer {layer.name} holds {array.dtype} arrays, not floating point")


# ---- small HDF5 and JSON helpers --------------------------------------------------------------------------------


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _json(data: str | bytes, label: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as err:
        raise CatDogError(f"{label} has an unreadable model config ({err})") from err
    if not isinstance(value, dict):
        raise CatDogError(f"{label} has an unreadable model config (not a JSON object)")
    return value


def _has_attr_list(group: Any, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _attr_list(group: Any, name: str) -> list[str]:
    """A list of names stored as an HDF5 attribute; Keras splits one over 64 KiB into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [_text(item) for chunk in chunks for item in np.atleast_1d(chunk).tolist()]


def _storage_key(kind: str, used: dict[str, int]) -> str:
    """Where a .keras file keeps a layer's variables: not under its name (names are generated, so not reproducible)
    but under its class name in snake case, numbered per class in layer order: conv2d, conv2d_1, ..., dense_1."""
    name = re.sub(r"\W+", "", kind)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name

