"""The projector: where the network puts each image.

Every image becomes one vector at a layer (fc1's 512 values after its ReLU; a conv or pool layer's channel means),
the vectors are laid out in two dimensions (openTSNE's t-SNE, or UMAP), and two figures say how far to trust the
map: the share of each image's 10 nearest neighbours in the map that are among its 20 nearest in the full
embedding, and how often the 10 nearest share the image's class, in the map against in the full embedding.
``python -m catdog.projector`` runs it over a folder; ``write_projector`` writes ``projector.json`` and the page
(``web/projector.html``, ``.css``, ``.js``, inlined into one offline file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from catdog import CLASSES, CatDogError
from catdog.files import read_record, write_text
from catdog.hooks import ActivationRecorder
from catdog.views.pages import data_uri, render_page, shareable, sprite_sheet

FORMAT = "catdog-projector/1"
METHODS = ("tsne", "umap")
EMBEDDED_TYPES = (nn.Conv2d, nn.MaxPool2d, nn.Linear)
# fewer images than this get their first two principal components: a neighbour graph of 4 points (perplexity at
# most 1, 3 neighbours) runs, but says nothing that the plain projection does not
MIN_FOR_LAYOUT = 5
INSTALL_HINT = {"tsne": "openTSNE", "umap": "umap-learn"}


def embedding_layers(model: nn.Module) -> list[str]:
    """The layers an image can be embedded at, in forward order: conv and pool layers (their channel means) and
    dense layers of more than one output (fc1; fc2's single logit is no place for a map)."""
    return [
        name
        for name, m in model.named_modules()
        if name and isinstance(m, EMBEDDED_TYPES) and not (isinstance(m, nn.Linear) and m.out_features < 2)
    ]


class Embedder:
    """``embedder(x) -> (features (N, D), logits (N,))`` on the CPU, for a batch ``x`` of the network's inputs.

    The layer's output is read by an ``ActivationRecorder`` (a forward hook removed after every batch), as the
    network computes it: fc1 after its ReLU, a conv layer after its ReLU; a conv or pool map is reduced to its
    channel means on the model's device, so only (N, C) numbers come to the CPU."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        names = embedding_layers(model)
        if layer not in names:
            raise CatDogError(f"layer={layer!r} does not exist here; give one of {', '.join(names)}")
        self.model, self.layer = model, layer
        self.recorder = ActivationRecorder(model, [layer], device=None, types=EMBEDDED_TYPES)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.recorder, torch.no_grad():
            logits = self.model(x)[:, 0]
        out = self.recorder.records.pop(self.layer)
        features = out.float().mean((2, 3)) if out.ndim == 4 else out.float().flatten(1)
        return features.cpu(), logits.float().cpu()


def nearest(points: np.ndarray, k: int, metric: str = "euclidean", block: int = 512) -> np.ndarray:
    """(N, k) indices of each point's k nearest other points, nearest first, exactly (float64, in row blocks).
    ``metric``: ``euclidean`` or ``cosine`` (1 - cosine similarity; a zero vector is at distance 1 from all)."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be euclidean or cosine, got {metric!r}")
    x = torch.from_numpy(np.asarray(points, dtype=np.float64).reshape(len(points), -1))
    n = len(x)
    if not 0 < k < n:
        raise ValueError(f"k must be between 1 and {n - 1} for {n} points, got {k}")
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    squared = (x * x).sum(1)
    found = []
    for start in range(0, n, block):
        rows = x[start : start + block]
        # ranks by |a|^2 + |b|^2 - 2ab (the same order as the distance itself; for unit vectors, as 1 - cos)
        d = squared[start : start + block, None] + squared[None, :] - 2 * rows @ x.T
        d[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = math.inf  # not its own neighbour
        found.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(found).numpy()


def neighbour_figures(
    features: np.ndarray, layout: np.ndarray, labels: np.ndarray, k: int = 10, k_full: int = 20, metric: str = "cosine"
) -> dict:
    """How well the 2-D ``layout`` keeps the embedding's neighbourhoods.

    ``neighbours_kept``: for each image, the share of its ``k`` nearest in the map (euclidean) that are among its
    ``k_full`` nearest in the full embedding (``metric``), averaged over the images: 1 for a map that keeps every
    neighbourhood. ``class_agreement_map`` / ``class_agreement_full``: the share of each image's ``k`` nearest that
    have its class, averaged, in the map and in the full embedding. With fewer than 2 images there are no
    neighbours: the figures are None. ``k`` and ``k_full`` shrink to the number of other images."""
    n = len(features)
    k, k_full = min(k, n - 1), min(k_full, n - 1)
    figures: dict = {"k": k, "k_full": k_full, "metric": metric}
    if k < 1:
        return {**figures, "neighbours_kept": None, "class_agreement_map": None, "class_agreement_full": None}
    labels = np.asarray(labels)
    in_map = nearest(layout, k, "euclidean")
    in_full = nearest(features, k_full, metric)
    kept = (in_map[:, :, None] == in_full[:, None, :]).any(2).mean()
    same_map = (labels[in_map] == labels[:, None]).mean()
    same_full = (labels[in_full[:, :k]] == labels[:, None]).mean()
    return {
        **figures,
        "neighbours_kept": float(kept),
        "class_agreement_map": float(same_map),
        "class_agreement_full": float(same_full),
    }


def layout_2d(
    features: np.ndarray,
    method: str = "tsne",
    seed: int = 0,
    metric: str = "cosine",
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    threads: int | None = None,
) -> tuple[np.ndarray, dict]:
    """(N, 2) positions for the (N, D) ``features`` and the settings that made them, seeded.

    ``tsne``: openTSNE (PCA initialisation, perplexity, ``metric`` for the neighbours); ``umap``: umap-learn
    (``n_neighbors``, ``min_dist``, ``metric``; a seed makes UMAP run on one thread). Fewer than
    ``MIN_FOR_LAYOUT`` images get their first two principal components instead."""
    if method not in METHODS:
        raise CatDogError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = len(x)
    if n < MIN_FOR_LAYOUT:
        return principal_components(x), {
            "method": "pca",
            "why": f"only {n} images: too few for a neighbour layout ({method} from {MIN_FOR_LAYOUT} on)",
        }
    settings: dict = {"method": method, "metric": metric, "seed": seed}
    if method == "tsne":
        try:
            from openTSNE import TSNE
        except ImportError as err:
            raise CatDogError(missing_library(method)) from err
        # openTSNE lowers a perplexity too high for n itself, with a warning; do it here, quietly and on record
        perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
        tsne = TSNE(
            n_components=2, perplexity=perplexity, metric=metric, initialization="pca", random_state=seed,
            n_jobs=threads or 1, verbose=False,
        )  # fmt: skip
        with quiet("openTSNE"):  # it logs its automatic choices at INFO level
            positions = np.asarray(tsne.fit(x))
        settings["perplexity"] = perplexity
    else:
        try:
            import umap
        except ImportError as err:
            raise CatDogError(missing_library(method)) from err
        n_neighbors = int(min(n_neighbors, n - 1))
        reducer = umap.UMAP(
            n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed,
            init="spectral" if n > n_neighbors + 2 else "random",
        )  # fmt: skip
        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": the price of a seeded map
            warnings.filterwarnings("ignore", message=".*n_jobs.*random_state.*")
            positions = reducer.fit_transform(x)
        settings.update(n_neighbors=n_neighbors, min_dist=min_dist)
    return np.asarray(positions, dtype=np.float64), settings


@contextlib.contextmanager
def quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def require_library(method: str) -> None:
    """Refuse, in one line, a layout method whose library is not installed: before minutes of forward passes."""
    import importlib.util

    if method in INSTALL_HINT and importlib.util.find_spec({"tsne": "openTSNE", "umap": "umap"}[method]) is None:
        raise CatDogError(missing_library(method))


def missing_library(method: str) -> str:
    how = "pip install 'catdog[projector]'" if method == "tsne" else f"pip install {INSTALL_HINT[method]}"
    return f"method={method} needs {INSTALL_HINT[method]}: {how}"


def principal_components(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of ``x`` (zeros where there are fewer)."""
    centred = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(0)
    out = np.zeros((len(x), 2))
    if len(x) > 1:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        m = min(2, len(s))
        out[:, :m] = centred @ vt[:m].T
    return out


def thumbnails(pixels: torch.Tensor, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 thumbnails of a batch of (N, H, W, 3) uint8 pictures (the network's inputs, so the
    page shows what the network saw), each output pixel the average of the input pixels it covers (no aliasing)."""
    x = pixels.permute(0, 3, 1, 2).float()
    small = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def projector_record(
    files: list[str],
    labels: np.ndarray,
    logits: np.ndarray,
    features: np.ndarray,
    positions: np.ndarray,
    layout: dict,
    *,
    layer: str,
    data: str = "",
    source: str = "",
    fingerprint: str = "",
    preprocessing: dict | None = None,
    unreadable: list[str] | None = None,
    metric: str = "cosine",
) -> dict:
    """What ``projector.json`` holds: per image its ``path`` (relative to ``data``), ``label`` (true class),
    ``p_dog``, ``x``, ``y``; the layer, the layout's settings, the neighbour figures and the weights' fingerprint."""
    labels = np.asarray(labels, dtype=int)
    p_dog = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))
    figures = neighbour_figures(features, positions, labels, metric=metric)
    points = [
        {"path": f, "label": CLASSES[c], "p_dog": float(f"{p:.6g}"), "x": round(float(x), 4), "y": round(float(y), 4)}
        for f, c, p, (x, y) in zip(files, labels, p_dog, positions, strict=True)
    ]
    predicted = (p_dog > 0.5).astype(int)
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "source": source,
        "preprocessing": preprocessing,
        "data": data,
        "layer": layer,
        "dims": int(features.shape[1]) if features.ndim == 2 else 0,
        "layout": layout,
        "figures": figures,
        "images": len(points),
        "class_counts": {name: int((labels == i).sum()) for i, name in enumerate(CLASSES)},
        "accuracy": float((predicted == labels).mean()) if len(points) else None,
        "unreadable": list(unreadable or []),
        "points": points,
    }


def sprite(thumbs: np.ndarray, quality: int = 85) -> dict:
    """The thumbnails as ONE JPEG sprite sheet (tile n at column n % cols, row n // cols) for the page."""
    sheet, cols = sprite_sheet(np.asarray(thumbs, dtype=np.uint8))
    return {"src": data_uri(Image.fromarray(sheet), "JPEG", quality=quality), "cols": cols, "size": thumbs.shape[1]}


def page_data(record: dict, thumbs: np.ndarray, page_dir: Path, explorer: str | None) -> dict:
    """The page's data: the record, the sprite, where the images are as seen from the page's folder (``base``),
    and the explorer link template (``{path}``: the image's path from the page's folder, URI-encoded; ``{index}``)."""
    data_dir = Path(record["data"]).resolve() if record["data"] else Path.cwd()
    base = Path(os.path.relpath(data_dir, Path(page_dir).resolve())).as_posix()
    shown = {**record, "data": shareable(record["data"]), "source": shareable(record["source"])}  # no local folders
    return {**shown, "sprite": sprite(thumbs), "base": base, "explorer": explorer or ""}


def write_projector(
    out_dir: str | os.PathLike, record: dict, thumbs: np.ndarray, explorer: str | None = None
) -> tuple[Path, Path]:
    """Write ``projector.json`` and ``projector.html`` (one self-contained offline file) to ``out_dir``."""

    out = Path(out_dir)
    if len(thumbs) != record["images"]:
        raise ValueError(f"{len(thumbs)} thumbnails for {record['images']} images")
    json_path, html_path = out / "projector.json", out / "projector.html"
    write_text(json_path, json.dumps(record, indent=1) + "\n")
    title = f"projector: {record['images']} images at {record['layer']}"
    write_text(html_path, render_page("projector.html", page_data(record, thumbs, out, explorer), title))
    return json_path, html_path


def load_projector(path: str | os.PathLike, expected: str | None = None) -> dict:
    """Read ``projector.json`` (or the folder holding it); ``expected``: the fingerprint of the weights and
    preprocessing in use (``catdog.files.read_record``)."""
    return read_record(path, "projector", FORMAT, expected)
