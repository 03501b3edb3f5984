// The unit's top 9 in the data set, as in Fig. 2: 3x3 projections beside 3x3 patches.
import { $, fmt, h, img, rebuild, showStatus } from './dom.js';

export function createTopkView(root = document) {
  const status = $('[data-testid="topk-status"]', root);
  const projections = $('[data-testid="topk-projections"]', root);
  const patches = $('[data-testid="topk-patches"]', root);

  return {
    bind() {},
    render(state) {
      const t = state.topk;
      if (state.unit === null) showStatus(status, { status: 'idle' }, { idle: 'Pick a unit.' });
      else if (t.status === 'ok' && !t.data.entries.length) {
        showStatus(status, { status: 'idle' }, { idle: 'The index holds no entries for this unit.' });
      } else if (t.status === 'ok') {
        status.classList.remove('error', 'loading');
        status.hidden = false;
        status.textContent = `${t.data.layer} unit ${t.data.unit}: the ${t.data.entries.length} strongest activations over the data set. Click a patch for its whole image.`;
      } else showStatus(status, t, { loading: 'Loading the top 9…' });

      const entries = t.status === 'ok' ? t.data.entries : [];
      const key = `${t.key}|${t.status}`;
      rebuild(projections, key, () => entries.map((e) => h('div', { class: 'cell', dataset: { testid: 'topk-projection', rank: e.rank } },
        img(e.projection_url, `Projection, rank ${e.rank}`, { title: `rank ${e.rank}: ${e.label}, ${fmt(e.value)}` }),
        h('span', { class: 'rank', text: e.rank }))));
      rebuild(patches, key, () => entries.map((e) => h('a', {
        href: e.image_url, target: '_blank', rel: 'noopener',
        dataset: { testid: 'topk-patch', rank: e.rank },
        title: `rank ${e.rank}: ${e.label} (data-set image ${e.image_index}), activation ${fmt(e.value)}: open the whole image`,
      }, img(e.patch_url, `Patch, rank ${e.rank}, ${e.label}`), h('span', { class: 'rank', text: e.rank }))));
    },
  };
}
