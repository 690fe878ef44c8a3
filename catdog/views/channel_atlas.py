"""The atlas: for every channel of every recorded layer, the dataset images that excite it most (as OpenAI Microscope
and Network Dissection, Bau et al. CVPR 2017), the crop of each under the receptive field of its strongest position,
its mean activation on cats and on dogs, and the share of images on which it is dead.

One pass over the data. Each layer's output is reduced while the forward pass runs (hooks found by the recorder) and
merged into a running top-k per layer ((C, k) values, image ids, crops), so memory is bounded by k, the batch and
the layer sizes, never by the number of images, and no batch keeps a copy of its maps. ``atlas.json`` holds
the result (crops as one JPEG sprite sheet per layer) tied to its weights by a SHA-256 of the tensors and the
preprocessing; ``atlas.html`` shows it, a card per channel, sortable by selectivity.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from catdog import CLASSES, CatDogError
from catdog.files import read_record, write_text
from catdog.hooks import ActivationRecorder
from catdog.views.pages import data_uri, render_page, shareable, sprite_sheet
from catdog.views.receptive import receptive_fields

FORMAT = "catdog-atlas/1"
CROP_MAX = 64  # crops of larger receptive fields are shrunk to this many pixels a side
GREY = 128  # what a crop shows where its field reaches outside the image (padding)
CROP_QUALITY = 80  # JPEG quality of the crop sprites: photographs, seen at 64 px


class _LayerTopK:
    """Running state of one layer: top-k values, image ids, positions and crops per channel, class sums, dead counts.

    Each batch is reduced in its own dtype and on its own device (max, min and mean over positions: (B, C) numbers);
    only those small numbers come to the CPU. The strongest position is looked up only for the images that enter a
    channel's top k, and only the crops of channels whose top k changed are moved."""

    def __init__(self, channels: int, k: int, geometry, cell: tuple[int, int]) -> None:
        self.k, self.geometry, self.cell = k, geometry, cell
        self.values = torch.full((channels, k), float("-inf"), dtype=torch.float32)
        self.ids = torch.full((channels, k), -1, dtype=torch.long)
        self.positions = torch.zeros((channels, k, 2), dtype=torch.long)
        self.crops = np.full((channels, k, *cell, 3), GREY, dtype=np.uint8)
        self.sums = torch.zeros((len(CLASSES), channels), dtype=torch.float64)
        self.dead = torch.zeros(channels, dtype=torch.long)

    @property
    def nbytes(self) -> int:
        tensors = (self.values, self.ids, self.positions, self.sums, self.dead)
        return sum(t.numel() * t.element_size() for t in tensors) + self.crops.nbytes

    def update(self, a: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, pixels: np.ndarray) -> None:
        """One batch of maps ``a`` (B, C, H, W), any device and memory layout; ``pixels`` (B, height, width, 3)
        uint8: the input images, which crops are cut from."""
        b, c, h, w = a.shape
        flat = a.reshape(b, c, h * w)  # a view for contiguous and channels-last maps alike: no copy
        peak = flat.amax(dim=2).float().cpu()  # (B, C)
        dead = peak <= flat.amin(dim=2).float().cpu()  # constant maps: no response to rank
        means = flat.mean(dim=2).cpu().double()
        self.dead += dead.sum(0)
        self.sums.index_add_(0, labels, means)
        k = self.k
        candidates = torch.cat([self.values, peak.masked_fill(dead, float("-inf")).t()], dim=1)  # (C, k + B)
        values, order = candidates.topk(k, dim=1)
        new = order >= k  # slots now taken by an image of this batch
        real = new & torch.isfinite(values)
        if not real.any():
            return  # the top k of every channel is what it was
        kept = order.clamp_max(k - 1)  # for old entries: the slot they come from
        moved = order != torch.arange(k)  # newcomers, and old entries pushed down a slot
        ch, slot = torch.nonzero(real, as_tuple=True)
        images = order[ch, slot] - k
        # the strongest position, looked up for the newcomers only
        where = flat[images.to(a.device), ch.to(a.device)].argmax(dim=1).cpu()
        self.values = values
        self.ids = torch.where(new, -1, self.ids.gather(1, kept))
        self.ids[ch, slot] = ids[images]
        self.positions = torch.where(new[..., None], 0, self.positions[torch.arange(c)[:, None], kept])
        self.positions[ch, slot] = torch.stack([where // w, where % w], dim=1)
        changed = moved.any(dim=1).nonzero().squeeze(1).numpy()
        shuffled = self.crops[changed[:, None], kept[changed].numpy()]  # the kept crops in their new slots
        shuffled[new[changed].numpy()] = GREY
        self.crops[changed] = shuffled
        self.crops[ch.numpy(), slot.numpy()] = self._crops(pixels, images.numpy(), self.positions[ch, slot].numpy())

    def _crops(self, pixels: np.ndarray, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(n, cell, 3) uint8: the input under the field of each (image, position); grey where it reaches outside."""
        g = self.geometry
        height, width = pixels.shape[1:3]
        rows = (g.y.left + positions[:, 0] * g.y.jump)[:, None] + np.arange(g.y.size)  # (n, sy), unclipped
        cols = (g.x.left + positions[:, 1] * g.x.jump)[:, None] + np.arange(g.x.size)
        windows = pixels[images[:, None, None], rows.clip(0, height - 1)[:, :, None], cols.clip(0, width - 1)[:, None]]
        outside = ((rows < 0) | (rows >= height))[:, :, None] | ((cols < 0) | (cols >= width))[:, None, :]
        windows[outside] = GREY
        if windows.shape[1:3] != self.cell:
            t = torch.from_numpy(windows).permute(0, 3, 1, 2).float()
            t = F.interpolate(t, size=self.cell, mode="area")
            windows = t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        return windows


class _StreamingRecorder(ActivationRecorder):
    """The recorder's layer selection and hook handling, but each output is handed to ``consume(name, output)``
    inside the forward pass instead of being copied and kept: reduced before any later in-place op can change it,
    and let go as soon as the network has moved past it, so a batch never holds all its maps at once."""

    def __init__(self, model: nn.Module, layers, consume) -> None:
        super().__init__(model, layers, device=None)
        self.consume = consume

    def _hook(self, name: str):
        def stream(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.consume(name, output.detach())

        return stream


class AtlasBuilder:
    """Feed batches with ``update``; ``result`` returns the atlas as a plain dict (see ``write_atlas``).

    ``model`` is any network whose conv and pool layers the recorder finds in forward order (CatDogCNN, or a
    torchvision VGG's ``features``); ``layers`` selects some by name or glob, as in visualize.py.
    """

    def __init__(
        self, model: nn.Module, layers: str | Iterable[str] | None = None, k: int = 9, crop_max: int = CROP_MAX
    ) -> None:
        if k < 1:
            raise CatDogError(f"k must be at least 1, got {k}")
        self.model, self.k, self.crop_max = model, k, crop_max
        self.recorder = _StreamingRecorder(model, layers, self._consume)
        self.fields = receptive_fields(model)
        self.layers: dict[str, _LayerTopK] = {}
        self.files: list[str] = []
        self.labels: list[int] = []
        self.input_size = (0, 0)
        self._batch: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None
        self.seconds = {"forward": 0.0, "top-k": 0.0}  # where ``update``'s time went: the network, the reductions

    @property
    def names(self) -> list[str]:
        return self.recorder.names

    @property
    def nbytes(self) -> int:
        """Bytes held by the running state (the file list aside): constant once the first batch is in."""
        return sum(state.nbytes for state in self.layers.values())

    def update(self, x: torch.Tensor, labels: torch.Tensor, files: list[str], pixels: np.ndarray | None = None) -> None:
        """One batch: ``x`` (B, 3, H, W) in [0, 1] on the model's device, ``labels`` (B,) 0 = cats, 1 = dogs;
        ``pixels`` (B, H, W, 3) uint8, the same images as the crops should show them (by default ``x`` * 255)."""
        ids = torch.arange(len(self.files), len(self.files) + len(files))
        self.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        self.files += [str(f) for f in files]
        labels = labels.reshape(-1).long().cpu()
        self.labels += labels.tolist()
        if pixels is None:
            pixels = (x.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        self._batch = (labels, ids, np.asarray(pixels))
        start, top_k = time.perf_counter(), self.seconds["top-k"]
        try:
            with self.recorder, torch.no_grad():
                self.model(x)
        finally:
            self._batch = None
        self.seconds["forward"] += time.perf_counter() - start - (self.seconds["top-k"] - top_k)

    def _consume(self, name: str, a: torch.Tensor) -> None:
        start = time.perf_counter()
        if name not in self.layers:
            g = self.fields[name]
            cell = (min(g.y.size, self.crop_max), min(g.x.size, self.crop_max))
            self.layers[name] = _LayerTopK(a.shape[1], self.k, g, cell)
        self.layers[name].update(a, *self._batch)
        self.seconds["top-k"] += time.perf_counter() - start

    def result(
        self, data: str = "", source: str = "", fingerprint_: str = "", preprocessing: dict | None = None
    ) -> dict:
        """The atlas as a plain dict: per layer its receptive field, the crops sprite and a record per channel."""
        counts = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(CLASSES))
        n = len(self.files)
        if n == 0:
            raise CatDogError(f"no readable images under {data or 'the data'}")
        layers = {}
        modules = dict(self.recorder.modules)
        for name, state in self.layers.items():
            means = (state.sums / torch.from_numpy(np.maximum(counts, 1))[:, None]).numpy()
            cats, dogs = means[0], means[1]
            denominator = np.abs(cats) + np.abs(dogs)
            selectivity = np.where(denominator > 0, (dogs - cats) / np.where(denominator > 0, denominator, 1), 0.0)
            sheet, cols = sprite_sheet(state.crops.reshape(-1, *state.cell, 3), cols=self.k)
            channels = []
            for c in range(len(cats)):
                top = []
                for slot in range(self.k):
                    value = float(state.values[c, slot])
                    if not np.isfinite(value):
                        continue
                    i, j = (int(v) for v in state.positions[c, slot])
                    top.append(
                        {
                            "file": self.files[int(state.ids[c, slot])],
                            "value": round(value, 6),
                            "position": [i, j],
                            "box": list(state.geometry.box(i, j, *self.input_size)),
                        }
                    )
                channels.append(
                    {
                        "top": top,
                        "cats": round(float(cats[c]), 6),
                        "dogs": round(float(dogs[c]), 6),
                        "selectivity": round(float(selectivity[c]), 4),
                        "dead_share": round(float(state.dead[c]) / n, 4),
                    }
                )
            layers[name] = {
                "type": "conv" if isinstance(modules[name], nn.Conv2d) else "pool",
                "field": state.geometry.to_dict(),
                "crops": {
                    "sprite": data_uri(Image.fromarray(sheet), "JPEG", quality=CROP_QUALITY),
                    "cell": list(state.cell),
                    "cols": cols,
                    "k": self.k,
                },
                "channels": channels,
            }
        return {
            "format": FORMAT,
            "fingerprint": fingerprint_,
            "source": source,
            "preprocessing": preprocessing,
            "data": data,
            "images": n,
            "class_counts": {name: int(counts[i]) for i, name in enumerate(CLASSES)},
            "k": self.k,
            "layers": layers,
        }


def build_atlas(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]],
    layers: str | Iterable[str] | None = None,
    k: int = 9,
    **result_args,
) -> dict:
    """The atlas of ``model`` over ``batches`` of (x, labels, file names); see ``AtlasBuilder``."""
    builder = AtlasBuilder(model, layers, k)
    device = next(model.parameters()).device
    for x, labels, files in batches:
        if len(files):
            builder.update(x.to(device), labels, files)
    return builder.result(**result_args)


def write_atlas(out_dir: str | os.PathLike, atlas: dict, links: dict | None = None) -> tuple[Path, Path]:
    """``atlas.json`` and ``atlas.html`` into ``out_dir``. ``links``: {"projector": href, "explorer": href}, where a
    crop's whole picture can be seen (``web/atlas.js``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_text(out / "atlas.json", json.dumps(atlas, separators=(",", ":")) + "\n")
    title = f"atlas: {atlas['images']} images of {shareable(atlas['data'])}"  # no folders of this machine
    data = {"title": title, "source": shareable(atlas["source"]), "layers": atlas["layers"], "links": links or {}}
    html_path = write_text(out / "atlas.html", render_page("atlas.html", data, title))
    return json_path, html_path


def load_atlas(path: str | os.PathLike, expected: str | None = None) -> dict:
    """Read ``atlas.json`` (or the folder holding it); ``expected``: the fingerprint of the weights and preprocessing
    in use (``catdog.files.read_record``)."""
    return read_record(path, "atlas", FORMAT, expected)
