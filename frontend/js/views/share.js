// "Save page" (issue 16, Share): the unit's report.html from the server, one self-contained
// file (every picture inline, a provenance block naming the model's weights and the
// image's sha256), for the method, seed and position in view. A plain download link:
// the server answers it as an attachment (download=true).
import { reportUrl } from '../api_inspect.js';
import { $ } from './dom.js';

export function createShareView(root = document) {
  const link = $('[data-testid="save-page"]', root);
  const wrap = $('[data-testid="share"]', root);

  return {
    bind() {},
    render(state, { model, spatial }) {
      const ok = state.unit !== null && !!state.image && !!model;
      wrap.hidden = !ok;
      if (!ok) { link.removeAttribute('href'); return; }
      const seed = spatial ? state.seed : 'point';
      const url = reportUrl(state.image, state.layer, state.unit, {
        model: model.id, method: state.method, seed, position: seed === 'point' ? state.position : null, download: true,
      });
      if (link.getAttribute('href') !== url) link.setAttribute('href', url);
      link.setAttribute('download', `${model.id}-${state.layer}-${state.unit}.html`);
      link.title = `One HTML file: ${state.layer} unit ${state.unit}'s input, projections, map, top 9 and what else the server holds, with where they came from`;
    },
  };
}
