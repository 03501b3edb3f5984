// The controller: owns the app state, turns handler calls into API calls and
// re-renders every view after each change. It never touches the DOM: views,
// the API client and the location (`nav`) are handed in, so Node can test it.
import {
  DEFAULTS, FILTERS_LAYER, HIDDEN_LAYERS, MAP_SIZE, OCCLUSION_DEFAULTS, PREDICTIONS_K, SAMPLES_N,
  THUMB_SIZE, TOP_K, URL_KEYS,
} from './config.js';
import {
  groupLayers, isSpatial, locate, sensibleLayer, visibleLayerList,
} from './picker.js';
import {
  currentModel, formatHash, neighbourLayer, parseHash,
} from './state.js';
import { moveUnit, sortUnits } from './units.js';
import { createInspect, inspectState } from './inspect.js';

const idle = () => ({ status: 'idle', key: null, data: null, error: null });

export function initialState() {
  return {
    ...DEFAULTS,
    models: idle(), // data: GET /api/models
    samples: idle(), sampleSeed: 0,
    upload: { status: 'idle', error: null, name: null },
    imageInfo: idle(), input: idle(), predictions: idle(),
    layerData: idle(), thumbs: { key: null, byUnit: {} }, // byUnit: unit -> {status, url | error}
    layerQuery: '', // the layer picker's filter box
    expanded: [], // picker groups whose inner layers are shown
    unitData: idle(), unitMap: idle(), projection: idle(), topk: idle(), evolution: idle(),
    filters: idle(), filterStats: idle(), // the Fig. 6 mosaic; each filter's numbers
    occlusion: { ...idle(), params: { ...OCCLUSION_DEFAULTS }, startedAt: null },
    panel: null, // 'occlusion' | 'filters' | null
    notice: null, // a message about the link or the state, in words
    ...inspectState(), // sanity strip, compare panel, region (inspect.js)
  };
}

/** Derived facts the views need; pure. */
export function derive(state) {
  const models = state.models.data ? state.models.data.models : [];
  const model = currentModel(models, state.model, state.models.data && state.models.data.default);
  const layers = visibleLayerList(model, HIDDEN_LAYERS);
  const layerInfo = layers.find((l) => l.name === state.layer) ?? null;
  const units = state.layerData.status === 'ok' ? state.layerData.data.units : [];
  const grouped = groupLayers(layers);
  const at = locate(grouped, state.layer);
  // The chosen layer's block is always open; others as the person opened them.
  const open = new Set(state.expanded);
  if (at && !at.main) open.add(at.group);
  return {
    model, layers, layerInfo, grouped, open, spatial: isSpatial(layerInfo),
    ordered: sortUnits(units, state.sort), box: currentBox(state),
  };
}

/**
 * The receptive field to outline on the input: the projection's own box (the
 * X-Receptive-Field header, for point seeds), else the unit's strongest
 * position's box while no other position is chosen; none for whole-map seeds.
 */
export function currentBox(state) {
  if (state.unit === null || state.seed !== 'point') return null;
  const p = state.projection;
  if (p.status === 'ok' && p.data && p.data.box) return p.data.box;
  const u = state.unitData;
  if (state.position === null && u.status === 'ok' && u.data && u.data.unit === state.unit
      && u.data.layer === state.layer && Array.isArray(u.data.box)) return u.data.box;
  return null;
}

export function createController({ api, views, nav, now = () => Date.now(), release = () => {} }) {
  let state = initialState();
  const inflight = new Map(); // slot -> AbortController
  const thumbAborts = { byUnit: new Map() }; // unit -> AbortController of its thumbnail
  const listeners = [];

  const get = () => state;
  const viewList = Object.values(views);

  function render() {
    for (const v of viewList) v.render(state, derive(state));
    for (const l of listeners) l(state);
  }

  function set(patch) {
    state = { ...state, ...patch };
  }

  /** Mirror the view in the URL: a new history entry for a new image, layer or model. */
  function writeUrl() {
    const hash = formatHash(state);
    const current = nav.read();
    if (current === hash) return;
    const before = parseHash(current).state;
    const major = ['model', 'image', 'layer'].some((k) => (before[k] ?? null) !== (state[k] ?? null));
    nav.write(hash, { replace: !major || !current });
  }

  function commit(patch = {}) {
    set(patch);
    writeUrl();
    ensure();
    render();
  }

  // ---------------------------------------------------------------- loading

  /** Load `slot` for `key` unless it already holds (or is loading) that key. */
  function load(slot, key, fetcher, { keep = false } = {}) {
    const cur = state[slot];
    if (cur.key === key && cur.status !== 'idle') return;
    if (inflight.has(slot)) inflight.get(slot).abort();
    const ctl = new AbortController();
    inflight.set(slot, ctl);
    const previous = cur.data;
    set({ [slot]: { ...cur, status: 'loading', key, error: null, data: keep ? cur.data : null } });
    if (!keep) releaseData(previous);
    Promise.resolve()
      .then(() => fetcher(ctl.signal))
      .then(
        (data) => {
          if (state[slot].key !== key || ctl.signal.aborted) { releaseData(data); return; }
          inflight.delete(slot);
          if (keep) releaseData(previous);
          set({ [slot]: { ...state[slot], status: 'ok', data, error: null } });
          afterLoad(slot, data);
          ensure();
          render();
        },
        (err) => {
          if (state[slot].key !== key || ctl.signal.aborted) return;
          inflight.delete(slot);
          set({ [slot]: { ...state[slot], status: 'error', data: keep ? state[slot].data : null, error: message(err) } });
          ensure();
          render();
        },
      );
  }

  function clear(slot) {
    if (state[slot].status === 'idle' && state[slot].key === null) return;
    if (inflight.has(slot)) { inflight.get(slot).abort(); inflight.delete(slot); }
    releaseData(state[slot].data);
    set({ [slot]: idle() });
  }

  function releaseData(data) {
    if (data && typeof data === 'object' && typeof data.url === 'string' && data.url.startsWith('blob:')) release(data.url);
  }

  function afterLoad(slot, data) {
    if (slot === 'models') {
      const models = data.models || [];
      const patch = {};
      if (!models.length) {
        patch.notice = 'The server has no models: add one to the registry (models/registry.json) and restart it.';
      } else if (state.model === null || !models.some((m) => m.id === state.model)) {
        if (state.model !== null) patch.notice = `Model ${state.model} is not on this server; showing ${data.default}.`;
        patch.model = models.some((m) => m.id === data.default) ? data.default : models[0].id;
      }
      set(patch);
      fixLayer();
      writeUrl();
    }
  }

  /** Keep the layer one of the model's tabs (a link may name another model's layer). */
  function fixLayer() {
    const { layers } = derive(state);
    if (!layers.length || layers.some((l) => l.name === state.layer)) return;
    const fallback = sensibleLayer(layers, null);
    set({
      notice: `Layer ${state.layer} is not a layer of ${state.model}; showing ${fallback}.`,
      layer: fallback, unit: null, position: null,
    });
  }

  /** Start every load the current state needs and drop what it no longer shows. */
  function ensure() {
    load('models', 'models', () => api.models());
    if (state.models.status !== 'ok') return;
    const { model, layerInfo } = derive(state);
    if (!model) return;
    const M = model.id;

    load('samples', `${M}|${state.sampleSeed}`, () => api.samples(M, SAMPLES_N, state.sampleSeed).then((res) => ({
      ...res, samples: res.samples.map((s) => ({ ...s, url: api.serverUrl(s.url, M) })),
    })));

    const img = state.image;
    if (img) {
      const ik = `${M}|${img}`;
      load('imageInfo', ik, () => api.imageInfo(img, M));
    } else {
      for (const s of ['imageInfo', 'input', 'predictions', 'layerData', 'unitData', 'unitMap', 'projection']) clear(s);
      clearThumbs();
    }
    const imageOk = img && state.imageInfo.status === 'ok' && state.imageInfo.key === `${M}|${img}`;
    if (imageOk) {
      const ik = `${M}|${img}`;
      load('input', ik, (signal) => api.image(api.inputUrl(img, M), { signal }));
      const k = Math.min(PREDICTIONS_K, (model.classes && model.classes.length) || PREDICTIONS_K); // 3 classes: a top-3
      load('predictions', ik, () => api.predictions(img, M, k));
      const lk = `${ik}|${state.layer}`;
      load('layerData', lk, () => api.layer(img, state.layer, M));
      if (state.layerData.status === 'ok' && state.layerData.key === lk && isSpatial(layerInfo)) {
        if (state.thumbs.key !== lk) { clearThumbs(); set({ thumbs: { key: lk, byUnit: {} } }); }
      } else if (state.thumbs.key !== lk) {
        clearThumbs();
      }
      if (state.unit !== null) {
        const uk = `${lk}|${state.unit}`;
        load('unitData', uk, () => api.unit(img, state.layer, state.unit, M), { keep: true });
        if (isSpatial(layerInfo)) {
          load('unitMap', uk, (signal) => api.image(api.mapUrl(img, state.layer, state.unit, M, MAP_SIZE), { signal }), { keep: true });
        } else {
          clear('unitMap');
        }
        const pk = `${uk}|${state.method}|${state.seed}|${state.position ? state.position.join(',') : ''}`;
        const opts = { model: M, method: state.method, seed: state.seed, position: state.position };
        load('projection', pk, (signal) => api.image(api.projectionUrl(img, state.layer, state.unit, opts), { signal }), { keep: true });
      } else {
        clear('unitData'); clear('unitMap'); clear('projection');
      }
    } else if (img) {
      for (const s of ['input', 'predictions', 'layerData', 'unitData', 'unitMap', 'projection']) clear(s);
      clearThumbs();
    }

    if (state.unit !== null) {
      const tk = `${M}|${state.layer}|${state.unit}`;
      load('topk', tk, () => api.top(state.layer, state.unit, M, TOP_K).then((res) => ({
        ...res,
        entries: res.entries.map((e) => ({
          ...e,
          patch_url: api.serverUrl(e.patch_url, M),
          projection_url: api.serverUrl(e.projection_url, M),
          image_url: api.serverUrl(e.image_url, M),
        })),
      })));
      load('evolution', tk, () => api.evolution(state.layer, state.unit, M).then((res) => ({
        ...res, snapshots: res.snapshots.map((s) => ({ ...s, projection_url: api.serverUrl(s.projection_url, M) })),
      })));
    } else {
      clear('topk'); clear('evolution');
    }

    if (state.panel === 'filters') {
      load('filters', M, (signal) => api.image(api.filtersUrl(FILTERS_LAYER, M), { signal }));
      load('filterStats', M, () => api.filterStats(FILTERS_LAYER, M));
    }
    const occ = state.occlusion;
    if (occ.key !== null && occ.key !== `${M}|${img}`) {
      if (inflight.has('occlusion')) { inflight.get('occlusion').abort(); inflight.delete('occlusion'); }
      set({ occlusion: { ...idle(), params: occ.params, startedAt: null } });
    }
    inspect.ensure(model);
  }

  /**
   * Thumbnails only for the units on screen (the grid view reports them): a layer of
   * 512 maps asks for the ~50 visible ones. Requests for units scrolled away before
   * they were sent are dropped (and asked again when they come back).
   */
  function showThumbs(units) {
    const key = state.thumbs.key;
    const { layerInfo } = derive(state);
    if (key === null || !state.image || !isSpatial(layerInfo)) return;
    const wanted = new Set(units);
    for (const [unit, ctl] of thumbAborts.byUnit) {
      if (!wanted.has(unit)) { ctl.abort(); thumbAborts.byUnit.delete(unit); dropThumb(unit); }
    }
    const img = state.image, layer = state.layer, M = state.model;
    let changed = false;
    const byUnit = { ...state.thumbs.byUnit };
    for (const unit of units) {
      if (byUnit[unit]) continue;
      const ctl = new AbortController();
      thumbAborts.byUnit.set(unit, ctl);
      byUnit[unit] = { status: 'loading' };
      changed = true;
      api.image(api.mapUrl(img, layer, unit, M, THUMB_SIZE), { signal: ctl.signal, low: true }).then(
        (data) => {
          thumbAborts.byUnit.delete(unit);
          if (state.thumbs.key !== key || ctl.signal.aborted) { releaseData(data); return; }
          set({ thumbs: { key, byUnit: { ...state.thumbs.byUnit, [unit]: { status: 'ok', url: data.url } } } });
          render();
        },
        (err) => {
          thumbAborts.byUnit.delete(unit);
          if (state.thumbs.key !== key || ctl.signal.aborted) return;
          set({ thumbs: { key, byUnit: { ...state.thumbs.byUnit, [unit]: { status: 'error', error: message(err) } } } });
          render();
        },
      );
    }
    if (changed) set({ thumbs: { key, byUnit } });
  }

  function dropThumb(unit) {
    const t = state.thumbs.byUnit[unit];
    if (!t || t.status !== 'loading') return;
    const byUnit = { ...state.thumbs.byUnit };
    delete byUnit[unit];
    set({ thumbs: { ...state.thumbs, byUnit } });
  }

  function clearThumbs() {
    for (const ctl of thumbAborts.byUnit.values()) ctl.abort();
    thumbAborts.byUnit.clear();
    if (state.thumbs.key === null) return;
    for (const t of Object.values(state.thumbs.byUnit)) if (t.url) release(t.url);
    set({ thumbs: { key: null, byUnit: {} } });
  }

  // --------------------------------------------------------------- handlers

  async function useBlob(promiseOfBlob, name, then = { position: null }) {
    const before = state.image;
    set({ upload: { status: 'loading', error: null, name } });
    render();
    try {
      const blob = await promiseOfBlob;
      const res = await api.upload(blob, state.model, name);
      set({ upload: { status: 'ok', error: null, name } });
      if (res.image_id === before && then.position === null) { render(); return; }
      commit({ ...then, image: res.image_id, notice: null });
    } catch (err) {
      set({ upload: { status: 'error', error: message(err), name } });
      render();
    }
  }

  const inspect = createInspect({ get, set, load, clear, render, commit, api });
  const handlers = {
    ...inspect.handlers,
    uploadFile(file) {
      if (!file) {
        set({ upload: { status: 'error', error: 'expected an image file, got nothing', name: null } });
        render();
        return Promise.resolve();
      }
      return useBlob(Promise.resolve(file), file.name || 'pasted image');
    },
    pickSample(sample) {
      return useBlob(api.blob(sample.url), `${sample.label || 'sample'} #${sample.image_index}.jpg`);
    },
    moreSamples() { commit({ sampleSeed: state.sampleSeed + 1 }); },
    /**
     * A top-9 patch: its data-set image becomes the image, projected from the patch's
     * position (so the receptive field outlined is the patch's box), same layer and unit.
     */
    async openTopEntry(entry) {
      const { layer, unit } = state;
      const position = Array.isArray(entry.position) ? entry.position : null;
      await useBlob(api.blob(entry.image_url), `${entry.label || 'data-set image'} #${entry.image_index}.jpg`,
        { layer, unit, position, seed: 'point' });
    },
    /** Another model: the same image, the same layer when it has one, else one as deep (picker.sensibleLayer). */
    selectModel(id) {
      if (id === state.model) return;
      const before = derive(state).layers;
      const models = state.models.data ? state.models.data.models : [];
      const next = models.find((m) => m.id === id);
      if (!next) return;
      const layer = sensibleLayer(visibleLayerList(next, HIDDEN_LAYERS), state.layer, before);
      commit({
        model: id, layer: layer ?? state.layer, unit: null, position: null, notice: null,
        layerQuery: '', expanded: [],
      });
    },
    selectLayer(name, { keepUnit = false } = {}) {
      if (name === state.layer) return;
      const info = derive(state).layers.find((l) => l.name === name);
      const unit = keepUnit && info && state.unit !== null && state.unit < info.channels ? state.unit : null;
      commit({ layer: name, unit, position: null });
    },
    /** [ and ]: the next layer in network order, keeping the unit when the layer has it. */
    moveLayer(delta) {
      const next = neighbourLayer(derive(state).layers, state.layer, delta);
      if (next) handlers.selectLayer(next, { keepUnit: true });
    },
    setLayerQuery(text) { commit({ layerQuery: String(text ?? '') }); },
    toggleGroup(id) {
      const on = state.expanded.includes(id);
      commit({ expanded: on ? state.expanded.filter((g) => g !== id) : [...state.expanded, id] });
    },
    /** The grid says which units are on screen: their thumbnails load, others wait. */
    showUnits(units) { showThumbs(units); render(); },
    selectUnit(unit) {
      if (unit === state.unit) return;
      commit({ unit, position: null });
    },
    moveUnit(delta) {
      const next = moveUnit(derive(state).ordered, state.unit, delta);
      if (next !== null) handlers.selectUnit(next);
    },
    setSort(sort) { commit({ sort }); },
    setMethod(method) { commit({ method }); },
    setSeed(seed) { commit({ seed, position: seed === 'map' ? null : state.position }); },
    pickPosition(position) { commit({ position, seed: 'point' }); },
    clearPosition() { commit({ position: null }); },
    openPanel(panel) { commit({ panel }); },
    togglePanel(panel) { commit({ panel: state.panel === panel ? null : panel }); },
    closePanels() {
      if (state.panel !== null) commit({ panel: null });
      else if (state.notice) commit({ notice: null });
    },
    dismissNotice() { commit({ notice: null }); },
    /** Stop a running occlusion: the request is aborted and the server drops the job. */
    cancelOcclusion() {
      if (state.occlusion.status !== 'loading') return;
      if (inflight.has('occlusion')) { inflight.get('occlusion').abort(); inflight.delete('occlusion'); }
      set({ occlusion: { ...state.occlusion, status: 'idle', key: null, error: null, cancelled: true } });
      render();
    },
    setOcclusionParams(params) {
      set({ occlusion: { ...state.occlusion, params: { ...state.occlusion.params, ...params } } });
      render();
    },
    runOcclusion(params = {}) {
      const M = state.model;
      const img = state.image;
      if (!img) {
        set({ occlusion: { ...state.occlusion, status: 'error', error: 'Bring an image first: occlusion needs one.' } });
        render();
        return Promise.resolve();
      }
      const p = { ...state.occlusion.params, ...params };
      const key = `${M}|${img}`;
      if (inflight.has('occlusion')) inflight.get('occlusion').abort();
      const ctl = new AbortController();
      inflight.set('occlusion', ctl);
      set({ occlusion: { status: 'loading', key, data: null, error: null, params: p, startedAt: now() } });
      render();
      return api.occlusion(img, p, M, { signal: ctl.signal }).then(
        (data) => {
          if (ctl.signal.aborted || state.occlusion.key !== key) return;
          inflight.delete('occlusion');
          set({ occlusion: { ...state.occlusion, status: 'ok', data, error: null } });
          render();
        },
        (err) => {
          if (ctl.signal.aborted || state.occlusion.key !== key) return;
          inflight.delete('occlusion');
          set({ occlusion: { ...state.occlusion, status: 'error', error: message(err) } });
          render();
        },
      );
    },
    retry(slot) {
      if (state[slot] && state[slot].status === 'error') {
        set({ [slot]: { ...state[slot], key: null, status: 'idle' } });
        ensure();
        render();
      }
    },
  };

  /** Apply a hash from outside (start-up, back/forward, an edited address bar). */
  function applyUrl(hash) {
    const { state: parsed, rejected } = parseHash(hash);
    const patch = {};
    for (const key of Object.keys(URL_KEYS)) patch[key] = key in parsed ? parsed[key] : DEFAULTS[key];
    if (patch.model === null && state.models.status === 'ok') patch.model = state.model;
    patch.notice = rejected.length ? `Ignored parts of the link that are not valid: ${rejected.join(', ')}.` : null;
    set(patch);
    if (state.models.status === 'ok') {
      afterLoad('models', state.models.data);
    }
    writeUrl();
    ensure();
    render();
  }

  function start() {
    for (const v of viewList) v.bind(handlers);
    nav.onChange((hash) => { if (hash !== formatHash(state)) applyUrl(hash); });
    applyUrl(nav.read());
  }

  return { start, handlers, get, onChange: (fn) => listeners.push(fn), applyUrl };
}

function message(err) {
  if (err && typeof err.message === 'string' && err.message) return err.message;
  return String(err);
}
