"""The explorer: one self-contained HTML file that holds a network (its description, weights and preprocessing) and
runs it in the page, on any photo the user picks, drops or pastes, or on the webcam.

As CNN Explainer (Wang et al., IEEE VIS 2020), for the user's own weights: every recorded layer as a strip of
channel tiles, a channel's detail (its map, its receptive field over the input, its feature visualisation and the
dataset crops that excite it most when the page has them), Grad-CAM for dog and for cat, and channels switched off
with the prediction and every later layer recomputed. The front end lives in ``web/`` (``explorer.html``,
``explorer.css``, ``explorer.js`` and, in a Web Worker, ``network.js``, ``resize.js``, ``worker.js``); this module
gathers the data and ``render_page`` inlines it all into one offline file with a Content-Security-Policy that
forbids remote loads.

``visualize.py`` writes this page with its pictures preloaded (their network inputs, lossless), one page for a
folder; ``catdog.export format=html`` writes it with none.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from catdog.files import write_text
from catdog.preprocess import Preprocessing
from catdog.views.filters import CLASS_LAYER, CLASS_NAMES, cached_patterns, conv_layers
from catdog.views.network import describe, pack_weights
from catdog.views.pages import data_uri, render_page, shareable, sprite_sheet, viridis
from catdog.weights import weights_sha256

PATTERN_QUALITY = 90  # JPEG without chroma subsampling: half a PNG's bytes for these small pictures
PATTERNS_HELP = "its feature visualisation is not at hand: python visualize.py mode=filters layer=<this layer> makes it"


@dataclass
class PageImage:
    """A picture the page is written with: its name and its network input ((H, W, 3) uint8), and maps computed in
    Python for it (``attributions``: {method: {"dog": (H, W) uint8, "cat": ...}})."""

    name: str
    pixels: np.ndarray
    attributions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        buffer = io.BytesIO()  # lossless WebP: the exact network input in about 25 KB, a third less than PNG; effort
        # 4 of 6 at quality 50: 14 ms a picture, within 1% of the smallest (6: 1.5 s)
        Image.fromarray(self.pixels).save(buffer, "WEBP", lossless=True, quality=50, method=4)
        entry = {"name": self.name, "webp": base64.b64encode(buffer.getvalue()).decode()}
        if self.attributions:
            entry["attributions"] = {
                method: {which: data_uri(Image.fromarray(m), "PNG") for which, m in maps.items()}
                for method, maps in self.attributions.items()
            }
        return entry


def pattern_sprites(patterns: dict[str, np.ndarray]) -> dict[str, dict]:
    """{layer: (C, h, w, 3) uint8 feature visualisations} -> what the page cuts each channel's picture from."""
    out = {}
    for name, tiles in patterns.items():
        sheet, cols = sprite_sheet(tiles)
        sprite = data_uri(Image.fromarray(sheet), "JPEG", quality=PATTERN_QUALITY, subsampling=0)
        out[name] = {"sprite": sprite, "cols": cols, "size": [int(tiles.shape[1]), int(tiles.shape[2])]}
    return out


def known_patterns(model: nn.Module) -> dict:
    """The feature visualisations at hand for these weights, never computed here (a page stays quick): those that
    ship with the shipped weights, or those the cache holds (``python visualize.py mode=filters layer=...`` or
    ``python -m catdog.atlas`` fill it). Keyword arguments of ``explorer_data``."""
    fingerprint = weights_sha256(model.state_dict())
    found = {layer: cached_patterns(model, layer, fingerprint, compute=False) for layer in conv_layers(model)}
    found = {layer: p for layer, p in found.items() if p is not None}
    classes = cached_patterns(model, CLASS_LAYER, fingerprint, compute=False)
    return {
        "patterns": found or None,
        "class_patterns": None if classes is None else dict(zip(CLASS_NAMES, classes, strict=True)),
        "patterns_help": "" if len(found) == len(conv_layers(model)) else PATTERNS_HELP,
    }


def slim_atlas(atlas: dict, names: list[str]) -> dict:
    """What the page shows of an atlas (``catdog.views.channel_atlas``), for layers ``names``: per channel its top
    images as [file index, value] (4 digits), its class means, selectivity and dead share, and the crops; the file
    names once, in a list."""
    files: dict[str, int] = {}
    layers = {}
    for name in names:
        if name not in atlas["layers"]:
            continue
        layer = atlas["layers"][name]
        channels = []
        for ch in layer["channels"]:
            top = [[files.setdefault(t["file"], len(files)), float(f"{t['value']:.4g}")] for t in ch["top"]]
            channels.append({"top": top, **{k: ch[k] for k in ("cats", "dogs", "selectivity", "dead_share")}})
        layers[name] = {"crops": layer["crops"], "channels": channels}
    return {"layers": layers, "files": list(files), "images": atlas.get("images", 0), "source": atlas.get("data", "")}


def explorer_data(
    model: nn.Module,
    preprocessing: Preprocessing,
    title: str,
    source: str = "",
    images: list[PageImage] = (),
    gradcam_layer: str | None = None,
    atlas: dict | None = None,
    atlas_href: str | None = None,
    patterns: dict[str, np.ndarray] | None = None,
    class_patterns: dict[str, np.ndarray] | None = None,
    patterns_help: str = "",
    projector: dict | None = None,
    off: dict[str, list[int]] | None = None,
) -> dict:
    """Everything the page holds: the network (``catdog.views.network.describe``) and its weights, the pictures it
    opens with, and what is at hand of the dataset-wide views: an atlas of the same weights, feature
    visualisations per conv layer and per class, and the places of the pictures in a projector's map
    (``projector``: {"href": "projector.html", "points": {picture name: point index}}). ``off``: {layer: [channels]}
    switched off when the page opens."""
    network = describe(model, preprocessing, gradcam_layer)
    recorded = [layer["name"] for layer in network["layers"] if layer["record"]]
    page_atlas = None
    if atlas is not None:
        page_atlas = {**slim_atlas(atlas, recorded), "href": atlas_href}
    return {
        "title": title,
        "source": shareable(source),
        "network": network,
        "weights": pack_weights(model, network),
        "images": [image.to_dict() for image in images],
        "atlas": page_atlas,
        "patterns": pattern_sprites(patterns) if patterns else None,
        "class_patterns": {
            name: data_uri(Image.fromarray(pattern), "JPEG", quality=PATTERN_QUALITY)
            for name, pattern in (class_patterns or {}).items()
        }
        or None,
        "patterns_help": patterns_help,
        "projector": projector,
        "off": off or {},
        "lut": viridis(),
    }


def write_explorer(path: str | os.PathLike, data: dict) -> Path:
    """Write the page for ``explorer_data``'s result: one HTML file, nothing fetched when it opens."""
    return write_text(path, render_page("explorer.html", data, data["title"]))
