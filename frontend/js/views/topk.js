// The unit's top 9 in the data set, as in Fig. 2: 3x3 projections beside 3x3 patches.
// Ranks are shown 1..9 (the API counts from 0). A patch opens its data-set image in
// the app, projected from the patch's position (its box outlined). "Download"
// saves both 3x3 grids side by side as one PNG.
import { TOP_K } from '../config.js';
import { figureFileName } from '../files.js';
import { $, fmt, h, img, rebuild, saveCanvas, showStatus } from './dom.js';

const CELL = 96; // px of one cell in the downloaded figure

export function createTopkView(root = document) {
  const status = $('[data-testid="topk-status"]', root);
  const projections = $('[data-testid="topk-projections"]', root);
  const patches = $('[data-testid="topk-patches"]', root);
  const download = $('[data-testid="download-topk"]', root);
  let handlers = null;
  let entries = [];
  let fileName = 'topk.png';

  function saveGrid() {
    const imgs = (sel) => [...root.querySelectorAll(`[data-testid=${sel}] img`)];
    const left = imgs('topk-projection'), right = imgs('topk-patch');
    const gap = 8;
    const canvas = document.createElement('canvas');
    canvas.width = 6 * CELL + gap;
    canvas.height = 3 * CELL;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#808080';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const put = (list, x0) => list.forEach((im, i) => {
      if (im.complete && im.naturalWidth) ctx.drawImage(im, x0 + (i % 3) * CELL, Math.floor(i / 3) * CELL, CELL, CELL);
    });
    put(left, 0);
    put(right, 3 * CELL + gap);
    saveCanvas(canvas, fileName);
  }

  return {
    bind(h_) {
      handlers = h_;
      patches.addEventListener('click', (e) => {
        const a = e.target.closest('[data-testid=topk-patch]');
        if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button === 1) return; // a new tab still works
        const entry = entries.find((x) => String(x.rank) === a.dataset.rank);
        if (!entry) return;
        e.preventDefault();
        handlers.openTopEntry(entry);
      });
      download.addEventListener('click', saveGrid);
    },
    render(state) {
      const t = state.topk;
      if (state.unit === null) showStatus(status, { status: 'idle' }, { idle: 'Pick a unit.' });
      else if (t.status === 'ok' && !t.data.entries.length) {
        showStatus(status, { status: 'idle' }, { idle: 'The index holds no entries for this unit.' });
      } else if (t.status === 'ok') {
        status.classList.remove('error', 'loading');
        status.hidden = false;
        status.textContent = `${t.data.layer} unit ${t.data.unit}: the ${t.data.entries.length} strongest activations over the data set, ranks 1 to ${t.data.entries.length}. Click a patch to open its image here.`;
      } else showStatus(status, t, { loading: `Loading the top ${TOP_K}…` });

      entries = t.status === 'ok' ? t.data.entries : [];
      fileName = figureFileName({ model: t.data ? t.data.model : state.model, layer: state.layer, unit: state.unit, method: 'deconv', seed: 'point', figure: 'top9' });
      download.hidden = !entries.length;
      const key = `${t.key}|${t.status}`;
      const rank = (e) => Number(e.rank) + 1;
      rebuild(projections, key, () => entries.map((e) => h('div', { class: 'cell', dataset: { testid: 'topk-projection', rank: e.rank } },
        img(e.projection_url, `Projection, rank ${rank(e)}`, { title: `rank ${rank(e)}: ${e.label}, activation ${fmt(e.value)}` }),
        h('span', { class: 'rank', 'aria-hidden': 'true', text: rank(e) }))));
      rebuild(patches, key, () => entries.map((e) => h('a', {
        href: e.image_url, dataset: { testid: 'topk-patch', rank: e.rank },
        title: `rank ${rank(e)}: ${e.label} (data-set image ${e.image_index}), activation ${fmt(e.value)}: open it here with this patch outlined`,
      }, img(e.patch_url, `Patch, rank ${rank(e)}, ${e.label}`), h('span', { class: 'rank', 'aria-hidden': 'true', text: rank(e) }))));
    },
  };
}
