// Fig. 4: the unit's strongest projection at each training snapshot, when the server has them.
import { $, fmt, h, img, rebuild, showStatus } from './dom.js';

export function createEvolutionView(root = document) {
  const section = $('[data-testid="evolution"]', root);
  const status = $('[data-testid="evolution-status"]', root);
  const strip = $('.evo-strip', section);
  const more = $('.evo-more', section);
  const cue = () => {
    const hiddenRight = strip.scrollWidth - strip.clientWidth - strip.scrollLeft > 4;
    more.hidden = !hiddenRight;
    more.textContent = hiddenRight ? 'More snapshots to the right: scroll the strip (or focus it and use the arrow keys).' : '';
  };
  strip.addEventListener('scroll', cue, { passive: true });
  if (typeof ResizeObserver === 'function') new ResizeObserver(cue).observe(strip);

  return {
    bind() {},
    render(state) {
      const e = state.evolution;
      if (state.unit === null) showStatus(status, { status: 'idle' }, { idle: 'Pick a unit.' });
      else if (e.status === 'error') {
        showStatus(status, { status: 'idle' }, { idle: `Not available: ${e.error}` });
        status.classList.add('unavailable');
      } else if (e.status === 'ok' && !e.data.snapshots.length) {
        showStatus(status, { status: 'idle' }, { idle: 'Not available: no training snapshots for this model.' });
      } else showStatus(status, e, { loading: 'Loading the snapshots…' });
      const snaps = e.status === 'ok' ? e.data.snapshots : [];
      rebuild(strip, `${e.key}|${e.status}`, () => snaps.map((s) => h('figure', { dataset: { testid: 'evolution-snapshot' } },
        img(s.projection_url, `Epoch ${s.epoch}`),
        h('figcaption', { text: `epoch ${s.epoch} · max ${fmt(s.value)}`, title: `the strongest activation over ${e.data.images ?? 'the'} data-set images at epoch ${s.epoch}` }))));
      strip.hidden = !snaps.length;
      cue();
    },
  };
}
