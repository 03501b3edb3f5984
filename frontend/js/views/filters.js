// Fig. 6: the first layer's filters as a mosaic, in a panel.
import { $, setSrc, showStatus } from './dom.js';

export function createFiltersView(root = document) {
  const panel = $('[data-testid="filters"]', root);
  const status = $('[data-testid="filters-status"]', root);
  const image = $('[data-testid="filters-img"]', root);
  const close = $('.panel-close', panel);

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
      if (opening) close.focus();
    },
  };
}
