// Units from a region of the input (issue 16): drag a box on the model input (mouse or
// pen; on a touch screen press "Draw" first, so a finger still scrolls the page
// otherwise), or type its four edges, or focus the box and move it with the arrow keys
// (Shift: resize). The chosen layer's units are ranked by the route's rule (shown, in
// the server's words) with their projections; clicking one opens it at that position.
import { REGION_STEP } from '../config_inspect.js';
import { boxWords, dragToBox, fieldsToBox, nudgeBox } from '../region.js';
import { boxToPercent } from '../state.js';
import { $, fmt, h, placeBox, rebuild, showStatus } from './dom.js';

const rowCol = (p) => `row ${p[0]}, column ${p[1]}`;

export function createRegionView(root = document) {
  const figure = $('[data-testid="input"]', root);
  const image = $('.input-img', figure);
  const boxEl = $('[data-testid="region-box"]', root);
  const section = $('[data-testid="region"]', root);
  const form = $('[data-testid="region-form"]', root);
  const fields = ['top', 'left', 'bottom', 'right'].map((n) => [n, $(`[data-testid="region-${n}"]`, form)]);
  const draw = $('[data-testid="region-draw"]', root);
  const clearBtn = $('[data-testid="region-clear"]', root);
  const status = $('[data-testid="region-status"]', root);
  const rule = $('[data-testid="region-rule"]', root);
  const list = $('[data-testid="region-units"]', root);
  let handlers = null;
  let size = null; // the model's input side
  let box = null; // the box the state holds
  let drag = null; // {id, a} while a pointer draws
  let fieldError = null;
  let drawing = false; // touch drawing on
  let shownBox = null; // the box the fields were last filled from

  const ready = () => !!size && !image.hidden && image.naturalWidth > 0;
  const local = (e) => { const r = figure.getBoundingClientRect(); return { x: e.clientX - r.left, y: e.clientY - r.top, r }; };
  const show = (b) => placeBox(boxEl, b && size ? boxToPercent(b, size) : null);

  function onDown(e) {
    if (!ready() || e.button > 0 || (e.pointerType === 'touch' && !drawing)) return;
    e.preventDefault();
    try { figure.setPointerCapture(e.pointerId); } catch { /* a pointer already gone: the drag still ends on pointerup */ }
    drag = { id: e.pointerId, a: local(e) };
  }
  function onMove(e) {
    if (!drag || e.pointerId !== drag.id) return;
    const b = local(e);
    show(dragToBox(drag.a, b, b.r.width, b.r.height, size));
  }
  function onUp(e) {
    if (!drag || e.pointerId !== drag.id) return;
    const b = local(e);
    const a = drag.a;
    drag = null;
    fieldError = null;
    handlers.setRegionBox(dragToBox(a, b, b.r.width, b.r.height, size));
  }

  return {
    bind(h_) {
      handlers = h_;
      figure.addEventListener('pointerdown', onDown);
      figure.addEventListener('pointermove', onMove);
      figure.addEventListener('pointerup', onUp);
      figure.addEventListener('pointercancel', () => { drag = null; show(box); });
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        const got = fieldsToBox(Object.fromEntries(fields.map(([n, el]) => [n, el.value])), size);
        fieldError = got.error ?? null;
        if (got.box) handlers.setRegionBox(got.box);
        else handlers.setRegionBox(box); // re-render with the message
      });
      draw.addEventListener('click', () => {
        drawing = !drawing;
        draw.setAttribute('aria-pressed', String(drawing));
        figure.classList.toggle('drawing', drawing);
      });
      clearBtn.addEventListener('click', () => { fieldError = null; handlers.setRegionBox(null); });
      boxEl.addEventListener('keydown', (e) => {
        if (!box || e.altKey || e.ctrlKey || e.metaKey) return;
        const next = nudgeBox(box, e.key, { shift: e.shiftKey, step: REGION_STEP }, size);
        if (!next) return;
        e.preventDefault();
        e.stopPropagation(); // not the page's unit moves
        fieldError = null;
        handlers.setRegionBox(next);
      });
      list.addEventListener('click', (e) => {
        const b = e.target.closest('[data-testid=region-unit]');
        if (!b) return;
        const d = b.entry;
        if (d) handlers.openRegionUnit(d);
      });
    },
    render(state, { model }) {
      size = model ? model.input_size : null;
      box = state.region.box;
      section.hidden = !state.image;
      if (!drag) show(state.input.status === 'ok' ? box : null);
      boxEl.setAttribute('aria-label', box ? `Region ${boxWords(box)}: arrow keys move it, Shift and arrows resize it` : 'Region');
      // The fields follow the box when it changes (a drag, a key), never while someone types in them.
      const boxKey = box ? box.join(',') : '';
      if (boxKey !== shownBox) {
        shownBox = boxKey;
        fields.forEach(([, el], i) => { el.value = box ? String(box[i]) : ''; });
      }
      for (const [, el] of fields) el.max = String(size ?? '');
      const r = state.regionData;
      if (fieldError) showStatus(status, { status: 'error', error: fieldError });
      else if (!box) showStatus(status, { status: 'idle' }, { idle: `Drag a box on the model input, or type its edges in input pixels (0–${size ?? '?'}).` });
      else if (r.status === 'ok') showStatus(status, { status: 'idle' }, { idle: `${r.data.layer}: the ${r.data.units.length} strongest units for ${boxWords(r.data.box)}. Click one to open it.` });
      else showStatus(status, r, { loading: `Ranking the units of ${state.layer}…` });
      const d = r.status === 'ok' ? r.data : null;
      rule.hidden = !d;
      rule.textContent = d ? `Rule: ${d.rule} (${d.positions ? `${d.positions.length} position${d.positions.length === 1 ? '' : 's'}, ` : ''}${d.overlap} px of overlap)` : '';
      rebuild(list, `${r.key}|${r.status}`, () => (d ? d.units.map((u, i) => {
        const b = h('button', {
          type: 'button', class: 'region-unit', dataset: { testid: 'region-unit', unit: u.unit },
          title: `open ${d.layer} unit ${u.unit}${u.position ? ` at ${rowCol(u.position)}` : ''}`,
        }, h('img', { src: u.projection_url, alt: '', decoding: 'async', loading: 'lazy' }),
        h('span', { text: `${i + 1}. unit ${u.unit} · ${fmt(u.value)}${u.position ? ` at ${rowCol(u.position)}` : ''}` }));
        b.entry = u;
        return h('li', {}, b);
      }) : []));
    },
  };
}
