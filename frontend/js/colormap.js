// Pure colour maps: viridis (matplotlib's 256-entry table) for magnitudes,
// a categorical palette for class indices, and RGBA rasters for <canvas>.

// matplotlib's viridis, 256 entries of rrggbb (from matplotlib/_cm_listed.py, rounded to 8 bits).
const VIRIDIS_HEX = [
  '44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769',
  '48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a',
  '472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85',
  '4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b',
  '3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d',
  '33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e',
  '2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e',
  '26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d',
  '21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88',
  '1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81',
  '28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74',
  '3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863',
  '5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d',
  '84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32',
  'addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a',
  'd8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725',
].join('');

export const VIRIDIS = Object.freeze(Array.from({ length: 256 }, (_, i) => Object.freeze([
  parseInt(VIRIDIS_HEX.slice(6 * i, 6 * i + 2), 16),
  parseInt(VIRIDIS_HEX.slice(6 * i + 2, 6 * i + 4), 16),
  parseInt(VIRIDIS_HEX.slice(6 * i + 4, 6 * i + 6), 16),
])));

/** viridis(t) for t in [0, 1] -> [r, g, b] (0..255); nearest of the 256 entries, t clamped, NaN -> 0. */
export function viridis(t) {
  const v = Number.isFinite(t) ? Math.min(1, Math.max(0, t)) : 0;
  return VIRIDIS[Math.round(v * 255)];
}

// Tableau 20: well-separated colours for up to 20 classes, then repeated.
const CATEGORICAL_HEX = [
  '1f77b4', 'ff7f0e', '2ca02c', 'd62728', '9467bd', '8c564b', 'e377c2', '7f7f7f', 'bcbd22', '17becf',
  'aec7e8', 'ffbb78', '98df8a', 'ff9896', 'c5b0d5', 'c49c94', 'f7b6d2', 'c7c7c7', 'dbdb8d', '9edae5',
];
export const CATEGORICAL = Object.freeze(CATEGORICAL_HEX.map((h) => Object.freeze([
  parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16),
])));

/** The colour of class `index` (non-negative integer) -> [r, g, b]. */
export function categorical(index) {
  const i = Number.isInteger(index) && index >= 0 ? index : 0;
  return CATEGORICAL[i % CATEGORICAL.length];
}

/** [r, g, b] -> "#rrggbb". */
export function toHex(rgb) {
  return '#' + rgb.map((c) => Math.round(c).toString(16).padStart(2, '0')).join('');
}

/** [min, max] of the finite values of a 2-D array; [0, 0] when there are none. */
export function extent(grid) {
  let lo = Infinity, hi = -Infinity;
  for (const row of grid ?? []) for (const v of row ?? []) {
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo === Infinity ? [0, 0] : [lo, hi];
}

/** v scaled to [0, 1] over [lo, hi]; a flat range maps everything to 0. */
export function normalise(v, lo, hi) {
  if (!Number.isFinite(v)) return 0;
  return hi > lo ? Math.min(1, Math.max(0, (v - lo) / (hi - lo))) : 0;
}

function checkGrid(grid) {
  if (!Array.isArray(grid) || !grid.length || !Array.isArray(grid[0]) || !grid[0].length) {
    throw new TypeError('expected a non-empty 2-D array');
  }
  const w = grid[0].length;
  for (const row of grid) {
    if (!Array.isArray(row) || row.length !== w) {
      throw new TypeError(`expected rows of ${w} values, got a row of ${Array.isArray(row) ? row.length : typeof row}`);
    }
  }
  return [grid.length, w];
}

/**
 * A 2-D array of magnitudes -> {width, height, data} RGBA (ImageData's layout),
 * viridis over [lo, hi] (default: the array's own extent).
 */
export function heatRaster(grid, { lo, hi } = {}) {
  const [h, w] = checkGrid(grid);
  const [elo, ehi] = extent(grid);
  const a = lo ?? elo, b = hi ?? ehi;
  const data = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const [r, g, bl] = viridis(normalise(grid[y][x], a, b));
    const o = 4 * (y * w + x);
    data[o] = r; data[o + 1] = g; data[o + 2] = bl; data[o + 3] = 255;
  }
  return { width: w, height: h, data };
}

/** A 2-D array of class indices -> RGBA raster in the categorical palette. */
export function classRaster(grid) {
  const [h, w] = checkGrid(grid);
  const data = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const [r, g, b] = categorical(grid[y][x]);
    const o = 4 * (y * w + x);
    data[o] = r; data[o + 1] = g; data[o + 2] = b; data[o + 3] = 255;
  }
  return { width: w, height: h, data };
}

/** The distinct class indices of a 2-D array, most frequent first (ties by index). */
export function classCounts(grid) {
  const counts = new Map();
  for (const row of grid ?? []) for (const v of row ?? []) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts.entries()]
    .sort((p, q) => q[1] - p[1] || p[0] - q[0])
    .map(([index, count]) => ({ index, count }));
}
