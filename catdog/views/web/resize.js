// Pillow's Image.resize of an 8-bit RGB(A) picture, to the last bit, so that a photo dropped into the page becomes
// the same network input as `python -m catdog.predict` makes of it. A canvas drawImage does neither of the two
// things Pillow does: its filters widen with the downscale factor (antialiasing), and it rounds to 8 bits between
// the horizontal and the vertical pass, in fixed point. NEAREST takes the source pixel under each output pixel's
// centre, stepping by repeated addition as Pillow's ImagingScaleAffine does.
'use strict';

const Resize = (() => {
  const FILTERS = {
    box: [x => (x > -0.5 && x <= 0.5 ? 1 : 0), 0.5],
    bilinear: [x => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }, 1],
    hamming: [x => {
      x = Math.abs(x);
      if (x === 0) return 1;
      if (x >= 1) return 0;
      x *= Math.PI;
      return Math.sin(x) / x * (Math.fround(0.54) + Math.fround(0.46) * Math.cos(x));
    }, 1],
    bicubic: [x => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    }, 2],
    lanczos: [x => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0), 3],
  };
  function sinc(x) { if (x === 0) return 1; x *= Math.PI; return Math.sin(x) / x; }

  let VERTICAL_FIRST = true;  // the Pillow the weights' preprocessing names (catdog.views.network)
  const PRECISION_BITS = 32 - 8 - 2;
  const HALF = 1 << (PRECISION_BITS - 1);
  const clip8 = v => { v >>= PRECISION_BITS; return v < 0 ? 0 : v > 255 ? 255 : v; };
  const trunc = v => (v < 0 ? Math.ceil(v) : Math.floor(v));  // C's (int) cast

  // Pillow's precompute_coeffs + normalize_coeffs_8bpc: for each output pixel, the first input pixel, the number
  // of taps and the taps as fixed-point integers.
  function coefficients(inSize, outSize, filter) {
    const [f, baseSupport] = FILTERS[filter];
    const scale = inSize / outSize, filterscale = Math.max(scale, 1);
    const support = baseSupport * filterscale, ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2), kk = new Int32Array(outSize * ksize);
    const k = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale, ss = 1 / filterscale;
      const xmin = Math.max(trunc(center - support + 0.5), 0);
      const xmax = Math.min(trunc(center + support + 0.5), inSize) - xmin;
      let ww = 0;
      for (let x = 0; x < xmax; x++) { k[x] = f((x + xmin - center + 0.5) * ss); ww += k[x]; }
      for (let x = 0; x < xmax; x++) {
        const v = ww !== 0 ? k[x] / ww : k[x];
        kk[xx * ksize + x] = v < 0 ? trunc(-0.5 + v * (1 << PRECISION_BITS)) : trunc(0.5 + v * (1 << PRECISION_BITS));
      }
      bounds[2 * xx] = xmin; bounds[2 * xx + 1] = xmax;
    }
    return {bounds, kk, ksize};
  }

  // One pass over RGBA rows (4 bytes a pixel, alpha ignored): along x when `horizontal`, else along y.
  function pass(src, w, h, outW, outH, c, horizontal, offset) {
    const out = new Uint8ClampedArray(outW * outH * 4);
    for (let yy = 0; yy < outH; yy++) {
      for (let xx = 0; xx < outW; xx++) {
        const i = horizontal ? xx : yy;
        const xmin = c.bounds[2 * i], xmax = c.bounds[2 * i + 1], k = i * c.ksize;
        let r = HALF, g = HALF, b = HALF;
        for (let t = 0; t < xmax; t++) {
          const p = horizontal ? ((yy + offset) * w + xmin + t) * 4 : ((xmin + t) * w + xx) * 4;
          const kv = c.kk[k + t];
          r += src[p] * kv; g += src[p + 1] * kv; b += src[p + 2] * kv;
        }
        const o = (yy * outW + xx) * 4;
        out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b); out[o + 3] = 255;
      }
    }
    return out;
  }

  // RGBA pixels (w x h) -> RGBA pixels (outW x outH), as Pillow's ImagingResampleInner. Pillow 13 runs the
  // vertical pass first when it shrinks the height and 2 * (outW - w) > outH - h (measured on every filter:
  // tests/test_page.py); older Pillows always run the horizontal pass first.
  function resample(rgba, w, h, outW, outH, filter) {
    if (VERTICAL_FIRST && outH < h && outW !== w && 2 * (outW - w) > outH - h) {
      const tall = pass(rgba, w, h, w, outH, coefficients(h, outH, filter), false, 0);
      return pass(tall, w, outH, outW, outH, coefficients(w, outW, filter), true, 0);
    }
    const vert = coefficients(h, outH, filter);
    const first = vert.bounds[0], last = vert.bounds[2 * outH - 2] + vert.bounds[2 * outH - 1];
    let src = rgba, width = w;
    if (outW !== w) {  // horizontal pass over only the rows the vertical pass reads
      src = pass(rgba, w, h, outW, last - first, coefficients(w, outW, filter), true, first);
      width = outW;
      for (let i = 0; i < outH; i++) vert.bounds[2 * i] -= first;
    }
    if (outH !== h) return pass(src, width, last - first, width, outH, vert, false, 0);
    return src === rgba ? Uint8ClampedArray.from(rgba) : src;
  }

  function nearest(rgba, w, h, outW, outH) {
    const out = new Uint8ClampedArray(outW * outH * 4);
    const ax = w / outW, ay = h / outH;
    const cols = new Int32Array(outW);
    let xo = ax * 0.5;
    for (let x = 0; x < outW; x++) { cols[x] = Math.trunc(xo) < w ? Math.trunc(xo) : -1; xo += ax; }
    let yo = ay * 0.5;
    for (let y = 0; y < outH; y++, yo += ay) {
      const yi = Math.trunc(yo);
      for (let x = 0, d = y * outW * 4; x < outW; x++, d += 4) {
        out[d + 3] = 255;
        if (yi >= h || cols[x] < 0) continue;  // Pillow leaves such a pixel black (fill)
        const s = (yi * w + cols[x]) * 4;
        out[d] = rgba[s]; out[d + 1] = rgba[s + 1]; out[d + 2] = rgba[s + 2];
      }
    }
    return out;
  }

  // RGBA (w x h) -> RGB uint8 (H x W), resized with `interpolation` as catdog.preprocess.resize (Pillow).
  function toRGB(rgba, w, h, H, W, interpolation) {
    let out;
    if (w === W && h === H) out = rgba;
    else if (interpolation === 'nearest') out = nearest(rgba, w, h, W, H);
    else if (FILTERS[interpolation]) out = resample(rgba, w, h, W, H, interpolation);
    else throw new Error(`unknown interpolation ${interpolation}`);
    const rgb = new Uint8Array(W * H * 3);
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) { rgb[i] = out[j]; rgb[i + 1] = out[j + 1]; rgb[i + 2] = out[j + 2]; }
    return rgb;
  }

  return {toRGB, setVerticalFirst: v => { VERTICAL_FIRST = v; }};
})();

if (typeof module !== 'undefined') module.exports = Resize;
