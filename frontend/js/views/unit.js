// The chosen unit: method and seed, the input with its receptive field, the
// projection, and the feature map (click a position to project from there).
import { METHODS, SEEDS } from '../config.js';
import { figureFileName } from '../files.js';
import { boxToPercent, pixelToCell } from '../state.js';
import { $, fmt, h, placeBox, saveCanvas, setDownload, setSrc, showStatus } from './dom.js';

/** "row 3, column 0": feature-map positions in words (the API's [y, x]). */
export const rowCol = (p) => `row ${p[0]}, column ${p[1]}`;

export function createUnitView(root = document) {
  const section = $('.col-unit', root);
  const title = $('[data-testid="unit-title"]', root);
  const status = $('[data-testid="unit-status"]', root);
  const methods = $('[data-testid="methods"]', root);
  const seeds = $('[data-testid="seeds"]', root);
  const posText = $('.position-text', root);
  const clearPos = $('[data-testid="clear-position"]', root);
  const input = $('.unit-input', root);
  const box = $('[data-testid="unit-box"]', root);
  const proj = $('.projection-img', root);
  const projStatus = $('[data-testid="projection-status"]', root);
  const projCaption = $('.projection-caption', root);
  const map = $('[data-testid="feature-map"]', root);
  const mapStatus = $('[data-testid="map-status"]', root);
  const mapCaption = $('.map-caption', root);
  const markStrong = $('[data-testid="map-strongest"]', root);
  const markChosen = $('[data-testid="map-chosen"]', root);
  const mapStack = $('.map-stack', root);
  const mapLegend = $('[data-testid="map-legend"]', root);
  const mapLo = $('.legend-lo', mapLegend);
  const mapHi = $('.legend-hi', mapLegend);
  const explainMethod = $('.explain-method', root);
  const explainSeed = $('.explain-seed', root);
  const dlProjection = $('[data-testid="download-projection"]', root);
  const dlMap = $('[data-testid="download-map"]', root);
  const crop = $('[data-testid="projection-crop"]', root);
  const cropCanvas = $('.crop-canvas', crop);
  const cropCaption = $('.crop-caption', crop);
  const cropZoom = $('[data-testid="crop-zoom"]', crop);
  const cropContrast = $('[data-testid="crop-contrast"]', crop);
  const dlCrop = $('[data-testid="download-crop"]', crop);
  let handlers = null;
  let mapShape = null; // [H, W] of the shown feature map
  let keyPos = null; // the position the arrow keys move from
  let cropKey = null;
  let lastUnit = null;
  let cropName = 'crop.png';

  const radio = (name, item) => h('label', {},
    h('input', { type: 'radio', name, value: item.id, dataset: { testid: `${name}-${item.id}` } }), ` ${item.label}`);
  for (const m of METHODS) methods.append(radio('method', m));
  for (const s of SEEDS) seeds.append(radio('seed', s));

  /** The point-seed projection cut to its receptive field, enlarged (nearest) and contrast-stretched. */
  function drawCrop(box = crop.box, size = crop.inputSize) {
    if (!box || !size || !proj.complete || !proj.naturalWidth || proj.hidden) { crop.hidden = true; return; }
    const zoom = Number(cropZoom.value), contrast = Number(cropContrast.value);
    const key = `${proj.src}|${box}|${zoom}|${contrast}`;
    crop.hidden = false;
    if (key === cropKey) return;
    cropKey = key;
    const k = proj.naturalWidth / size;
    const t = Math.max(0, box[0]), l = Math.max(0, box[1]);
    const b = Math.min(size, box[2]), r = Math.min(size, box[3]);
    const w = Math.max(1, Math.round((r - l) * k)), hgt = Math.max(1, Math.round((b - t) * k));
    const side = Math.max(w, hgt);
    const scale = Math.max(1, Math.floor((80 * zoom) / side)); // zoom 2: about 160 px
    cropCanvas.width = w * scale;
    cropCanvas.height = hgt * scale;
    const ctx = cropCanvas.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.filter = contrast === 1 ? 'none' : `contrast(${contrast})`; // about mid-grey: the projection's zero
    ctx.drawImage(proj, l * k, t * k, w, hgt, 0, 0, w * scale, hgt * scale);
    cropCaption.textContent = `Receptive field rows ${t}–${b - 1}, columns ${l}–${r - 1} of the input (${r - l}×${b - t} px), ${scale}× · contrast ${contrast}×`;
    cropCanvas.setAttribute('aria-label', `The projection cropped to the receptive field, ${r - l}×${b - t} input pixels`);
    dlCrop.hidden = false;
    dlCrop.onclick = (e) => { e.preventDefault(); saveCanvas(cropCanvas, cropName); };
  }

  function mark(el, pos) {
    if (!pos || !mapShape) { el.hidden = true; return; }
    const [H, W] = mapShape;
    el.hidden = false;
    Object.assign(el.style, {
      top: `${(100 * pos[0]) / H}%`, left: `${(100 * pos[1]) / W}%`,
      height: `${100 / H}%`, width: `${100 / W}%`,
    });
  }

  /** What every part of the render needs: the unit, its layer's kind and map shape, names for files. */
  function context(state, { model, layerInfo, box: rf }) {
    const has = state.unit !== null;
    const isFc = !!(layerInfo && !(Array.isArray(layerInfo.shape) && layerInfo.shape.length === 3));
    const shape = layerInfo && !isFc ? layerInfo.shape : null;
    mapShape = shape ? [shape[1], shape[2]] : null;
    const u = state.unitData;
    const fresh = u.status === 'ok' && u.data.unit === state.unit && u.data.layer === state.layer;
    const names = { model: model ? model.id : state.model, image: state.image, layer: state.layer, unit: state.unit };
    return { model, rf, has, isFc, u, fresh, names };
  }

  /** Title, the unit's max in words, method and seed controls, the seed's position. */
  function renderUnit(state, { has, isFc, u, fresh }) {
    title.textContent = has ? `${state.layer} · unit ${state.unit}` : 'Unit';
    section.classList.toggle('empty', !has);

    for (const el of methods.querySelectorAll('input')) el.checked = el.value === state.method;
    for (const el of seeds.querySelectorAll('input')) { el.checked = el.value === state.seed; el.disabled = isFc; }

    if (!has) showStatus(status, { status: 'idle' }, { idle: 'Click a feature map to see what drives it.' });
    else if (!state.image) showStatus(status, { status: 'idle' }, { idle: 'Bring an image to project this unit (its top 9 are below).' });
    else if (u.status === 'error') showStatus(status, u);
    else if (!fresh) showStatus(status, { status: 'loading' }, { loading: `Loading unit ${state.unit}…` });
    else {
      status.classList.remove('error', 'loading');
      status.hidden = false;
      const p = u.data.position;
      status.textContent = `max ${fmt(u.data.max)}${p ? ` at ${rowCol(p)} of its ${mapShape ? `${mapShape[0]}×${mapShape[1]} ` : ''}map` : ''}`;
    }

    if (isFc || state.seed === 'map') posText.textContent = isFc ? 'fc unit: the whole unit is the seed.' : 'Seed: every position of the map.';
    else if (state.position) posText.textContent = `From ${rowCol(state.position)}.`;
    else posText.textContent = 'From the strongest position.';
    clearPos.hidden = !state.position;
  }

  /** The input with its receptive field, the projection, its explanation, download and crop. */
  function renderProjection(state, { model, rf, has, isFc, names }) {
    // Input beside the projection, receptive field outlined.
    setSrc(input, has && state.input.status === 'ok' ? state.input.data.url : null);
    placeBox(box, has && model ? boxToPercent(rf, model.input_size) : null);

    // Projection.
    const pr = state.projection;
    if (!has || !state.image) {
      setSrc(proj, null);
      showStatus(projStatus, { status: 'idle' }, { idle: has ? 'Needs an image.' : 'No unit chosen.' });
    } else {
      setSrc(proj, pr.data ? pr.data.url : null);
      showStatus(projStatus, pr, { loading: 'Projecting…' });
      proj.style.opacity = pr.status === 'loading' ? '0.5' : '1';
    }
    const method = METHODS.find((m) => m.id === state.method);
    const seed = SEEDS.find((x) => x.id === state.seed);
    projCaption.textContent = `${method ? method.label : state.method} projection`;
    explainMethod.textContent = method ? method.help : '';
    explainSeed.textContent = isFc ? 'An fc unit has no positions: the unit itself is the seed.' : (seed ? seed.help : '');
    const projName = figureFileName({ ...names, figure: 'projection', method: state.method, seed: isFc ? null : state.seed, position: state.seed === 'point' ? state.position : null });
    cropName = figureFileName({ ...names, figure: 'projection-crop', method: state.method, seed: 'point', position: state.position });
    setDownload(dlProjection, has && state.image && pr.status === 'ok' && pr.data ? pr.data.url : null, projName);
    // Fig. 2's view: the point seed's projection cut to its receptive field.
    crop.box = has && state.image && !isFc && state.seed === 'point' && pr.status === 'ok' && pr.data ? pr.data.box : null;
    crop.inputSize = model ? model.input_size : null;
    drawCrop();
  }

  /** The feature map, its marks, keyboard position and download; on a phone, scroll to the projection. */
  function renderMap(state, { has, isFc, u, fresh, names }) {
    const um = state.unitMap;
    // Feature map.
    keyPos = state.position ?? (fresh ? u.data.position : null) ?? null;
    mapStack.tabIndex = mapShape && has && state.image ? 0 : -1;
    mapStack.setAttribute('role', 'group');
    mapStack.setAttribute('aria-label', mapShape ? `Feature map ${mapShape[0]}×${mapShape[1]}: arrow keys pick the position to project from${keyPos ? `; now ${rowCol(keyPos)}` : ''}` : 'Feature map');
    setDownload(dlMap, has && state.image && um.status === 'ok' && um.data && !isFc ? um.data.url : null,
      figureFileName({ ...names, figure: 'map' }));
    if (!has || !state.image) {
      setSrc(map, null);
      showStatus(mapStatus, { status: 'idle' });
    } else if (isFc) {
      setSrc(map, null);
      showStatus(mapStatus, { status: 'idle' }, { idle: `${state.layer} has no spatial map: one value per unit${fresh ? ` (${fmt(u.data.max)})` : ''}.` });
    } else {
      setSrc(map, um.data ? um.data.url : null);
      showStatus(mapStatus, um, { loading: 'Loading the feature map…' });
    }
    mapCaption.textContent = mapShape ? `Feature map ${mapShape[0]}×${mapShape[1]}: click a position` : 'Feature map';
    // Its colour bar: viridis from the map's min to its max (the layer summary's numbers for this unit).
    const ld = state.layerData;
    const stats = has && !isFc && ld.status === 'ok' && ld.data.layer === state.layer
      ? ld.data.units.find((x) => x.unit === state.unit) : null;
    mapLegend.hidden = !(stats && map.getAttribute('src') && !map.hidden);
    mapLo.textContent = stats ? fmt(stats.min) : '';
    mapHi.textContent = stats ? fmt(stats.max) : '';
    mapLegend.title = stats ? `colour: viridis from the map's minimum ${fmt(stats.min)} to its maximum ${fmt(stats.max)}` : '';
    const showMarks = !!(map.getAttribute('src') && !map.hidden);
    mark(markStrong, showMarks && fresh ? u.data.position : null);
    mark(markChosen, showMarks && state.seed === 'point' ? state.position : null);
    if (has && state.unit !== lastUnit && lastUnit !== undefined && window.matchMedia && window.matchMedia('(max-width: 700px)').matches) {
      const fig = $('[data-testid="projection"]', root);
      const r = fig.getBoundingClientRect();
      if (r.top > window.innerHeight || r.bottom < 0) fig.scrollIntoView({ block: 'center', behavior: 'smooth' });
    }
    lastUnit = state.unit;
  }

  return {
    bind(h_) {
      handlers = h_;
      methods.addEventListener('change', (e) => handlers.setMethod(e.target.value));
      seeds.addEventListener('change', (e) => handlers.setSeed(e.target.value));
      clearPos.addEventListener('click', () => handlers.clearPosition());
      map.addEventListener('click', (e) => {
        if (!mapShape) return;
        const r = map.getBoundingClientRect();
        handlers.pickPosition(pixelToCell(e.clientX - r.left, e.clientY - r.top, r.width, r.height, mapShape[0], mapShape[1]));
      });
      // The keyboard's way to the same: focus the map, arrows move the seed's position.
      mapStack.addEventListener('keydown', (e) => {
        if (!mapShape || e.altKey || e.ctrlKey || e.metaKey) return;
        const d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
        if (!d && e.key !== 'Enter') return;
        e.preventDefault();
        e.stopPropagation(); // not the page's unit moves
        const from = keyPos ?? [0, 0];
        const p = d ? [Math.min(mapShape[0] - 1, Math.max(0, from[0] + d[0])), Math.min(mapShape[1] - 1, Math.max(0, from[1] + d[1]))] : from;
        handlers.pickPosition(p);
      });
      const redraw = () => { cropKey = null; drawCrop(); };
      cropZoom.addEventListener('input', redraw);
      cropContrast.addEventListener('input', redraw);
      proj.addEventListener('load', redraw);
    },
    render(state, derived) {
      const c = context(state, derived);
      renderUnit(state, c);
      renderProjection(state, c);
      renderMap(state, c);
    },
  };
}
