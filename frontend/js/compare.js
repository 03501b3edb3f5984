// Pure: the compare panel's choices and its CKA heat map (issue 16; the routes are
// backend/deconvlab/api/README.md, "Compare two models").
//
//   a target            GET /api/compare/targets: {other, epoch|null, kind, label, layers, top_k}
//   its id (a <select>) "other" for a served model, "other@epoch" for a training snapshot
//   a CKA cell          viridis on 0..1 (as cka.png), its number in black or white, whichever
//                       contrasts more with the cell (WCAG 2 relative luminance)
import { toHex, viridis } from './colormap.js';

/** A target's id in the picker: "zfnet-imagenette" or "zfnet-imagenette@2". */
export function targetId({ other, epoch = null }) {
  return epoch === null || epoch === undefined ? String(other) : `${other}@${Number(epoch)}`;
}

/** The inverse of targetId: {other, epoch} (epoch null for a served model), or null for nothing. */
export function parseTargetId(id) {
  const text = String(id ?? '').trim();
  if (!text) return null;
  const m = /^(.+)@(0|[1-9][0-9]{0,8})$/.exec(text);
  return m ? { other: m[1], epoch: Number(m[2]) } : { other: text, epoch: null };
}

/** The picker's words for a target: the model itself, another model, a snapshot. */
export function targetLabel(target, model) {
  if (target.kind === 'snapshot') {
    return `${target.other}, training snapshot epoch ${target.epoch}${target.other === model ? '' : ' (another model)'}`;
  }
  return target.other === model ? `${target.other} (this model itself)` : target.other;
}

/** WCAG 2 relative luminance of an sRGB colour [r, g, b] (0..255). */
export function luminance(rgb) {
  const lin = (c) => { const s = c / 255; return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4; };
  const [r, g, b] = rgb.map(lin);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

/** Contrast ratio of two colours (1..21). */
export function contrast(a, b) {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

const BLACK = [0, 0, 0], WHITE = [255, 255, 255];

/** Black or white, whichever reads better on `rgb` (on any colour one of them reaches 4.58:1). */
export function textOn(rgb) {
  return contrast(rgb, BLACK) >= contrast(rgb, WHITE) ? '#000000' : '#ffffff';
}

/**
 * The heat map's cells: rows x columns of {value, text, bg, fg}. A null value (a layer
 * constant over the images) is a blank cell with "–".
 */
export function ckaCells(matrix, digits = 2) {
  return (matrix || []).map((row) => row.map((v) => {
    if (v === null || v === undefined || !Number.isFinite(Number(v))) {
      return { value: null, text: '–', bg: 'transparent', fg: 'inherit' };
    }
    const rgb = viridis(Number(v));
    return { value: Number(v), text: Number(v).toFixed(digits), bg: toHex(rgb), fg: textOn(rgb) };
  }));
}

/** The largest cell of each row: {row, col, value} (a layer's closest layer in the other net), nulls skipped. */
export function rowBest(matrix) {
  return (matrix || []).map((row, i) => {
    let best = null;
    row.forEach((v, j) => {
      if (v !== null && Number.isFinite(v) && (best === null || v > best.value)) best = { row: i, col: j, value: v };
    });
    return best;
  });
}
