// The model's input crop (with the receptive field outlined) and the top-5 predictions.
import { PREDICTIONS_K } from '../config.js';
import { boxToPercent } from '../state.js';
import { $, h, placeBox, rebuild, setSrc, showStatus } from './dom.js';

export function createInputView(root = document) {
  const status = $('[data-testid="input-status"]', root);
  const image = $('.input-img', root);
  const box = $('[data-testid="input-box"]', root);
  const predStatus = $('[data-testid="predictions-status"]', root);
  const list = $('.pred-list', root);
  const heading = $('#pred-title', root);
  const classes = $('[data-testid="model-classes"]', root);
  const classesSummary = $('.classes-summary', classes);
  const classesList = $('.classes-list', classes);
  const zone = $('[data-testid="upload"]', root);
  let shownModel;

  return {
    bind() {},
    render(state, { model, box: rf }) {
      const info = state.imageInfo;
      if (!state.image) {
        showStatus(status, { status: 'idle' }, { idle: 'Bring an image to begin.' });
      } else if (info.status === 'error' && /unknown image|not found|no image/i.test(info.error)) {
        // A link to an image this server does not hold (expired, or from another server).
        status.classList.remove('loading');
        status.classList.add('error');
        status.hidden = false;
        status.textContent = `This link's image (${state.image.slice(0, 12)}…) is not on this server: it may have been `
          + `removed or uploaded to another one. Drop, paste or choose the picture again, or pick a data-set image. (${info.error})`;
      } else if (info.status !== 'ok') {
        showStatus(status, info, { loading: 'Loading the image…' });
      } else {
        showStatus(status, state.input, { loading: 'Preparing the model input…' });
      }
      setSrc(image, state.input.status === 'ok' ? state.input.data.url : null);
      placeBox(box, state.input.status === 'ok' && model ? boxToPercent(rf, model.input_size) : null);

      zone.classList.toggle('wanted', !!state.image && info.status === 'error');

      // What the model can answer at all: its classes (a snake is still one of Imagenette's 10).
      const names = model && Array.isArray(model.classes) ? model.classes : [];
      classes.hidden = !names.length;
      rebuild(classesSummary, `${model ? model.id : ''}|${names.length}`, () => [
        `${model ? model.id : 'This model'} knows ${names.length} classes; every picture gets one of them.`]);
      rebuild(classesList, `${model ? model.id : ''}|${names.join('|')}`, () => [names.join(', ')]);
      const mid = model ? model.id : null;
      if (mid !== shownModel) { classes.open = names.length <= 20; shownModel = mid; } // short lists open

      const k = Math.min(PREDICTIONS_K, names.length || PREDICTIONS_K);
      heading.textContent = `Top-${k} predictions`;
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
