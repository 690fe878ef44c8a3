// The page's Web Worker: holds the network and its weights, decodes and preprocesses pictures, runs the forward
// pass, Grad-CAM and ablations, and sends back Float32Array buffers (transferred, not copied). Runs after
// network.js and resize.js in the same blob, so the page's main thread never waits for the arithmetic.
'use strict';

let net = null, W = null;                        // the description (catdog.views.network) and its tensors
let clean = null, current = null, off = {};      // the current picture's unablated and ablated passes

function base64Bytes(text) {
  const raw = atob(text), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function half(h) {  // IEEE half -> float
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// The weights travel as one zlib stream of byte planes (each tensor's first bytes, then its second bytes, ...:
// the exponents compress, the low mantissa bits do not), float32 or float16 by tensor (see catdog.views.network).
async function loadWeights(blob) {
  const packed = base64Bytes(blob.data);
  const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream('deflate'));
  const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  const tensors = {};
  for (const t of blob.tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1), width = t.dtype === 'float16' ? 2 : 4;
    const planes = bytes.subarray(t.offset, t.offset + n * width);
    const raw = new Uint8Array(n * width);
    for (let b = 0; b < width; b++) for (let i = 0; i < n; i++) raw[i * width + b] = planes[b * n + i];
    if (width === 4) tensors[t.name] = new Float32Array(raw.buffer);
    else {
      const h = new Uint16Array(raw.buffer), f = new Float32Array(n), table = new Float32Array(65536);
      for (let i = 0; i < 65536; i++) table[i] = half(i);
      for (let i = 0; i < n; i++) f[i] = table[h[i]];
      tensors[t.name] = f;
    }
  }
  return tensors;
}

// A picture -> (H, W, 3) uint8, resized as the weights' preprocessing says (resize.js: Pillow's arithmetic).
async function pixels(input) {
  const [H, Wd] = net.input.size, pre = net.preprocessing;
  if (input.kind === 'rgb') return input.data;
  let rgba = input.data, w = input.width, h = input.height;
  if (input.kind !== 'rgba') {
    let bitmap = input.bitmap;
    if (input.kind === 'blob') {
      try {
        bitmap = await createImageBitmap(input.blob, {
          imageOrientation: pre.exif_transpose ? 'from-image' : 'none',
          colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
      } catch (err) {
        throw new Error('not an image this browser can decode');
      }
    }
    w = bitmap.width; h = bitmap.height;
    const canvas = new OffscreenCanvas(w, h), ctx = canvas.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    rgba = ctx.getImageData(0, 0, w, h).data;
  }
  return Resize.toRGB(rgba, w, h, H, Wd, pre.interpolation);
}

function copy(a) { return Float32Array.from(a); }

// What the page shows of one pass: each recorded layer's output with its per-channel range, the prediction and
// Grad-CAM for dog and cat.
function summary(state, gradcam) {
  const layers = {}, transfer = [];
  net.layers.forEach((L, k) => {
    if (!L.record) return;
    const a = copy(state.outputs[k]), [C] = L.shape, plane = a.length / C;
    const min = new Float32Array(C), max = new Float32Array(C);
    for (let c = 0; c < C; c++) {
      let lo = Infinity, hi = -Infinity;
      for (let i = c * plane; i < (c + 1) * plane; i++) { const v = a[i]; if (v < lo) lo = v; if (v > hi) hi = v; }
      min[c] = lo; max[c] = hi;
    }
    layers[L.name] = {data: a, min, max};
    transfer.push(a.buffer);
  });
  const logit = state.outputs[state.outputs.length - 1][0];
  const result = {layers, logit, p_dog: 1 / (1 + Math.exp(-logit))};
  if (gradcam !== null) {
    const t0 = performance.now();
    result.gradcam = Network.gradcam(net, W, state, gradcam, off);
    result.gradcam_ms = performance.now() - t0;
    transfer.push(result.gradcam.dog.buffer, result.gradcam.cat.buffer);
  }
  return [result, transfer];
}

function gradcamLayer() {
  const k = net.layers.findIndex(L => L.name === net.gradcam);
  return k >= 0 && net.layers[net.layers.length - 1].shape[0] === 1 ? k : null;
}

// Forward from the first switched-off layer on, from the clean pass's outputs before it.
function ablated() {
  const names = Object.keys(off).filter(n => off[n].length);
  if (!names.length) return clean;
  const from = Math.min(...names.map(n => net.layers.findIndex(L => L.name === n)));
  const state = {outputs: clean.outputs.slice(0, from + 1), args: clean.args.slice(0, from + 1), input: clean.input};
  state.outputs[from] = Network.switchOff(net.layers[from], copy(clean.outputs[from]), off[net.layers[from].name]);
  Network.forward(net, W, clean.input, state, from + 1, off);
  return state;
}

async function handle(msg) {
  if (msg.type === 'init') {
    net = msg.net;
    Resize.setVerticalFirst(Boolean(net.preprocessing.vertical_first));
    W = await loadWeights(msg.weights);
    return [{}, []];
  }
  const t0 = performance.now();
  if (msg.type === 'pixels') {  // the network input alone: for tests of the decoding and the resize
    const rgb = Uint8Array.from(await pixels(msg.input));
    return [{rgb}, [rgb.buffer]];
  }
  if (msg.type === 'run') {
    const rgb = await pixels(msg.input);
    const [H, Wd] = net.input.size;
    const input = Network.toInput(rgb, H, Wd);
    clean = {outputs: [], args: [], input, rgb};
    const tp = performance.now();
    Network.forward(net, W, input, clean, 0, {});
    const tf = performance.now();
    current = ablated();
    const [result, transfer] = summary(current, gradcamLayer());
    result.rgb = Uint8Array.from(rgb);
    transfer.push(result.rgb.buffer);
    if (current !== clean) {  // the page also shows how the switched-off channels changed each layer
      const [before, more] = summary(clean, null);
      result.clean = before;
      transfer.push(...more);
    }
    result.clean_p_dog = 1 / (1 + Math.exp(-clean.outputs[clean.outputs.length - 1][0]));
    result.timing = {preprocess: tp - t0, forward: tf - tp, gradcam: result.gradcam_ms, total: performance.now() - t0};
    return [result, transfer];
  }
  if (msg.type === 'ablate') {
    off = msg.off;
    if (!clean) return [{empty: true}, []];
    current = ablated();
    const [result, transfer] = summary(current, gradcamLayer());
    result.clean_p_dog = 1 / (1 + Math.exp(-clean.outputs[clean.outputs.length - 1][0]));
    result.timing = {gradcam: result.gradcam_ms, total: performance.now() - t0};
    return [result, transfer];
  }
  throw new Error(`unknown message ${msg.type}`);
}

self.onmessage = async e => {
  const {id} = e.data;
  try {
    const [result, transfer] = await handle(e.data);
    self.postMessage({id, ok: true, result}, transfer);
  } catch (err) {
    self.postMessage({id, ok: false, error: String(err && err.message || err)});
  }
};
