// The atlas page: a card per channel of every recorded layer, with the dataset crops that excite it most
// (cut from one JPEG sprite sheet per layer), sortable by selectivity. Its API for tests: window.atlas.
'use strict';

const DATA = JSON.parse(document.getElementById('data').textContent);
const api = window.atlas = {ready: false};
const root = document.getElementById('layers');

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) e.append(c);
  return e;
}
function fmt(v) { return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(3); }
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('cannot decode an embedded image'));
    img.src = src;
  });
}
function cut(canvas, img, n, cols, w, h) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, (n % cols) * w, Math.floor(n / cols) * h, w, h, 0, 0, w, h);
}

// A crop links to where its picture can be seen whole: the projector's map when the atlas knows one, else the
// explorer (which opens it from a folder the user opened there).
function href(file) {
  if (DATA.links && DATA.links.projector) return `${DATA.links.projector}#point=${encodeURIComponent(file)}`;
  if (DATA.links && DATA.links.explorer) return `${DATA.links.explorer}#image=${encodeURIComponent(file)}`;
  return null;
}

function card(name, A, c, sprite, patterns) {
  const ch = A.channels[c];
  const div = el('div', {className: 'card', id: `${name}/${c}`});
  div.dataset.layer = name; div.dataset.channel = c; div.dataset.selectivity = ch.selectivity;
  div.dataset.dead = ch.dead_share;
  const bar = el('span', {className: 'bar'});
  bar.style.width = Math.round(Math.abs(ch.selectivity) * 50) + 'px';
  bar.style.background = ch.selectivity >= 0 ? '#c64' : '#46c';
  div.append(el('b', {textContent: `${name} / ${c}`}), el('br'),
    el('span', {textContent: `selectivity ${ch.selectivity.toFixed(2)} `}), bar, el('br'),
    el('span', {className: 'muted', textContent: `cats ${fmt(ch.cats)}, dogs ${fmt(ch.dogs)}, ` +
      `dead ${(100 * ch.dead_share).toFixed(1)}%`}));
  const crops = el('div', {className: 'crops'});
  if (patterns) {  // the channel's feature visualisation (catdog.views.filters), first
    const cv = el('canvas', {className: 'crop pix pattern', title: 'its feature visualisation'});
    cut(cv, patterns, c, A.patterns.cols, A.patterns.size[1], A.patterns.size[0]);
    crops.append(cv);
  }
  if (!ch.top.length) crops.append(el('span', {textContent: 'dead on every image'}));
  ch.top.forEach((t, r) => {
    const cv = el('canvas', {className: 'crop pix', title: `${t.file}: ${fmt(t.value)}`});
    cut(cv, sprite, c * A.crops.k + r, A.crops.cols, A.crops.cell[1], A.crops.cell[0]);
    const link = href(t.file);
    crops.append(link ? el('a', {href: link}, cv) : cv);
  });
  div.append(crops);
  return div;
}

async function build() {
  for (const [name, A] of Object.entries(DATA.layers)) {
    const sprite = await loadImage(A.crops.sprite);
    const patterns = A.patterns ? await loadImage(A.patterns.sprite) : null;
    const grid = el('div', {className: 'row'});
    grid.dataset.layer = name;
    A.channels.forEach((_, c) => grid.append(card(name, A, c, sprite, patterns)));
    root.append(el('section', {}, el('h2', {textContent: `${name}: ${A.channels.length} channels, receptive field ` +
      `${A.field.size[0]} px`}), grid));
  }
}
function sortBy(key) {
  document.querySelectorAll('#layers .row').forEach(grid => {
    const cards = [...grid.children];
    const v = d => key === 'dogs' ? -d.dataset.selectivity : key === 'cats' ? +d.dataset.selectivity
      : key === 'dead' ? -d.dataset.dead : +d.dataset.channel;
    cards.sort((a, b) => v(a) - v(b) || a.dataset.channel - b.dataset.channel);
    grid.append(...cards);
  });
}
document.getElementById('title').textContent = DATA.title;
document.getElementById('source').textContent = `weights: ${DATA.source}`;
document.getElementById('sort').addEventListener('change', e => sortBy(e.target.value));
build().then(() => {
  if (location.hash) { const target = document.getElementById(decodeURIComponent(location.hash.slice(1))); if (target) target.scrollIntoView(); }
  api.ready = true;
});
