import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError, createApi, errorMessage, limiter, retryAfterSeconds, withParams } from '../js/api.js';

const json = (status, body, headers = {}) => new Response(JSON.stringify(body), {
  status, headers: { 'Content-Type': 'application/json', ...headers },
});

test('errorMessage: our detail string, validation lists, bare statuses', () => {
  assert.equal(errorMessage(404, { detail: 'unknown layer: conv9' }), 'unknown layer: conv9');
  assert.equal(errorMessage(422, { detail: [
    { loc: ['query', 'k'], msg: 'Input should be less than or equal to 100' },
    { loc: ['body', 'stride'], msg: 'Field required' },
  ] }), 'query.k: Input should be less than or equal to 100; stride: Field required');
  assert.equal(errorMessage(500, null, 'Internal Server Error'), 'HTTP 500 Internal Server Error');
  assert.equal(errorMessage(502, 'Bad gateway from proxy'), 'HTTP 502: Bad gateway from proxy');
  assert.equal(errorMessage(418, { detail: { why: 'teapot' } }), '{"why":"teapot"}');
  assert.equal(errorMessage(400, { detail: '  ' }, 'Bad Request'), 'HTTP 400 Bad Request');
});

test('retryAfterSeconds: seconds, dates, absent', () => {
  assert.equal(retryAfterSeconds('3'), 3);
  assert.equal(retryAfterSeconds(null, 1), 1);
  assert.equal(retryAfterSeconds('', 2), 2);
  assert.equal(retryAfterSeconds('Wed, 21 Oct 2015 07:28:05 GMT', 1, Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')), 5);
  assert.equal(retryAfterSeconds('soon', 4), 4);
});

test('withParams keeps paths path-only and skips empty values', () => {
  assert.equal(withParams('/api/x', { a: 1, b: null, c: '' }), '/api/x?a=1');
  assert.equal(withParams('/api/x?model=m', { k: 9 }), '/api/x?model=m&k=9');
  assert.equal(withParams('/api/x', {}), '/api/x');
});

test('limiter never runs more than n tasks at once and keeps order', async () => {
  const run = limiter(2);
  let active = 0, peak = 0;
  const order = [];
  const task = (i) => async () => {
    active += 1; peak = Math.max(peak, active);
    await new Promise((r) => setTimeout(r, 5));
    order.push(i);
    active -= 1;
    return i;
  };
  const out = await Promise.all([0, 1, 2, 3, 4].map((i) => run(task(i))));
  assert.deepEqual(out, [0, 1, 2, 3, 4]);
  assert.equal(peak, 2);
  assert.equal(order.length, 5);
  await assert.rejects(run(async () => { throw new Error('boom'); }), /boom/);
  assert.equal(await run(async () => 'after'), 'after');
});

test('limiter: low-priority tasks wait behind normal ones queued later', async () => {
  const run = limiter(1);
  const order = [];
  const task = (name) => async () => { order.push(name); await new Promise((r) => setTimeout(r, 1)); };
  const all = [run(task('first')), run(task('thumb1'), { low: true }), run(task('thumb2'), { low: true }),
    run(task('click'))];
  await Promise.all(all);
  assert.deepEqual(order, ['first', 'click', 'thumb1', 'thumb2']);
});

test('a 429 is retried after Retry-After, then succeeds', async () => {
  const waits = [];
  let calls = 0;
  const api = createApi({
    fetch: async () => (++calls < 3 ? json(429, { detail: 'queue full' }, { 'Retry-After': '2' }) : json(200, { status: 'ok' })),
    sleep: async (s) => { waits.push(s); },
  });
  assert.deepEqual(await api.health(), { status: 'ok' });
  assert.equal(calls, 3);
  assert.deepEqual(waits, [2, 2]);
});

test('a 429 that never clears ends in the server\'s words', async () => {
  const api = createApi({
    fetch: async () => json(429, { detail: 'the inference queue is full (8 waiting)' }, { 'Retry-After': '1' }),
    sleep: async () => {},
    maxRetries: 2,
  });
  await assert.rejects(api.health(), (e) => e instanceof ApiError && e.status === 429
    && e.message === 'the inference queue is full (8 waiting)');
});

test('errors carry status and detail; network failures say so', async () => {
  const api = createApi({ fetch: async () => json(404, { detail: 'unknown image: abc' }) });
  await assert.rejects(api.imageInfo('abc'), (e) => e.status === 404 && e.message === 'unknown image: abc' && e.detail === 'unknown image: abc');
  const down = createApi({ fetch: async () => { throw new TypeError('fetch failed'); } });
  await assert.rejects(down.models(), /cannot reach the server \(fetch failed\)/);
  const plain = createApi({ fetch: async () => new Response('oops', { status: 500, statusText: 'Internal Server Error' }) });
  await assert.rejects(plain.models(), /HTTP 500: oops/);
});

test('routes: paths, model and query parameters as in the contract', async () => {
  const seen = [];
  const api = createApi({ fetch: async (url, init = {}) => { seen.push([url, init.method || 'GET']); return json(200, {}); } });
  await api.models();
  await api.samples('m1', 12, 3);
  await api.predictions('ab', 'm1', 5);
  await api.layer('ab', 'conv5', 'm1');
  await api.unit('ab', 'conv5', 7, null);
  await api.top('conv2', 4, 'm1', 9);
  await api.evolution('conv2', 4, 'm1');
  await api.occlusion('ab', { size: 32, stride: 8, layer: 'conv5', class_index: null }, 'm1');
  assert.deepEqual(seen, [
    ['/api/models', 'GET'],
    ['/api/dataset/samples?model=m1&n=12&seed=3', 'GET'],
    ['/api/images/ab/predictions?model=m1&k=5', 'GET'],
    ['/api/images/ab/layers/conv5?model=m1', 'GET'],
    ['/api/images/ab/layers/conv5/units/7', 'GET'],
    ['/api/layers/conv2/units/4/top?model=m1&k=9', 'GET'],
    ['/api/layers/conv2/units/4/evolution?model=m1', 'GET'],
    ['/api/images/ab/occlusion?model=m1', 'POST'],
  ]);
  assert.equal(api.projectionUrl('ab', 'conv5', 7, { model: 'm1', method: 'guided', seed: 'point', position: [0, 12] }),
    '/api/images/ab/layers/conv5/units/7/projection?model=m1&method=guided&seed=point&y=0&x=12&format=png');
  assert.equal(api.projectionUrl('ab', 'fc6', 1, { method: 'deconv', seed: 'map' }),
    '/api/images/ab/layers/fc6/units/1/projection?method=deconv&seed=map&format=png');
  assert.equal(api.mapUrl('ab', 'conv1', 0, 'm', 64), '/api/images/ab/layers/conv1/units/0/map.png?model=m&size=64');
  assert.equal(api.filtersUrl('conv1', 'm'), '/api/layers/conv1/filters.png?model=m');
  assert.equal(api.inputUrl('a/b', null), '/api/images/a%2Fb/input.png');
  assert.equal(api.serverUrl('/api/x?model=z', 'm'), '/api/x?model=z');
  assert.equal(api.serverUrl('/api/x', 'm'), '/api/x?model=m');
});

test('occlusion sends JSON; upload sends multipart field "file"', async () => {
  const bodies = [];
  const api = createApi({ fetch: async (url, init) => { bodies.push(init); return json(201, { image_id: 'ff' }); } });
  await api.occlusion('ab', { size: 16, stride: 4, layer: 'conv3', class_index: 2 });
  assert.equal(bodies[0].headers['Content-Type'], 'application/json');
  assert.deepEqual(JSON.parse(bodies[0].body), { size: 16, stride: 4, layer: 'conv3', class_index: 2 });
  const file = new File([new Uint8Array([1, 2, 3])], 'cat.jpg', { type: 'image/jpeg' });
  assert.deepEqual(await api.upload(file, 'm'), { image_id: 'ff' });
  const form = bodies[1].body;
  assert.ok(form instanceof FormData);
  assert.equal(form.get('file').name, 'cat.jpg');
  assert.equal(form.get('file').size, 3);
});

test('image(): object URL plus the receptive-field header; empty bodies are errors', async () => {
  const api = createApi({
    fetch: async (url) => new Response(url.includes('empty') ? new Uint8Array(0) : new Uint8Array([137, 80, 78, 71]), {
      status: 200, headers: { 'Content-Type': 'image/png', 'X-Receptive-Field': '10,20,77,87' },
    }),
    createObjectURL: (blob) => `blob:fake/${blob.size}`,
  });
  assert.deepEqual(await api.image('/api/p'), { url: 'blob:fake/4', box: [10, 20, 77, 87] });
  await assert.rejects(api.image('/api/empty'), /empty image/);
});

test('an aborted image request rejects without a result, queued ones are never sent', async () => {
  let sent = 0;
  const api = createApi({
    maxConcurrent: 1,
    fetch: (url, init) => new Promise((resolve, reject) => {
      sent += 1;
      init.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
    }),
  });
  const ctl = new AbortController();
  const p = api.image('/api/slow', { signal: ctl.signal });
  await new Promise((r) => setTimeout(r, 1));
  const queued = api.image('/api/queued', { signal: ctl.signal });
  ctl.abort();
  await assert.rejects(p, ApiError);
  await assert.rejects(queued, ApiError);
  assert.equal(sent, 1);
});
