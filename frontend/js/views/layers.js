// The grid of one layer's feature maps (thumbnails for layers with maps, a heat
// grid of per-unit maxima for fc layers), sortable, strongest marked. The picker
// above it is views/picker.js. Thumbnails load lazily: an IntersectionObserver
// tells the controller which cells are on screen (a layer of 512 maps asks for
// the ~50 in view, not 512).
import { SORTS } from '../config.js';
import { toHex, normalise, viridis } from '../colormap.js';
import { range, strongestUnit } from '../units.js';
import { $, fmt, h, rebuild, showStatus } from './dom.js';

export function createLayersView(root = document) {
  const sort = $('[data-testid="sort"]', root);
  const summary = $('[data-testid="layer-summary"]', root);
  const status = $('[data-testid="layer-status"]', root);
  const grid = $('[data-testid="units"]', root);
  const legend = $('[data-testid="units-legend"]', root);
  const legendLo = $('.legend-lo', legend);
  const legendHi = $('.legend-hi', legend);
  const legendWhat = $('.legend-what', legend);
  let handlers = null;
  let cells = new Map(); // unit -> {el, img}
  let selected = null;
  const onScreen = new Set();
  let pending = 0;
  const observer = typeof IntersectionObserver === 'function' ? new IntersectionObserver((entries) => {
    for (const en of entries) {
      const u = Number(en.target.dataset.unit);
      if (en.isIntersecting) onScreen.add(u); else onScreen.delete(u);
    }
    if (!pending) pending = setTimeout(report, 60); // one report per scroll burst
  }, { root: null, rootMargin: '150px' }) : null;
  function report() {
    pending = 0;
    if (handlers) handlers.showUnits([...onScreen].filter((u) => cells.has(u)));
  }

  for (const s of SORTS) sort.append(h('option', { value: s.id, text: s.label }));

  /** Thumbnails as they arrive (each cell once). */
  function applyThumbs(byUnit) {
    for (const [unit, t] of Object.entries(byUnit)) {
      if (t.status === 'loading') continue;
      const c = cells.get(Number(unit));
      if (!c || c.img || c.err) continue;
      if (t.status === 'ok' && !c.img) {
        c.img = h('img', { src: t.url, alt: '' });
        c.el.prepend(c.img);
      } else if (t.status === 'error' && !c.err) {
        c.err = true;
        c.el.append(h('span', { class: 'unit-err', text: '!' }));
        c.el.title = `${c.el.title}. Feature map could not load: ${t.error}`;
      }
    }
  }

  /** The chosen unit's cell: selected, the grid's tab stop, focused when the grid had focus. */
  function applySelection(unit) {
    if (selected !== unit) {
      const prev = cells.get(selected);
      if (prev) { prev.el.setAttribute('aria-selected', 'false'); prev.el.tabIndex = -1; }
      const next = cells.get(unit);
      if (next) {
        next.el.setAttribute('aria-selected', 'true');
        next.el.tabIndex = 0;
        const active = document.activeElement;
        if (!active || active === document.body || grid.contains(active)) next.el.focus({ preventScroll: true });
        next.el.scrollIntoView({ block: 'nearest' });
      }
      selected = next ? unit : null;
    }
    if (selected === null && cells.size) {
      const first = cells.values().next().value;
      first.el.tabIndex = 0;
    }
  }

  return {
    bind(h_) {
      handlers = h_;
      sort.addEventListener('change', () => handlers.setSort(sort.value));
      grid.addEventListener('click', (e) => {
        const b = e.target.closest('[data-unit]');
        if (b) handlers.selectUnit(Number(b.dataset.unit));
      });
    },
    /** Put keyboard focus on the chosen unit's cell (after an arrow key). */
    focusSelected() {
      const c = cells.get(selected);
      if (c) { c.el.focus({ preventScroll: true }); c.el.scrollIntoView({ block: 'nearest' }); }
    },
    /** Focus the chosen unit's cell, else the grid itself (after [ or ]: arrows keep moving units). */
    focusGrid() {
      const c = cells.get(selected);
      if (c) c.el.focus({ preventScroll: true });
      else grid.focus({ preventScroll: true });
    },
    /** Columns the grid shows now (for up/down arrows). */
    columns() {
      const first = grid.firstElementChild;
      if (!first) return 1;
      const top = first.offsetTop;
      let n = 0;
      for (const c of grid.children) { if (c.offsetTop !== top) break; n += 1; }
      return Math.max(1, n);
    },
    render(state, { layerInfo, ordered, spatial }) {
      if (sort.value !== state.sort) sort.value = state.sort;

      const ld = state.layerData;
      if (!state.image) showStatus(status, { status: 'idle' }, { idle: 'Bring an image to see its feature maps.' });
      else if (state.imageInfo.status === 'error') showStatus(status, { status: 'idle' }, { idle: 'No feature maps: the image is not available.' });
      else showStatus(status, ld, { loading: `Computing ${state.layer}…` });

      const units = ld.status === 'ok' ? ld.data.units : [];
      const shp = ld.status === 'ok' && Array.isArray(ld.data.shape) ? ld.data.shape : null;
      const isFc = shp ? shp.length !== 3 : ld.status === 'ok' ? ld.data.kind === 'fc' : !!(layerInfo && !spatial);
      const best = strongestUnit(units);
      const [lo, hi] = range(units);
      summary.textContent = ld.status === 'ok'
        ? `${units.length} ${isFc ? 'units' : 'feature maps'} · strongest: unit ${best} (max ${fmt(hi)})`
        : '';
      // The colour bar's numbers: fc cells share the layer's 0..max; a thumbnail is drawn on its own
      // min..max (the API's per-unit min and max), so the bar names the chosen (else strongest) unit's.
      legend.hidden = ld.status !== 'ok';
      const shown = units.find((u) => u.unit === (state.unit ?? best));
      legendLo.textContent = isFc ? fmt(Math.min(0, lo)) : shown ? `unit ${shown.unit}: ${fmt(shown.min)}` : '';
      legendHi.textContent = isFc ? fmt(hi) : shown ? fmt(shown.max) : '';
      legendWhat.textContent = isFc ? 'colour: viridis on the layer\'s 0..max'
        : 'colour: viridis, each thumbnail on its own min..max (hover a cell for its numbers)';
      grid.classList.toggle('fc', isFc);
      const built = rebuild(grid, `${ld.key}|${ld.status}|${state.sort}`, () => {
        if (observer) { observer.disconnect(); onScreen.clear(); }
        cells = new Map();
        return ordered.map((u) => {
          const label = `unit ${u.unit}: ${isFc ? '' : `min ${fmt(u.min)}, `}max ${fmt(u.max)}, mean ${fmt(u.mean)}${u.unit === best ? ' (strongest)' : ''}`;
          const el = h('button', {
            type: 'button', role: 'option', class: `unit${u.unit === best ? ' strongest' : ''}`,
            dataset: { testid: 'unit', unit: u.unit }, title: label, 'aria-label': label,
            'aria-selected': 'false', tabindex: '-1',
          });
          if (isFc) {
            el.append(h('span', { class: 'unit-fill', style: { background: toHex(viridis(normalise(u.max, Math.min(0, lo), hi))) } }));
          }
          el.append(h('span', { class: 'unit-num', text: u.unit }));
          if (u.unit === best) el.append(h('span', { class: 'star', dataset: { testid: 'strongest' }, 'aria-hidden': 'true', text: '★' }));
          cells.set(u.unit, { el, img: null, err: false });
          return el;
        });
      });
      if (built && observer && !isFc) for (const c of cells.values()) observer.observe(c.el);
      else if (built && !observer && !isFc) handlers.showUnits([...cells.keys()]); // no observer: every map
      if (built) selected = null;

      if (!isFc && state.thumbs.key === ld.key) applyThumbs(state.thumbs.byUnit);
      applySelection(state.unit);
    },
  };
}
