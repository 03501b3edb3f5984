// Pure: boxes on the model's input for the region route (POST .../layers/{layer}/region).
// A box is [top, left, bottom, right] in input pixels of the model's view (input.png),
// bottom/right exclusive, integers with 0 <= top < bottom <= S and 0 <= left < right <= S,
// as backend/deconvlab/api/README.md ("Region") says; anything else the server answers 422.
//
//   way in                   function            rule
//   a drag (mouse, pen,      dragToBox           both corners -> input pixels (floor / ceil), clamped to
//   touch while drawing)                         the image; a click without a drag is a 1x1 px box
//   four number fields       fieldsToBox         integers only; the same bounds, said in words
//   arrow keys on the box    nudgeBox            arrows move it, Shift+arrows grow / shrink bottom-right;
//                                                it stays inside the image and at least 1 px
//   none yet                 defaultBox          the middle quarter of the image

/** The words for a bad box (null when it is good): the server's bounds, so a 422 never comes back. */
export function boxError(box, inputSize) {
  const S = inputSize;
  if (!Array.isArray(box) || box.length !== 4 || !box.every(Number.isInteger)) {
    return `box: expected four whole numbers [top, left, bottom, right], got ${JSON.stringify(box)}`;
  }
  const [t, l, b, r] = box;
  if (!(t >= 0 && t < b && b <= S)) return `box: expected 0 <= top < bottom <= ${S}, got top ${t}, bottom ${b}`;
  if (!(l >= 0 && l < r && r <= S)) return `box: expected 0 <= left < right <= ${S}, got left ${l}, right ${r}`;
  return null;
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

/**
 * The box a drag from `a` to `b` ({x, y} in display pixels of an element `width x height`
 * showing the S x S input) covers, in input pixels: every input pixel the drag's rectangle
 * touches. Either corner may come first; both are clamped to the image.
 */
export function dragToBox(a, b, width, height, inputSize) {
  if (!(width > 0 && height > 0 && inputSize > 0)) {
    throw new RangeError(`expected positive sizes, got ${width}x${height} px for a ${inputSize} px input`);
  }
  const S = inputSize;
  const toY = (v) => clamp((v / height) * S, 0, S);
  const toX = (v) => clamp((v / width) * S, 0, S);
  const y0 = Math.min(toY(a.y), toY(b.y)), y1 = Math.max(toY(a.y), toY(b.y));
  const x0 = Math.min(toX(a.x), toX(b.x)), x1 = Math.max(toX(a.x), toX(b.x));
  const top = clamp(Math.floor(y0), 0, S - 1), left = clamp(Math.floor(x0), 0, S - 1);
  return [top, left, clamp(Math.max(top + 1, Math.ceil(y1)), 1, S), clamp(Math.max(left + 1, Math.ceil(x1)), 1, S)];
}

/** Four field values (strings or numbers) -> {box} or {error} in words. */
export function fieldsToBox({ top, left, bottom, right }, inputSize) {
  const parts = [top, left, bottom, right].map((v) => String(v ?? '').trim());
  const names = ['top', 'left', 'bottom', 'right'];
  for (let i = 0; i < 4; i++) {
    if (!/^\d+$/.test(parts[i])) return { error: `${names[i]}: expected a whole number of input pixels, got "${parts[i]}"` };
  }
  const box = parts.map(Number);
  const error = boxError(box, inputSize);
  return error ? { error } : { box };
}

/** The middle quarter of an S x S input. */
export function defaultBox(inputSize) {
  const q = Math.floor(inputSize / 4);
  return [q, q, inputSize - q, inputSize - q];
}

/**
 * The box after a key: ArrowUp/Down/Left/Right move it by `step` px (kept inside the
 * image); with Shift they move its bottom or right edge (at least 1 px wide). Other
 * keys: null (not ours).
 */
export function nudgeBox(box, key, { shift = false, step = 4 } = {}, inputSize) {
  const d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[key];
  if (!d) return null;
  const S = inputSize;
  let [t, l, b, r] = box;
  const [dy, dx] = [d[0] * step, d[1] * step];
  if (shift) {
    b = clamp(b + dy, t + 1, S);
    r = clamp(r + dx, l + 1, S);
  } else {
    const my = clamp(dy, -t, S - b), mx = clamp(dx, -l, S - r);
    t += my; b += my; l += mx; r += mx;
  }
  return [t, l, b, r];
}

/** "rows 10–41, columns 20–63 (44×32 px)": a box in words (bottom/right exclusive). */
export function boxWords(box) {
  const [t, l, b, r] = box;
  return `rows ${t}–${b - 1}, columns ${l}–${r - 1} (${r - l}×${b - t} px)`;
}
