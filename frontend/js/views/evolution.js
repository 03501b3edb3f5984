// Fig. 4: the unit's strongest projection at each training snapshot, when the server has them.
// "Download" saves the strip as one PNG (each snapshot a cell, its epoch written under it).
import { figureFileName } from '../files.js';
import { $, fmt, h, img, rebuild, saveCanvas, showStatus } from './dom.js';

const CELL = 96; // px of one snapshot in the downloaded figure
const LABEL = 18; // px of the epoch line under it

export function createEvolutionView(root = document) {
  const section = $('[data-testid="evolution"]', root);
  const status = $('[data-testid="evolution-status"]', root);
  const strip = $('.evo-strip', section);
  const more = $('.evo-more', section);
  const download = $('[data-testid="download-evolution"]', root);
  let fileName = 'evolution.png';
  let shown = [];
  const cue = () => {
    const hiddenRight = strip.scrollWidth - strip.clientWidth - strip.scrollLeft > 4;
    more.hidden = !hiddenRight;
    more.textContent = hiddenRight ? 'More snapshots to the right: scroll the strip (or focus it and use the arrow keys).' : '';
  };
  strip.addEventListener('scroll', cue, { passive: true });
  if (typeof ResizeObserver === 'function') new ResizeObserver(cue).observe(strip);

  function saveStrip() {
    const imgs = [...strip.querySelectorAll('[data-testid=evolution-snapshot] img')];
    const canvas = document.createElement('canvas');
    canvas.width = Math.max(1, imgs.length) * CELL;
    canvas.height = CELL + LABEL;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#808080';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = '#ffffff';
    ctx.font = '12px sans-serif';
    ctx.textAlign = 'center';
    imgs.forEach((im, i) => {
      if (im.complete && im.naturalWidth) ctx.drawImage(im, i * CELL, 0, CELL, CELL);
      if (shown[i]) ctx.fillText(`epoch ${shown[i].epoch}`, i * CELL + CELL / 2, CELL + LABEL - 5);
    });
    saveCanvas(canvas, fileName);
  }

  return {
    bind() { download.addEventListener('click', saveStrip); },
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
      shown = snaps;
      // Not the uploaded image: the strip is a scan of the data set (its size in the name).
      fileName = figureFileName({
        model: e.data ? e.data.model : state.model, layer: state.layer, unit: state.unit,
        method: 'deconv', seed: 'point', extra: e.data ? `n${e.data.images}` : null, figure: 'evolution',
      });
      download.hidden = !snaps.length;
      rebuild(strip, `${e.key}|${e.status}`, () => snaps.map((s) => h('figure', { dataset: { testid: 'evolution-snapshot' } },
        img(s.projection_url, `Epoch ${s.epoch}`),
        h('figcaption', { text: `epoch ${s.epoch} · max ${fmt(s.value)}`, title: `the strongest activation over ${e.data.images ?? 'the'} data-set images at epoch ${s.epoch}` }))));
      strip.hidden = !snaps.length;
      cue();
    },
  };
}
