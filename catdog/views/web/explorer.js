// The explorer: the network runs in this page (a Web Worker: network.js, resize.js, worker.js), on a photo the
// user picks, drops or pastes, on the webcam, or on the pictures the page was written with. Every recorded layer
// is a strip of channel tiles; a click opens the channel's detail (its map, its receptive field over the input,
// its feature visualisation and dataset crops when the page has them) and lets the user switch channels off and
// watch the prediction and every later layer change. Its API, for tests and notebooks: window.catdog.
'use strict';

const DATA = JSON.parse(document.getElementById('data').textContent);
const NET = DATA.network;
const LUT = DATA.lut;
const RECORDED = NET.layers.filter(L => L.record);
const $ = id => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) e.append(c);
  return e;
}
function fmt(v) { return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(3); }
function status(text, ok = false) { $('status').textContent = text; $('status').className = ok ? 'ok' : ''; }
function base64Blob(text, type) {
  const raw = atob(text), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Blob([bytes], {type});
}

// ---- the worker -------------------------------------------------------------------------------------------
const source = ['worker-network', 'worker-resize', 'worker-main'].map(id => $(id).textContent).join('\n');
const worker = new Worker(URL.createObjectURL(new Blob([source], {type: 'text/javascript'})));
const pending = new Map();
let nextId = 0;
worker.onmessage = e => {
  const {id, ok, result, error} = e.data;
  const p = pending.get(id);
  pending.delete(id);
  if (ok) p.resolve(result); else p.reject(new Error(error));
};
function call(msg, transfer = []) {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, {resolve, reject});
    worker.postMessage({...msg, id}, transfer);
  });
}
const started = call({type: 'init', net: NET, weights: DATA.weights});

// ---- state --------------------------------------------------------------------------------------------------
const state = {result: null, clean: null, off: {}, selected: null, view: 'activation', image: null};
const api = window.catdog = {ready: false, network: NET, lastSwitchMs: null};
const tiles = new Map();  // layer name -> [canvas per channel]
const H = NET.input.size[0], Wd = NET.input.size[1];

function colour(ctx, a, offset, w, h, lo, hi, diverging) {
  const img = ctx.createImageData(w, h), p = img.data, span = hi - lo;
  for (let i = 0; i < w * h; i++) {
    const v = a[offset + i];
    if (diverging) {  // blue (less) - white - orange (more), by the largest change of the channel
      const t = hi > 0 ? Math.max(-1, Math.min(1, v / hi)) : 0;
      p[4 * i] = t > 0 ? 255 : Math.round(255 * (1 + t));
      p[4 * i + 1] = Math.round(255 * (1 - 0.6 * Math.abs(t)));
      p[4 * i + 2] = t < 0 ? 255 : Math.round(255 * (1 - t));
    } else {
      const k = span > 0 ? Math.round((v - lo) / span * 255) * 3 : 128 * 3;
      p[4 * i] = LUT[k]; p[4 * i + 1] = LUT[k + 1]; p[4 * i + 2] = LUT[k + 2];
    }
    p[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
function crossOut(canvas) {
  const ctx = canvas.getContext('2d'), w = canvas.width, h = canvas.height;
  ctx.fillStyle = '#c8c8c8'; ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = '#dc2828'; ctx.lineWidth = Math.max(1, w / 12);
  ctx.beginPath(); ctx.moveTo(0, 0); ctx.lineTo(w, h); ctx.moveTo(w, 0); ctx.lineTo(0, h); ctx.stroke();
}
function isDead(layer, c) { return !(layer.max[c] > layer.min[c]); }

// ---- layers -------------------------------------------------------------------------------------------------
const main = $('layers');
RECORDED.forEach((L, li) => {
  const [C, h, w] = L.shape, f = L.field;
  const head = el('h2', {id: 'head-' + L.name});
  head.append(el('span', {textContent: `${L.name}  ${C} \u00d7 ${h} \u00d7 ${w}` +
    (f ? `  \u00b7 receptive field ${f.size[0]} px, step ${f.jump[0]}` : '')}), el('span', {className: 'dead'}),
    el('span', {className: 'change'}));
  const strip = el('div', {className: 'strip'}), row = [];
  for (let c = 0; c < C; c++) {
    const t = el('canvas', {className: 'tile pix', title: `${L.name} channel ${c}`});
    t.width = w; t.height = h;
    t.dataset.layer = L.name; t.dataset.channel = c;
    t.addEventListener('click', () => select(li, c, true));
    strip.append(t); row.push(t);
  }
  tiles.set(L.name, row);
  main.append(el('section', {id: 'layer-' + L.name}, head, strip));
});

function changeOf(name) {  // relative L2 change of a layer since channels were switched off
  const a = state.result.layers[name].data, b = state.clean.layers[name].data;
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) { d += (a[i] - b[i]) ** 2; n += b[i] ** 2; }
  return n > 0 ? Math.sqrt(d / n) : (d > 0 ? Infinity : 0);
}

function drawLayers() {
  const r = state.result, ablating = state.clean !== r;
  for (const L of RECORDED) {
    const layer = r.layers[L.name], [C, h, w] = L.shape, plane = h * w, off = new Set(state.off[L.name] || []);
    let dead = 0;
    const change = ablating && state.view === 'change';
    const diff = change ? Float32Array.from(layer.data, (v, i) => v - state.clean.layers[L.name].data[i]) : null;
    tiles.get(L.name).forEach((t, c) => {
      const ctx = t.getContext('2d');
      const isOff = off.has(c);
      t.classList.toggle('off', isOff);
      if (!isOff && isDead(layer, c)) dead++;
      if (change) {
        let m = 0;
        for (let i = c * plane; i < (c + 1) * plane; i++) m = Math.max(m, Math.abs(diff[i]));
        colour(ctx, diff, c * plane, w, h, -m, m, true);
      } else if (!isOff && isDead(layer, c)) {
        crossOut(t);
      } else {
        colour(ctx, layer.data, c * plane, w, h, layer.min[c], layer.max[c], false);
      }
      t.title = `${L.name} channel ${c}` + (isOff ? ' (switched off)' : isDead(layer, c) ? ' (dead)' : '');
    });
    const head = $('head-' + L.name);
    head.querySelector('.dead').textContent = dead ? `  \u00b7 ${dead} dead` : '';
    const later = ablating && NET.layers.findIndex(x => x.name === L.name) > firstOff();
    head.querySelector('.change').textContent = later ? `  \u00b7 changed by ${(100 * changeOf(L.name)).toFixed(1)}%` : '';
  }
}
function firstOff() {
  const ks = Object.keys(state.off).filter(n => state.off[n].length).map(n => NET.layers.findIndex(L => L.name === n));
  return ks.length ? Math.min(...ks) : Infinity;
}

// ---- the top row --------------------------------------------------------------------------------------------
function drawInput(rgb) {
  const ctx = $('input').getContext('2d'), img = ctx.createImageData(Wd, H);
  $('input').width = Wd; $('input').height = H;
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    img.data[j] = rgb[i]; img.data[j + 1] = rgb[i + 1]; img.data[j + 2] = rgb[i + 2]; img.data[j + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
const JET = t => {  // the heatmap colours of catdog.views.plots.heatmap_overlay (matplotlib's jet)
  const c = x => Math.max(0, Math.min(1, x));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
};
function drawOverlayMap(canvas, map) {
  const src = $('input').getContext('2d').getImageData(0, 0, Wd, H).data;
  canvas.width = Wd; canvas.height = H;
  const ctx = canvas.getContext('2d'), img = ctx.createImageData(Wd, H);
  for (let i = 0; i < Wd * H; i++) {
    const [r, g, b] = JET(map[i]);
    img.data[4 * i] = Math.round(0.5 * src[4 * i] + 0.5 * 255 * r);
    img.data[4 * i + 1] = Math.round(0.5 * src[4 * i + 1] + 0.5 * 255 * g);
    img.data[4 * i + 2] = Math.round(0.5 * src[4 * i + 2] + 0.5 * 255 * b);
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
function drawTop() {
  const r = state.result, p = r.p_dog, label = p >= 0.5 ? 'dog' : 'cat';
  $('label').textContent = `${label} ${(100 * (label === 'dog' ? p : 1 - p)).toFixed(1)}%`;
  $('pdog').textContent = `p(dog) = ${p.toFixed(4)}`;
  $('pbar').style.width = `${100 * p}%`;
  const ablating = state.clean !== r, n = Object.values(state.off).reduce((s, a) => s + a.length, 0);
  $('ablation').hidden = !ablating;
  $('pbar-before').style.display = ablating ? 'block' : 'none';
  $('pbar-before').style.left = `${100 * r.clean_p_dog}%`;
  if (ablating) {
    $('ablation-text').textContent = `${n} channel${n === 1 ? '' : 's'} switched off: p(dog) ` +
      `${r.clean_p_dog.toFixed(4)} \u2192 ${p.toFixed(4)}`;
  }
  $('timing').textContent = r.timing ? `computed in this page in ${Math.round(r.timing.total)} ms` : '';
  if (r.gradcam) {
    for (const which of ['dog', 'cat']) {
      const fig = $('gradcam-' + which);
      fig.hidden = false;
      drawOverlayMap(fig.querySelector('canvas'), r.gradcam[which]);
      fig.querySelector('figcaption').textContent = `Grad-CAM: evidence for ${which} (${NET.gradcam})`;
    }
  }
  drawAttributions();
}
function drawAttributions() {  // maps computed by Python for the pictures the page was written with
  const box = $('attributions'), maps = state.image && state.image.attributions;
  box.hidden = !maps;
  box.replaceChildren();
  if (!maps) return;
  for (const [method, pair] of Object.entries(maps)) {
    for (const which of ['dog', 'cat']) {
      const img = el('img', {className: 'big', src: pair[which], alt: `${method} ${which}`});
      box.append(el('figure', {}, img, el('figcaption', {textContent: `${method}: evidence for ${which}`})));
    }
  }
}
if (DATA.class_patterns) {
  const box = $('class-patterns');
  box.hidden = false;
  for (const which of ['dog', 'cat']) {
    const img = el('img', {className: 'big', src: DATA.class_patterns[which], alt: `most ${which}`});
    box.append(el('figure', {}, img, el('figcaption', {textContent: `the input that the network finds most ${which}`})));
  }
}

// ---- running the network ------------------------------------------------------------------------------------
function apiResult(r, ms) {
  const layers = {};
  for (const L of RECORDED) {
    const l = r.layers[L.name];
    const dead = [];
    for (let c = 0; c < L.shape[0]; c++) if (isDead(l, c)) dead.push(c);
    layers[L.name] = {shape: L.shape, min: Math.min(...l.min), max: Math.max(...l.max), dead};
  }
  return {p_dog: r.p_dog, p_dog_before: r.clean_p_dog, label: r.p_dog >= 0.5 ? 'dog' : 'cat', layers, ms,
    timing: r.timing};
}

let busy = Promise.resolve();
function serial(fn) {  // one computation at a time, in the order asked
  const next = busy.then(fn, fn);
  busy = next.catch(() => {});
  return next;
}

async function show(r, ms) {
  if (r.rgb) { state.rgb = r.rgb; drawInput(r.rgb); }
  const ablating = Object.values(state.off).some(a => a.length);
  state.result = r;
  if (!ablating) state.clean = r;
  else if (r.clean) state.clean = r.clean;
  drawTop();
  drawLayers();
  $('view-toggle').hidden = !ablating;
  if (state.selected) await select(...state.selected, false);
  return apiResult(r, ms);
}

// input: a Blob/File (decoded and resized here as the weights' preprocessing says), an ImageData of the
// network's input size (used as is), or {kind, ...} as the worker takes it.
function toMessage(input) {
  if (input instanceof Blob) return [{kind: 'blob', blob: input}, []];
  if (typeof ImageData !== 'undefined' && input instanceof ImageData) {
    if (input.width !== Wd || input.height !== H) {
      return [{kind: 'rgba', data: input.data, width: input.width, height: input.height}, []];
    }
    const rgb = new Uint8Array(Wd * H * 3);
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
      rgb[i] = input.data[j]; rgb[i + 1] = input.data[j + 1]; rgb[i + 2] = input.data[j + 2];
    }
    return [{kind: 'rgb', data: rgb}, [rgb.buffer]];
  }
  if (typeof ImageBitmap !== 'undefined' && input instanceof ImageBitmap) return [{kind: 'bitmap', bitmap: input}, [input]];
  return [input, []];
}

function run(input, image = null) {
  return serial(async () => {
    await started;
    const t0 = performance.now();
    const [msg, transfer] = toMessage(input);
    let r;
    try {
      r = await call({type: 'run', input: msg}, transfer);
    } catch (err) {
      const name = image && image.name ? `${image.name}: ` : '';
      status(`cannot use ${name}${err.message}; the previous picture stays`);
      throw err;
    }
    state.image = image;
    return show(r, performance.now() - t0);
  });
}

function ablate(spec) {
  return serial(async () => {
    await started;
    const t0 = performance.now();
    state.off = {};
    for (const [name, channels] of Object.entries(spec || {})) {
      const L = RECORDED.find(x => x.name === name);
      if (!L) throw new Error(`no recorded layer ${name}; layers are ${RECORDED.map(x => x.name).join(', ')}`);
      const cs = [...new Set(channels.map(Number))].filter(c => Number.isInteger(c) && c >= 0 && c < L.shape[0]);
      if (cs.length !== channels.length) throw new Error(`${name} has channels 0 to ${L.shape[0] - 1}`);
      if (cs.length) state.off[name] = cs.sort((a, b) => a - b);
    }
    const r = await call({type: 'ablate', off: state.off});
    if (r.empty) return null;
    return show(r, performance.now() - t0);
  });
}

// ---- the detail panel ---------------------------------------------------------------------------------------
const mapCanvas = $('detail-map'), overlay = $('detail-overlay');
const SCALE = 2;
let hover = null;
function peakOf(L, c) {
  const a = state.result.layers[L.name].data, plane = L.shape[1] * L.shape[2];
  let best = -Infinity, at = 0;
  for (let i = 0; i < plane; i++) if (a[c * plane + i] > best) { best = a[c * plane + i]; at = i; }
  return [Math.floor(at / L.shape[2]), at % L.shape[2]];
}
function drawDetailOverlay(L, c) {
  const f = L.field;
  overlay.width = Wd * SCALE; overlay.height = H * SCALE;
  const ctx = overlay.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage($('input'), 0, 0, overlay.width, overlay.height);
  if (!f) return;
  ctx.globalAlpha = isDead(state.result.layers[L.name], c) ? 0.25 : 0.6;
  ctx.drawImage(mapCanvas, f.x0 * SCALE, f.y0 * SCALE, L.shape[2] * f.cell_w * SCALE, L.shape[1] * f.cell_h * SCALE);
  ctx.globalAlpha = 1;
  const [i, j] = hover || peakOf(L, c);
  ctx.strokeStyle = hover ? '#ffffff' : '#e0245e'; ctx.lineWidth = 2;
  ctx.strokeRect((f.left[1] + j * f.jump[1]) * SCALE, (f.left[0] + i * f.jump[0]) * SCALE,
    f.size[1] * SCALE, f.size[0] * SCALE);
}
(function colorbar() {
  const bar = $('colorbar'), ctx = bar.getContext('2d');
  for (let x = 0; x < bar.width; x++) {
    const v = Math.round(x / (bar.width - 1) * 255) * 3;
    ctx.fillStyle = `rgb(${LUT[v]},${LUT[v + 1]},${LUT[v + 2]})`; ctx.fillRect(x, 0, 1, bar.height);
  }
})();
const images = new Map();  // decoded sprite sheets by key
function sprite(key, src) {
  if (!images.has(key)) {
    images.set(key, new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error('cannot decode an embedded image'));
      img.src = src;
    }));
  }
  return images.get(key);
}
function cut(canvas, img, n, cols, w, h) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, (n % cols) * w, Math.floor(n / cols) * h, w, h, 0, 0, w, h);
}

async function select(li, c, byUser, scroll = byUser) {
  const t0 = performance.now();
  const L = RECORDED[li];
  c = Math.max(0, Math.min(L.shape[0] - 1, c));
  if (state.selected) tiles.get(RECORDED[state.selected[0]].name)[state.selected[1]].classList.remove('sel');
  state.selected = [li, c];
  const tile = tiles.get(L.name)[c];
  tile.classList.add('sel');
  if (byUser) { hover = null; writeHash(); }
  if (scroll) tile.scrollIntoView({block: 'nearest'});
  const detail = $('detail');
  detail.dataset.layer = L.name; detail.dataset.channel = c;
  const off = (state.off[L.name] || []).includes(c);
  $('toggle-channel').textContent = off ? 'switch on' : 'switch off';
  $('detail-title').textContent = `${L.name} / channel ${c}` + (off ? ' (switched off)' : '');
  if (state.result) {
    const layer = state.result.layers[L.name], [, h, w] = L.shape, f = L.field;
    const [pi, pj] = peakOf(L, c);
    $('detail-stats').textContent = `${h} \u00d7 ${w} map; strongest at (${pi}, ${pj})` +
      (f ? `; receptive field ${f.size[0]} \u00d7 ${f.size[1]} px, step ${f.jump[0]} px` : '');
    $('detail-range').textContent = isDead(layer, c)
      ? `constant: every position is ${fmt(layer.min[c])}` + (off ? '' : ' (a dead channel)')
      : `${fmt(layer.min[c])} \u2026 ${fmt(layer.max[c])}`;
    mapCanvas.width = w; mapCanvas.height = h;
    colour(mapCanvas.getContext('2d'), layer.data, c * h * w, w, h, layer.min[c], layer.max[c], false);
    drawDetailOverlay(L, c);
  }
  const patterns = DATA.patterns && DATA.patterns[L.name];
  $('detail-pattern-fig').hidden = !patterns;
  $('detail-pattern-missing').hidden = Boolean(patterns || L.type !== 'conv' || !DATA.patterns_help);
  $('detail-pattern-missing').textContent = DATA.patterns_help || '';
  if (patterns) cut($('detail-pattern'), await sprite('pat-' + L.name, patterns.sprite), c, patterns.cols, patterns.size[1], patterns.size[0]);
  await drawAtlas(L, c);
  detail.dataset.ready = `${L.name}/${c}`;
  api.lastSwitchMs = performance.now() - t0;
}

async function drawAtlas(L, c) {
  const A = DATA.atlas && DATA.atlas.layers[L.name], box = $('detail-atlas');
  box.hidden = !A;
  if (!A) return;
  const ch = A.channels[c], sel = ch.selectivity;
  $('atlas-stats').textContent = `mean on cats ${fmt(ch.cats)}, on dogs ${fmt(ch.dogs)}: selectivity ${sel.toFixed(2)} ` +
    `(${sel > 0 ? 'dogs' : sel < 0 ? 'cats' : 'neither'}); dead on ${(100 * ch.dead_share).toFixed(1)}% of ` +
    `${DATA.atlas.images} images`;
  const crops = $('atlas-crops');
  crops.replaceChildren();
  const link = $('atlas-link');
  link.hidden = !DATA.atlas.href;
  if (DATA.atlas.href) link.href = `${DATA.atlas.href}#${encodeURIComponent(L.name)}/${c}`;
  if (!ch.top.length) { crops.append(el('p', {textContent: 'no image excites it: dead on every image'})); return; }
  const s = await sprite('crops-' + L.name, A.crops.sprite);
  ch.top.forEach(([file, value], r) => {
    const cv = el('canvas', {className: 'crop pix', title: `${DATA.atlas.files[file]}: ${fmt(value)}`});
    cut(cv, s, c * A.crops.k + r, A.crops.cols, A.crops.cell[1], A.crops.cell[0]);
    crops.append(el('figure', {}, cv, el('figcaption', {textContent: fmt(value)})));
  });
}

mapCanvas.addEventListener('mousemove', e => {
  if (!state.selected || !state.result) return;
  const [li, c] = state.selected, L = RECORDED[li], r = mapCanvas.getBoundingClientRect();
  hover = [Math.min(L.shape[1] - 1, Math.floor((e.clientY - r.top) / r.height * L.shape[1])),
    Math.min(L.shape[2] - 1, Math.floor((e.clientX - r.left) / r.width * L.shape[2]))];
  drawDetailOverlay(L, c);
});
mapCanvas.addEventListener('mouseleave', () => {
  hover = null;
  if (state.selected && state.result) drawDetailOverlay(RECORDED[state.selected[0]], state.selected[1]);
});

// ---- switching channels off ---------------------------------------------------------------------------------
function offWith(name, channels) { return {...state.off, [name]: channels}; }
$('toggle-channel').addEventListener('click', () => {
  if (!state.selected) return;
  const [li, c] = state.selected, name = RECORDED[li].name, now = state.off[name] || [];
  ablate(offWith(name, now.includes(c) ? now.filter(x => x !== c) : [...now, c])).catch(err => status(err.message));
});
$('only-channel').addEventListener('click', () => {
  if (!state.selected) return;
  const [li, c] = state.selected, L = RECORDED[li];
  ablate(offWith(L.name, [...Array(L.shape[0]).keys()].filter(x => x !== c))).catch(err => status(err.message));
});
$('clear-ablation').addEventListener('click', () => ablate({}).catch(err => status(err.message)));
document.querySelectorAll('input[name=view]').forEach(r => r.addEventListener('change', () => {
  state.view = r.value;
  if (state.result) drawLayers();
}));

// ---- pictures: picked, dropped, pasted, preloaded, a folder -------------------------------------------------
const strip = $('strip');
const entries = [];  // {name, blob | file, button}
function addEntry(name, blob, preloaded = null) {
  const button = el('button', {type: 'button', title: name});
  const thumb = el('canvas', {width: 48, height: 48});
  button.append(thumb, el('span', {textContent: name}));
  const entry = {name, blob, button, attributions: preloaded && preloaded.attributions};
  button.addEventListener('click', () => open(entry));
  strip.append(button);
  entries.push(entry);
  createImageBitmap(blob).then(b => {
    thumb.getContext('2d').drawImage(b, 0, 0, 48, 48);
    b.close();
  }).catch(() => { button.title = `${name}: not an image this browser can decode`; });
  return entry;
}
async function open(entry) {
  for (const e of entries) e.button.classList.toggle('sel', e === entry);
  const result = await run(entry.blob, entry);
  $('input-caption').textContent = `${entry.name}: the network's input`;
  status(`${entry.name}: ${result.label}`, true);
  writeHash();
  showMapLink(entry);
  return result;
}
function isImageFile(f) { return /^image\//.test(f.type) || /\.(jpe?g|png|gif|bmp|webp)$/i.test(f.name); }
async function addFiles(files, openFirst = true) {
  const list = [...files];
  if (!list.length) return;
  const path = f => f.webkitRelativePath || f.name;
  const pictures = list.filter(isImageFile).sort((a, b) => path(a).localeCompare(path(b), undefined, {numeric: true}));
  if (!pictures.length) { status(`${list[0].name} is not an image; the previous picture stays`); return; }
  const added = pictures.map(f => addEntry(path(f), f));
  if (openFirst) await open(added[0]).catch(() => {});
  const wanted = hashImage();
  if (wanted) { const e = entries.find(x => x.name === wanted || x.name.endsWith('/' + wanted)); if (e) await open(e); }
}
$('pick').addEventListener('change', e => addFiles(e.target.files));
$('pick-folder').addEventListener('change', e => addFiles(e.target.files, !hashImage()));
document.addEventListener('dragover', e => { e.preventDefault(); document.body.classList.add('dragging'); });
document.addEventListener('dragleave', e => { if (!e.relatedTarget) document.body.classList.remove('dragging'); });
document.addEventListener('drop', e => {
  e.preventDefault();
  document.body.classList.remove('dragging');
  addFiles(e.dataTransfer.files);
});
document.addEventListener('paste', e => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])];
  if (files.length) { e.preventDefault(); addFiles(files.map((f, i) => f.name ? f : new File([f], `pasted-${i}.png`, {type: f.type}))); }
});
(DATA.images || []).forEach(img => addEntry(img.name, base64Blob(img.webp, 'image/webp'), img));

// ---- the webcam ---------------------------------------------------------------------------------------------
const video = $('video');
let camera = null, paused = false;
async function startWebcam() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    status('this browser offers no webcam here; photos still work');
    return false;
  }
  try {
    camera = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
  } catch (err) {
    const why = err.name === 'NotAllowedError' ? 'the webcam was refused' :
      err.name === 'NotFoundError' ? 'no webcam was found' : `the webcam cannot start (${err.name})`;
    status(`${why}; photos still work`);
    return false;
  }
  video.srcObject = camera;
  video.hidden = false;
  await video.play();
  $('webcam').textContent = 'Stop webcam';
  $('pause').hidden = false;
  paused = false;
  status('webcam: each frame goes through the network as soon as the previous one is done', true);
  loop();
  return true;
}
function stopWebcam() {
  if (camera) camera.getTracks().forEach(t => t.stop());
  camera = null;
  video.hidden = true;
  $('webcam').textContent = 'Start webcam';
  $('pause').hidden = true;
}
async function loop() {
  api.frames = 0;
  while (camera && !paused) {
    if (video.readyState >= 2) {
      const frame = await createImageBitmap(video);
      await run(frame, {name: 'webcam'}).catch(() => {});
      api.frames++;
    } else {
      await new Promise(r => setTimeout(r, 30));
    }
    await new Promise(r => requestAnimationFrame(r));
  }
}
$('webcam').addEventListener('click', () => (camera ? stopWebcam() : startWebcam()));
$('pause').addEventListener('click', () => {
  paused = !paused;
  $('pause').textContent = paused ? 'Resume' : 'Pause';
  if (!paused) loop();
});

// ---- keys and the address -----------------------------------------------------------------------------------
document.addEventListener('keydown', e => {
  if (!state.selected || e.altKey || e.ctrlKey || e.metaKey || e.target.tagName === 'INPUT') return;
  let [li, c] = state.selected;
  if (e.key === 'ArrowRight') { if (c + 1 < RECORDED[li].shape[0]) c++; else if (li + 1 < RECORDED.length) { li++; c = 0; } }
  else if (e.key === 'ArrowLeft') { if (c > 0) c--; else if (li > 0) { li--; c = RECORDED[li].shape[0] - 1; } }
  else if (e.key === 'ArrowDown') { if (li + 1 < RECORDED.length) li++; }
  else if (e.key === 'ArrowUp') { if (li > 0) li--; }
  else return;
  e.preventDefault();
  select(li, c, true);
});
function hashParts() { return location.hash.replace(/^#/, '').split('&').filter(Boolean); }
function hashImage() {
  const part = hashParts().find(p => p.startsWith('image='));
  return part ? decodeURIComponent(part.slice(6)) : null;
}
function hashChannel() {
  for (const p of hashParts()) {
    const m = /^([^/=]+)\/(\d+)$/.exec(p);
    if (!m) continue;
    const li = RECORDED.findIndex(L => L.name === decodeURIComponent(m[1]));
    if (li >= 0) return [li, Math.min(+m[2], RECORDED[li].shape[0] - 1)];
  }
  return null;
}
function writeHash() {
  const parts = [];
  if (state.image && state.image.name && state.image.name !== 'webcam') parts.push('image=' + encodeURIComponent(state.image.name));
  if (state.selected) parts.push(encodeURIComponent(RECORDED[state.selected[0]].name) + '/' + state.selected[1]);
  history.replaceState(null, '', '#' + parts.join('&'));
}
function showMapLink(entry) {  // the picture's place in the projector's map, where the page was given one
  const spot = DATA.projector && DATA.projector.points && DATA.projector.points[entry.name];
  $('map-link').hidden = !spot;
  if (spot) $('map-href').href = `${DATA.projector.href}#point=${encodeURIComponent(spot)}`;
}
window.addEventListener('hashchange', () => {
  const s = hashChannel();
  if (s) select(s[0], s[1], false, true);
  const wanted = hashImage();
  const e = wanted && entries.find(x => x.name === wanted || x.name.endsWith('/' + wanted));
  if (e && e !== state.image) open(e);
});

// ---- start --------------------------------------------------------------------------------------------------
$('title').textContent = DATA.title;
document.title = DATA.title;
$('source').textContent = DATA.source || '';
api.run = input => run(input, input instanceof File ? {name: input.name} : null);
api.ablate = ablate;
api.open = name => { const e = entries.find(x => x.name === name); return e ? open(e) : Promise.reject(new Error(`no picture ${name}`)); };
api.preprocess = async input => {  // the network input the page makes of a picture: (H, W, 3) uint8, base64
  await started;
  const [msg, transfer] = toMessage(input);
  const {rgb} = await call({type: 'pixels', input: msg}, transfer);
  let s = '';
  for (let i = 0; i < rgb.length; i += 8192) s += String.fromCharCode(...rgb.subarray(i, i + 8192));
  return btoa(s);
};
api.startWebcam = startWebcam;
api.stopWebcam = stopWebcam;
api.pause = () => { paused = true; };
api.entries = () => entries.map(e => e.name);
// The numbers of the picture shown (recorded layers, Grad-CAM, the network input) as base64 bytes, for tests and
// notebooks that compare the page with PyTorch: Float32Array little-endian, the input uint8 (H, W, 3).
api.arrays = () => {
  const b64 = a => { const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = '';
    for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode(...u.subarray(i, i + 8192)); return btoa(s); };
  const r = state.result, out = {layers: {}, input: b64(state.rgb)};
  for (const L of RECORDED) out.layers[L.name] = b64(r.layers[L.name].data);
  if (r.gradcam) out.gradcam = {dog: b64(r.gradcam.dog), cat: b64(r.gradcam.cat)};
  return out;
};
(async () => {
  await started;
  if (DATA.off && Object.keys(DATA.off).length) await ablate(DATA.off);  // as visualize.py ablate=... asked
  const linked = hashChannel();
  const wanted = hashImage();
  const first = entries.find(x => x.name === wanted) || entries[0];
  if (first) await open(first).catch(() => {});
  if (wanted && (!first || first.name !== wanted)) {
    status(`${wanted}: open the folder that holds it (Open a folder) to see it here`);
  }
  await select(...(linked || [0, 0]), false, Boolean(linked));
  api.ready = true;
})().catch(err => status(err.message));
