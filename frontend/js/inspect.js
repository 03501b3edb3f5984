// The controller's part for the on-demand inspections of issues 15 and 16: the sanity
// strip, the compare panel and units from a region of the input. No DOM: controller.js
// hands in its own slot machinery (`load`, `clear`, `set`, `commit`, `render`) and calls
// `ensure()` after its own loads, so these slots follow the view like the others.
//
//   slot / state       loaded when                                   key
//   sanity             "Run" is pressed; the three methods in turn    model|image|layer|unit
//                      (one request at a time); dropped when the
//                      unit in view changes; Cancel aborts it
//   compareTargets     the compare panel is open                      model
//   matches            a target is chosen, an image and a unit shown  model|image|layer|unit|target|layer'|n
//   cka                a target is chosen                             model|target|n
//   matchTop           the match opened has a top-9 (top_url)         that URL
//   regionData         a box is drawn or typed (re-ranked when the    model|image|layer|box
//                      layer changes)
import { COMPARE_K, COMPARE_N, METHODS, REGION_K, SANITY_MODE } from './config_inspect.js';
import { parseTargetId } from './compare.js';
import { boxError } from './region.js';

const idle = () => ({ status: 'idle', key: null, data: null, error: null });
const idleSanity = () => ({ status: 'idle', key: null, byMethod: {}, running: null, error: null, cancelled: false });

export function inspectState() {
  return {
    sanity: idleSanity(), // byMethod: method id -> GET .../sanity answer; running: the method asked now
    compare: { target: null, otherLayer: null, n: COMPARE_N, match: null }, // target: compare.targetId
    compareTargets: idle(), matches: idle(), cka: idle(), matchTop: idle(),
    region: { box: null }, regionData: idle(),
  };
}

/** The view's key for the sanity strip: the unit in view on the image in view. */
export function sanityKey(state) {
  if (!state.image || state.unit === null || !state.model) return null;
  return `${state.model}|${state.image}|${state.layer}|${state.unit}`;
}

/** The chosen target's entry in GET /api/compare/targets, or null. */
export function chosenTarget(state) {
  const t = state.compareTargets;
  const want = parseTargetId(state.compare.target);
  if (!want || t.status !== 'ok') return null;
  return t.data.targets.find((x) => x.other === want.other && (x.epoch ?? null) === want.epoch) ?? null;
}

/** The layer of the target the unit is matched in: the one chosen, else the same name when it has it. */
export function otherLayerFor(state, target) {
  if (!target) return null;
  if (state.compare.otherLayer && target.layers.includes(state.compare.otherLayer)) return state.compare.otherLayer;
  return target.layers.includes(state.layer) ? state.layer : null;
}

const message = (err) => (err && typeof err.message === 'string' && err.message ? err.message : String(err));

export function createInspect({ get, set, load, clear, render, commit, api }) {
  let sanityCtl = null;

  const urls = (res, M) => ({
    ...res, steps: res.steps.map((s) => ({ ...s, projection_url: api.serverUrl(s.projection_url, M) })),
  });

  async function runSanity() {
    const state = get();
    const key = sanityKey(state);
    if (key === null) {
      set({ sanity: { ...idleSanity(), status: 'error', error: 'Pick a unit on an image first: the check projects it.' } });
      render();
      return;
    }
    if (sanityCtl) sanityCtl.abort();
    const ctl = new AbortController();
    sanityCtl = ctl;
    const { model: M, image: img, layer, unit } = state;
    set({ sanity: { ...idleSanity(), status: 'loading', key } });
    render();
    for (const m of METHODS) {
      if (ctl.signal.aborted || get().sanity.key !== key) return;
      set({ sanity: { ...get().sanity, running: m.id } });
      render();
      try {
        const res = await api.sanity(img, layer, unit, { model: M, method: m.id, mode: SANITY_MODE }, { signal: ctl.signal });
        if (ctl.signal.aborted || get().sanity.key !== key) return;
        set({ sanity: { ...get().sanity, byMethod: { ...get().sanity.byMethod, [m.id]: urls(res, M) } } });
      } catch (err) {
        if (ctl.signal.aborted || get().sanity.key !== key) return;
        set({ sanity: { ...get().sanity, status: 'error', running: null, error: `${m.label}: ${message(err)}` } });
        sanityCtl = null;
        render();
        return;
      }
    }
    sanityCtl = null;
    set({ sanity: { ...get().sanity, status: 'ok', running: null } });
    render();
  }

  function dropSanity(patch = {}) {
    if (sanityCtl) { sanityCtl.abort(); sanityCtl = null; }
    set({ sanity: { ...idleSanity(), ...patch } });
  }

  function ensureCompare(state, M, imageOk) {
    if (state.panel === 'compare') load('compareTargets', M, () => api.compareTargets(M));
    const target = chosenTarget(state);
    const want = parseTargetId(state.compare.target);
    if (!want || !target) { clear('matches'); clear('cka'); clear('matchTop'); return; }
    const n = state.compare.n;
    const tk = `${M}|${state.compare.target}|${n}`;
    if (state.panel === 'compare') load('cka', tk, (signal) => api.cka(M, { other: want.other, epoch: want.epoch, n }, { signal }));
    const lb = otherLayerFor(state, target);
    if (state.panel !== 'compare' || !imageOk || state.unit === null || lb === null) { clear('matches'); clear('matchTop'); return; }
    const img = state.image;
    const mk = `${M}|${img}|${state.layer}|${state.unit}|${state.compare.target}|${lb}|${n}`;
    load('matches', mk, (signal) => api.matches(img, state.layer, state.unit, {
      model: M, other: want.other, epoch: want.epoch, otherLayer: lb === state.layer ? null : lb, k: COMPARE_K, n,
    }, { signal }).then((res) => ({
      ...res, matches: res.matches.map((x) => ({ ...x, projection_url: api.serverUrl(x.projection_url, want.other) })),
    })));
    const md = get().matches;
    const list = md.status === 'ok' && md.key === mk ? md.data.matches : [];
    const open = list.find((x) => x.unit === state.compare.match) ?? list[0];
    if (!open || !open.top_url) { clear('matchTop'); return; }
    load('matchTop', open.top_url, () => api.json(api.serverUrl(open.top_url, want.other)).then((res) => ({
      ...res,
      entries: res.entries.map((e) => ({
        ...e, patch_url: api.serverUrl(e.patch_url, want.other), projection_url: api.serverUrl(e.projection_url, want.other),
      })),
    })));
  }

  function ensureRegion(state, M, model, imageOk) {
    const box = state.region.box;
    if (!box || !imageOk || !model || boxError(box, model.input_size)) { clear('regionData'); return; }
    const img = state.image, layer = state.layer;
    const rk = `${M}|${img}|${layer}|${box.join(',')}`;
    const info = (model.layers || []).find((l) => l.name === layer);
    const k = info && info.channels ? Math.min(REGION_K, info.channels) : null; // null: the route's default
    load('regionData', rk, (signal) => api.region(img, layer, box, { model: M, k }, { signal }).then((res) => ({
      ...res, units: res.units.map((u) => ({ ...u, projection_url: api.serverUrl(u.projection_url, M) })),
    })));
  }

  /** After the controller's own loads: start or drop these. `model`: derive(state).model. */
  function ensure(model) {
    const state = get();
    if (!model) return;
    const M = model.id;
    const imageOk = !!state.image && state.imageInfo.status === 'ok' && state.imageInfo.key === `${M}|${state.image}`;
    if (state.sanity.key !== null && state.sanity.key !== sanityKey(state)) dropSanity();
    ensureCompare(get(), M, imageOk);
    ensureRegion(get(), M, model, imageOk);
  }

  const handlers = {
    /** The sanity strip: all three methods, one after another. */
    runSanity,
    /** Stop it: the request in flight is aborted (the server stops between models); what came back stays. */
    cancelSanity() {
      const s = get().sanity;
      if (s.status !== 'loading') return;
      const kept = s.byMethod;
      dropSanity({ key: s.key, byMethod: kept, cancelled: true });
      render();
    },
    /** The second network: a targetId ("" for none). A new one forgets the match opened and the layer chosen. */
    setCompareTarget(id) {
      commit({ compare: { ...get().compare, target: id || null, otherLayer: null, match: null } });
    },
    setCompareLayer(name) { commit({ compare: { ...get().compare, otherLayer: name || null, match: null } }); },
    /** Images to correlate over; "" or null: the server's default. */
    setCompareN(n) {
      if (n === null || n === undefined || String(n).trim() === '') { commit({ compare: { ...get().compare, n: null } }); return; }
      const v = Math.round(Number(n));
      if (Number.isFinite(v) && v >= 1) commit({ compare: { ...get().compare, n: v } });
    },
    /** Show this match's top-9 beside the unit's own. */
    openMatch(unit) { commit({ compare: { ...get().compare, match: unit } }); },
    /** A box on the input, from a drag, the number fields or the keys; null clears it. */
    setRegionBox(box) { commit({ region: { ...get().region, box: box ? box.map(Number) : null } }); },
    /** A unit from the region's list: opened at the position it was found at. */
    openRegionUnit(entry) {
      const position = Array.isArray(entry.position) ? entry.position : null;
      commit({ unit: entry.unit, position, seed: 'point' });
    },
  };

  return { ensure, handlers };
}
