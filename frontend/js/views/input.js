// The model's input crop (with the receptive field outlined) and the top-5 predictions.
import { boxToPercent } from '../state.js';
import { $, h, placeBox, rebuild, setSrc, showStatus } from './dom.js';

export function createInputView(root = document) {
  const status = $('[data-testid="input-status"]', root);
  const image = $('.input-img', root);
  const box = $('[data-testid="input-box"]', root);
  const predStatus = $('[data-testid="predictions-status"]', root);
  const list = $('.pred-list', root);

  return {
    bind() {},
    render(state, { model, box: rf }) {
      const info = state.imageInfo;
      if (!state.image) {
        showStatus(status, { status: 'idle' }, { idle: 'Bring an image to begin.' });
      } else if (info.status !== 'ok') {
        showStatus(status, info, { loading: 'Loading the image…' });
      } else {
        showStatus(status, state.input, { loading: 'Preparing the model input…' });
      }
      setSrc(image, state.input.status === 'ok' ? state.input.data.url : null);
      placeBox(box, state.input.status === 'ok' && model ? boxToPercent(rf, model.input_size) : null);

      const p = state.predictions;
      showStatus(predStatus, p, { loading: 'Classifying…', idle: state.image ? '' : 'No image yet.' });
      const preds = p.status === 'ok' ? p.data.predictions : [];
      rebuild(list, `${p.key}|${p.status}`, () => preds.map((q, i) => h('li', { dataset: { testid: 'prediction' } },
        h('span', { class: 'pred-label', text: `${i + 1}. ${q.label}` }),
        h('span', { class: 'pred-p', text: `${(100 * q.probability).toFixed(1)}%` }),
        h('span', { class: 'pred-bar', 'aria-hidden': 'true' },
          h('span', { style: { width: `${Math.max(0.5, 100 * q.probability)}%` } })))));
    },
  };
}
