// The compare panel (issue 16): a second network (another served model, the model
// itself, or a training snapshot), the unit in view's best matches there (correlation,
// the match's projection on the same image, its top-9 beside the unit's own), and the
// layer-by-layer linear CKA as a heat map (a table: each cell coloured viridis on 0..1
// with its number written in it).
import { ckaPngUrl } from '../api_inspect.js';
import { figureFileName } from '../files.js';
import { ckaCells, targetId, targetLabel } from '../compare.js';
import { chosenTarget, otherLayerFor } from '../inspect.js';
import { $, fmt, h, img, rebuild, showStatus } from './dom.js';

const grid9 = (entries, who) => h('div', { class: 'grid3', dataset: { testid: `match-top-${who}` } },
  entries.map((e) => h('div', { class: 'cell' }, img(e.patch_url, `${who === 'mine' ? 'This unit' : 'The match'}: patch, rank ${Number(e.rank) + 1}, ${e.label}`))));

export function createCompareView(root = document) {
  const panel = $('[data-testid="compare"]', root);
  const close = $('.panel-close', panel);
  const target = $('[data-testid="compare-target"]', panel);
  const layer = $('[data-testid="compare-layer"]', panel);
  const form = $('[data-testid="compare-form"]', panel);
  const n = $('[data-testid="compare-n"]', panel);
  const status = $('[data-testid="compare-status"]', panel);
  const matchesStatus = $('[data-testid="matches-status"]', panel);
  const matches = $('[data-testid="matches"]', panel);
  const matchTop = $('[data-testid="match-top"]', panel);
  const ckaStatus = $('[data-testid="cka-status"]', panel);
  const cka = $('[data-testid="cka"]', panel);
  const dlCka = $('[data-testid="download-cka"]', panel);
  let handlers = null;

  function renderMatches(state, t) {
    const md = state.matches;
    const lb = otherLayerFor(state, t);
    if (!t) showStatus(matchesStatus, { status: 'idle' }, { idle: 'Choose a second network above.' });
    else if (state.unit === null || !state.image) showStatus(matchesStatus, { status: 'idle' }, { idle: 'Pick a unit on an image: its matches show here.' });
    else if (lb === null) showStatus(matchesStatus, { status: 'idle' }, { idle: `${t.label} has no layer ${state.layer}: choose one of its layers above.` });
    else if (md.status === 'ok' && md.data.constant) {
      showStatus(matchesStatus, { status: 'idle' }, { idle: `${state.layer} unit ${state.unit} is constant over the ${md.data.images} images (dead): it has no correlation with anything.` });
    } else if (md.status === 'ok') {
      const d = md.data, o = d.one_to_one;
      showStatus(matchesStatus, { status: 'idle' }, {
        idle: `${d.layer} unit ${d.unit} against ${d.other_layer} of ${t.label}: Pearson correlation ${d.by === 'position' ? 'over every position' : 'of the spatial maxima'} of ${d.images} data-set images. `
          + (o.unit === null ? 'No one-to-one partner (the other layer has fewer units).' : `One-to-one partner (Hungarian): unit ${o.unit}, r = ${fmt(o.correlation, 2)}.`),
      });
    } else showStatus(matchesStatus, md, { loading: `Correlating over the data set (the first time for this pair of layers: ${state.compare.n ?? 'up to 100'} images through both networks)…` });
    const list = md.status === 'ok' ? md.data.matches : [];
    const open = list.find((x) => x.unit === state.compare.match) ?? list[0] ?? null;
    rebuild(matches, `${md.key}|${md.status}|${open ? open.unit : ''}`, () => list.map((x, i) => h('li', {},
      h('button', {
        type: 'button', class: 'match', 'aria-pressed': String(open === x), dataset: { testid: 'match', unit: x.unit },
        title: x.top_url ? 'show its top 9 beside this unit\'s' : md.data.top_status,
      },
      h('img', { src: x.projection_url, alt: '', decoding: 'async' }),
      h('span', { class: 'match-text', text: `${i + 1}. unit ${x.unit} · r ${fmt(x.correlation, 2)}` })))));
    const t9 = state.matchTop;
    const mine = state.topk.status === 'ok' ? state.topk.data.entries : [];
    rebuild(matchTop, `${t9.key}|${t9.status}|${state.topk.key}|${state.topk.status}|${open ? open.unit : ''}|${md.status}`, () => {
      if (!open) return [];
      if (!open.top_url) return h('p', { class: 'help', text: `Top 9 of the match: not available (${md.data.top_status}).` });
      const theirs = t9.status === 'ok' ? t9.data.entries : [];
      return [
        h('figure', {}, grid9(mine, 'mine'), h('figcaption', { text: `${state.layer} unit ${state.unit} here: top ${mine.length}` })),
        h('figure', {}, t9.status === 'ok' ? grid9(theirs, 'theirs') : h('p', { class: t9.status === 'error' ? 'status error' : 'status loading', text: t9.status === 'error' ? t9.error : 'Loading its top 9…' }),
          h('figcaption', { text: `${md.data.other_layer} unit ${open.unit} of ${t ? t.label : md.data.other}: top ${theirs.length}` })),
      ];
    });
  }

  function renderCka(state, t) {
    const c = state.cka;
    if (!t) showStatus(ckaStatus, { status: 'idle' });
    else if (c.status === 'ok') {
      showStatus(ckaStatus, { status: 'idle' }, { idle: `Linear CKA over ${c.data.images} data-set images (1: the same representation up to rotation and scale; rows: ${state.model}, columns: ${t.label}). Features: ${c.data.features}.` });
    } else showStatus(ckaStatus, c, { loading: 'Computing CKA between every pair of layers…' });
    const d = c.status === 'ok' ? c.data : null;
    cka.hidden = !d;
    rebuild(cka, `${c.key}|${c.status}`, () => {
      if (!d) return [];
      const cells = ckaCells(d.cka);
      return h('table', { class: 'cka-table' },
        h('caption', { class: 'visually-hidden', text: `Linear CKA: rows ${d.model}'s layers, columns ${t.label}'s` }),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: `${d.model} ↓ / ${t.label} →` }),
          d.other_layers.map((name) => h('th', { scope: 'col', text: name })))),
        h('tbody', {}, d.layers.map((name, i) => h('tr', {}, h('th', { scope: 'row', text: name }),
          cells[i].map((x, j) => h('td', {
            style: { background: x.bg, color: x.fg }, title: `${name} vs ${d.other_layers[j]}: ${x.text}`,
            dataset: { testid: 'cka-cell' },
          }, x.text))))));
    });
    dlCka.hidden = !d;
    if (d && t) {
      dlCka.href = ckaPngUrl(state.model, { other: t.other, epoch: t.epoch, n: d.images });
      dlCka.download = figureFileName({ model: state.model, figure: 'cka', extra: `vs-${targetId(t)}-n${d.images}` });
    }
  }

  return {
    bind(h_) {
      handlers = h_;
      close.addEventListener('click', () => handlers.closePanels());
      target.addEventListener('change', () => handlers.setCompareTarget(target.value));
      layer.addEventListener('change', () => handlers.setCompareLayer(layer.value));
      n.addEventListener('change', () => handlers.setCompareN(n.value));
      form.addEventListener('submit', (e) => { e.preventDefault(); handlers.setCompareN(n.value); });
      matches.addEventListener('click', (e) => {
        const b = e.target.closest('[data-testid=match]');
        if (b) handlers.openMatch(Number(b.dataset.unit));
      });
    },
    render(state) {
      const open = state.panel === 'compare';
      const opening = open && panel.hidden;
      panel.hidden = !open;
      if (!open) return;
      const tg = state.compareTargets;
      const list = tg.status === 'ok' ? tg.data.targets : [];
      rebuild(target, `${tg.key}|${tg.status}`, () => [h('option', { value: '', text: 'Choose…' }),
        ...list.map((x) => h('option', { value: targetId(x), text: targetLabel(x, state.model) }))]);
      if (target.value !== (state.compare.target ?? '')) target.value = state.compare.target ?? '';
      showStatus(status, tg, { loading: 'Loading the networks this server holds…' });
      const t = chosenTarget(state);
      const lb = otherLayerFor(state, t);
      rebuild(layer, `${t ? targetId(t) : ''}`, () => (t ? [h('option', { value: '', text: `same name (${state.layer})` }), ...t.layers.map((name) => h('option', { value: name, text: name }))] : []));
      layer.disabled = !t;
      layer.value = state.compare.otherLayer && lb === state.compare.otherLayer ? lb : '';
      if (document.activeElement !== n) n.value = state.compare.n ?? '';
      renderMatches(state, t);
      renderCka(state, t);
      if (opening) target.focus();
    },
  };
}
