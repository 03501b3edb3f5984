// Fig. 6: the first layer's filters as a mosaic, in a panel.
import { FILTERS_LAYER } from '../config.js';
import { figureFileName } from '../files.js';
import { $, setDownload, setSrc, showStatus } from './dom.js';

export function createFiltersView(root = document) {
  const panel = $('[data-testid="filters"]', root);
  const status = $('[data-testid="filters-status"]', root);
  const image = $('[data-testid="filters-img"]', root);
  const close = $('.panel-close', panel);
  const download = $('[data-testid="download-filters"]', root);

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
      if (opening) close.focus();
    },
  };
}
