// The controller against a fake API, fake views and a fake location: no DOM, no server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createController, currentBox, derive } from '../js/controller.js';
import { ApiError } from '../js/api.js';

const flush = async () => { for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r)); };

const MODEL = {
  id: 'tiny', arch: 'zfnet', input_size: 224, classes: ['a', 'b', 'c'],
  layers: [
    { name: 'conv1', kind: 'conv', channels: 4, shape: [4, 110, 110] },
    { name: 'conv2', kind: 'conv', channels: 3, shape: [3, 26, 26] },
    { name: 'fc6', kind: 'fc', channels: 5, shape: [5] },
    { name: 'fc8', kind: 'fc', channels: 3, shape: [3] },
  ],
};
const MAXES = { conv1: [0.5, 3, 1, 2], conv2: [9, 1, 4], fc6: [0, 1, 2, 3, 4] };

function fakeApi({ images = new Set(['img1']), hold = null } = {}) {
  const calls = [];
  const gate = (name, value) => {
    calls.push(name);
    if (hold && hold.match(name)) return new Promise((resolve, reject) => hold.pending.push({ name, resolve: () => resolve(value()), reject }));
    try { return Promise.resolve(value()); } catch (e) { return Promise.reject(e); }
  };
  const need = (id) => { if (!images.has(id)) throw new ApiError(`unknown image: ${id}`, { status: 404 }); };
  return {
    calls,
    models: () => gate('models', () => ({ default: 'tiny', models: [MODEL] })),
    samples: (m, n, seed) => gate(`samples:${seed}`, () => ({ samples: [{ image_index: 3, label: 'a', url: '/api/dataset/images/3' }] })),
    serverUrl: (u) => u,
    blob: (url) => gate(`blob:${url}`, () => new Blob([new Uint8Array([1])])),
    upload: (file) => gate('upload', () => {
      if (file.name === 'bad.jpg') throw new ApiError('cannot identify image file (text named .jpg)', { status: 422 });
      images.add('img2');
      return { image_id: 'img2', width: 10, height: 10 };
    }),
    imageInfo: (id) => gate(`info:${id}`, () => { need(id); return { image_id: id, width: 300, height: 200 }; }),
    inputUrl: (id) => `/in/${id}`,
    image: (url) => gate(`image:${url}`, () => ({ url: `blob:${url}`, box: url.includes('projection') ? [1, 2, 30, 40] : null })),
    predictions: (id) => gate(`pred:${id}`, () => ({ predictions: [{ class_index: 1, label: 'b', probability: 0.9 }] })),
    layer: (id, layer) => gate(`layer:${id}:${layer}`, () => {
      if (!MAXES[layer]) throw new ApiError(`unknown layer: ${layer}`, { status: 404 });
      return {
        layer, kind: layer.startsWith('fc') ? 'fc' : 'conv',
        units: MAXES[layer].map((max, unit) => ({ unit, max, mean: max / 2, argmax: layer.startsWith('fc') ? null : [unit, unit] })),
      };
    }),
    unit: (id, layer, unit) => gate(`unit:${id}:${layer}:${unit}`, () => {
      if (unit >= MAXES[layer].length) throw new ApiError(`unit ${unit} out of range: ${layer} has ${MAXES[layer].length} units`, { status: 422 });
      return { unit, layer, max: MAXES[layer][unit], position: [unit, unit], box: [0, 0, 7 + unit, 7 + unit] };
    }),
    mapUrl: (id, layer, unit) => `/map/${id}/${layer}/${unit}`,
    projectionUrl: (id, layer, unit, o) => `/projection/${id}/${layer}/${unit}/${o.method}/${o.seed}/${o.position || ''}`,
    top: (layer, unit) => gate(`top:${layer}:${unit}`, () => ({ layer, unit, entries: [{ rank: 1, image_index: 5, label: 'a', value: 2, patch_url: 'p', projection_url: 'q', image_url: 'i' }] })),
    evolution: (layer, unit) => gate(`evo:${layer}:${unit}`, () => { throw new ApiError('no training snapshots for model tiny', { status: 404 }); }),
    filtersUrl: () => '/filters.png',
    filterStats: (layer, model) => gate(`filterStats:${layer}:${model}`, () => ({
      layer, filters: [{ unit: 0, norm: 1, rms: 0.1, dead: false }, { unit: 1, norm: 0, rms: 0, dead: true }], dead: 1,
      median_rms: 0.05, rule: 'RMS of its weights below 0.05 of the median filter RMS of its layer',
    })),
    occlusion: (id, body) => gate(`occ:${id}`, () => ({ grid: [2, 2], ...body })),
  };
}

function fakeNav(initial = '') {
  const nav = { hash: initial, writes: [], listener: null };
  nav.read = () => nav.hash;
  nav.write = (h, opts) => { nav.hash = h; nav.writes.push([h, !!(opts && opts.replace)]); };
  nav.onChange = (fn) => { nav.listener = fn; };
  nav.go = (h) => { nav.hash = h; nav.listener(h); };
  return nav;
}

function fakeViews() {
  const log = { renders: 0, bound: null, derived: null };
  const view = { bind: (h) => { log.bound = h; }, render: (s, d) => { log.renders += 1; log.derived = d; } };
  return { log, views: { only: view } };
}

function setup(hash = '', apiOpts = {}) {
  const api = fakeApi(apiOpts);
  const nav = fakeNav(hash);
  const { log, views } = fakeViews();
  const c = createController({ api, views, nav, now: () => 1000 });
  c.start();
  return { api, nav, log, c, s: () => c.get() };
}

test('a deep link restores the whole view: image, layer, unit, method, seed, position', async () => {
  const { api, s, nav, c } = setup('#model=tiny&image=img1&layer=conv2&unit=2&method=guided&pos=3,4');
  await flush();
  c.handlers.showUnits([0, 1, 2]); // the grid reports what is on screen
  await flush();
  const st = s();
  assert.equal(st.layer, 'conv2');
  assert.equal(st.unit, 2);
  assert.equal(st.layerData.status, 'ok');
  assert.equal(st.unitData.data.unit, 2);
  assert.equal(st.projection.status, 'ok');
  assert.equal(st.projection.data.url, 'blob:/projection/img1/conv2/2/guided/point/3,4');
  assert.equal(st.topk.status, 'ok');
  assert.equal(st.predictions.data.predictions[0].label, 'b');
  assert.deepEqual(Object.keys(st.thumbs.byUnit).sort(), ['0', '1', '2']);
  assert.ok(api.calls.includes('image:/map/img1/conv2/0'));
  assert.equal(nav.hash, '#model=tiny&image=img1&layer=conv2&unit=2&method=guided&pos=3%2C4');
  // The evolution route answers 404 here: the message is kept, in words.
  assert.equal(st.evolution.status, 'error');
  assert.equal(st.evolution.error, 'no training snapshots for model tiny');
  // The box comes from the projection's header (point seed).
  assert.deepEqual(currentBox(st), [1, 2, 30, 40]);
});

test('clicks write the link; a new layer is a new history entry, a new unit replaces it', async () => {
  const { c, s, nav } = setup('#image=img1');
  await flush();
  assert.equal(s().model, 'tiny');
  c.handlers.selectLayer('conv2');
  c.handlers.selectUnit(1);
  c.handlers.setMethod('backprop');
  await flush();
  assert.equal(nav.hash, '#model=tiny&image=img1&layer=conv2&unit=1&method=backprop');
  const tail = nav.writes.slice(-3);
  assert.deepEqual(tail.map((w) => w[1]), [false, true, true]);
  assert.equal(s().projection.data.url, 'blob:/projection/img1/conv2/1/backprop/point/');
});

test('back/forward (hash change) reloads the view it names', async () => {
  const { s, nav } = setup('#image=img1&layer=conv1&unit=1');
  await flush();
  nav.go('#model=tiny&image=img1&layer=conv2&unit=0&seed=map');
  await flush();
  assert.equal(s().layer, 'conv2');
  assert.equal(s().unit, 0);
  assert.equal(s().seed, 'map');
  assert.equal(s().projection.data.url, 'blob:/projection/img1/conv2/0/deconv/map/');
  assert.equal(currentBox(s()), null); // whole-map seeds outline nothing
});

test('arrow moves follow the sorted order; [ and ] move between visible layers', async () => {
  const { c, s } = setup('#image=img1&layer=conv1');
  await flush();
  c.handlers.setSort('activation'); // conv1 maxes 0.5 3 1 2 -> order 1 3 2 0
  c.handlers.moveUnit(1);
  assert.equal(s().unit, 1);
  c.handlers.moveUnit(1);
  assert.equal(s().unit, 3);
  c.handlers.moveUnit(2);
  assert.equal(s().unit, 0);
  c.handlers.moveUnit(5);
  assert.equal(s().unit, 0);
  c.handlers.moveLayer(1);
  assert.equal(s().layer, 'conv2');
  assert.equal(s().unit, 0); // kept: conv2 has a unit 0
  c.handlers.selectUnit(2);
  c.handlers.moveLayer(-1);
  assert.equal(s().unit, 2);
  c.handlers.selectLayer('conv2'); // a click on a tab starts afresh
  assert.equal(s().unit, null);
  c.handlers.moveLayer(1);
  c.handlers.moveLayer(1); // fc8 is hidden: fc6 is the last tab
  assert.equal(s().layer, 'fc6');
  c.handlers.moveLayer(-5);
  assert.equal(s().layer, 'conv1');
});

test('thumbnails load only for the units on screen; scrolled-away requests are dropped', async () => {
  const hold = { match: (n) => n.startsWith('image:/map/'), pending: [] };
  const { c, s, api } = setup('#image=img1&layer=conv1', { hold });
  await flush();
  assert.ok(!api.calls.some((n) => n.startsWith('image:/map/')), 'nothing before the grid says what it shows');
  c.handlers.showUnits([0, 1]);
  await flush();
  assert.deepEqual(hold.pending.map((p) => p.name), ['image:/map/img1/conv1/0', 'image:/map/img1/conv1/1']);
  c.handlers.showUnits([1, 2]); // 0 scrolled away before its answer
  await flush();
  assert.deepEqual(Object.keys(s().thumbs.byUnit).sort(), ['1', '2']);
  for (const p of hold.pending) p.resolve();
  await flush();
  assert.equal(s().thumbs.byUnit[1].status, 'ok');
  assert.equal(s().thumbs.byUnit[2].status, 'ok');
  assert.equal(s().thumbs.byUnit[0], undefined, 'the aborted one is not kept');
  c.handlers.showUnits([0]);
  await flush();
  assert.equal(api.calls.filter((n) => n === 'image:/map/img1/conv1/0').length, 2, 'asked again when back');
});

test('a late answer for a unit no longer shown is dropped', async () => {
  const hold = { match: (n) => n.startsWith('unit:'), pending: [] };
  const { c, s } = setup('#image=img1&layer=conv1', { hold });
  await flush();
  c.handlers.selectUnit(1);
  await flush();
  c.handlers.selectUnit(2);
  await flush();
  assert.equal(hold.pending.length, 2);
  hold.pending[1].resolve(); // unit 2 first
  await flush();
  hold.pending[0].resolve(); // then the stale unit 1
  await flush();
  assert.equal(s().unit, 2);
  assert.equal(s().unitData.data.unit, 2);
});

test('a bad upload shows the server\'s words and keeps the current image', async () => {
  const { c, s, nav } = setup('#image=img1&layer=conv1&unit=0');
  await flush();
  const before = nav.hash;
  await c.handlers.uploadFile(new File(['not an image'], 'bad.jpg'));
  await flush();
  assert.equal(s().upload.status, 'error');
  assert.equal(s().upload.error, 'cannot identify image file (text named .jpg)');
  assert.equal(s().image, 'img1');
  assert.equal(s().projection.status, 'ok');
  assert.equal(nav.hash, before);
  await c.handlers.uploadFile(null);
  assert.equal(s().upload.error, 'expected an image file, got nothing');
});

test('a good upload or a sample becomes the current image', async () => {
  const { c, s, api } = setup('');
  await flush();
  await c.handlers.pickSample({ image_index: 3, label: 'a', url: '/api/dataset/images/3' });
  await flush();
  assert.ok(api.calls.includes('blob:/api/dataset/images/3'));
  assert.equal(s().image, 'img2');
  assert.equal(s().upload.status, 'ok');
  assert.equal(s().input.data.url, 'blob:/in/img2');
});

test('errors from the server land in the pane that asked, in words', async () => {
  const { s } = setup('#image=img1&layer=conv1&unit=9');
  await flush();
  assert.equal(s().unitData.status, 'error');
  assert.equal(s().unitData.error, 'unit 9 out of range: conv1 has 4 units');
  const gone = setup('#image=nope&layer=conv1');
  await flush();
  assert.equal(gone.s().imageInfo.error, 'unknown image: nope');
  assert.equal(gone.s().layerData.status, 'idle'); // nothing else is asked for a missing image
  assert.ok(!gone.api.calls.some((c) => c.startsWith('layer:')));
});

test('a link naming an unknown model or layer falls back with a notice', async () => {
  const { s } = setup('#model=other&image=img1&layer=conv9&unit=2');
  await flush();
  assert.equal(s().model, 'tiny');
  assert.equal(s().layer, 'conv1');
  assert.equal(s().unit, null);
  assert.match(s().notice, /conv9 is not a layer of tiny/);
  const bad = setup('#unit=x&layer=conv1');
  await flush();
  assert.match(bad.s().notice, /unit=x/);
});

test('fc layers: no thumbnails, no feature-map image; derive lists the visible layers', async () => {
  const { s, api, log } = setup('#image=img1&layer=fc6&unit=4');
  await flush();
  assert.equal(s().layerData.data.kind, 'fc');
  assert.deepEqual(s().thumbs.byUnit, {});
  assert.ok(!api.calls.some((c) => c.startsWith('image:/map/')));
  assert.equal(s().unitMap.status, 'idle');
  assert.deepEqual(log.derived.layers.map((l) => l.name), ['conv1', 'conv2', 'fc6']);
  assert.deepEqual(derive(s()).ordered.map((u) => u.unit), [0, 1, 2, 3, 4]);
});

test('occlusion: runs with the form values, and a new image clears the result', async () => {
  const { c, s } = setup('#image=img1');
  await flush();
  c.handlers.openPanel('occlusion');
  const p = c.handlers.runOcclusion({ size: 16, stride: 4 });
  assert.equal(s().occlusion.status, 'loading');
  await p;
  assert.equal(s().occlusion.status, 'ok');
  assert.equal(s().occlusion.data.size, 16);
  assert.equal(s().occlusion.data.layer, 'conv5');
  c.handlers.closePanels();
  assert.equal(s().panel, null);
  await c.handlers.uploadFile(new File(['x'], 'ok.jpg'));
  await flush();
  assert.equal(s().occlusion.status, 'idle');
});

test('a top-9 patch opens its data-set image here, projected from the patch position', async () => {
  const { c, s, api } = setup('#image=img1&layer=conv2&unit=1');
  await flush();
  await c.handlers.openTopEntry({ rank: 0, image_index: 5, label: 'a', image_url: '/api/dataset/images/5', position: [2, 3] });
  await flush();
  assert.ok(api.calls.includes('blob:/api/dataset/images/5'));
  assert.equal(s().image, 'img2');
  assert.equal(s().layer, 'conv2');
  assert.equal(s().unit, 1);
  assert.deepEqual(s().position, [2, 3]);
  assert.equal(s().seed, 'point');
  assert.equal(s().projection.data.url, 'blob:/projection/img2/conv2/1/deconv/point/2,3');
});

test('occlusion: Cancel aborts the request and a late answer is dropped', async () => {
  const hold = { match: (n) => n.startsWith('occ:'), pending: [] };
  const { c, s } = setup('#image=img1', { hold });
  await flush();
  const p = c.handlers.runOcclusion({ size: 16, stride: 4 });
  await flush();
  assert.equal(s().occlusion.status, 'loading');
  c.handlers.cancelOcclusion();
  assert.equal(s().occlusion.status, 'idle');
  assert.equal(s().occlusion.cancelled, true);
  hold.pending[0].resolve();
  await p;
  await flush();
  assert.equal(s().occlusion.status, 'idle', 'the cancelled job\'s answer is not shown');
  assert.equal(s().occlusion.data, null);
});

test('a model switch keeps the image and picks the same layer, or one as deep', async () => {
  const { c, s } = setup('#image=img1&layer=conv2&unit=1');
  await flush();
  const other = {
    id: 'graph', arch: 'torchvision:resnet18', input_size: 64, classes: ['a', 'b', 'c'],
    layers: [
      { name: 'conv1', kind: 'conv', channels: 4, shape: [4, 32, 32], parent: null },
      { name: 'layer1.0.conv1', kind: 'conv', channels: 4, shape: [4, 16, 16], parent: 'layer1.0' },
      { name: 'layer1.0', kind: 'conv', channels: 4, shape: [4, 16, 16], parent: 'layer1' },
      { name: 'layer1', kind: 'conv', channels: 4, shape: [4, 16, 16], parent: null },
      { name: 'fc', kind: 'fc', channels: 3, shape: [3], parent: null },
    ],
  };
  s().models.data.models.push(other);
  c.handlers.selectModel('graph');
  assert.equal(s().model, 'graph');
  assert.equal(s().image, 'img1');
  assert.equal(s().layer, 'layer1', 'conv2, the deeper of two convs -> the deepest block output');
  assert.equal(s().unit, null);
  c.handlers.selectModel('tiny');
  assert.equal(s().layer, 'conv2');
});

test('the filters panel loads the mosaic and each filter\'s numbers once per model, only when open', async () => {
  const { api, c, s } = setup('#image=img1');
  await flush();
  assert.ok(!api.calls.some((x) => x.startsWith('filterStats')), 'nothing asked while the panel is closed');
  c.handlers.openPanel('filters');
  await flush();
  assert.equal(s().filterStats.status, 'ok');
  assert.equal(s().filterStats.data.dead, 1);
  c.handlers.closePanels();
  c.handlers.openPanel('filters');
  await flush();
  assert.deepEqual(api.calls.filter((x) => x.startsWith('filterStats')), ['filterStats:conv1:tiny']);
});
