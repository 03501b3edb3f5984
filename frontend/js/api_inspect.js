// The routes of issues 15 and 16 (backend/deconvlab/api/README.md: "Sanity", "Report",
// "Compare two models, and units from an image region"), one function each, over the
// client of api.js (its queue, its 429 retries, its ApiError in words):
//
//   const api = withInspectRoutes(createApi());
//
// Long ones (a sanity check, matches, CKA, a region) take a `signal`: aborting it drops
// the request, and the server stops the job (its runner checks between models / batches).
import { API_BASE } from './config.js';
import { withParams } from './api.js';

const enc = encodeURIComponent;
const m = (model) => (model ? { model } : {});
const unitPath = (base, id, layer, unit) => `${base}/images/${enc(id)}/layers/${enc(layer)}/units/${enc(unit)}`;

/** The unit's page as one HTML file (GET .../report.html); `download`: as an attachment. Pure. */
export function reportUrl(id, layer, unit, { model, method, seed, position, download = false } = {}, base = API_BASE) {
  const at = seed === 'map' || !position ? {} : { y: position[0], x: position[1] };
  return withParams(`${unitPath(base, id, layer, unit)}/report.html`, {
    ...m(model), method, seed, ...at, download: download ? 'true' : null,
  });
}

/** The CKA matrix as the server draws it (viridis on 0..1), for a download. Pure. */
export function ckaPngUrl(model, { other, epoch = null, n } = {}, base = API_BASE) {
  return withParams(`${base}/compare/cka.png`, { ...m(model), other, epoch, n });
}

export function inspectRoutes({ json }, base = API_BASE) {
  const sig = (signal) => (signal ? { signal } : {});
  const unit = (id, layer, u) => unitPath(base, id, layer, u);
  return {
    /** One method's parameter-randomisation check of the unit (its projection per step). */
    sanity: (id, layer, u, { model, method, mode = 'cascading', seed = 0 } = {}, { signal } = {}) => json(
      withParams(`${unit(id, layer, u)}/sanity`, { ...m(model), method, mode, seed }), sig(signal)),
    /** Every served model and every training snapshot the unit can be compared with. */
    compareTargets: (model) => json(withParams(`${base}/compare/targets`, m(model))),
    /** The unit's best matches in `other` (or its snapshot `epoch`), correlated over `n` data-set images. */
    matches: (id, layer, u, { model, other, epoch = null, otherLayer = null, k, n } = {}, { signal } = {}) => json(
      withParams(`${unit(id, layer, u)}/matches`, {
        ...m(model), other, epoch, other_layer: otherLayer, k, n,
      }), sig(signal)),
    /** Linear CKA of every pair of layers, as numbers. */
    cka: (model, { other, epoch = null, n } = {}, { signal } = {}) => json(
      withParams(`${base}/compare/cka`, { ...m(model), other, epoch, n }), sig(signal)),
    ckaPngUrl: (model, opts) => ckaPngUrl(model, opts, base),
    /** The layer's units ranked inside a box of the input (the rule is in the answer). */
    region: (id, layer, box, { model, k } = {}, { signal } = {}) => json(
      withParams(`${base}/images/${enc(id)}/layers/${enc(layer)}/region`, m(model)), {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(k ? { box, k } : { box }), ...sig(signal),
      }),
    reportUrl: (id, layer, u, opts) => reportUrl(id, layer, u, opts, base),
  };
}

/** The client of api.js with these routes added (the same queue and errors). */
export function withInspectRoutes(api, base = API_BASE) {
  return Object.assign(api, inspectRoutes(api, base));
}
