// The sanity strip under the projection (issue 15): on demand ("Run the check"), the
// three methods one after another, with progress and Cancel; then a table, one row per
// method, one column per randomisation step, each cell the step's projection with its
// Spearman and SSIM against the trained model's; one sentence on how to read it.
import { METHODS } from '../config.js';
import { SANITY_FINDING, SANITY_READING, sanityRows, sanityVerdict } from '../sanity.js';
import { $, h, rebuild, showStatus } from './dom.js';

// Scores lie in -1..1: two decimals always (fmt would switch to an exponent below 1e-3).
const num = (v) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? '–' : Number(v).toFixed(2));

function cell(c, label) {
  const words = c.step === 0 ? `${label}, trained model` : `${label}, ${c.heading}`;
  const scores = c.step === 0 ? 'reference' : `ρ ${num(c.spearman)} · SSIM ${num(c.ssim)}`;
  return h('td', { dataset: { testid: 'sanity-cell', method: c.method, step: c.step } },
    h('figure', {},
      h('img', {
        src: c.url, alt: `${words}: projection`, decoding: 'async', loading: 'lazy',
        title: c.randomized.length ? `randomised: ${c.randomized.join(', ')}` : 'the trained weights',
      }),
      h('figcaption', { class: 'sanity-scores', dataset: { testid: 'sanity-scores' } },
        c.silent ? 'silent: 0 at the seed' : scores)));
}

export function createSanityView(root = document) {
  const section = $('[data-testid="sanity"]', root);
  const run = $('[data-testid="sanity-run"]', root);
  const cancel = $('[data-testid="sanity-cancel"]', root);
  const reading = $('[data-testid="sanity-reading"]', root);
  const progress = $('[data-testid="sanity-progress"]', root);
  const bar = $('progress', progress);
  const progressText = $('.sanity-progress-text', progress);
  const status = $('[data-testid="sanity-status"]', root);
  const strip = $('[data-testid="sanity-strip"]', root);
  const verdict = $('[data-testid="sanity-verdict"]', root);
  const finding = $('[data-testid="sanity-finding"]', root);
  reading.textContent = SANITY_READING;
  finding.textContent = SANITY_FINDING;

  return {
    bind(handlers) {
      run.addEventListener('click', () => handlers.runSanity());
      cancel.addEventListener('click', () => { handlers.cancelSanity(); run.focus(); });
    },
    render(state) {
      const s = state.sanity;
      const has = state.unit !== null && !!state.image;
      section.hidden = state.unit === null;
      const loading = s.status === 'loading';
      run.disabled = !has || loading;
      run.textContent = Object.keys(s.byMethod).length && !loading ? 'Run again' : 'Run the check';
      cancel.hidden = !loading;
      progress.hidden = !loading;
      const done = Object.keys(s.byMethod).length;
      bar.max = METHODS.length;
      bar.value = done;
      const now = METHODS.find((m) => m.id === s.running);
      progressText.textContent = loading
        ? `${done} of ${METHODS.length} methods done${now ? `; now ${now.label.toLowerCase()} (one model per randomised layer)` : ''}`
        : '';
      if (!has) showStatus(status, { status: 'idle' }, { idle: 'Needs an image and a unit.' });
      else if (s.cancelled) showStatus(status, { status: 'idle' }, { idle: 'Cancelled: the server stops the check at its next model.' });
      else if (s.status === 'error') showStatus(status, s);
      else if (s.status === 'idle') showStatus(status, { status: 'idle' }, { idle: 'Takes a few seconds: one forward pass per randomised layer, per method.' });
      else showStatus(status, { status: 'ok' });

      const rows = sanityRows(s.byMethod, METHODS).filter((r) => r.cells.length);
      const key = `${s.key}|${rows.map((r) => r.method).join(',')}`;
      strip.hidden = !rows.length;
      rebuild(strip, key, () => {
        if (!rows.length) return [];
        const width = Math.max(...rows.map((r) => r.cells.length));
        const head = rows.find((r) => r.cells.length === width).cells;
        return h('table', { class: 'sanity-table' },
          h('caption', { class: 'visually-hidden', text: 'Projections as the weights are randomised, per method' }),
          h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Method' }),
            head.map((c) => h('th', { scope: 'col', text: c.heading, title: c.randomized.join(', ') || 'trained' })))),
          h('tbody', {}, rows.map((r) => h('tr', { dataset: { testid: 'sanity-row', method: r.method } },
            h('th', { scope: 'row', text: r.label }),
            r.cells.map((c) => cell({ ...c, method: r.method }, r.label))))));
      });
      const v = s.status === 'ok' ? sanityVerdict(s.byMethod, METHODS) : '';
      verdict.hidden = !v;
      verdict.textContent = v;
    },
  };
}
