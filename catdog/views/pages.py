"""What the explorer and atlas pages share: data URIs, sprite sheets, safe JSON in a page, the common script.

A page is one self-contained HTML file: every picture is a ``data:`` URI, the data rides in a
``<script type="application/json">`` block, and a little plain JavaScript draws it. No network, no server.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
from PIL import Image

from catdog.views.plots import colormap


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


def to_uint8_by_channel(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each channel of a (C, H, W) array scaled min..max to 0..255 for display; returns (uint8 maps, min, max,
    constant mask). A constant channel (dead: std 0) becomes a flat 128, never NaN; NaN and inf count as 0."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = a.reshape(len(a), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    constant = hi <= lo
    span = np.where(constant, 1.0, hi - lo)
    scaled = (a - lo[:, None, None]) / span[:, None, None] * 255
    scaled[constant] = 128
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8), lo, hi, constant


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


CSS = """
body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:16px 0 6px}
.muted{color:#666} .row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0} figcaption{font-size:12px;color:#444;max-width:320px}
canvas.pix,img.pix{image-rendering:pixelated;image-rendering:crisp-edges}
.strip{display:flex;flex-wrap:wrap;gap:2px}
.tile{width:44px;height:44px;cursor:pointer;outline:2px solid transparent;background:#ddd}
.tile.sel{outline:3px solid #e0245e;z-index:1}
.crops{display:flex;flex-wrap:wrap;gap:4px}
.crop{width:64px;height:64px;background:#888}
.bar{display:inline-block;height:8px;background:#4a7;vertical-align:middle}
a{color:#1a5fb4}
"""

# Shared by both pages: decode a grey sprite once, colour it with the lookup table, cut tiles out by offset.
COMMON_JS = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
const LUT = DATA.lut;
const sheets = new Map();
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('cannot decode an embedded image'));
    img.src = src;
  });
}
// A sprite sheet decoded once and kept as a canvas; grey sheets are coloured through the viridis table.
function sheet(key, src, colour) {
  if (!sheets.has(key)) {
    sheets.set(key, loadImage(src).then(img => {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      if (colour) {
        const d = ctx.getImageData(0, 0, c.width, c.height), p = d.data;
        for (let i = 0; i < p.length; i += 4) {
          const v = p[i] * 3;
          p[i] = LUT[v]; p[i + 1] = LUT[v + 1]; p[i + 2] = LUT[v + 2]; p[i + 3] = 255;
        }
        ctx.putImageData(d, 0, 0);
      }
      return c;
    }));
  }
  return sheets.get(key);
}
function drawTile(canvas, source, n, cols, w, h) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(source, (n % cols) * w, Math.floor(n / cols) * h, w, h, 0, 0, w, h);
}
function markDead(canvas) {
  const ctx = canvas.getContext('2d'), w = canvas.width, h = canvas.height;
  ctx.fillStyle = '#c8c8c8'; ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = '#dc2828'; ctx.lineWidth = Math.max(1, w / 12);
  ctx.beginPath(); ctx.moveTo(0, 0); ctx.lineTo(w, h); ctx.moveTo(w, 0); ctx.lineTo(0, h); ctx.stroke();
}
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) e.append(c);
  return e;
}
function fmt(v) { return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(3); }
"""


def page(title: str, body: str, data: dict, script: str) -> str:
    """A whole self-contained HTML page: ``title`` escaped, ``body`` markup, ``data`` as safe JSON, the script."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
        f"<script type='application/json' id='data'>{json_for_script(data)}</script>\n"
        f"<script>{COMMON_JS}\n{script}</script>\n</body></html>\n"
    )
