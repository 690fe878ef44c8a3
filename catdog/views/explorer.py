"""The explorer: one self-contained ``index.html`` per image, to click through what every channel of every layer saw.

As CNN Explainer (Wang et al., IEEE VIS 2020), in one file made by Python and a little plain JavaScript: at the top
the input, the prediction and Grad-CAM; below, every recorded layer as a strip of channel thumbnails (dead ones
crossed out). A click on a channel opens its detail: the map enlarged with its value range, the map laid over the
input where each position's receptive field is centred, the channel's filter pattern for a conv layer, and, when an
atlas of the same weights is at hand, the dataset crops that excite the channel most and its cat/dog selectivity.
Filter patterns (gradient ascent for every conv channel: seconds on a CPU) are never computed for a page: they
come from the atlas or from the cache that ``python -m catdog.atlas`` fills (``patterns=only``: just those), and
a conv channel's detail says so where they are missing.
The arrow keys move between channels (left, right) and layers (up, down); the URL hash keeps the selection, so
``index.html#conv3/17`` links to one channel.

Each layer's maps travel as one grey sprite sheet (a PNG decoded once, when its strip scrolls into view, and
coloured in the page), so a page of 8 layers and 704 channels stays near 1 MB (about 4 MB with an atlas).
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from catdog.files import write_text
from catdog.hooks import ActivationRecorder
from catdog.model import describe
from catdog.views.pages import data_uri, escape, page, sprite_sheet, to_uint8_by_channel, viridis
from catdog.views.receptive import receptive_fields

PATTERN_STEPS = 10
PATTERN_STEP_SIZE = 0.03
PATTERN_QUALITY = 90  # JPEG without chroma subsampling: half a PNG's bytes for these noisy little images
PATTERN_MODES = ("none", "cached", "compute")
PATTERN_HELP = "python -m catdog.atlas patterns=only"  # how a user gets them (conf/atlas.yaml)


def cache_dir() -> Path:
    """Where filter patterns are kept between runs: ``$XDG_CACHE_HOME/catdog`` (``~/.cache/catdog``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catdog"


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's tensors (names, shapes, dtypes and bytes, in name order): which weights these are."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class _Reached(Exception):
    """Raised by a pre-hook to stop the forward pass at the layer whose input it captured."""


def channel_patterns(
    model: nn.Module,
    layer: str,
    size: tuple[int, int],
    steps: int = PATTERN_STEPS,
    step_size: float = PATTERN_STEP_SIZE,
    seed: int = 0,
) -> np.ndarray:
    """(C, h, w, 3) uint8: for each channel of conv ``layer``, the input of ``size`` (its receptive field) that
    maximises the channel's pre-activation at the central output position, by gradient ascent from grey (the
    Keras book's method, at the size one position sees: a full-size image would only tile it). Works on any model
    whose forward pass reaches the layer: a pre-hook captures the layer's input and stops the pass there."""
    conv = dict(model.named_modules())[layer]
    if not isinstance(conv, nn.Conv2d):
        raise KeyError(f"filter patterns need a conv layer; {layer!r} is a {type(conv).__name__}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    c = conv.out_channels
    x = (0.5 + 0.08 * (torch.rand(c, 3, *size, generator=generator) - 0.5)).to(device).requires_grad_()
    index = torch.arange(c, device=device)
    captured: dict[str, torch.Tensor] = {}

    def capture(module: nn.Module, inputs: tuple) -> None:
        captured["x"] = inputs[0]
        raise _Reached

    handle = conv.register_forward_pre_hook(capture)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                try:
                    model(x)
                except _Reached:
                    pass
                response = conv._conv_forward(captured.pop("x"), conv.weight, conv.bias)  # pre-activation
                h, w = response.shape[-2:]
                (grad,) = torch.autograd.grad(response[index, index, h // 2, w // 2].sum(), x)
                grad = grad / (grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
                with torch.no_grad():
                    x += step_size * grad
    finally:
        handle.remove()
    with torch.no_grad():
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-5)
        shown = ((x - mean) / std * 0.15 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (shown * 255).round().astype(np.uint8)


def pattern_cache_path(layer: str, size: tuple[int, int], weights_sha256: str) -> Path:
    key = f"{weights_sha256[:32]}-{layer}-{size[0]}x{size[1]}-{PATTERN_STEPS}-{PATTERN_STEP_SIZE}.npy"
    return cache_dir() / "patterns" / key


def cached_patterns(
    model: nn.Module, layer: str, size: tuple[int, int], weights_sha256: str, compute: bool = True
) -> np.ndarray | None:
    """``channel_patterns`` as kept in ``cache_dir()/patterns``, one file per weights and layer: they depend on the
    weights alone, not on the image. Not there yet: computed and kept when ``compute`` (the atlas does), else None
    (an explorer page, which must stay quick: the deepest layer's take seconds on a CPU)."""
    path = pattern_cache_path(layer, size, weights_sha256)
    if path.is_file():
        try:
            patterns = np.load(path)
            if patterns.dtype == np.uint8 and patterns.shape[1:] == (*size, 3):
                return patterns
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed
    if not compute:
        return None
    patterns = channel_patterns(model, layer, size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, patterns)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets its patterns, just not kept
    return patterns


def attach_patterns(
    model: nn.Module, entries: dict[str, dict], input_size: tuple[int, int], compute: bool = True
) -> int:
    """Add ``patterns`` (a sprite sheet of ``cached_patterns``) to each conv layer's entry (``type``, ``field``);
    with ``compute=False`` only where the cache has them. Returns how many layers got them."""
    sha, attached = None, 0
    for name, entry in entries.items():
        if entry["type"] == "conv":
            size = tuple(min(s, limit) for s, limit in zip(entry["field"]["size"], input_size, strict=True))
            sha = sha or state_sha256(model)
            patterns = cached_patterns(model, name, size, sha, compute)
            if patterns is None:
                continue
            sheet, cols = sprite_sheet(patterns)
            sprite = data_uri(Image.fromarray(sheet), "JPEG", quality=PATTERN_QUALITY, subsampling=0)
            entry["patterns"] = {"sprite": sprite, "cols": cols, "size": list(size)}
            attached += 1
    return attached


def slim_atlas(atlas: dict, names: list[str]) -> tuple[dict[str, dict], list[str]]:
    """What the explorer page shows of an atlas, for layers ``names``: per channel its top images as [file index,
    value] (4 digits), its class means, selectivity and dead share, and the crops; the file names once, in a list.
    The patterns ride on the layer entry itself, never a second time here."""
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
    return layers, list(files)


def layer_entry(name: str, module: nn.Module, a: np.ndarray, geometry, input_size: tuple[int, int]) -> dict:
    """What the page needs of one layer: its maps as one grey sprite sheet, value ranges, dead channels, the
    strongest position of each channel and the receptive field geometry."""
    maps, lo, hi, constant = to_uint8_by_channel(a)
    sheet, cols = sprite_sheet(maps)
    flat = np.nan_to_num(a.reshape(len(a), -1))
    peak = flat.argmax(axis=1)
    return {
        "name": name,
        "type": "conv" if isinstance(module, nn.Conv2d) else "pool",
        "channels": int(a.shape[0]),
        "height": int(a.shape[1]),
        "width": int(a.shape[2]),
        "sprite": data_uri(Image.fromarray(sheet, "L"), compress_level=6),
        "cols": cols,
        "min": [float(v) for v in lo],
        "max": [float(v) for v in hi],
        "mean": [round(float(v), 6) for v in flat.mean(axis=1)],
        "dead": [bool(v) for v in constant],
        "peak": [[int(p) // a.shape[2], int(p) % a.shape[2]] for p in peak],
        "field": geometry.to_dict(),
    }


def explorer_data(
    model: nn.Module,
    x: torch.Tensor,
    image: Image.Image,
    title: str,
    layers: str | list[str] | None = None,
    gradcam_layer: str | None = None,
    patterns: str = "cached",
    atlas: dict | None = None,
    source: str = "",
    recorded: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Everything ``index.html`` shows for one input ``x`` (1, 3, H, W) of ``model`` (shown as ``image``, the
    resized input): any sequential stack of ``Conv2d``/``MaxPool2d`` layers that the recorder finds.

    The prediction and Grad-CAM (on ``gradcam_layer``, by default the last conv layer) come when the model ends in
    one logit, as CatDogCNN does. ``patterns``, the filter patterns of conv channels: ``cached`` (the default)
    takes them from ``atlas`` or the cache, which ``python -m catdog.atlas`` fills (``patterns=only``: those
    alone), and never computes them, so a page stays quick; ``compute`` computes and caches what is missing;
    ``none``. ``atlas``: a loaded atlas of the same weights (``catdog.views.atlas.load_atlas``), whose crops and
    selectivity each channel's detail then shows. ``recorded``: the records (``ActivationRecorder``, on the CPU)
    and output of a forward pass of ``x`` that the caller has made already, saving another."""
    from catdog.views.gradcam import gradcam
    from catdog.views.plots import heatmap_overlay

    if patterns not in PATTERN_MODES:
        raise ValueError(f"patterns must be one of {', '.join(PATTERN_MODES)}, got {patterns!r}")
    fields = receptive_fields(model)
    recorder = ActivationRecorder(model, layers)
    modules = dict(recorder.modules)
    if recorded is None or list(recorded[0]) != list(modules):
        with recorder, torch.no_grad():
            output = model(x)
        recorded = recorder.records, output
    records, output = recorded
    input_size = (int(x.shape[-2]), int(x.shape[-1]))
    entries = []
    for name, record in records.items():
        entries.append(layer_entry(name, modules[name], record[0].float().numpy(), fields[name], input_size))

    prediction = grad = None
    if output.ndim == 2 and output.shape == (1, 1):
        logit = float(output[0, 0])
        label, probability = describe(logit)
        prediction = {"label": label, "probability": probability, "p_dog": float(torch.sigmoid(output[0, 0]))}
        convs = [n for n, m in ActivationRecorder(model, types=(nn.Conv2d,)).modules]
        target = gradcam_layer or (convs[-1] if convs else None)
        if target is not None:
            maps = gradcam(model, x, target)
            pixels = np.asarray(image)
            grad = {"layer": target}
            for which in ("dog", "cat"):  # photographs, as JPEG
                grad[which] = data_uri(heatmap_overlay(pixels, maps[which].cpu().numpy()), "JPEG", quality=85)
    files: list[str] = []
    if atlas is not None:
        slim, files = slim_atlas(atlas, [e["name"] for e in entries])
        for entry in entries:
            if entry["name"] in slim:
                entry["atlas"] = slim[entry["name"]]
                if patterns != "none" and "patterns" in atlas["layers"][entry["name"]]:  # these same weights'
                    entry["patterns"] = atlas["layers"][entry["name"]]["patterns"]
    if patterns != "none" and x.shape[1] == 3:
        missing = {e["name"]: e for e in entries if "patterns" not in e}
        attach_patterns(model, missing, input_size, compute=patterns == "compute")
    return {
        "title": title,
        "source": source,
        "image": {"src": data_uri(image), "width": image.width, "height": image.height},
        "prediction": prediction,
        "gradcam": grad,
        "atlas": None
        if atlas is None
        else {"source": atlas.get("data", ""), "images": atlas.get("images", 0), "files": files},
        "patterns_help": PATTERN_HELP if patterns != "none" else "",
        "layers": entries,
        "lut": viridis(),
    }


def write_index(path: str | os.PathLike, data: dict) -> Path:
    """Write the explorer page for ``explorer_data``'s result."""
    body = BODY.replace("{title}", escape(data["title"]))
    return write_text(path, page(f"{data['title']}: what each layer sees", body, data, SCRIPT))


def write_folder_index(path: str | os.PathLike, entries: list[dict], source: str = "") -> Path:
    """One page linking each image's explorer: ``entries`` of {"name", "href", "label", "probability", "thumb"}
    (``thumb`` a PIL image or None). Every name is escaped and every link quoted."""
    rows = []
    for e in entries:
        href = escape(urllib.parse.quote(e["href"]))
        thumb = e.get("thumb")
        img = f"<img src='{data_uri(thumb, 'JPEG', quality=80)}' width='64' alt=''>" if thumb is not None else ""
        guess = f"{escape(e['label'])} {e['probability']:.2f}" if e.get("label") else ""
        rows.append(f"<tr><td>{img}</td><td><a href='{href}'>{escape(e['name'])}</a></td><td>{guess}</td></tr>")
    body = f"<h1>{len(entries)} images</h1><p class='muted'>{escape(source)}</p><table>{''.join(rows)}</table>"
    return write_text(path, page("catdog explorer", body, {"lut": []}, ""))


BODY = """
<h1 id='title'>{title}</h1>
<p class='muted' id='source'></p>
<div class='row' id='top'>
  <figure><img id='input' class='pix' width='300' alt='input'>
    <figcaption>input, as the network sees it</figcaption></figure>
  <div id='prediction'></div>
  <figure id='gradcam-dog' hidden><img class='pix' width='300' alt='Grad-CAM dog'><figcaption></figcaption></figure>
  <figure id='gradcam-cat' hidden><img class='pix' width='300' alt='Grad-CAM cat'><figcaption></figcaption></figure>
</div>
<div style='display:flex;gap:24px;align-items:flex-start'>
  <main id='layers' style='flex:1 1 50%;min-width:300px'></main>
  <aside id='detail' style='flex:1 1 50%;position:sticky;top:0;max-height:100vh;overflow:auto;background:#fff;
    padding:12px;border:1px solid #ddd'>
    <h2 id='detail-title'></h2>
    <p id='detail-stats' class='muted'></p>
    <div class='row'>
      <figure><canvas id='detail-map' class='pix' style='width:300px'></canvas>
        <canvas id='colorbar' width='300' height='10' style='display:block;width:300px;height:10px'></canvas>
        <figcaption id='detail-range'></figcaption></figure>
      <figure><canvas id='detail-overlay' class='pix' style='width:300px'></canvas>
        <figcaption>over the input, each position at the centre of its receptive field; the box: the field of
        the strongest position (or the one under the pointer)</figcaption></figure>
      <figure id='detail-pattern-fig' hidden><canvas id='detail-pattern' class='pix' style='width:150px'></canvas>
        <figcaption>filter pattern: the input (receptive-field size) that excites this channel most</figcaption>
      </figure>
      <p id='detail-pattern-missing' class='muted' style='max-width:200px' hidden>filter pattern: not at hand
        for these weights. <code id='pattern-help'></code> (with the same <code>ckpt=</code>) computes every conv
        channel's in seconds, as any atlas run does; pages written after it show them.</p>
    </div>
    <div id='detail-atlas' hidden><h2>the dataset images that excite it most</h2><p id='atlas-stats'></p>
      <div class='crops' id='atlas-crops'></div></div>
    <p class='muted'>arrow keys: left/right channel, up/down layer; the address keeps the selection</p>
  </aside>
</div>
"""

SCRIPT = r"""
const layers = DATA.layers;
const index = new Map(layers.map((l, i) => [l.name, i]));
const tiles = [];
const api = window.explorer = {ready: false, lastSwitchMs: null, selected: null};
document.getElementById('source').textContent = DATA.source || '';
document.getElementById('pattern-help').textContent = DATA.patterns_help;
const inputImg = document.getElementById('input');
inputImg.src = DATA.image.src;
const input = loadImage(DATA.image.src);
if (DATA.prediction) {
  const p = DATA.prediction;
  document.getElementById('prediction').append(
    el('h2', {textContent: `${p.label} ${(100 * p.probability).toFixed(1)}%`}),
    el('p', {className: 'muted', textContent: `p(dog) = ${p.p_dog.toFixed(3)}`}));
}
if (DATA.gradcam) {
  for (const which of ['dog', 'cat']) {
    const fig = document.getElementById('gradcam-' + which);
    fig.hidden = false;
    fig.querySelector('img').src = DATA.gradcam[which];
    fig.querySelector('figcaption').textContent = `Grad-CAM: evidence for ${which} (${DATA.gradcam.layer})`;
  }
}
const main = document.getElementById('layers');
layers.forEach((L, li) => {
  const dead = L.dead.filter(Boolean).length;
  const f = L.field;
  const head = el('h2', {textContent: `${L.name}  ${L.channels} \u00d7 ${L.height} \u00d7 ${L.width}` +
    `  \u00b7 receptive field ${f.size[0]} px, step ${f.jump[0]}` + (dead ? `  \u00b7 ${dead} dead` : '')});
  const strip = el('div', {className: 'strip'});
  strip.dataset.layer = L.name;
  const row = [];
  for (let c = 0; c < L.channels; c++) {
    const t = el('canvas', {className: 'tile pix', title: `${L.name} channel ${c}` + (L.dead[c] ? ' (dead)' : '')});
    t.width = L.width; t.height = L.height;
    t.dataset.layer = L.name; t.dataset.channel = c;
    t.addEventListener('click', () => select(li, c, true));
    strip.append(t); row.push(t);
  }
  tiles.push(row);
  main.append(el('section', {id: 'layer-' + L.name}, head, strip));
});
const drawn = new Set();
function drawStrip(li) {
  if (drawn.has(li)) return Promise.resolve();
  drawn.add(li);
  const L = layers[li];
  return sheet('map' + li, L.sprite, true).then(s => {
    tiles[li].forEach((t, c) => { drawTile(t, s, c, L.cols, L.width, L.height); if (L.dead[c]) markDead(t); });
  });
}
const seen = new IntersectionObserver(items => {
  for (const it of items) if (it.isIntersecting) drawStrip(index.get(it.target.dataset.layer));
}, {rootMargin: '400px'});
document.querySelectorAll('.strip').forEach(s => seen.observe(s));

const mapCanvas = document.getElementById('detail-map');
const overlay = document.getElementById('detail-overlay');
const SCALE = 2;
let hover = null;
function fieldBox(L, i, j) {
  const f = L.field;
  return [f.left[1] + j * f.jump[1], f.left[0] + i * f.jump[0], f.size[1], f.size[0]];  // x, y, w, h
}
async function drawOverlay(L, c) {
  const img = await input;
  overlay.width = img.naturalWidth * SCALE; overlay.height = img.naturalHeight * SCALE;
  const ctx = overlay.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, overlay.width, overlay.height);
  const f = L.field;
  ctx.globalAlpha = L.dead[c] ? 0.25 : 0.6;
  ctx.drawImage(mapCanvas, f.x0 * SCALE, f.y0 * SCALE, L.width * f.cell_w * SCALE, L.height * f.cell_h * SCALE);
  ctx.globalAlpha = 1;
  const [i, j] = hover || L.peak[c];
  const [x, y, w, h] = fieldBox(L, i, j);
  ctx.strokeStyle = hover ? '#ffffff' : '#e0245e'; ctx.lineWidth = 2;
  ctx.strokeRect(x * SCALE, y * SCALE, w * SCALE, h * SCALE);
}
function drawColorbar() {
  const bar = document.getElementById('colorbar'), ctx = bar.getContext('2d');
  for (let x = 0; x < bar.width; x++) {
    const v = Math.round(x / (bar.width - 1) * 255) * 3;
    ctx.fillStyle = `rgb(${LUT[v]},${LUT[v + 1]},${LUT[v + 2]})`; ctx.fillRect(x, 0, 1, bar.height);
  }
}
drawColorbar();
async function select(li, c, byUser, scroll = byUser) {
  const t0 = performance.now();
  const L = layers[li];
  c = Math.max(0, Math.min(L.channels - 1, c));
  if (api.selected) tiles[api.selected[0]][api.selected[1]].classList.remove('sel');
  api.selected = [li, c];
  hover = null;
  const tile = tiles[li][c];
  tile.classList.add('sel');
  if (byUser) {
    history.replaceState(null, '', '#' + encodeURIComponent(L.name) + '/' + c);
  }
  if (scroll) tile.scrollIntoView({block: 'nearest'});
  const detail = document.getElementById('detail');
  detail.dataset.layer = L.name; detail.dataset.channel = c;
  document.getElementById('detail-title').textContent = `${L.name} / channel ${c}` + (L.dead[c] ? ' (dead)' : '');
  const f = L.field;
  document.getElementById('detail-stats').textContent =
    `${L.height} \u00d7 ${L.width} map, mean ${fmt(L.mean[c])}; strongest at (${L.peak[c][0]}, ${L.peak[c][1]}); ` +
    `receptive field ${f.size[0]} \u00d7 ${f.size[1]} px, step ${f.jump[0]} px`;
  document.getElementById('detail-range').textContent = L.dead[c]
    ? `constant: every position is ${fmt(L.min[c])} (a dead channel)`
    : `${fmt(L.min[c])} \u2026 ${fmt(L.max[c])}`;
  const s = await sheet('map' + li, L.sprite, true);
  drawTile(mapCanvas, s, c, L.cols, L.width, L.height);
  await drawOverlay(L, c);
  const patFig = document.getElementById('detail-pattern-fig');
  patFig.hidden = !L.patterns;
  document.getElementById('detail-pattern-missing').hidden = Boolean(L.patterns || L.type !== 'conv' ||
    !DATA.patterns_help);
  if (L.patterns) {
    const p = await sheet('pat' + li, L.patterns.sprite, false);
    drawTile(document.getElementById('detail-pattern'), p, c, L.patterns.cols, L.patterns.size[1], L.patterns.size[0]);
  }
  await drawAtlas(li, L, c);
  detail.dataset.ready = `${L.name}/${c}`;
  api.lastSwitchMs = performance.now() - t0;
}
async function drawAtlas(li, L, c) {
  const box = document.getElementById('detail-atlas');
  box.hidden = !L.atlas;
  if (!L.atlas) return;
  const A = L.atlas, ch = A.channels[c];
  const sel = ch.selectivity;
  document.getElementById('atlas-stats').textContent =
    `mean on cats ${fmt(ch.cats)}, on dogs ${fmt(ch.dogs)}: selectivity ${sel.toFixed(2)} ` +
    `(${sel > 0 ? 'dogs' : sel < 0 ? 'cats' : 'neither'}); dead on ${(100 * ch.dead_share).toFixed(1)}% of ` +
    `${DATA.atlas.images} images`;
  const crops = document.getElementById('atlas-crops');
  crops.replaceChildren();
  if (!ch.top.length) { crops.append(el('p', {textContent: 'no image excites it: dead on every image'})); return; }
  const s = await sheet('crops' + li, A.crops.sprite, false);
  ch.top.forEach(([file, value], r) => {  // [index into DATA.atlas.files, value]
    const cv = el('canvas', {className: 'crop pix', title: `${DATA.atlas.files[file]}: ${fmt(value)}`});
    drawTile(cv, s, c * A.crops.k + r, A.crops.cols, A.crops.cell[1], A.crops.cell[0]);
    crops.append(el('figure', {}, cv, el('figcaption', {textContent: fmt(value)})));
  });
}
mapCanvas.addEventListener('mousemove', e => {
  if (!api.selected) return;
  const [li, c] = api.selected, L = layers[li], r = mapCanvas.getBoundingClientRect();
  hover = [Math.min(L.height - 1, Math.floor((e.clientY - r.top) / r.height * L.height)),
           Math.min(L.width - 1, Math.floor((e.clientX - r.left) / r.width * L.width))];
  drawOverlay(L, c);
});
mapCanvas.addEventListener('mouseleave', () => {
  hover = null;
  if (api.selected) drawOverlay(layers[api.selected[0]], api.selected[1]);
});
document.addEventListener('keydown', e => {
  if (!api.selected || e.altKey || e.ctrlKey || e.metaKey) return;
  let [li, c] = api.selected;
  if (e.key === 'ArrowRight') {
    if (c + 1 < layers[li].channels) c++; else if (li + 1 < layers.length) { li++; c = 0; }
  }
  else if (e.key === 'ArrowLeft') { if (c > 0) c--; else if (li > 0) { li--; c = layers[li].channels - 1; } }
  else if (e.key === 'ArrowDown') { if (li + 1 < layers.length) li++; }
  else if (e.key === 'ArrowUp') { if (li > 0) li--; }
  else return;
  e.preventDefault();
  select(li, c, true);
});
function fromHash() {
  const m = /^#([^/]+)\/(\d+)$/.exec(location.hash);
  if (!m) return null;
  const li = index.get(decodeURIComponent(m[1]));
  return li === undefined ? null : [li, Math.min(+m[2], layers[li].channels - 1)];
}
window.addEventListener('hashchange', () => { const s = fromHash(); if (s) select(s[0], s[1], false, true); });
const linked = fromHash(), start = linked || [0, 0];
select(start[0], start[1], false, Boolean(linked)).then(() => drawStrip(start[0])).then(() => { api.ready = true; });
"""
