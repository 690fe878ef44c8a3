// The network in plain JavaScript: a sequential stack of conv (+ fused ReLU), ReLU, max-pool, flatten and linear
// (+ fused ReLU) layers over Float32Arrays, as catdog.views.network describes it (the same description Python
// writes). Forward, forward from a layer on (ablation), and the one backward pass Grad-CAM needs.
// No DOM: it runs in the page's Web Worker and in Node for tests.
'use strict';

const Network = (() => {
  // out[o, y, x] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[c, y*sh + i - ph, x*sw + j - pw]
  // The input is first laid out channels-last (and zero-padded), and the weights as [o][i][j][c] (once, in
  // ``hwc``): then the kw * C numbers that kernel row i of an output position reads are contiguous in both, and
  // four output channels share each input load, with the sums in local variables.
  const BLOCK = 4;
  function hwc(L, W) {
    const key = L.weight + '#hwc';
    if (!W[key]) {
      const [C] = L.in_shape, [O] = L.shape, [kh, kw] = L.kernel, w = W[L.weight];
      const Op = Math.ceil(O / BLOCK) * BLOCK, t = new Float32Array(Op * kh * kw * C);
      for (let o = 0; o < O; o++) for (let c = 0; c < C; c++) for (let i = 0; i < kh; i++) for (let j = 0; j < kw; j++) {
        t[((o * kh + i) * kw + j) * C + c] = w[((o * C + c) * kh + i) * kw + j];
      }
      W[key] = t;
    }
    return W[key];
  }
  function conv(L, W, x) {
    const [C, H, Wd] = L.in_shape, [O, Ho, Wo] = L.shape;
    const [kh, kw] = L.kernel, [sh, sw] = L.stride, [ph, pw] = L.padding;
    const Hp = H + 2 * ph, Wp = Wd + 2 * pw, row = kw * C, K = kh * row;
    const xin = new Float32Array(Hp * Wp * C);
    for (let c = 0; c < C; c++) {
      for (let y = 0; y < H; y++) {
        const s = (c * H + y) * Wd, d = ((y + ph) * Wp + pw) * C + c;
        for (let q = 0; q < Wd; q++) xin[d + q * C] = x[s + q];
      }
    }
    const w = hwc(L, W), b = L.bias ? W[L.bias] : null;
    const out = new Float32Array(O * Ho * Wo), plane = Ho * Wo;
    for (let o = 0; o < O; o += BLOCK) {
      const w0 = o * K, w1 = w0 + K, w2 = w1 + K, w3 = w2 + K;
      const b0 = b ? b[o] : 0, b1 = b && o + 1 < O ? b[o + 1] : 0;
      const b2 = b && o + 2 < O ? b[o + 2] : 0, b3 = b && o + 3 < O ? b[o + 3] : 0;
      for (let y = 0; y < Ho; y++) {
        for (let q = 0; q < Wo; q++) {
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          for (let i = 0; i < kh; i++) {
            const xs = ((y * sh + i) * Wp + q * sw) * C, ws = i * row;
            for (let t = 0; t < row; t++) {
              const v = xin[xs + t], k = ws + t;
              s0 += w[w0 + k] * v; s1 += w[w1 + k] * v; s2 += w[w2 + k] * v; s3 += w[w3 + k] * v;
            }
          }
          const n = y * Wo + q;
          out[o * plane + n] = s0 + b0;
          if (o + 1 < O) out[(o + 1) * plane + n] = s1 + b1;
          if (o + 2 < O) out[(o + 2) * plane + n] = s2 + b2;
          if (o + 3 < O) out[(o + 3) * plane + n] = s3 + b3;
        }
      }
    }
    if (L.relu) relu(out);
    return out;
  }

  function relu(a) {
    for (let i = 0; i < a.length; i++) if (!(a[i] > 0)) a[i] = 0;  // NaN -> 0 as well, as no sign of life
    return a;
  }

  // Max-pool; also returns, for each output, the index of the input it took (the first largest in row-major
  // order within the window, as PyTorch's CPU kernel), which the backward pass routes the gradient to.
  function pool(L, x) {
    const [C, H, Wd] = L.in_shape, [, Ho, Wo] = L.shape;
    const [kh, kw] = L.kernel, [sh, sw] = L.stride, [ph, pw] = L.padding;
    const out = new Float32Array(C * Ho * Wo), arg = new Int32Array(C * Ho * Wo);
    let n = 0;
    for (let c = 0; c < C; c++) {
      const src = c * H * Wd;
      for (let y = 0; y < Ho; y++) {
        for (let q = 0; q < Wo; q++, n++) {
          let best = -Infinity, at = -1;
          for (let i = 0; i < kh; i++) {
            const row = y * sh + i - ph;
            if (row < 0 || row >= H) continue;
            for (let j = 0; j < kw; j++) {
              const col = q * sw + j - pw;
              if (col < 0 || col >= Wd) continue;
              const v = x[src + row * Wd + col];
              if (v > best || at < 0) { best = v; at = src + row * Wd + col; }
            }
          }
          out[n] = best; arg[n] = at;
        }
      }
    }
    return [out, arg];
  }

  function linear(L, W, x) {
    const [I] = L.in_shape, [O] = L.shape;
    const w = W[L.weight], b = W[L.bias];
    const out = new Float32Array(O);
    for (let o = 0; o < O; o++) {
      let s = 0;
      const r = o * I;
      for (let i = 0; i < I; i++) s += w[r + i] * x[i];
      out[o] = s + (b ? b[o] : 0);
    }
    if (L.relu) relu(out);
    return out;
  }

  // Zero the switched-off channels of a layer's output (in place): what a forward hook returning the masked
  // output does in PyTorch.
  function switchOff(L, a, channels) {
    const plane = a.length / L.shape[0];
    for (const c of channels) a.fill(0, c * plane, (c + 1) * plane);
    return a;
  }

  function step(L, W, x) {
    switch (L.type) {
      case 'conv': return [conv(L, W, x), null];
      case 'pool': return pool(L, x);
      case 'relu': return [relu(Float32Array.from(x)), null];
      case 'linear': return [linear(L, W, x), null];
      case 'flatten': case 'identity': return [x, null];
      default: throw new Error(`the page cannot run a ${L.type} layer (${L.name})`);
    }
  }

  // Run layers ``from`` .. end. ``state.outputs[k]`` / ``state.args[k]`` hold each layer's output (and a pool's
  // argmax); layers before ``from`` are taken from ``state``, so an ablation recomputes only from its layer on.
  // ``off``: {layer name: [channels]} switched off (their outputs zeroed before the next layer reads them).
  function forward(net, W, input, state, from, off) {
    const layers = net.layers;
    state.outputs.length = layers.length;
    state.args.length = layers.length;
    let x = from === 0 ? input : state.outputs[from - 1];
    for (let k = from; k < layers.length; k++) {
      const L = layers[k];
      let [out, arg] = step(L, W, x);
      if (off[L.name] && off[L.name].length) {
        if (out === x) out = Float32Array.from(out);
        switchOff(L, out, off[L.name]);
      }
      state.outputs[k] = out;
      state.args[k] = arg;
      x = out;
    }
    return x;
  }

  // d(logit) / d(output of layer ``target``): back from the single output through the layers after it.
  function gradient(net, W, state, target, off) {
    const layers = net.layers;
    let g = new Float32Array([1]);
    for (let k = layers.length - 1; k > target; k--) {
      const L = layers[k], out = state.outputs[k], x = state.outputs[k - 1];
      if (off[L.name] && off[L.name].length) { g = Float32Array.from(g); switchOff(L, g, off[L.name]); }
      if (L.relu || L.type === 'relu') {  // through the ReLU: only where the output is positive
        if (g === out) g = Float32Array.from(g);
        for (let i = 0; i < g.length; i++) if (!(out[i] > 0)) g[i] = 0;
      }
      g = backStep(L, W, g, x, state.args[k]);
    }
    return g;
  }

  function backStep(L, W, g, x, arg) {
    switch (L.type) {
      case 'linear': {
        const [I] = L.in_shape, [O] = L.shape, w = W[L.weight];
        const gin = new Float64Array(I);
        for (let o = 0; o < O; o++) {
          const v = g[o];
          if (v === 0) continue;
          const r = o * I;
          for (let i = 0; i < I; i++) gin[i] += v * w[r + i];
        }
        return Float32Array.from(gin);
      }
      case 'pool': {
        const gin = new Float32Array(x.length);
        for (let n = 0; n < g.length; n++) if (arg[n] >= 0) gin[arg[n]] += g[n];
        return gin;
      }
      case 'conv': {  // the input gradient: the transposed convolution
        const [C, H, Wd] = L.in_shape, [O, Ho, Wo] = L.shape;
        const [kh, kw] = L.kernel, [sh, sw] = L.stride, [ph, pw] = L.padding, w = W[L.weight];
        const gin = new Float32Array(C * H * Wd);
        for (let o = 0; o < O; o++) {
          for (let c = 0; c < C; c++) {
            for (let i = 0; i < kh; i++) {
              for (let j = 0; j < kw; j++) {
                const v = w[((o * C + c) * kh + i) * kw + j];
                if (v === 0) continue;
                for (let y = 0; y < Ho; y++) {
                  const row = y * sh + i - ph;
                  if (row < 0 || row >= H) continue;
                  for (let q = 0; q < Wo; q++) {
                    const col = q * sw + j - pw;
                    if (col >= 0 && col < Wd) gin[(c * H + row) * Wd + col] += v * g[(o * Ho + y) * Wo + q];
                  }
                }
              }
            }
          }
        }
        return gin;
      }
      default: return g;  // relu (handled above), flatten, identity
    }
  }

  // PyTorch's F.interpolate(mode='bilinear', align_corners=False) of an (h, w) map to (H, Wd).
  function upsample(map, h, w, H, Wd) {
    const out = new Float32Array(H * Wd);
    const source = (dst, scale, size) => {
      const s = Math.max(scale * (dst + 0.5) - 0.5, 0);
      const i0 = Math.floor(s), i1 = i0 + (i0 < size - 1 ? 1 : 0);
      return [i0, i1, s - i0];
    };
    for (let y = 0; y < H; y++) {
      const [y0, y1, ly] = source(y, h / H, h);
      for (let q = 0; q < Wd; q++) {
        const [x0, x1, lx] = source(q, w / Wd, w);
        out[y * Wd + q] = (1 - ly) * ((1 - lx) * map[y0 * w + x0] + lx * map[y0 * w + x1]) +
          ly * ((1 - lx) * map[y1 * w + x0] + lx * map[y1 * w + x1]);
      }
    }
    return out;
  }

  // Grad-CAM on layer ``target`` (an index): channel weights are the spatial means of d(logit)/dA; "dog" is the
  // ReLU of the weighted sum of A's channels, "cat" that of its negation; each upsampled to the input and
  // scaled to [0, 1] by its maximum (all zeros when nothing is positive), as catdog.views.gradcam computes it.
  function gradcam(net, W, state, target, off) {
    const L = net.layers[target], [C, h, w] = L.shape, plane = h * w;
    const g = gradient(net, W, state, target, off), A = state.outputs[target];
    const cam = new Float64Array(plane);
    for (let c = 0; c < C; c++) {
      let mean = 0;
      for (let i = c * plane; i < (c + 1) * plane; i++) mean += g[i];
      mean /= plane;
      if (mean === 0) continue;
      for (let i = 0; i < plane; i++) cam[i] += mean * A[c * plane + i];
    }
    const [H, Wd] = net.input.size, maps = {};
    for (const [name, sign] of [['dog', 1], ['cat', -1]]) {
      const part = Float32Array.from(cam, v => Math.max(sign * v, 0));
      const up = upsample(part, h, w, H, Wd);
      let peak = 0;
      for (let i = 0; i < up.length; i++) { if (up[i] < 0) up[i] = 0; if (up[i] > peak) peak = up[i]; }
      for (let i = 0; i < up.length; i++) up[i] = peak > 0 ? up[i] / peak : 0;
      maps[name] = up;
    }
    return maps;
  }

  // (H, W, 3) uint8 RGB -> (3, H, W) floats times 1/255, as catdog.preprocess.scaled.
  function toInput(rgb, H, Wd) {
    const x = new Float32Array(3 * H * Wd), plane = H * Wd, scale = Math.fround(1 / 255);
    for (let i = 0; i < plane; i++) {
      x[i] = rgb[3 * i] * scale; x[plane + i] = rgb[3 * i + 1] * scale; x[2 * plane + i] = rgb[3 * i + 2] * scale;
    }
    return x;
  }

  return {forward, gradient, gradcam, switchOff, toInput};
})();

if (typeof module !== 'undefined') module.exports = Network;
