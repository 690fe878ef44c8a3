"""How a page is written: one self-contained HTML file from the files in ``web/`` (its markup, styles and scripts,
inlined), its data as safe JSON, its pictures as ``data:`` URIs. No network, no server, no build step.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from catdog.views.plots import colormap

WEB = Path(__file__).resolve().parent / "web"  # the pages' own files: .html, .css, .js (package data)


def data_uri(image: Image.Image, format: str = "PNG", **options) -> str:
    """A PIL image as a ``data:`` URI (PNG by default; JPEG for photographs)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return f"data:image/{format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def sprite_sheet(tiles: np.ndarray, cols: int | None = None) -> tuple[np.ndarray, int]:
    """(N, h, w[, 3]) tiles -> one array with ``cols`` tiles per row, tile n at ((n % cols) * w, (n // cols) * h),
    no gaps; returns (sheet, cols). A page cuts tile n out by that offset (one decoded image per layer)."""
    n, h, w = tiles.shape[:3]
    cols = cols or max(1, int(np.ceil(np.sqrt(n * h / w))))
    rows = -(-n // cols)
    sheet = np.zeros((rows * h, cols * w, *tiles.shape[3:]), dtype=tiles.dtype)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tiles[i]
    return sheet, cols


def json_for_script(value) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` appears raw, so no
    file name can close the script or open a comment."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def escape(text: str) -> str:
    return html.escape(str(text), quote=True)


def viridis() -> list[int]:
    """The viridis lookup table flattened to 768 ints, for the page's colouring of grey sprites."""
    return colormap("viridis").reshape(-1).astype(int).tolist()


def shareable(source: str) -> str:
    """Where the weights came from, with each absolute path cut to its file name: a page is made to be passed on,
    and the folders of the machine that wrote it are nobody else's business."""
    return re.sub(r"(?<![^\s(])(?:[A-Za-z]:)?[\\/][^\s()]*[\\/]([^\\/\s()]+)", r"\1", source)


def _asset(name: str, inline: bool = True) -> str:
    text = (WEB / name).read_text(encoding="utf-8")
    if inline and re.search(r"</(script|style)", text, re.IGNORECASE):  # would end the inline element early
        raise ValueError(f"{name} contains a closing </script> or </style>; split the string")
    return text


def render_page(name: str, data: dict, title: str) -> str:
    """The page ``web/<name>`` as one self-contained file: each ``<link rel="stylesheet" href="F">`` and
    ``<script ... src="F"></script>`` of it replaced by the file ``web/F`` inline, ``title`` (escaped) in its
    ``<title>``, and ``data`` as safe JSON in its ``<script type="application/json" id="data">`` block."""
    page = _asset(name, inline=False)
    page = re.sub(r'<link rel="stylesheet" href="([\w.-]+)">', lambda m: f"<style>{_asset(m[1])}</style>", page)
    script = r'<script([^>]*?) src="([\w.-]+)"></script>'
    page = re.sub(script, lambda m: f"<script{m[1]}>{_asset(m[2])}</script>", page)
    page = page.replace("<title></title>", f"<title>{escape(title)}</title>", 1)
    block = '<script type="application/json" id="data"></script>'
    if block not in page:
        raise ValueError(f"{name} has no {block}")
    return page.replace(block, block.replace("></", f">{json_for_script(data)}</"), 1)
