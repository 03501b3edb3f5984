// The top bar (model choice, panel buttons) and the notice line.
import { $, $$, h, rebuild } from './dom.js';

export function createHeaderView(root = document) {
  const select = $('#model-select', root);
  const buttons = $$('.panel-buttons [data-panel]', root);
  const notice = $('#notice', root);
  const noticeText = $('.notice-text', notice);
  const noticeClose = $('.notice-close', notice);
  let shownPanel = null;

  return {
    bind(handlers) {
      select.addEventListener('change', () => handlers.selectModel(select.value));
      for (const b of buttons) b.addEventListener('click', () => handlers.togglePanel(b.dataset.panel));
      noticeClose.addEventListener('click', () => handlers.dismissNotice());
    },
    render(state, { model }) {
      const models = state.models.data ? state.models.data.models : [];
      rebuild(select, models.map((m) => m.id).join('|'), () => models.map((m) => h('option', {
        value: m.id, text: `${m.id} (${m.arch}, ${m.layers.length} layers, ${m.classes.length} classes)`,
      })));
      select.disabled = models.length < 2;
      if (model && select.value !== model.id) select.value = model.id;
      for (const b of buttons) b.setAttribute('aria-pressed', String(state.panel === b.dataset.panel));
      // A panel closed (Esc, ×, its button): focus goes back to the button that opens it.
      if (shownPanel && state.panel !== shownPanel) {
        const a = document.activeElement;
        const opener = buttons.find((b) => b.dataset.panel === shownPanel);
        if (opener && (!a || a === document.body || !document.body.contains(a) || a.closest('.panel'))) opener.focus();
      }
      shownPanel = state.panel;

      // Global trouble first (the model list), then notes about the link.
      let text = null, isError = false;
      if (state.models.status === 'error') { text = `Cannot load the models: ${state.models.error}`; isError = true; }
      else if (state.models.status === 'loading') text = 'Loading the models…';
      else if (state.notice) text = state.notice;
      notice.hidden = !text;
      notice.classList.toggle('error', isError);
      noticeText.textContent = text ?? '';
      noticeClose.hidden = !state.notice || isError;
    },
  };
}
