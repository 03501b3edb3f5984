// Pure parts of the sanity strip, the compare panel, the region box and Save page.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { boxError, boxWords, defaultBox, dragToBox, fieldsToBox, nudgeBox } from '../js/region.js';
import { ckaCells, contrast, luminance, parseTargetId, rowBest, targetId, targetLabel, textOn } from '../js/compare.js';
import { lastScores, newlyRandomised, sanityRows, sanityVerdict, stepLabel } from '../js/sanity.js';
import { ckaPngUrl, inspectRoutes, reportUrl } from '../js/api_inspect.js';
import { VIRIDIS } from '../js/colormap.js';
import { METHODS } from '../js/config.js';

// ------------------------------------------------------------------ region

test('a drag covers every input pixel its rectangle touches, either way round, clamped', () => {
  // 224 px input shown at 112 px: one display pixel is two input pixels.
  assert.deepEqual(dragToBox({ x: 10, y: 20 }, { x: 30.2, y: 41 }, 112, 112, 224), [40, 20, 82, 61]);
  assert.deepEqual(dragToBox({ x: 30.2, y: 41 }, { x: 10, y: 20 }, 112, 112, 224), [40, 20, 82, 61]);
  // A corner inside a pixel takes that whole pixel (floor at the top-left, ceil at the bottom-right).
  assert.deepEqual(dragToBox({ x: 10.3, y: 20.3 }, { x: 30.1, y: 40.1 }, 112, 112, 224), [40, 20, 81, 61]);
  // Beyond the image: clamped to it.
  assert.deepEqual(dragToBox({ x: -50, y: -5 }, { x: 500, y: 600 }, 112, 112, 224), [0, 0, 224, 224]);
  // A click (no drag) is one pixel, inside the image even at the far edge.
  assert.deepEqual(dragToBox({ x: 5, y: 5 }, { x: 5, y: 5 }, 112, 112, 224), [10, 10, 11, 11]);
  assert.deepEqual(dragToBox({ x: 112, y: 112 }, { x: 112, y: 112 }, 112, 112, 224), [223, 223, 224, 224]);
  // A non-square display (the box follows each axis's own scale).
  assert.deepEqual(dragToBox({ x: 0, y: 0 }, { x: 50, y: 25 }, 100, 50, 64), [0, 0, 32, 32]);
  assert.throws(() => dragToBox({ x: 0, y: 0 }, { x: 1, y: 1 }, 0, 10, 64), /expected positive sizes, got 0x10 px/);
});

test('every box a drag can make is one the server takes (brute force over a small input)', () => {
  const S = 16, W = 37;
  for (let a = -3; a <= W + 3; a += 2) {
    for (let b = -3; b <= W + 3; b += 3) {
      const box = dragToBox({ x: a, y: b }, { x: b, y: a + 1 }, W, W, S);
      assert.equal(boxError(box, S), null, `drag ${a},${b} -> ${box}`);
    }
  }
});

test('box bounds are the route\'s: integers, 0 <= top < bottom <= S, 0 <= left < right <= S', () => {
  assert.equal(boxError([0, 0, 224, 224], 224), null);
  assert.match(boxError([0, 0, 225, 10], 224), /0 <= top < bottom <= 224, got top 0, bottom 225/);
  assert.match(boxError([5, 9, 6, 9], 224), /0 <= left < right <= 224, got left 9, right 9/);
  assert.match(boxError([1, 2, 3], 224), /four whole numbers/);
  assert.match(boxError([1, 2, 3.5, 4], 224), /four whole numbers/);
  assert.deepEqual(fieldsToBox({ top: '8', left: ' 16 ', bottom: 40, right: '64' }, 224), { box: [8, 16, 40, 64] });
  assert.deepEqual(fieldsToBox({ top: 'x', left: 1, bottom: 2, right: 3 }, 224), { error: 'top: expected a whole number of input pixels, got "x"' });
  assert.deepEqual(fieldsToBox({ top: '1', left: '', bottom: 2, right: 3 }, 224), { error: 'left: expected a whole number of input pixels, got ""' });
  assert.match(fieldsToBox({ top: 40, left: 0, bottom: 8, right: 3 }, 224).error, /got top 40, bottom 8/);
  assert.deepEqual(defaultBox(224), [56, 56, 168, 168]);
  assert.equal(boxWords([10, 20, 42, 64]), 'rows 10–41, columns 20–63 (44×32 px)');
});

test('arrow keys move the box inside the image; Shift and arrows resize it, never below 1 px', () => {
  const S = 64;
  assert.deepEqual(nudgeBox([10, 10, 20, 20], 'ArrowRight', {}, S), [10, 14, 20, 24]);
  assert.deepEqual(nudgeBox([10, 10, 20, 20], 'ArrowUp', { step: 8 }, S), [2, 10, 12, 20]);
  assert.deepEqual(nudgeBox([2, 10, 12, 20], 'ArrowUp', { step: 8 }, S), [0, 10, 10, 20]); // stops at the edge, same size
  assert.deepEqual(nudgeBox([10, 58, 20, 63], 'ArrowRight', {}, S), [10, 59, 20, 64]);
  assert.deepEqual(nudgeBox([10, 10, 20, 20], 'ArrowDown', { shift: true }, S), [10, 10, 24, 20]);
  assert.deepEqual(nudgeBox([10, 10, 12, 20], 'ArrowUp', { shift: true }, S), [10, 10, 11, 20]);
  assert.deepEqual(nudgeBox([10, 10, 20, 62], 'ArrowRight', { shift: true }, S), [10, 10, 20, 64]);
  assert.equal(nudgeBox([10, 10, 20, 20], 'Enter', {}, S), null);
  for (const key of ['ArrowUp', 'ArrowDown', 'ArrowLeft', 'ArrowRight']) {
    for (const shift of [false, true]) {
      let b = [0, 0, 1, 1];
      for (let i = 0; i < 40; i++) b = nudgeBox(b, key, { shift, step: 5 }, S);
      assert.equal(boxError(b, S), null, `${key} shift=${shift}: ${b}`);
    }
  }
});

// ----------------------------------------------------------------- compare

test('target ids round-trip, snapshots as other@epoch, and are labelled in words', () => {
  for (const t of [{ other: 'zfnet-imagenette', epoch: null }, { other: 'zfnet-imagenette', epoch: 0 }, { other: 'a@b', epoch: 12 }]) {
    assert.deepEqual(parseTargetId(targetId(t)), t);
  }
  assert.equal(targetId({ other: 'm', epoch: 3 }), 'm@3');
  assert.equal(parseTargetId(''), null);
  assert.deepEqual(parseTargetId('tiny-resnet'), { other: 'tiny-resnet', epoch: null });
  assert.equal(targetLabel({ other: 'm', epoch: null, kind: 'model' }, 'm'), 'm (this model itself)');
  assert.equal(targetLabel({ other: 'r', epoch: null, kind: 'model' }, 'm'), 'r');
  assert.equal(targetLabel({ other: 'm', epoch: 2, kind: 'snapshot' }, 'm'), 'm, training snapshot epoch 2');
});

test('CKA numbers are readable on every viridis colour (WCAG AA, 4.5:1)', () => {
  assert.ok(Math.abs(luminance([255, 255, 255]) - 1) < 1e-9 && luminance([0, 0, 0]) === 0);
  assert.ok(Math.abs(contrast([0, 0, 0], [255, 255, 255]) - 21) < 1e-9);
  for (const rgb of VIRIDIS) {
    const fg = textOn(rgb) === '#000000' ? [0, 0, 0] : [255, 255, 255];
    assert.ok(contrast(rgb, fg) >= 4.5, `${rgb}: ${contrast(rgb, fg)}`);
  }
  assert.equal(textOn(VIRIDIS[0]), '#ffffff'); // dark purple
  assert.equal(textOn(VIRIDIS[255]), '#000000'); // yellow
  const cells = ckaCells([[1, 0.5], [null, 0]]);
  assert.deepEqual(cells[0][0], { value: 1, text: '1.00', bg: '#fde725', fg: '#000000' });
  assert.equal(cells[0][1].bg, '#21918c'); // viridis(0.5), as cka.png colours it
  assert.equal(cells[1][0].text, '–');
  assert.equal(cells[1][1].bg, '#440154');
  assert.deepEqual(rowBest([[0.1, 0.9, 0.3], [null, null, null], [0.5, null, 0.7]]),
    [{ row: 0, col: 1, value: 0.9 }, null, { row: 2, col: 2, value: 0.7 }]);
});

// ------------------------------------------------------------------ sanity

const step = (randomized, spearman, ssim, seedValue = 1) => ({
  randomized, spearman, ssim, edge_spearman: 0.2, seed_value: seedValue, projection_url: `/p/${randomized.length}`,
});
const answer = (method, ssims, mode = 'cascading') => ({
  method, mode, steps: [
    step([], 1, 1), step(['conv2'], ssims[0], ssims[0]),
    mode === 'cascading' ? step(['conv2', 'conv1'], ssims[1], ssims[1], ssims[1] === null ? 0 : 1) : step(['conv1'], ssims[1], ssims[1]),
  ],
});

test('the strip: a row per method in the config\'s order, a column per step named by what it randomised', () => {
  const by = { backprop: answer('backprop', [0.4, 0.1]), deconv: answer('deconv', [0.95, 0.9]) };
  const rows = sanityRows(by, METHODS);
  assert.deepEqual(rows.map((r) => [r.method, r.cells.length]), [['deconv', 3], ['guided', 0], ['backprop', 3]]);
  assert.deepEqual(rows[0].cells.map((c) => c.heading), ['trained', '+ conv2', '+ conv1']);
  assert.deepEqual(rows[2].cells.map((c) => [c.spearman, c.ssim, c.url]), [[1, 1, '/p/0'], [0.4, 0.4, '/p/1'], [0.1, 0.1, '/p/2']]);
  const ind = answer('guided', [0.5, 0.6], 'independent');
  assert.deepEqual(ind.steps.map((_, k) => stepLabel(ind.steps, k, 'independent')), ['trained', 'conv2 only', 'conv1 only']);
  const bn = [step([], 1, 1), step(['layer4.1.conv2', 'layer4.1.bn2'], 0.5, 0.5)];
  assert.deepEqual(newlyRandomised(bn, 1), ['layer4.1.conv2', 'layer4.1.bn2']);
  assert.equal(stepLabel(bn, 1), '+ layer4.1.conv2 (+1)');
  const silent = sanityRows({ guided: answer('guided', [0.5, null]) }, METHODS)[1].cells[2];
  assert.equal(silent.silent, true);
});

test('the verdict names the methods that changed least and most at the last step', () => {
  const by = { deconv: answer('deconv', [0.95, 0.9]), guided: answer('guided', [0.9, 0.8]), backprop: answer('backprop', [0.4, 0.1]) };
  assert.deepEqual(lastScores(by, METHODS).map((s) => [s.method, s.ssim]), [['deconv', 0.9], ['guided', 0.8], ['backprop', 0.1]]);
  const v = sanityVerdict(by, METHODS);
  assert.match(v, /deconvnet projection keeps SSIM 0\.90 \(Spearman 0\.90\)/);
  assert.match(v, /the gradient 0\.10 \(Spearman 0\.10\)/);
  assert.equal(sanityVerdict({ deconv: by.deconv }, METHODS), '');
});

// --------------------------------------------------------------------- API

test('the routes\' URLs and bodies are the contract\'s', async () => {
  const seen = [];
  const api = inspectRoutes({ json: (url, init) => { seen.push([url, init]); return Promise.resolve({}); } });
  const signal = new AbortController().signal;
  await api.sanity('abc', 'layer3.1', 4, { model: 'm', method: 'guided' }, { signal });
  assert.equal(seen[0][0], '/api/images/abc/layers/layer3.1/units/4/sanity?model=m&method=guided&mode=cascading&seed=0');
  assert.equal(seen[0][1].signal, signal);
  await api.matches('abc', 'conv2', 3, { model: 'm', other: 'm', epoch: 0, k: 5 });
  assert.equal(seen[1][0], '/api/images/abc/layers/conv2/units/3/matches?model=m&other=m&epoch=0&k=5');
  await api.matches('abc', 'conv5', 3, { model: 'm', other: 'r', otherLayer: 'layer4', n: 20 });
  assert.equal(seen[2][0], '/api/images/abc/layers/conv5/units/3/matches?model=m&other=r&other_layer=layer4&n=20');
  await api.cka('m', { other: 'r', n: 12 });
  assert.equal(seen[3][0], '/api/compare/cka?model=m&other=r&n=12');
  await api.compareTargets('m');
  assert.equal(seen[4][0], '/api/compare/targets?model=m');
  await api.region('abc', 'conv2', [1, 2, 30, 40], { model: 'm', k: 7 });
  assert.equal(seen[5][0], '/api/images/abc/layers/conv2/region?model=m');
  assert.equal(seen[5][1].method, 'POST');
  assert.deepEqual(JSON.parse(seen[5][1].body), { box: [1, 2, 30, 40], k: 7 });
  await api.region('abc', 'fc6', [0, 0, 8, 8], { model: 'm', k: null });
  assert.deepEqual(JSON.parse(seen[6][1].body), { box: [0, 0, 8, 8] });
  assert.equal(ckaPngUrl('m', { other: 'm', epoch: 2, n: 12 }), '/api/compare/cka.png?model=m&other=m&epoch=2&n=12');
});

test('Save page: the report URL carries the method, seed and position in view, as an attachment', () => {
  assert.equal(reportUrl('abc', 'conv2', 3, { model: 'm', method: 'guided', seed: 'point', position: [4, 7], download: true }),
    '/api/images/abc/layers/conv2/units/3/report.html?model=m&method=guided&seed=point&y=4&x=7&download=true');
  assert.equal(reportUrl('abc', 'conv2', 3, { model: 'm', method: 'deconv', seed: 'map', position: [4, 7] }),
    '/api/images/abc/layers/conv2/units/3/report.html?model=m&method=deconv&seed=map');
  assert.equal(reportUrl('abc', 'layer1.0', 0, { model: 'm', method: 'deconv', seed: 'point', position: null, download: true }),
    '/api/images/abc/layers/layer1.0/units/0/report.html?model=m&method=deconv&seed=point&download=true');
});
