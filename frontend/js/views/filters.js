// Fig. 6: the first layer's filters as a mosaic, in a panel, with each filter's numbers
// (the L2 norm of its weights) and how many are dead by weight, in the server's words
// (GET /api/layers/{layer}/filters: RMS below 0.05 of the layer's median filter RMS).
import { FILTERS_LAYER } from '../config.js';
import { figureFileName } from '../files.js';
import { $, fmt, h, rebuild, setDownload, setSrc, showStatus } from './dom.js';

export function createFiltersView(root = document) {
  const panel = $('[data-testid="filters"]', root);
  const status = $('[data-testid="filters-status"]', root);
  const image = $('[data-testid="filters-img"]', root);
  const close = $('.panel-close', panel);
  const download = $('[data-testid="download-filters"]', root);
  const summary = $('[data-testid="filters-summary"]', root);
  const list = $('[data-testid="filter-stats"]', root);

  function renderStats(fs) {
    if (fs.status === 'error') {
      summary.hidden = false;
      summary.textContent = `No numbers for the filters: ${fs.error}`;
    } else if (fs.status === 'ok') {
      const d = fs.data;
      summary.hidden = false;
      summary.textContent = `${d.filters.length} filters of ${d.layer} · ${d.dead} dead `
        + `(dead: ${d.rule}; median RMS ${fmt(d.median_rms)}). Each number below is the L2 norm of a filter's weights.`;
    } else summary.hidden = true;
    const filters = fs.status === 'ok' ? fs.data.filters : [];
    list.hidden = !filters.length;
    rebuild(list, `${fs.key}|${fs.status}`, () => filters.map((f) => h('li', {
      class: f.dead ? 'dead' : null, dataset: { testid: 'filter-stat', unit: f.unit, dead: String(f.dead) },
      title: `filter ${f.unit}: norm ${fmt(f.norm)}, RMS ${fmt(f.rms)}${f.dead ? ' (dead)' : ''}`,
    }, h('span', { class: 'filter-unit', text: `#${f.unit}` }), ` ${fmt(f.norm)}`, f.dead ? ' dead' : '')));
  }

  return {
    bind(handlers) {
      close.addEventListener('click', () => handlers.closePanels());
    },
    render(state) {
      const open = state.panel === 'filters';
      const opening = open && panel.hidden;
      panel.hidden = !open;
      if (!open) return;
      const f = state.filters;
      showStatus(status, f, { loading: 'Rendering the filters…' });
      setSrc(image, f.status === 'ok' ? f.data.url : null);
      setDownload(download, f.status === 'ok' ? f.data.url : null, figureFileName({ model: state.model, layer: FILTERS_LAYER, figure: 'filters' }));
      renderStats(state.filterStats);
      if (opening) close.focus();
    },
  };
}
