// The layer picker: tabs for a paper net's seven layers; for a graph net (ResNet:
// 80+ layers) groups by stage with the block outputs first and each block's inner
// layers one click away, and a filter box. Keyboard: arrows, Home and End move focus
// and selection together through the tabs shown; in the filter box Enter picks the
// first match and Down goes to it; Esc clears the filter.
import { filterGroups, shortName } from '../picker.js';
import { $, h, rebuild } from './dom.js';

const SEARCH_FROM = 13; // layers from which the filter box is shown (ZFNet's 7 need none)

function describe(l) {
  const shape = Array.isArray(l.shape) ? l.shape.join('×') : '';
  const what = l.shape && l.shape.length === 3 ? 'feature maps' : 'units';
  return `${l.name}${l.type ? ` (${l.type})` : ''}: ${l.channels} ${what}, output ${shape}`;
}

export function createPickerView(root = document) {
  const tabs = $('[data-testid="layer-tabs"]', root);
  const search = $('[data-testid="layer-search"]', root);
  const searchBox = search.closest('.layer-search');
  const searchStatus = $('[data-testid="layer-search-status"]', root);
  let handlers = null;
  let last = { query: '', first: null };

  const tab = (l, label = l.name) => h('button', {
    type: 'button', role: 'tab', class: 'tab', dataset: { testid: 'layer-tab', layer: l.name },
    title: describe(l), 'aria-label': label === l.name ? null : l.name, text: label,
  });
  const tablist = (label, items) => h('div', { role: 'tablist', 'aria-label': label, class: 'tablist' }, items);

  function visibleTabs() { return [...tabs.querySelectorAll('[role=tab]')]; }

  function focusLayer(name) {
    const t = tabs.querySelector(`[role=tab][data-layer="${CSS.escape(name)}"]`);
    if (t) { t.focus(); t.scrollIntoView({ block: 'nearest' }); }
  }

  function build(state, { grouped, open }) {
    const q = state.layerQuery.trim();
    if (grouped.flat && !q) {
      tabs.removeAttribute('aria-label');
      return tablist('Layer', grouped.groups.flatMap((g) => g.main.map((l) => tab(l))));
    }
    if (q) {
      const hits = filterGroups(grouped, q);
      last = { query: q, first: hits.length ? hits[0].layers[0].name : null };
      return hits.map((g) => h('div', { class: 'layer-group', dataset: { group: g.id } },
        h('span', { class: 'group-label', text: g.label ?? 'layers' }),
        tablist(`${g.label ?? 'layers'}: layers matching ${q}`, g.layers.map((l) => tab(l)))));
    }
    return grouped.groups.map((g) => {
      const inner = g.inner.reduce((n, b) => n + b.layers.length, 0);
      const isOpen = open.has(g.id);
      const head = g.info ? ` ${g.info.channels} ch${g.info.shape.length === 3 ? `, ${g.info.shape[1]}×${g.info.shape[2]}` : ''}` : '';
      return h('div', { class: 'layer-group', dataset: { group: g.id } },
        h('span', { class: 'group-label', title: `${g.label}:${head}` }, g.label, h('small', { text: head })),
        tablist(`${g.label}: block outputs`, g.main.map((l) => tab(l))),
        inner ? h('button', {
          type: 'button', class: 'more', dataset: { testid: 'layer-more', group: g.id },
          'aria-expanded': String(isOpen), title: `${isOpen ? 'Hide' : 'Show'} the ${inner} layers inside ${g.label}'s blocks`,
          text: isOpen ? '− inside' : `+ ${inner} inside`,
        }) : null,
        isOpen && inner ? h('div', { class: 'inner' }, g.inner.map((b) => h('div', { class: 'block' },
          h('span', { class: 'block-label', text: b.block }),
          tablist(`inside ${b.block}`, b.layers.map((l) => tab(l, shortName(l.name, b.block))))))) : null);
    });
  }

  return {
    bind(h_) {
      handlers = h_;
      tabs.addEventListener('click', (e) => {
        const more = e.target.closest('[data-testid=layer-more]');
        if (more) { handlers.toggleGroup(more.dataset.group); focusMore(more.dataset.group); return; }
        const b = e.target.closest('[data-layer]');
        if (b) handlers.selectLayer(b.dataset.layer);
      });
      const focusMore = (g) => { const m = tabs.querySelector(`[data-testid=layer-more][data-group="${CSS.escape(g)}"]`); if (m) m.focus(); };
      tabs.addEventListener('keydown', (e) => {
        const t = e.target.closest('[role=tab]');
        if (!t || e.altKey || e.ctrlKey || e.metaKey) return;
        const all = visibleTabs();
        const i = all.indexOf(t);
        const j = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 }[e.key];
        if (j === undefined) return;
        e.preventDefault();
        e.stopPropagation(); // the page's own arrow keys move between units
        const next = all[Math.min(all.length - 1, Math.max(0, j))];
        if (!next) return;
        const name = next.dataset.layer;
        handlers.selectLayer(name);
        focusLayer(name); // focus follows the selection (after any rebuild)
      });
      search.addEventListener('input', () => handlers.setLayerQuery(search.value));
      search.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && last.first) { e.preventDefault(); handlers.selectLayer(last.first); focusLayer(last.first); }
        else if (e.key === 'ArrowDown') { const f = visibleTabs()[0]; if (f) { e.preventDefault(); f.focus(); } }
        else if (e.key === 'Escape' && search.value) { e.stopPropagation(); search.value = ''; handlers.setLayerQuery(''); }
      });
    },
    /** Focus the chosen layer's tab (after [ or ]). */
    focusSelected(state) { if (state && state.layer) focusLayer(state.layer); },
    render(state, derived) {
      const { layers, grouped, open } = derived;
      const q = state.layerQuery.trim();
      searchBox.hidden = layers.length < SEARCH_FROM && !q;
      if (search.value.trim() !== q) search.value = state.layerQuery;
      const key = [state.model, layers.length, grouped.flat, q, [...open].sort().join(',')].join('|');
      const focusedLayer = tabs.contains(document.activeElement) && document.activeElement.dataset.layer;
      if (rebuild(tabs, key, () => build(state, derived)) && focusedLayer) focusLayer(focusedLayer);
      const all = visibleTabs();
      let any = false;
      for (const b of all) {
        const on = b.dataset.layer === state.layer;
        any = any || on;
        b.setAttribute('aria-selected', String(on));
        b.tabIndex = on ? 0 : -1;
      }
      if (!any && all.length) all[0].tabIndex = 0; // one tab stop even when the chosen layer is filtered out
      if (q) {
        const n = all.length;
        searchStatus.hidden = false;
        searchStatus.textContent = n ? `${n} layer${n === 1 ? '' : 's'} match “${q}” (Enter picks the first)` : `No layer matches “${q}”: try a block (layer3.1), a type (Conv2d, add) or a part of a name.`;
      } else {
        searchStatus.hidden = true;
        searchStatus.textContent = '';
      }
    },
  };
}
