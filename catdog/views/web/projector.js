'use strict';
// The projector page: every image at its place in the 2-D map, drawn from ONE sprite sheet on one canvas.
// Data: the <script type="application/json" id="data"> block (projector.json plus the sprite, `base` and `explorer`).
(function () {
  const DATA = JSON.parse(document.getElementById('data').textContent);
  const P = DATA.points;
  const n = P.length;
  const CLASS_COLOUR = ['#e8710a', '#1a5fb4']; // cats, dogs
  const WRONG = '#c01c28';
  const TILE = 0.02; // a thumbnail's side as a share of the map's width at zoom 1

  // world coordinates: the layout scaled into [0, 1] on its longer side, centred on the shorter one
  const wx = new Float32Array(n), wy = new Float32Array(n), pdog = new Float32Array(n);
  const label = new Uint8Array(n), wrong = new Uint8Array(n);
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (const p of P) {
    minX = Math.min(minX, p.x); maxX = Math.max(maxX, p.x); minY = Math.min(minY, p.y); maxY = Math.max(maxY, p.y);
  }
  const span = Math.max(maxX - minX, maxY - minY) || 1;
  for (let i = 0; i < n; i++) {
    wx[i] = (P[i].x - minX) / span + (1 - (maxX - minX) / span) / 2;
    wy[i] = 1 - ((P[i].y - minY) / span + (1 - (maxY - minY) / span) / 2); // y up, as in a plot
    pdog[i] = P[i].p_dog;
    label[i] = P[i].label === 'dogs' ? 1 : 0;
    wrong[i] = (pdog[i] > 0.5 ? 1 : 0) !== label[i] ? 1 : 0;
  }
  // misclassified drawn last, so that they sit on top of the pile
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => wrong[a] - wrong[b]);

  const $ = id => document.getElementById(id);
  const canvas = $('map'), ctx = canvas.getContext('2d');
  const state = { a: 1, bx: 0, by: 0, colour: 'class', wrongOnly: false, hover: -1 };
  let sprite = null, dpr = 1, pending = false, draws = 0;

  function header() {
    const f = DATA.figures, layer = DATA.layer;
    $('title').textContent = `${n} images at ${layer} (${DATA.dims} values each), laid out by ${DATA.layout.method}`;
    const wrongCount = wrong.reduce((s, v) => s + v, 0);
    const bad = (DATA.unreadable || []).length;
    const skipped = bad ? ` · ${bad} unreadable file${bad > 1 ? 's' : ''} left out` : '';
    $('meta').textContent = `${DATA.data} · weights: ${DATA.source} · ${wrongCount} misclassified` +
      ` (accuracy ${(100 * (1 - wrongCount / Math.max(n, 1))).toFixed(2)}%)${skipped}`;
    const box = $('figures');
    if (f.neighbours_kept === null) {
      box.append(figure('neighbours', 'none: a single image has no neighbours'));
      return;
    }
    box.append(figure(`neighbours kept: ${f.neighbours_kept.toFixed(3)}`,
      `share of each image's ${f.k} nearest in the map that are among its ${f.k_full} nearest at ${layer} ` +
      `(${f.metric} distance), averaged; 1 keeps every neighbourhood`));
    box.append(figure(`class agreement: ${f.class_agreement_map.toFixed(3)} in the map, ` +
      `${f.class_agreement_full.toFixed(3)} at ${layer}`,
      `share of each image's ${f.k} nearest that have its class, averaged`));
  }
  function figure(title, note) {
    const div = document.createElement('div');
    div.className = 'figure';
    const b = document.createElement('b');
    b.textContent = title;
    const small = document.createElement('div');
    small.className = 'muted';
    small.textContent = note;
    div.append(b, small);
    return div;
  }
  function legend() {
    const box = $('legend');
    box.textContent = '';
    const add = (cls, colour, text) => {
      const s = document.createElement('span');
      s.className = cls;
      if (colour) s.style.background = colour;
      box.append(s, document.createTextNode(text));
    };
    if (state.colour === 'class') {
      add('swatch', CLASS_COLOUR[0], 'cat');
      add('swatch', CLASS_COLOUR[1], 'dog');
    } else {
      box.append(document.createTextNode('p(dog) 0'));
      add('ramp', null, '1');
    }
    add('swatch', WRONG, 'misclassified (red corner)');
  }

  // p(dog) 0 -> orange, 0.5 -> grey, 1 -> blue
  function rampColour(p) {
    const lerp = (u, v, t) => Math.round(u + (v - u) * t);
    const [c0, c1, t] = p < 0.5 ? [[232, 113, 10], [200, 200, 200], p * 2] : [[200, 200, 200], [26, 95, 180], p * 2 - 1];
    return `rgb(${lerp(c0[0], c1[0], t)},${lerp(c0[1], c1[1], t)},${lerp(c0[2], c1[2], t)})`;
  }
  // three decimals, or the first digits that differ from 0 or 1 for a very sure prediction
  function probability(p) {
    if (p > 0 && p < 0.001) return p.toExponential(1);
    if (p < 1 && p > 0.999) return `1 - ${(1 - p).toExponential(1)}`;
    return p.toFixed(3);
  }
  function colourOf(i) { return state.colour === 'class' ? CLASS_COLOUR[label[i]] : rampColour(pdog[i]); }

  function tileSize() { return Math.max(4, Math.min(4 * DATA.sprite.size, TILE * state.a)); }
  function toScreen(i) { return [state.a * wx[i] + state.bx, state.a * wy[i] + state.by]; }

  function resize() {
    dpr = window.devicePixelRatio || 1;
    const r = canvas.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(r.width * dpr));
    canvas.height = Math.max(1, Math.round(r.height * dpr));
    request();
  }
  // the whole map in view, as large as the canvas allows, centred
  const extentX = (maxX - minX) / span || 1, extentY = (maxY - minY) / span || 1;
  function reset() {
    const r = canvas.getBoundingClientRect();
    state.a = Math.min(r.width / extentX, r.height / extentY) * 0.92;
    state.bx = r.width / 2 - state.a * 0.5;
    state.by = r.height / 2 - state.a * 0.5;
    request();
  }
  function request() {
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  }

  function draw() {
    pending = false;
    const w = canvas.width / dpr, h = canvas.height / dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (!sprite) return;
    const s = tileSize(), half = s / 2, cols = DATA.sprite.cols, t = DATA.sprite.size;
    const frame = Math.max(1.5, s / 14);
    ctx.imageSmoothingEnabled = s < t; // smooth when shrinking, crisp pixels when blown up
    for (const i of order) {
      const [x, y] = toScreen(i);
      if (x < -s || y < -s || x > w + s || y > h + s) continue; // off screen
      ctx.globalAlpha = state.wrongOnly && !wrong[i] ? 0.12 : 1;
      ctx.drawImage(sprite, (i % cols) * t, Math.floor(i / cols) * t, t, t, x - half, y - half, s, s);
      ctx.strokeStyle = colourOf(i);
      ctx.lineWidth = frame;
      ctx.strokeRect(x - half, y - half, s, s);
      if (wrong[i]) { // a red corner: visible at every zoom, whatever the colouring
        const c = Math.max(5, s / 3);
        ctx.fillStyle = WRONG;
        ctx.beginPath();
        ctx.moveTo(x + half - c, y - half); ctx.lineTo(x + half, y - half); ctx.lineTo(x + half, y - half + c);
        ctx.closePath();
        ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    if (state.hover >= 0) {
      const [x, y] = toScreen(state.hover);
      ctx.strokeStyle = '#000';
      ctx.lineWidth = 2;
      ctx.strokeRect(x - half - 2, y - half - 2, s + 4, s + 4);
    }
    draws++;
  }

  // the image under (mx, my): the topmost thumbnail covering it, else the nearest centre within 6 px
  function pick(mx, my) {
    const half = tileSize() / 2;
    for (let k = n - 1; k >= 0; k--) {
      const i = order[k];
      if (state.wrongOnly && !wrong[i]) continue;
      const [x, y] = toScreen(i);
      if (Math.abs(mx - x) <= half && Math.abs(my - y) <= half) return i;
    }
    let best = -1, bestD = 36;
    for (let i = 0; i < n; i++) {
      if (state.wrongOnly && !wrong[i]) continue;
      const [x, y] = toScreen(i);
      const d = (mx - x) ** 2 + (my - y) ** 2;
      if (d < bestD) { best = i; bestD = d; }
    }
    return best;
  }

  function showTip(i, mx, my) {
    const tip = $('tip');
    if (i < 0) { tip.hidden = true; return; }
    const p = P[i], t = DATA.sprite.size, cols = DATA.sprite.cols;
    $('tip-name').textContent = p.path; // textContent: a file name is never markup
    $('tip-p').textContent = `p(dog) ${probability(pdog[i])}`;
    const truth = label[i] ? 'dog' : 'cat', guess = pdog[i] > 0.5 ? 'dog' : 'cat';
    $('tip-label').textContent = wrong[i] ? `misclassified: a ${truth}, predicted ${guess}` : `a ${truth}, predicted ${guess}`;
    $('tip-label').className = wrong[i] ? 'wrong' : '';
    const tc = $('tip-thumb').getContext('2d');
    tc.imageSmoothingEnabled = true;
    tc.clearRect(0, 0, 96, 96);
    tc.drawImage(sprite, (i % cols) * t, Math.floor(i / cols) * t, t, t, 0, 0, 96, 96);
    tip.hidden = false;
    const stage = $('stage').getBoundingClientRect();
    const left = mx + 16 + tip.offsetWidth > stage.width ? mx - 16 - tip.offsetWidth : mx + 16;
    const top = my + 16 + tip.offsetHeight > stage.height ? my - 16 - tip.offsetHeight : my + 16;
    tip.style.left = `${Math.max(0, left)}px`;
    tip.style.top = `${Math.max(0, top)}px`;
  }

  // The explorer link of image i: the `explorer` template with {path} (the image's path from this page's folder,
  // URI-encoded) and {index}. Hook for the explorer page: change the template (the command's explorer= setting) or
  // replace window.projector.open.
  function explorerLink(i) {
    if (!DATA.explorer) return null;
    const path = (DATA.base && DATA.base !== '.' ? DATA.base + '/' : '') + P[i].path;
    return DATA.explorer.replace(/\{path\}/g, encodeURIComponent(path)).replace(/\{index\}/g, String(i))
      .replace(/\{file\}/g, encodeURIComponent(P[i].path));
  }
  // #point=<index or the image's path in the data folder>: the view centres on that image, zoomed in, and marks it
  // (the explorer and the atlas link here)
  function focus() {
    const m = /(?:^#|&)point=([^&]+)/.exec(location.hash);
    if (!m) return -1;
    const key = decodeURIComponent(m[1]);
    const i = /^\d+$/.test(key) ? Number(key) : P.findIndex(p => p.path === key || p.path.endsWith('/' + key));
    if (!(i >= 0 && i < n)) { $('status').textContent = `no image ${key} in this map`; return -1; }
    const r = canvas.getBoundingClientRect();
    reset();
    state.a *= 6;
    state.bx = r.width / 2 - state.a * wx[i];
    state.by = r.height / 2 - state.a * wy[i];
    state.hover = i;
    request();
    return i;
  }
  window.addEventListener('hashchange', () => { if (sprite) api.focused = focus(); });
  function open(i) {
    const url = explorerLink(i);
    if (url && !/^\s*javascript:/i.test(url)) window.open(url, '_blank', 'noopener');
  }

  function zoom(factor, mx, my) {
    const a = Math.min(Math.max(state.a * factor, 50), 200000);
    const f = a / state.a;
    state.bx = mx - (mx - state.bx) * f;
    state.by = my - (my - state.by) * f;
    state.a = a;
    request();
  }

  function local(e) {
    const r = canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }
  let drag = null;
  canvas.addEventListener('wheel', e => {
    e.preventDefault();
    const [mx, my] = local(e);
    zoom(Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), mx, my);
    showTip(-1);
  }, { passive: false });
  canvas.addEventListener('pointerdown', e => {
    const [mx, my] = local(e);
    drag = { x: mx, y: my, bx: state.bx, by: state.by, moved: false };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener('pointermove', e => {
    const [mx, my] = local(e);
    if (drag) {
      if (Math.abs(mx - drag.x) + Math.abs(my - drag.y) > 3) drag.moved = true;
      if (drag.moved) {
        canvas.classList.add('dragging');
        state.bx = drag.bx + mx - drag.x;
        state.by = drag.by + my - drag.y;
        showTip(-1);
        request();
        return;
      }
    }
    const i = sprite ? pick(mx, my) : -1;
    if (i !== state.hover) { state.hover = i; request(); }
    canvas.classList.toggle('over', i >= 0);
    showTip(i, mx, my);
  });
  canvas.addEventListener('pointerup', e => {
    const wasDrag = drag && drag.moved;
    drag = null;
    canvas.classList.remove('dragging');
    if (!wasDrag) {
      const [mx, my] = local(e);
      const i = sprite ? pick(mx, my) : -1;
      if (i >= 0) window.projector.open(i); // the hook: the explorer may replace it
    }
  });
  canvas.addEventListener('pointerleave', () => {
    if (!drag && state.hover >= 0) { state.hover = -1; request(); }
    showTip(-1);
  });
  window.addEventListener('keydown', e => {
    const r = canvas.getBoundingClientRect();
    if (e.key === '+' || e.key === '=') zoom(1.25, r.width / 2, r.height / 2);
    else if (e.key === '-') zoom(0.8, r.width / 2, r.height / 2);
    else if (e.key === '0') reset();
  });
  window.addEventListener('resize', resize);
  for (const radio of document.querySelectorAll('input[name=colour]')) {
    radio.addEventListener('change', () => { state.colour = radio.value; legend(); request(); });
  }
  $('wrong-only').addEventListener('change', e => { state.wrongOnly = e.target.checked; request(); });
  $('reset').addEventListener('click', reset);

  // the page's API, for tests and for the explorer page that will link here
  const api = window.projector = {
    ready: false, readyMs: null, points: n, misclassified: wrong.reduce((s, v) => s + v, 0),
    figures: DATA.figures, fingerprint: DATA.fingerprint,
    view: () => ({ scale: state.a, x: state.bx, y: state.by }),
    hovered: () => state.hover,
    draws: () => draws,
    screenPosition: i => { const r = canvas.getBoundingClientRect(); const [x, y] = toScreen(i); return [x + r.left, y + r.top]; },
    // the misclassified image nearest the middle of the view (-1: none), for screenshots and tests
    shownMisclassified: () => {
      const r = canvas.getBoundingClientRect();
      let best = -1, bestD = Infinity;
      for (let i = 0; i < n; i++) {
        if (!wrong[i]) continue;
        const [x, y] = toScreen(i);
        const d = (x - r.width / 2) ** 2 + (y - r.height / 2) ** 2;
        if (d < bestD) { best = i; bestD = d; }
      }
      return best;
    },
    colour: mode => { document.querySelector(`input[name=colour][value=${mode}]`).click(); },
    colourOf, explorerLink, open, zoom, reset,
  };

  header();
  legend();
  resize();
  reset();
  const img = new Image();
  img.onload = () => {
    sprite = img;
    $('status').textContent = '';
    api.focused = focus();
    draw();
    api.ready = true;
    api.readyMs = performance.now();
  };
  img.onerror = () => { $('status').textContent = 'the thumbnails could not be decoded'; };
  img.src = DATA.sprite.src;
})();
