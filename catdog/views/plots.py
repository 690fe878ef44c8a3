"""Pictures from plain arrays: channel grids, pages of grids, overlays. PIL and NumPy only, so drawing is fast."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from catdog.files import atomic_write

NORMS = ("channel", "layer", "none")
SEPARATOR = 2  # pixels between tiles
BACKGROUND = (255, 255, 255)
DEAD_TILE = (200, 200, 200)
DEAD_MARK = (220, 40, 40)


@cache
def colormap(name: str = "viridis") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.arange(256))[:, :3] * 255).round().astype(np.uint8)


@cache
def font(size: int = 14) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def channel_stats(a: np.ndarray) -> dict:
    """Shape, min/max/mean and the number of dead channels (constant: std 0) of a (C, H, W) array."""
    flat = a.reshape(len(a), -1)
    return {
        "shape": list(a.shape),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "dead_channels": int((flat.std(axis=1) == 0).sum()),
    }


def scale_to_uint8(a: np.ndarray, norm: str = "channel") -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """Map a (C, H, W) float array to 0..255 for display. Returns (uint8 array, dead mask, value range or None).

    ``channel``: the seed's ``(x - mean) / std * 64 + 128`` per channel, clipped (no colorbar: each tile has
    its own scale). ``layer``: the same formula with one mean and std for the whole layer. ``none``: the raw
    values, min to max of the layer. The value range returned is what 0 and 255 stand for, for a colorbar.
    Dead channels (std 0) are reported, never divided by: no NaN.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    a = np.asarray(a, dtype=np.float64)  # a copy: the caller's array is never changed
    std = a.reshape(len(a), -1).std(axis=1)
    dead = std == 0
    if norm == "channel":
        mean = a.reshape(len(a), -1).mean(axis=1)
        scaled = (a - mean[:, None, None]) / np.where(dead, 1, std)[:, None, None] * 64 + 128
        value_range = None
    elif norm == "layer":
        mean, layer_std = a.mean(), a.std() or 1.0
        scaled = (a - mean) / layer_std * 64 + 128
        value_range = (mean - 2 * layer_std, mean + 127 / 64 * layer_std)
    else:
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) / ((hi - lo) or 1.0) * 255
        value_range = (lo, hi)
    return np.clip(scaled, 0, 255).astype(np.uint8), dead, value_range


def tile_scale(size: int, min_tile: int = 48) -> int:
    """Integer upscaling so that small maps (7x7 after pool4) are still visible."""
    return max(1, -(-min_tile // size))


def feature_grid(
    a: np.ndarray,
    per_row: int = 16,
    norm: str = "channel",
    title: str | None = None,
    min_tile: int = 48,
    cmap: str = "viridis",
) -> Image.Image:
    """All channels of a (C, H, W) array as a grid of coloured tiles, ``per_row`` per row, none dropped.

    Tiles are separated by thin white lines; a dead channel is a grey tile with a red cross. A title goes on top;
    for ``norm`` layer/none a colorbar with the value range goes underneath.
    """
    values, dead, value_range = scale_to_uint8(a, norm)
    k = tile_scale(min(values.shape[1:]), min_tile)
    tiles = colormap(cmap)[values.repeat(k, axis=1).repeat(k, axis=2)]  # (C, H*k, W*k, 3)
    side = min(tiles.shape[1:3])
    idx = np.arange(side)
    for c in np.flatnonzero(dead):
        tiles[c] = DEAD_TILE
        tiles[c, idx, idx] = tiles[c, idx, side - 1 - idx] = DEAD_MARK  # a red X
    grid = tile(tiles, per_row)
    image = Image.fromarray(grid)
    if value_range is not None:
        image = below(image, colorbar(image.width, value_range, cmap))
    return with_title(image, title) if title else image


def tile(tiles: np.ndarray, per_row: int = 16) -> np.ndarray:
    """Lay (N, H, W, 3) uint8 tiles out in rows of ``per_row``, separated by thin white lines; none dropped."""
    n, th, tw, _ = tiles.shape
    cols = min(per_row, n)
    rows = -(-n // cols)
    grid = np.full((rows * (th + SEPARATOR) - SEPARATOR, cols * (tw + SEPARATOR) - SEPARATOR, 3), 255, np.uint8)
    for i in range(n):
        y, x = divmod(i, cols)
        grid[y * (th + SEPARATOR) : y * (th + SEPARATOR) + th, x * (tw + SEPARATOR) : x * (tw + SEPARATOR) + tw] = (
            tiles[i]
        )
    return grid


def layer_pages(records: dict[str, np.ndarray], per_row: int = 16, norm: str = "channel") -> dict[str, Image.Image]:
    """One titled grid per layer from ``{name: (C, H, W) array}``."""
    return {
        name: feature_grid(a, per_row, norm, title=f"{name}  {a.shape[0]} x {a.shape[1]} x {a.shape[2]}")
        for name, a in records.items()
    }


def colorbar(width: int, value_range: tuple[float, float], cmap: str = "viridis", height: int = 12) -> Image.Image:
    """A horizontal colour ramp labelled with the values its ends stand for."""
    width = max(width, 200)
    ramp = colormap(cmap)[np.linspace(0, 255, width).astype(int)]
    bar = Image.new("RGB", (width, height + 20), BACKGROUND)
    bar.paste(Image.fromarray(np.repeat(ramp[None], height, axis=0)), (0, 0))
    draw = ImageDraw.Draw(bar)
    lo, hi = f"{value_range[0]:.3g}", f"{value_range[1]:.3g}"
    draw.text((0, height + 2), lo, fill=(0, 0, 0), font=font(12))
    draw.text((width - draw.textlength(hi, font=font(12)), height + 2), hi, fill=(0, 0, 0), font=font(12))
    return bar


def with_title(image: Image.Image, title: str, size: int = 16) -> Image.Image:
    band = Image.new("RGB", (max(image.width, int(font(size).getlength(title)) + 8), size + 10), BACKGROUND)
    ImageDraw.Draw(band).text((4, 4), title, fill=(0, 0, 0), font=font(size))
    return below(band, image)


def below(*images: Image.Image, gap: int = 0) -> Image.Image:
    """Stack images vertically, left-aligned, on white."""
    page = Image.new(
        "RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)), BACKGROUND
    )
    y = 0
    for image in images:
        page.paste(image, (0, y))
        y += image.height + gap
    return page


def beside(*images: Image.Image, gap: int = 12) -> Image.Image:
    """Put images side by side, top-aligned, on white."""
    page = Image.new(
        "RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)), BACKGROUND
    )
    x = 0
    for image in images:
        page.paste(image, (x, 0))
        x += image.width + gap
    return page


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Blend a (H, W) heatmap in [0, 1] (same size as the (H, W, 3) uint8 image) over the image."""
    colours = colormap(cmap)[np.clip(heat * 255, 0, 255).astype(np.uint8)].astype(np.float32)
    return Image.fromarray((image.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (never a truncated file under the final name)."""
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))  # 2x faster than 6
