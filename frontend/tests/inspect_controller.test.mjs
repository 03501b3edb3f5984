// The controller's sanity, compare and region slots (js/inspect.js) against a fake API:
// what is asked, when, and what is dropped. No DOM, no server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createController } from '../js/controller.js';
import { ApiError } from '../js/api.js';
import { chosenTarget, otherLayerFor, sanityKey } from '../js/inspect.js';

const flush = async () => { for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r)); };

const MODEL = {
  id: 'tiny', arch: 'zfnet', input_size: 64, classes: ['a', 'b'],
  layers: [
    { name: 'conv1', kind: 'conv', channels: 4, shape: [4, 30, 30] },
    { name: 'conv2', kind: 'conv', channels: 30, shape: [30, 6, 6] },
    { name: 'fc8', kind: 'fc', channels: 2, shape: [2] },
  ],
};
const TARGETS = [
  { other: 'tiny', epoch: null, kind: 'model', label: 'tiny', layers: ['conv1', 'conv2', 'fc8'], top_k: true },
  { other: 'tiny', epoch: 1, kind: 'snapshot', label: 'tiny, epoch 1', layers: ['conv1', 'conv2', 'fc8'], top_k: false },
  { other: 'res', epoch: null, kind: 'model', label: 'res', layers: ['layer1', 'layer4'], top_k: true },
];

/** A fake API: every call logged by name; `hold` keeps the matching calls pending until released. */
function fakeApi({ hold = null, fail = {} } = {}) {
  const calls = [];
  const pending = [];
  const gate = (name, value, signal) => {
    calls.push(name);
    const run = () => { if (fail[name.split(':')[0]]) throw new ApiError(fail[name.split(':')[0]], { status: 422 }); return value(); };
    if (hold && hold(name)) {
      return new Promise((resolve, reject) => {
        pending.push({ name, go: () => { try { resolve(run()); } catch (e) { reject(e); } } });
        if (signal) signal.addEventListener('abort', () => reject(new ApiError('aborted')));
      });
    }
    try { return Promise.resolve(run()); } catch (e) { return Promise.reject(e); }
  };
  const steps = (method) => [0, 1, 2].map((k) => ({
    step: k, randomized: ['conv2', 'conv1'].slice(0, k), spearman: 1 - k / 3, ssim: 1 - k / 4, edge_spearman: 0.1,
    seed_value: 1, projection_url: `/api/sanity/${method}/${k}/projection?model=tiny`,
  }));
  return {
    calls, pending,
    models: () => gate('models', () => ({ default: 'tiny', models: [MODEL] })),
    samples: () => gate('samples', () => ({ samples: [] })),
    serverUrl: (u, m) => (String(u).includes('model=') ? u : `${u}?model=${m}`),
    imageInfo: (id) => gate(`info:${id}`, () => ({ image_id: id, width: 64, height: 64 })),
    inputUrl: (id) => `/in/${id}`,
    image: (url) => gate(`image:${url}`, () => ({ url: `blob:${url}`, box: null })),
    predictions: () => gate('pred', () => ({ predictions: [] })),
    layer: (id, layer) => gate(`layer:${layer}`, () => ({ layer, units: [] })),
    unit: (id, layer, unit) => gate(`unit:${layer}:${unit}`, () => ({ unit, layer, max: 1, position: [0, 0], box: [0, 0, 5, 5] })),
    mapUrl: (id, layer, unit) => `/map/${layer}/${unit}`,
    projectionUrl: (id, layer, unit) => `/projection/${layer}/${unit}`,
    top: (layer, unit) => gate(`top:${layer}:${unit}`, () => ({ entries: [] })),
    evolution: () => gate('evo', () => ({ snapshots: [] })),
    sanity: (id, layer, unit, o, { signal } = {}) => gate(`sanity:${layer}:${unit}:${o.method}:${o.mode}`,
      () => ({ image_id: id, layer, unit, method: o.method, mode: o.mode, seed: 0, steps: steps(o.method) }), signal),
    compareTargets: (m) => gate(`targets:${m}`, () => ({ model: m, targets: TARGETS })),
    matches: (id, layer, unit, o, { signal } = {}) => gate(`matches:${layer}:${unit}:${o.other}:${o.epoch}:${o.otherLayer}:${o.n}`, () => ({
      layer, unit, other: o.other, epoch: o.epoch, other_layer: o.otherLayer ?? layer, images: 6, by: 'position', constant: false,
      one_to_one: { unit, correlation: 1 }, top_status: o.epoch === null ? 'ready' : 'a training snapshot has no top-k index',
      matches: [unit, unit + 1].map((j, i) => ({
        unit: j, correlation: 1 - i / 2, projection_url: `/api/m/${j}/projection`,
        top_url: o.epoch === null ? `/api/layers/${layer}/units/${j}/top?model=${o.other}` : null,
      })),
    }), signal),
    cka: (m, o, { signal } = {}) => gate(`cka:${o.other}:${o.epoch}:${o.n}`, () => ({ layers: ['conv1'], other_layers: ['conv1'], cka: [[1]] }), signal),
    json: (url) => gate(`json:${url}`, () => ({ entries: [{ rank: 0, label: 'a', patch_url: '/p', projection_url: '/q' }] })),
    region: (id, layer, box, o, { signal } = {}) => gate(`region:${layer}:${box.join(',')}:${o.k}`, () => ({
      layer, box, rule: 'the rule', overlap: 9, positions: [[1, 1]],
      units: [{ unit: 7, value: 3, position: [2, 3], box: [0, 0, 9, 9], unit_url: '/u', projection_url: '/api/r/7/projection' }],
    }), signal),
  };
}

function setup(hash = '#model=tiny&image=img1&layer=conv2&unit=3', opts = {}) {
  const api = fakeApi(opts);
  const nav = { hash, read: () => nav.hash, write: (h) => { nav.hash = h; }, onChange: () => {} };
  const c = createController({ api, views: { only: { bind() {}, render() {} } }, nav });
  c.start();
  return { api, c, s: () => c.get() };
}

test('the sanity check runs on demand, the three methods one after another, and ends ok', async () => {
  let gateOn = true;
  const { api, c, s } = setup(undefined, { hold: (n) => gateOn && n.startsWith('sanity') });
  await flush();
  assert.ok(!api.calls.some((n) => n.startsWith('sanity')), 'nothing runs before the button');
  assert.equal(sanityKey(s()), 'tiny|img1|conv2|3');
  const done = c.handlers.runSanity();
  await flush();
  // One request at a time: the second waits for the first.
  assert.deepEqual(api.calls.filter((n) => n.startsWith('sanity')), ['sanity:conv2:3:deconv:cascading']);
  assert.equal(s().sanity.status, 'loading');
  assert.equal(s().sanity.running, 'deconv');
  gateOn = false;
  api.pending.shift().go();
  await done;
  assert.deepEqual(api.calls.filter((n) => n.startsWith('sanity')),
    ['sanity:conv2:3:deconv:cascading', 'sanity:conv2:3:guided:cascading', 'sanity:conv2:3:backprop:cascading']);
  assert.equal(s().sanity.status, 'ok');
  assert.deepEqual(Object.keys(s().sanity.byMethod), ['deconv', 'guided', 'backprop']);
  assert.equal(s().sanity.byMethod.guided.steps[2].projection_url, '/api/sanity/guided/2/projection?model=tiny');
  // Another unit: the strip was that unit's, it goes.
  c.handlers.selectUnit(4);
  await flush();
  assert.equal(s().sanity.status, 'idle');
  assert.deepEqual(s().sanity.byMethod, {});
});

test('Cancel aborts the method in flight and asks for no other', async () => {
  const { api, c, s } = setup(undefined, { hold: (n) => n.startsWith('sanity') });
  await flush();
  const done = c.handlers.runSanity();
  await flush();
  c.handlers.cancelSanity();
  await done;
  await flush();
  assert.equal(api.calls.filter((n) => n.startsWith('sanity')).length, 1);
  assert.equal(s().sanity.status, 'idle');
  assert.equal(s().sanity.cancelled, true);
});

test('a failing method is an error in words, naming the method; no unit: no request', async () => {
  const { c, s } = setup(undefined, { fail: { sanity: 'unit: expected 0..29 for layer conv2, got 31' } });
  await flush();
  await c.handlers.runSanity();
  assert.equal(s().sanity.status, 'error');
  assert.equal(s().sanity.error, 'Deconvnet: unit: expected 0..29 for layer conv2, got 31');
  const bare = setup('#model=tiny&image=img1&layer=conv2');
  await flush();
  await bare.c.handlers.runSanity();
  assert.match(bare.s().sanity.error, /Pick a unit on an image first/);
  assert.ok(!bare.api.calls.some((n) => n.startsWith('sanity')));
});

test('compare: targets load with the panel; a target loads matches, CKA and the best match\'s top 9', async () => {
  const { api, c, s } = setup();
  await flush();
  assert.ok(!api.calls.some((n) => n.startsWith('targets')), 'the panel is closed: nothing asked');
  c.handlers.openPanel('compare');
  await flush();
  assert.ok(api.calls.includes('targets:tiny'));
  c.handlers.setCompareN('6');
  c.handlers.setCompareTarget('tiny');
  await flush();
  assert.ok(api.calls.includes('matches:conv2:3:tiny:null:null:6'));
  assert.ok(api.calls.includes('cka:tiny:null:6'));
  assert.ok(api.calls.includes('json:/api/layers/conv2/units/3/top?model=tiny'), 'the first match opens by default');
  assert.equal(s().matches.data.matches[0].projection_url, '/api/m/3/projection?model=tiny');
  c.handlers.openMatch(4);
  await flush();
  assert.ok(api.calls.includes('json:/api/layers/conv2/units/4/top?model=tiny'));
  // Another unit: its matches (a lookup on the server), the CKA is not asked again.
  c.handlers.selectUnit(5);
  await flush();
  assert.ok(api.calls.includes('matches:conv2:5:tiny:null:null:6'));
  assert.equal(api.calls.filter((n) => n.startsWith('cka')).length, 1);
  // A snapshot: no top-9 (top_url null), nothing fetched for it.
  const before = api.calls.filter((n) => n.startsWith('json')).length;
  c.handlers.setCompareTarget('tiny@1');
  await flush();
  assert.ok(api.calls.includes('matches:conv2:5:tiny:1:null:6'));
  assert.equal(api.calls.filter((n) => n.startsWith('json')).length, before);
  assert.equal(s().matchTop.status, 'idle');
});

test('compare with a model without the layer: no request until one of its layers is chosen', async () => {
  const { api, c, s } = setup();
  await flush();
  c.handlers.openPanel('compare');
  await flush();
  c.handlers.setCompareTarget('res');
  await flush();
  const t = chosenTarget(s());
  assert.equal(t.other, 'res');
  assert.equal(otherLayerFor(s(), t), null);
  assert.ok(!api.calls.some((n) => n.startsWith('matches')));
  assert.ok(api.calls.includes('cka:res:null:null'), 'CKA needs no layer (n: the server\'s default)');
  c.handlers.setCompareLayer('layer4');
  await flush();
  assert.ok(api.calls.includes('matches:conv2:3:res:null:layer4:null'));
});

test('region: a box ranks the layer\'s units, re-ranked for a new layer; a unit opens at its position', async () => {
  const { api, c, s } = setup();
  await flush();
  c.handlers.setRegionBox([4, 8, 20, 30]);
  await flush();
  assert.ok(api.calls.includes('region:conv2:4,8,20,30:20'));
  assert.equal(s().regionData.data.units[0].projection_url, '/api/r/7/projection?model=tiny');
  c.handlers.selectLayer('conv1');
  await flush();
  assert.ok(api.calls.includes('region:conv1:4,8,20,30:4'), 'k: at most the layer\'s 4 channels');
  c.handlers.openRegionUnit(s().regionData.data.units[0]);
  assert.equal(s().unit, 7);
  assert.deepEqual(s().position, [2, 3]);
  assert.equal(s().seed, 'point');
  // A box outside this model's 64 px input is never sent; clearing drops the list.
  const n = api.calls.length;
  c.handlers.setRegionBox([0, 0, 65, 10]);
  await flush();
  assert.equal(api.calls.filter((x) => x.startsWith('region')).length, api.calls.slice(0, n).filter((x) => x.startsWith('region')).length);
  assert.equal(s().regionData.status, 'idle');
  c.handlers.setRegionBox(null);
  assert.equal(s().region.box, null);
});
