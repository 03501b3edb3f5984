// File names of downloaded figures: what they say, and that they stay file names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { figureFileName, safePart } from '../js/files.js';

test('a projection name says model, image, layer, unit, method, seed and position', () => {
  const name = figureFileName({
    figure: 'projection', model: 'zfnet-imagenette', image: '3fa2b1c4d5e6f7a8b9c0d1e2', layer: 'conv2',
    unit: 3, method: 'deconv', seed: 'point', position: [4, 7],
  });
  assert.equal(name, 'zfnet-imagenette_3fa2b1c4d5e6_conv2_unit3_deconv-point_y4x7_projection.png');
  // Each part can be read back from the name.
  const parts = name.replace(/\.png$/, '').split('_');
  assert.deepEqual(parts, ['zfnet-imagenette', '3fa2b1c4d5e6', 'conv2', 'unit3', 'deconv-point', 'y4x7', 'projection']);
});

test('graph-net layer names keep their dots; odd characters become dashes; absent parts are left out', () => {
  assert.equal(figureFileName({ figure: 'map', model: 'tiny-resnet', image: 'ab', layer: 'layer1.0.relu_1', unit: 0 }),
    'tiny-resnet_ab_layer1.0.relu-1_unit0_map.png');
  assert.equal(figureFileName({ figure: 'filters', model: 'm', layer: 'conv1' }), 'm_conv1_filters.png');
  assert.equal(safePart('a/b\\c: d'), 'a-b-c-d');
  assert.equal(safePart('../..'), 'x', 'no path tricks, never empty');
  for (const n of [figureFileName({ figure: 'top9', model: 'a b', layer: 'x/y', unit: 2 })]) {
    assert.match(n, /^[A-Za-z0-9._-]+$/);
  }
  assert.throws(() => figureFileName({ model: 'm' }), /figure: expected/);
});

test('the evolution strip is named by model, layer, unit, method and the scan\'s size (no uploaded image in it)', () => {
  assert.equal(figureFileName({ figure: 'evolution', model: 'zf', layer: 'conv2', unit: 3, method: 'deconv', seed: 'point', extra: 'n12' }),
    'zf_conv2_unit3_deconv-point_n12_evolution.png');
});
