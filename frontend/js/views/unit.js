// The chosen unit: method and seed, the input with its receptive field, the
// projection, and the feature map (click a position to project from there).
import { METHODS, SEEDS } from '../config.js';
import { boxToPercent, pixelToCell } from '../state.js';
import { $, fmt, h, placeBox, setSrc, showStatus } from './dom.js';

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
  let handlers = null;
  let mapShape = null; // [H, W] of the shown feature map

  const radio = (name, item) => h('label', {},
    h('input', { type: 'radio', name, value: item.id, dataset: { testid: `${name}-${item.id}` } }), ` ${item.label}`);
  for (const m of METHODS) methods.append(radio('method', m));
  for (const s of SEEDS) seeds.append(radio('seed', s));

  function mark(el, pos) {
    if (!pos || !mapShape) { el.hidden = true; return; }
    const [H, W] = mapShape;
    el.hidden = false;
    Object.assign(el.style, {
      top: `${(100 * pos[0]) / H}%`, left: `${(100 * pos[1]) / W}%`,
      height: `${100 / H}%`, width: `${100 / W}%`,
    });
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
    },
    render(state, { model, layerInfo, box: rf }) {
      const has = state.unit !== null;
      const isFc = !!(layerInfo && layerInfo.kind === 'fc');
      title.textContent = has ? `${state.layer} · unit ${state.unit}` : 'Unit';
      section.classList.toggle('empty', !has);

      for (const el of methods.querySelectorAll('input')) el.checked = el.value === state.method;
      for (const el of seeds.querySelectorAll('input')) { el.checked = el.value === state.seed; el.disabled = isFc; }

      const u = state.unitData;
      const fresh = u.status === 'ok' && u.data.unit === state.unit && u.data.layer === state.layer;
      if (!has) showStatus(status, { status: 'idle' }, { idle: 'Click a feature map to see what drives it.' });
      else if (!state.image) showStatus(status, { status: 'idle' }, { idle: 'Bring an image to project this unit (its top 9 are below).' });
      else if (u.status === 'error') showStatus(status, u);
      else if (!fresh) showStatus(status, { status: 'loading' }, { loading: `Loading unit ${state.unit}…` });
      else {
        status.classList.remove('error', 'loading');
        status.hidden = false;
        const p = u.data.position;
        status.textContent = `max ${fmt(u.data.max)}${p ? ` at (${p[0]}, ${p[1]})` : ''}`;
      }

      if (isFc || state.seed === 'map') posText.textContent = isFc ? 'fc unit: the whole unit is the seed.' : 'Seed: every position of the map.';
      else if (state.position) posText.textContent = `From position (${state.position[0]}, ${state.position[1]}).`;
      else posText.textContent = 'From the strongest position.';
      clearPos.hidden = !state.position;

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
      projCaption.textContent = `${method ? method.label : state.method} projection`;

      // Feature map.
      const shape = layerInfo && layerInfo.kind === 'conv' ? layerInfo.shape : null;
      mapShape = shape ? [shape[1], shape[2]] : null;
      const um = state.unitMap;
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
      const showMarks = !!(map.getAttribute('src') && !map.hidden);
      mark(markStrong, showMarks && fresh ? u.data.position : null);
      mark(markChosen, showMarks && state.seed === 'point' ? state.position : null);
    },
  };
}
