import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CATEGORICAL, VIRIDIS, categorical, classCounts, classRaster, extent, heatRaster, normalise, toHex, viridis,
} from '../js/colormap.js';

test('viridis: matplotlib values at the ends, the quartiles and the middle', () => {
  assert.equal(VIRIDIS.length, 256);
  // matplotlib: viridis(0) = #440154, viridis(1) = #fde725; 64 -> #3b528b, 128 -> #21918c, 192 -> #5ec962
  assert.deepEqual(viridis(0), [0x44, 0x01, 0x54]);
  assert.deepEqual(viridis(1), [0xfd, 0xe7, 0x25]);
  assert.equal(toHex(VIRIDIS[64]), '#3b528b');
  assert.equal(toHex(VIRIDIS[128]), '#21918c');
  assert.equal(toHex(VIRIDIS[192]), '#5ec962');
  assert.equal(toHex(viridis(0.5)), '#21918c'); // 0.5 * 255 = 127.5 rounds to 128
});

test('viridis clamps out-of-range and NaN', () => {
  assert.deepEqual(viridis(-3), viridis(0));
  assert.deepEqual(viridis(7), viridis(1));
  assert.deepEqual(viridis(NaN), viridis(0));
  assert.deepEqual(viridis(Infinity), viridis(0));
});

test('viridis lightness rises monotonically (it is a sequential map)', () => {
  // Relative luminance (Rec. 709) of successive entries never drops.
  const lum = ([r, g, b]) => 0.2126 * r + 0.7152 * g + 0.0722 * b;
  for (let i = 1; i < 256; i++) assert.ok(lum(VIRIDIS[i]) >= lum(VIRIDIS[i - 1]) - 0.5, `entry ${i}`);
  for (const c of VIRIDIS) for (const v of c) assert.ok(Number.isInteger(v) && v >= 0 && v <= 255);
});

test('normalise and extent', () => {
  assert.equal(normalise(5, 0, 10), 0.5);
  assert.equal(normalise(-1, 0, 10), 0);
  assert.equal(normalise(11, 0, 10), 1);
  assert.equal(normalise(3, 3, 3), 0);
  assert.equal(normalise(NaN, 0, 1), 0);
  assert.deepEqual(extent([[1, -2], [NaN, 9]]), [-2, 9]);
  assert.deepEqual(extent([]), [0, 0]);
});

test('heatRaster: written-out RGBA for a 2x2 grid', () => {
  const r = heatRaster([[0, 1], [2, 4]]);
  assert.equal(r.width, 2);
  assert.equal(r.height, 2);
  // 0 -> entry 0, 1 -> 0.25*255 = 63.75 -> 64, 2 -> 127.5 -> 128, 4 -> 255
  assert.deepEqual([...r.data], [
    0x44, 0x01, 0x54, 255, 0x3b, 0x52, 0x8b, 255,
    0x21, 0x91, 0x8c, 255, 0xfd, 0xe7, 0x25, 255,
  ]);
  // A fixed range overrides the grid's own extent.
  const fixed = heatRaster([[0, 1]], { lo: 0, hi: 2 });
  assert.deepEqual([...fixed.data.slice(4, 8)], [0x21, 0x91, 0x8c, 255]);
});

test('rasters refuse ragged or empty grids in words', () => {
  assert.throws(() => heatRaster([[1, 2], [3]]), /expected rows of 2 values, got a row of 1/);
  assert.throws(() => heatRaster([]), /expected a non-empty 2-D array/);
  assert.throws(() => classRaster([[]]), /expected a non-empty 2-D array/);
});

test('categorical palette and class rasters', () => {
  assert.equal(CATEGORICAL.length, 20);
  assert.equal(new Set(CATEGORICAL.map(toHex)).size, 20);
  assert.equal(toHex(categorical(0)), '#1f77b4');
  assert.deepEqual(categorical(20), categorical(0));
  assert.deepEqual(categorical(-1), categorical(0));
  const r = classRaster([[0, 3]]);
  assert.deepEqual([...r.data], [0x1f, 0x77, 0xb4, 255, 0xd6, 0x27, 0x28, 255]);
});

test('classCounts: most frequent first, ties by index', () => {
  assert.deepEqual(classCounts([[2, 2, 1], [0, 1, 5]]), [
    { index: 1, count: 2 }, { index: 2, count: 2 }, { index: 0, count: 1 }, { index: 5, count: 1 },
  ]);
});
