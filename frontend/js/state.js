// Pure functions over the app state: URL hash <-> state, geometry, layer lists.
// Nothing here touches the DOM, fetch or the clock, so Node's test runner covers it.
import { DEFAULTS, METHODS, SEEDS, SORTS, URL_KEYS } from './config.js';

const METHOD_IDS = METHODS.map((m) => m.id);
const SEED_IDS = SEEDS.map((s) => s.id);
const SORT_IDS = SORTS.map((s) => s.id);
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/; // model ids and layer names
const IMAGE_RE = /^[A-Za-z0-9]{1,128}$/; // content-addressed ids (hex)
const INT_RE = /^(0|[1-9][0-9]{0,8})$/;

/** The part of the state a link carries. */
export function urlState(state) {
  const out = {};
  for (const key of Object.keys(URL_KEYS)) out[key] = state[key] ?? DEFAULTS[key];
  return out;
}

/**
 * Parse a location hash (or query string) into the URL fields it holds.
 * Unknown keys and malformed values are dropped (and listed in `rejected`),
 * so a hand-edited link never breaks the app.
 */
export function parseHash(hash) {
  const text = String(hash ?? '').replace(/^[#?]/, '');
  const params = new URLSearchParams(text);
  const out = {};
  const rejected = [];
  const take = (key, value, ok, convert = (v) => v) => {
    if (value === null) return;
    if (ok(value)) out[key] = convert(value);
    else rejected.push(`${URL_KEYS[key]}=${value}`);
  };
  take('model', params.get(URL_KEYS.model), (v) => NAME_RE.test(v));
  take('image', params.get(URL_KEYS.image), (v) => IMAGE_RE.test(v));
  take('layer', params.get(URL_KEYS.layer), (v) => NAME_RE.test(v));
  take('unit', params.get(URL_KEYS.unit), (v) => INT_RE.test(v), Number);
  take('method', params.get(URL_KEYS.method), (v) => METHOD_IDS.includes(v));
  take('seed', params.get(URL_KEYS.seed), (v) => SEED_IDS.includes(v));
  take('sort', params.get(URL_KEYS.sort), (v) => SORT_IDS.includes(v));
  take('position', params.get(URL_KEYS.position), (v) => parsePosition(v) !== null, parsePosition);
  return { state: out, rejected };
}

/** "y,x" -> [y, x] (non-negative integers) or null. */
export function parsePosition(text) {
  const m = /^(\d{1,6}),(\d{1,6})$/.exec(String(text ?? ''));
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/** The hash for a state: only fields that differ from the defaults, in a fixed order. */
export function formatHash(state) {
  const params = new URLSearchParams();
  const s = urlState(state);
  for (const [key, name] of Object.entries(URL_KEYS)) {
    const value = s[key];
    if (value === null || value === undefined) continue;
    if (key === 'position') {
      if (Array.isArray(value)) params.set(name, `${value[0]},${value[1]}`);
      continue;
    }
    if (key !== 'model' && key !== 'image' && value === DEFAULTS[key]) continue;
    params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `#${text}` : '';
}

/** Two states show the same view when their URL fields agree. */
export function sameView(a, b) {
  return formatHash(a) === formatHash(b);
}

/**
 * The feature-map cell under a click: `px, py` in display pixels on an element
 * `width x height` that shows an `rows x cols` map. Clamped to the map.
 */
export function pixelToCell(px, py, width, height, rows, cols) {
  if (!(width > 0 && height > 0 && rows > 0 && cols > 0)) {
    throw new RangeError(`expected positive sizes, got ${width}x${height} px for a ${rows}x${cols} map`);
  }
  const clamp = (v, n) => Math.min(n - 1, Math.max(0, v));
  return [clamp(Math.floor((py / height) * rows), rows), clamp(Math.floor((px / width) * cols), cols)];
}

/**
 * A box [top, left, bottom, right) in input pixels as CSS percentages of an
 * `inputSize` square, clipped to the image (receptive fields overhang the border).
 */
export function boxToPercent(box, inputSize) {
  if (!Array.isArray(box) || box.length !== 4 || !(inputSize > 0)) return null;
  const clip = (v) => Math.min(inputSize, Math.max(0, v));
  const [t, l, b, r] = box.map(Number);
  if (![t, l, b, r].every(Number.isFinite)) return null;
  const top = clip(t), left = clip(l), bottom = clip(b), right = clip(r);
  if (bottom <= top || right <= left) return null;
  const pct = (v) => (100 * v) / inputSize;
  return { top: pct(top), left: pct(left), width: pct(right - left), height: pct(bottom - top) };
}

/** "top,left,bottom,right" (the X-Receptive-Field header) -> [t, l, b, r] or null. */
export function parseBoxHeader(text) {
  if (typeof text !== 'string') return null;
  const parts = text.split(',').map((p) => p.trim());
  if (parts.length !== 4 || !parts.every((p) => /^-?\d+$/.test(p))) return null;
  return parts.map(Number);
}

/** The layers offered as tabs, in network order. */
export function visibleLayers(model, hidden = []) {
  if (!model || !Array.isArray(model.layers)) return [];
  return model.layers.filter((l) => !hidden.includes(l.name));
}

/** The layer `delta` tabs away from `current`, clamped at the ends. */
export function neighbourLayer(layers, current, delta) {
  if (!layers.length) return null;
  const names = layers.map((l) => (typeof l === 'string' ? l : l.name));
  const i = names.indexOf(current);
  if (i < 0) return names[0];
  return names[Math.min(names.length - 1, Math.max(0, i + delta))];
}

/** The model entry the state points at: the chosen one, else the default, else the first. */
export function currentModel(models, modelId, defaultId) {
  if (!Array.isArray(models) || !models.length) return null;
  return models.find((m) => m.id === modelId)
    ?? models.find((m) => m.id === defaultId)
    ?? models[0];
}

/** Occlusion grid side for an input side, window and stride (windows fully inside). */
export function occlusionGridSide(inputSize, size, stride) {
  if (!(size > 0 && stride > 0) || size > inputSize) return 0;
  return Math.floor((inputSize - size) / stride) + 1;
}
