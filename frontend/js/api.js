// The REST client: one function per route of backend/deconvlab/api/README.md.
// Every failure becomes an ApiError whose message is the server's `detail` in words.
// `fetch`, `sleep` and `createObjectURL` are injected so Node's tests can drive it.
import {
  API_BASE, MAX_CONCURRENT_REQUESTS, MAX_RETRIES_429, RETRY_DEFAULT_S,
} from './config.js';
import { parseBoxHeader } from './state.js';

export class ApiError extends Error {
  constructor(message, { status = 0, detail = null, url = '' } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail;
    this.url = url;
  }
}

/**
 * The words to show for an error answer. FastAPI sends {"detail": "..."} for
 * ours and {"detail": [{"loc": [...], "msg": "..."}]} for request validation.
 */
export function errorMessage(status, body, statusText = '') {
  const detail = body && typeof body === 'object' ? body.detail : undefined;
  if (typeof detail === 'string' && detail.trim()) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => {
      if (!d || typeof d !== 'object') return String(d);
      const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== 'body' || d.loc.length === 1).join('.') : '';
      return loc ? `${loc}: ${d.msg}` : String(d.msg);
    }).join('; ');
  }
  if (detail && typeof detail === 'object') return JSON.stringify(detail);
  if (typeof body === 'string' && body.trim() && body.length < 300) return `HTTP ${status}: ${body.trim()}`;
  return `HTTP ${status}${statusText ? ` ${statusText}` : ''}`;
}

/** Seconds to wait from a Retry-After header (seconds or an HTTP date); `fallback` if absent. */
export function retryAfterSeconds(header, fallback = RETRY_DEFAULT_S, now = Date.now()) {
  if (header === null || header === undefined || header === '') return fallback;
  const n = Number(header);
  if (Number.isFinite(n)) return Math.max(0, n);
  const t = Date.parse(header);
  return Number.isFinite(t) ? Math.max(0, (t - now) / 1000) : fallback;
}

/** A URL with `params` set (null/undefined skipped), keeping a path-only URL path-only. */
export function withParams(url, params = {}) {
  const [path, query = ''] = String(url).split('?');
  const q = new URLSearchParams(query);
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '') continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/**
 * At most `n` tasks at once; the rest wait in order, `low` ones (thumbnails)
 * behind every normal one, so a click is never stuck behind a grid of maps.
 */
export function limiter(n) {
  let active = 0;
  const waiting = { normal: [], low: [] };
  const next = () => {
    if (active >= n) return;
    const item = waiting.normal.shift() ?? waiting.low.shift();
    if (!item) return;
    active += 1;
    Promise.resolve().then(item.task).then(item.resolve, item.reject).finally(() => { active -= 1; next(); });
  };
  const run = (task, { low = false } = {}) => new Promise((resolve, reject) => {
    waiting[low ? 'low' : 'normal'].push({ task, resolve, reject });
    next();
  });
  run.pending = () => waiting.normal.length + waiting.low.length + active;
  return run;
}

const enc = encodeURIComponent;

export function createApi({
  fetch: fetchFn = globalThis.fetch.bind(globalThis),
  base = API_BASE,
  sleep = (s) => new Promise((r) => setTimeout(r, s * 1000)),
  createObjectURL = (blob) => URL.createObjectURL(blob),
  maxConcurrent = MAX_CONCURRENT_REQUESTS,
  maxRetries = MAX_RETRIES_429,
} = {}) {
  const queue = limiter(maxConcurrent);

  async function send(url, init = {}, { low = false } = {}) {
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await queue(() => {
          // A request given up while it waited in the queue is never sent.
          if (init.signal && init.signal.aborted) throw new Error('aborted before it was sent');
          return fetchFn(url, init);
        }, { low });
      } catch (err) {
        throw new ApiError(`cannot reach the server (${err && err.message ? err.message : err})`, { url });
      }
      if (res.status === 429 && attempt < maxRetries) {
        await sleep(retryAfterSeconds(res.headers.get('Retry-After')));
        continue;
      }
      if (!res.ok) {
        let body = null;
        const type = res.headers.get('Content-Type') || '';
        try {
          body = type.includes('json') ? await res.json() : await res.text();
        } catch { body = null; }
        const message = errorMessage(res.status, body, res.statusText);
        throw new ApiError(message, { status: res.status, detail: body && body.detail, url });
      }
      return res;
    }
  }

  async function json(url, init) {
    const res = await send(url, init);
    try {
      return await res.json();
    } catch (err) {
      throw new ApiError(`the server sent something that is not JSON for ${url}`, { status: res.status, url });
    }
  }

  /**
   * Fetch an image; resolve to {url: object URL, box: X-Receptive-Field or null}.
   * `low`: wait behind every other request (grid thumbnails).
   */
  async function image(url, { signal, low = false } = {}) {
    const res = await send(url, signal ? { signal } : {}, { low });
    const blob = await res.blob();
    if (!blob.size) throw new ApiError(`the server sent an empty image for ${url}`, { status: res.status, url });
    return { url: createObjectURL(blob), box: parseBoxHeader(res.headers.get('X-Receptive-Field')) };
  }

  const m = (model) => (model ? { model } : {});
  const img = (id) => `${base}/images/${enc(id)}`;
  const unitPath = (id, layer, unit) => `${img(id)}/layers/${enc(layer)}/units/${enc(unit)}`;

  return {
    send,
    json,
    image,
    health: () => json(`${base}/health`),
    models: () => json(`${base}/models`),
    samples: (model, n, seed) => json(withParams(`${base}/dataset/samples`, { ...m(model), n, seed })),
    /** A data-set image (or any URL the server gave) as a Blob, to upload it as the current image. */
    blob: async (url) => (await send(url)).blob(),
    upload: (file, model, name = 'upload') => {
      const form = new FormData();
      form.append('file', file, file && file.name ? file.name : name);
      return json(withParams(`${base}/images`, m(model)), { method: 'POST', body: form });
    },
    imageInfo: (id, model) => json(withParams(img(id), m(model))),
    inputUrl: (id, model) => withParams(`${img(id)}/input.png`, m(model)),
    predictions: (id, model, k) => json(withParams(`${img(id)}/predictions`, { ...m(model), k })),
    layer: (id, layer, model) => json(withParams(`${img(id)}/layers/${enc(layer)}`, m(model))),
    unit: (id, layer, unit, model) => json(withParams(unitPath(id, layer, unit), m(model))),
    mapUrl: (id, layer, unit, model, size) => withParams(`${unitPath(id, layer, unit)}/map.png`, { ...m(model), size }),
    projectionUrl: (id, layer, unit, { model, method, seed, position } = {}) => withParams(
      `${unitPath(id, layer, unit)}/projection`,
      {
        ...m(model), method, seed,
        y: position ? position[0] : null, x: position ? position[1] : null, format: 'png',
      },
    ),
    top: (layer, unit, model, k) => json(withParams(`${base}/layers/${enc(layer)}/units/${enc(unit)}/top`, { ...m(model), k })),
    occlusion: (id, body, model, { signal } = {}) => json(withParams(`${img(id)}/occlusion`, m(model)), {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      ...(signal ? { signal } : {}),
    }),
    filtersUrl: (layer, model) => withParams(`${base}/layers/${enc(layer)}/filters.png`, m(model)),
    /** Each filter's norm and whether it is dead by weight, and the rule for "dead" in words. */
    filterStats: (layer, model) => json(withParams(`${base}/layers/${enc(layer)}/filters`, m(model))),
    evolution: (layer, unit, model) => json(withParams(`${base}/layers/${enc(layer)}/units/${enc(unit)}/evolution`, m(model))),
    /** A URL the server handed out (patch_url, ...), with the model added when it lacks one. */
    serverUrl: (url, model) => (String(url).includes('model=') ? url : withParams(url, m(model))),
  };
}
