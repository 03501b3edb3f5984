import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  boxToPercent, currentModel, formatHash, neighbourLayer, occlusionGridSide, parseBoxHeader,
  parseHash, parsePosition, pixelToCell, sameView, urlState, visibleLayers,
} from '../js/state.js';
import { DEFAULTS } from '../js/config.js';

const full = {
  model: 'zfnet-imagenette', image: 'ab12cd34ef', layer: 'conv5', unit: 12,
  method: 'guided', seed: 'point', position: [3, 7], sort: 'activation',
};

test('URL state round trip: every field survives format then parse', () => {
  const hash = formatHash(full);
  assert.equal(hash, '#model=zfnet-imagenette&image=ab12cd34ef&layer=conv5&unit=12&method=guided&pos=3%2C7&sort=activation');
  const { state, rejected } = parseHash(hash);
  assert.deepEqual(rejected, []);
  assert.deepEqual(urlState({ ...DEFAULTS, ...state }), full);
});

test('URL state round trip over many states', () => {
  const layers = ['conv1', 'conv2', 'conv5', 'fc6', 'fc7'];
  for (let i = 0; i < 200; i++) {
    const s = {
      model: i % 3 ? 'm-' + i : null,
      image: i % 4 ? (i * 7919).toString(16) : null,
      layer: layers[i % layers.length],
      unit: i % 5 ? i * 3 : null,
      method: ['deconv', 'guided', 'backprop'][i % 3],
      seed: ['point', 'map'][i % 2],
      position: i % 2 ? [i % 13, (i * 5) % 13] : null,
      sort: ['index', 'activation'][i % 2],
    };
    const back = { ...DEFAULTS, ...parseHash(formatHash(s)).state };
    assert.deepEqual(urlState(back), urlState(s), formatHash(s));
    assert.ok(sameView(back, s));
  }
});

test('defaults are left out of the link, and an empty link is the default view', () => {
  assert.equal(formatHash(DEFAULTS), '');
  assert.equal(formatHash({ ...DEFAULTS, layer: 'conv1', method: 'deconv' }), '');
  assert.deepEqual(parseHash('').state, {});
  assert.deepEqual(parseHash('#').state, {});
});

test('a query string works as well as a hash', () => {
  assert.deepEqual(parseHash('?layer=conv3&unit=4').state, { layer: 'conv3', unit: 4 });
});

test('malformed values are dropped and named, valid ones kept', () => {
  const { state, rejected } = parseHash('#layer=conv2&unit=-1&method=magic&pos=1,x&seed=map&image=../etc&sort=up&model=a%20b');
  assert.deepEqual(state, { layer: 'conv2', seed: 'map' });
  assert.deepEqual(rejected.sort(), ['image=../etc', 'method=magic', 'model=a b', 'pos=1,x', 'sort=up', 'unit=-1'].sort());
  assert.deepEqual(parseHash('#unit=007').rejected, ['unit=007']);
  assert.deepEqual(parseHash('#unit=0').state, { unit: 0 });
});

test('parsePosition', () => {
  assert.deepEqual(parsePosition('0,12'), [0, 12]);
  assert.equal(parsePosition('1'), null);
  assert.equal(parsePosition('1,2,3'), null);
  assert.equal(parsePosition('-1,2'), null);
  assert.equal(parsePosition(null), null);
});

test('pixelToCell maps display pixels to feature-map cells, clamped', () => {
  // A 13x13 map shown at 260x260 px: 20 px per cell.
  assert.deepEqual(pixelToCell(0, 0, 260, 260, 13, 13), [0, 0]);
  assert.deepEqual(pixelToCell(19.9, 20, 260, 260, 13, 13), [1, 0]);
  assert.deepEqual(pixelToCell(259, 130, 260, 260, 13, 13), [6, 12]);
  assert.deepEqual(pixelToCell(260, 260, 260, 260, 13, 13), [12, 12]);
  assert.deepEqual(pixelToCell(-5, 999, 260, 260, 13, 13), [12, 0]);
  // Non-square: 6 rows x 4 cols over 100 x 300 px.
  assert.deepEqual(pixelToCell(99, 299, 100, 300, 6, 4), [5, 3]);
  assert.deepEqual(pixelToCell(26, 51, 100, 300, 6, 4), [1, 1]);
  assert.throws(() => pixelToCell(1, 1, 0, 10, 3, 3), /expected positive sizes, got 0x10 px for a 3x3 map/);
});

test('boxToPercent clips to the image and rejects empty boxes', () => {
  assert.deepEqual(boxToPercent([56, 112, 112, 224], 224), { top: 25, left: 50, width: 50, height: 25 });
  assert.deepEqual(boxToPercent([-10, -10, 56, 300], 224), { top: 0, left: 0, width: 100, height: 25 });
  assert.equal(boxToPercent([10, 10, 10, 20], 224), null);
  assert.equal(boxToPercent(null, 224), null);
  assert.equal(boxToPercent([1, 2, 3], 224), null);
  assert.equal(boxToPercent([0, 0, 10, 10], 0), null);
});

test('parseBoxHeader', () => {
  assert.deepEqual(parseBoxHeader('0,4,67,71'), [0, 4, 67, 71]);
  assert.deepEqual(parseBoxHeader(' -3, 4 ,10,20'), [-3, 4, 10, 20]);
  assert.equal(parseBoxHeader('1,2,3'), null);
  assert.equal(parseBoxHeader('a,b,c,d'), null);
  assert.equal(parseBoxHeader(null), null);
});

const model = {
  id: 'm', layers: [
    { name: 'conv1', kind: 'conv' }, { name: 'conv2', kind: 'conv' }, { name: 'fc6', kind: 'fc' },
    { name: 'fc7', kind: 'fc' }, { name: 'fc8', kind: 'fc' },
  ],
};

test('layers: fc8 hidden, neighbours clamped', () => {
  const layers = visibleLayers(model, ['fc8']);
  assert.deepEqual(layers.map((l) => l.name), ['conv1', 'conv2', 'fc6', 'fc7']);
  assert.equal(neighbourLayer(layers, 'conv2', 1), 'fc6');
  assert.equal(neighbourLayer(layers, 'conv2', -1), 'conv1');
  assert.equal(neighbourLayer(layers, 'conv1', -1), 'conv1');
  assert.equal(neighbourLayer(layers, 'fc7', 1), 'fc7');
  assert.equal(neighbourLayer(layers, 'nope', 1), 'conv1');
  assert.equal(neighbourLayer([], 'conv1', 1), null);
  assert.deepEqual(visibleLayers(null), []);
});

test('currentModel: chosen, else default, else first', () => {
  const ms = [{ id: 'a' }, { id: 'b' }];
  assert.equal(currentModel(ms, 'b', 'a').id, 'b');
  assert.equal(currentModel(ms, 'zzz', 'a').id, 'a');
  assert.equal(currentModel(ms, null, 'zzz').id, 'a');
  assert.equal(currentModel([], 'a', 'a'), null);
});

test('occlusionGridSide', () => {
  assert.equal(occlusionGridSide(224, 32, 8), 25);
  assert.equal(occlusionGridSide(224, 224, 8), 1);
  assert.equal(occlusionGridSide(224, 300, 8), 0);
});
