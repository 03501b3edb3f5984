// The layer picker's pure model: grouping layer_info by stage and block, filtering,
// a sensible layer after a model change, deep links with dots and underscores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  filterGroups, groupLayers, locate, matches, sensibleLayer, shortName, visibleLayerList,
} from '../js/picker.js';
import { formatHash, parseHash } from '../js/state.js';

// layer_info of torchvision's resnet18 at 64 px, built the way Net.layer_info() names it
// (module paths, fx op names, parent = enclosing module path).
function resnet18Info(classes = 3) {
  const out = [];
  const add = (name, type, c, hw, parent) => out.push({
    name, kind: type === 'add' ? 'op' : 'conv', type, channels: c, shape: [c, hw, hw], parent,
  });
  add('conv1', 'Conv2d', 64, 32, null); add('bn1', 'BatchNorm2d', 64, 32, null);
  add('relu', 'ReLU', 64, 32, null); add('maxpool', 'MaxPool2d', 64, 16, null);
  let c = 64, hw = 16;
  for (let s = 1; s <= 4; s++) {
    if (s > 1) { c *= 2; hw /= 2; }
    for (let b = 0; b < 2; b++) {
      const blk = `layer${s}.${b}`;
      for (const [n, t] of [['conv1', 'Conv2d'], ['bn1', 'BatchNorm2d'], ['relu', 'ReLU'], ['conv2', 'Conv2d'], ['bn2', 'BatchNorm2d']]) add(`${blk}.${n}`, t, c, hw, blk);
      if (s > 1 && b === 0) {
        add(`${blk}.downsample.0`, 'Conv2d', c, hw, `${blk}.downsample`);
        add(`${blk}.downsample.1`, 'BatchNorm2d', c, hw, `${blk}.downsample`);
        add(`${blk}.downsample`, 'Sequential', c, hw, blk);
      }
      add(`${blk}.add`, 'add', c, hw, blk); add(`${blk}.relu_1`, 'ReLU', c, hw, blk);
      add(blk, 'BasicBlock', c, hw, `layer${s}`);
    }
    add(`layer${s}`, 'Sequential', c, hw, null);
  }
  add('avgpool', 'AdaptiveAvgPool2d', 512, 1, null);
  out.push({ name: 'flatten', kind: 'fc', type: 'flatten', channels: 512, shape: [512], parent: null });
  out.push({ name: 'fc', kind: 'fc', type: 'Linear', channels: classes, shape: [classes], parent: null });
  return out;
}

const ZFNET = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5'].map((name, i) => ({ name, kind: 'conv', type: 'Conv2d', channels: 8 * (i + 1), shape: [8 * (i + 1), 13, 13], parent: null }))
  .concat(['fc6', 'fc7', 'fc8'].map((name) => ({ name, kind: 'fc', type: 'Linear', channels: name === 'fc8' ? 10 : 128, shape: [name === 'fc8' ? 10 : 128], parent: null })));

const allOf = (g) => g.groups.flatMap((x) => [...x.main, ...x.inner.flatMap((b) => b.layers)]).map((l) => l.name);

test('a paper net (every parent null) is one flat group, in network order', () => {
  const g = groupLayers(ZFNET);
  assert.equal(g.flat, true);
  assert.equal(g.groups.length, 1);
  assert.deepEqual(g.groups[0].main.map((l) => l.name), ZFNET.map((l) => l.name));
  assert.deepEqual(g.groups[0].inner, []);
});

test('resnet18: stem, four stages with their block outputs first, head; every layer exactly once', () => {
  const info = resnet18Info();
  const g = groupLayers(info);
  assert.equal(g.flat, false);
  assert.deepEqual(g.groups.map((x) => x.label), ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']);
  const l3 = g.groups.find((x) => x.label === 'layer3');
  assert.deepEqual(l3.main.map((l) => l.name), ['layer3.0', 'layer3.1', 'layer3']);
  assert.deepEqual(l3.inner.map((b) => b.block), ['layer3.0', 'layer3.1']);
  // The downsample branch and its Sequential stay inside their block.
  assert.ok(l3.inner[0].layers.some((l) => l.name === 'layer3.0.downsample.0'));
  assert.ok(l3.inner[0].layers.some((l) => l.name === 'layer3.0.downsample'));
  // Each layer once, none lost: the union is the input (as a multiset).
  const names = allOf(g);
  assert.equal(names.length, info.length);
  assert.deepEqual([...names].sort(), info.map((l) => l.name).sort());
  // `all` keeps forward order within a group.
  const order = info.map((l) => l.name);
  for (const grp of g.groups) {
    const idx = grp.all.map((l) => order.indexOf(l.name));
    assert.deepEqual(idx, [...idx].sort((a, b) => a - b), `${grp.label} out of order`);
  }
  assert.deepEqual(locate(g, 'layer3.1.relu_1'), { group: 'stage:layer3', block: 'layer3.1', main: false });
  assert.deepEqual(locate(g, 'layer3.1'), { group: 'stage:layer3', block: null, main: true });
  assert.equal(shortName('layer3.1.relu_1', 'layer3.1'), 'relu_1');
  assert.equal(shortName('layer3.10.conv1', 'layer3.1'), 'layer3.10.conv1', 'a prefix is a whole path segment');
});

test('the classifier is no tab: the final vector with one unit per class (or a listed name)', () => {
  const shown = visibleLayerList({ classes: ['a', 'b', 'c'], layers: resnet18Info(3) });
  assert.ok(!shown.some((l) => l.name === 'fc'));
  assert.ok(shown.some((l) => l.name === 'flatten'));
  const zf = visibleLayerList({ classes: Array.from({ length: 10 }, String), layers: ZFNET });
  assert.deepEqual(zf.map((l) => l.name), ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7']);
  // A last layer that does not match the class count stays (it is no classifier we know of).
  assert.ok(visibleLayerList({ classes: ['a'], layers: ZFNET }).some((l) => l.name === 'fc8'));
});

test('the filter: every term in the name or type, any case; groups without a match drop out', () => {
  const g = groupLayers(resnet18Info());
  const hits = filterGroups(g, 'layer3.1');
  assert.deepEqual(hits.map((x) => x.label), ['layer3']);
  // Cross-check with a plain scan of the layers.
  const scan = resnet18Info().filter((l) => l.name.includes('layer3.1')).map((l) => l.name);
  assert.deepEqual(hits[0].layers.map((l) => l.name), scan);
  const adds = filterGroups(g, 'ADD');
  assert.deepEqual(adds.flatMap((x) => x.layers.map((l) => l.name)), resnet18Info().filter((l) => l.type === 'add').map((l) => l.name));
  assert.deepEqual(filterGroups(g, 'layer2 bn2 downsample').length, 0);
  assert.deepEqual(filterGroups(g, 'layer2 conv2').flatMap((x) => x.layers.map((l) => l.name)), ['layer2.0.conv2', 'layer2.1.conv2'],
    'a term with digits is a name, not the start of Conv2d');
  const convs = filterGroups(g, 'layer4.1 conv').flatMap((x) => x.layers.map((l) => l.name));
  assert.deepEqual(convs, ['layer4.1.conv1', 'layer4.1.conv2'], '"conv" finds the Conv2d layers by type');
  assert.equal(filterGroups(g, 'no-such-layer').length, 0);
  assert.ok(matches({ name: 'x', type: 'BatchNorm2d' }, 'batchnorm'));
  assert.ok(matches({ name: 'x' }, '   '), 'an empty query matches all');
});

test('after a model change: the same name, else a block output as deep, else conv1', () => {
  const rn = resnet18Info();
  assert.equal(sensibleLayer(rn, 'conv1', ZFNET), 'conv1');
  assert.equal(sensibleLayer(rn, 'conv5', ZFNET), 'layer4', 'the last conv -> the last stage with maps larger than 1x1');
  assert.equal(sensibleLayer(rn, 'fc6', ZFNET), 'flatten', 'a vector layer -> a vector layer');
  const shallow = sensibleLayer(ZFNET, 'layer1.0', rn);
  assert.ok(['conv1', 'conv2'].includes(shallow), `a shallow block -> a shallow conv, got ${shallow}`);
  const deep = sensibleLayer(ZFNET, 'layer4', rn);
  assert.ok(['conv4', 'conv5'].includes(deep), `layer4 -> a deep conv, got ${deep}`);
  assert.equal(sensibleLayer(ZFNET, 'nope', []), 'conv1');
  assert.equal(sensibleLayer([], 'conv1', ZFNET), null);
});

test('layer names with dots and underscores survive the link, round trip', () => {
  for (const layer of ['layer3.1', 'layer1.0.relu_1', 'layer2.0.downsample.0', 'features.28', 'blocks.3.0.conv_pw']) {
    const hash = formatHash({ model: 'tiny-resnet', image: 'abc123', layer, unit: 7 });
    const back = parseHash(hash);
    assert.deepEqual(back.rejected, [], hash);
    assert.equal(back.state.layer, layer);
    assert.equal(back.state.model, 'tiny-resnet');
    assert.equal(back.state.unit, 7);
    // And through a browser's URL object (what location.hash gives back).
    const url = new URL(`http://h/${hash}`);
    assert.equal(parseHash(url.hash).state.layer, layer);
  }
});
