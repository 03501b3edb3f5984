import { test } from 'node:test';
import assert from 'node:assert/strict';
import { moveUnit, range, sortUnits, strongestUnit } from '../js/units.js';

const units = [
  { unit: 0, max: 1.5 }, { unit: 1, max: 7 }, { unit: 2, max: 0 },
  { unit: 3, max: 7 }, { unit: 4, max: NaN }, { unit: 5, max: 2.25 },
];

test('sort by activation: strongest first, ties by index, NaN last; input untouched', () => {
  const before = JSON.stringify(units);
  assert.deepEqual(sortUnits(units, 'activation').map((u) => u.unit), [1, 3, 5, 0, 2, 4]);
  assert.deepEqual(sortUnits(units, 'index').map((u) => u.unit), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(sortUnits([...units].reverse(), 'index').map((u) => u.unit), [0, 1, 2, 3, 4, 5]);
  assert.equal(JSON.stringify(units), before);
  assert.deepEqual(sortUnits(null, 'activation'), []);
});

test('sort agrees with a brute-force ranking on random data', () => {
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const us = Array.from({ length: 300 }, (_, i) => ({ unit: i, max: Math.round(rnd() * 50) / 10 }));
  const sorted = sortUnits(us, 'activation');
  // Every unit's rank equals the number of units that beat it.
  sorted.forEach((u, rank) => {
    const beaten = us.filter((v) => v.max > u.max || (v.max === u.max && v.unit < u.unit)).length;
    assert.equal(rank, beaten);
  });
});

test('strongest: largest max, lowest index on ties, null when none', () => {
  assert.equal(strongestUnit(units), 1);
  assert.equal(strongestUnit([]), null);
  assert.equal(strongestUnit([{ unit: 0, max: NaN }]), null);
  assert.equal(strongestUnit([{ unit: 3, max: -2 }, { unit: 1, max: -1 }]), 1);
});

test('moveUnit follows the display order and clamps', () => {
  const order = sortUnits(units, 'activation'); // 1 3 5 0 2 4
  assert.equal(moveUnit(order, 1, 1), 3);
  assert.equal(moveUnit(order, 5, 2), 2);
  assert.equal(moveUnit(order, 3, -1), 1);
  assert.equal(moveUnit(order, 1, -1), 1);
  assert.equal(moveUnit(order, 4, 6), 4);
  assert.equal(moveUnit(order, null, 1), 1);
  assert.equal(moveUnit(order, null, -1), 4);
  assert.equal(moveUnit([], 3, 1), null);
  assert.equal(moveUnit([7, 8, 9], 8, 1), 9);
});

test('range ignores non-finite values', () => {
  assert.deepEqual(range(units), [0, 7]);
  assert.deepEqual(range([]), [0, 0]);
});
