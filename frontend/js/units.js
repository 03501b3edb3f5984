// Pure helpers over a layer's units ([{unit, max, mean, argmax}]): order, strongest, moves.

/** Units in display order: by index, or strongest first (ties by index). Never mutates. */
export function sortUnits(units, order) {
  const copy = Array.isArray(units) ? units.slice() : [];
  if (order === 'activation') {
    copy.sort((a, b) => score(b) - score(a) || a.unit - b.unit);
  } else {
    copy.sort((a, b) => a.unit - b.unit);
  }
  return copy;
}

function score(u) {
  const v = Number(u.max);
  return Number.isFinite(v) ? v : -Infinity;
}

/** The unit with the largest max (lowest index on ties); null for none or all non-finite. */
export function strongestUnit(units) {
  let best = null;
  for (const u of units ?? []) {
    if (!Number.isFinite(Number(u.max))) continue;
    if (best === null || u.max > best.max || (u.max === best.max && u.unit < best.unit)) best = u;
  }
  return best ? best.unit : null;
}

/**
 * The unit `delta` steps from `current` in the display order, clamped at the ends.
 * With no current unit, the first one (or the last for a backward move).
 */
export function moveUnit(ordered, current, delta) {
  if (!ordered.length) return null;
  const ids = ordered.map((u) => (typeof u === 'number' ? u : u.unit));
  const i = ids.indexOf(current);
  if (i < 0) return delta < 0 ? ids[ids.length - 1] : ids[0];
  return ids[Math.min(ids.length - 1, Math.max(0, i + delta))];
}

/** [min, max] of the units' max values (finite ones only); [0, 0] when none. */
export function range(units) {
  let lo = Infinity, hi = -Infinity;
  for (const u of units ?? []) {
    const v = Number(u.max);
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo === Infinity ? [0, 0] : [lo, hi];
}
