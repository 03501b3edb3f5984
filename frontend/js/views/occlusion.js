// Fig. 7: occlusion sensitivity. A form (window, stride, layer, class), progress
// while the server works, then the three maps laid over the input image.
import {
  OCCLUSION_KINDS, OCCLUSION_OPACITY, OCCLUSION_SIZES, OCCLUSION_STRIDES,
} from '../config.js';
import { classCounts, classRaster, extent, heatRaster, toHex, categorical, viridis } from '../colormap.js';
import { figureFileName } from '../files.js';
import { occlusionGridSide } from '../state.js';
import { $, fmt, h, rebuild, showStatus } from './dom.js';

function canvasFrom(raster) {
  const c = h('canvas', { width: raster.width, height: raster.height, 'aria-hidden': 'true' });
  c.getContext('2d').putImageData(new ImageData(raster.data, raster.width, raster.height), 0, 0);
  c.style.opacity = String(OCCLUSION_OPACITY);
  return c;
}

function colorbar(lo, hi) {
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => `${toHex(viridis(t))} ${100 * t}%`).join(', ');
  return h('div', {},
    h('div', { class: 'colorbar', style: { background: `linear-gradient(to right, ${stops})` } }),
    h('div', { class: 'colorbar-ends' }, h('span', { text: fmt(lo) }), h('span', { text: fmt(hi) })));
}

export function createOcclusionView(root = document) {
  const panel = $('[data-testid="occlusion"]', root);
  const close = $('.panel-close', panel);
  const form = $('[data-testid="occlusion-form"]', root);
  const size = $('[data-testid="occ-size"]', root);
  const stride = $('[data-testid="occ-stride"]', root);
  const layer = $('[data-testid="occ-layer"]', root);
  const klass = $('[data-testid="occ-class"]', root);
  const run = $('[data-testid="occ-run"]', root);
  const cancel = $('[data-testid="occ-cancel"]', root);
  const progress = $('[data-testid="occlusion-progress"]', root);
  const elapsed = $('.occ-elapsed', progress);
  const status = $('[data-testid="occlusion-status"]', root);
  const maps = $('[data-testid="occlusion-maps"]', root);
  let timer = null;
  let last = null;
  let rebuiltFor = null; // the model the layer choice was last defaulted for

  for (const s of OCCLUSION_SIZES) size.append(h('option', { value: s, text: s }));
  for (const s of OCCLUSION_STRIDES) stride.append(h('option', { value: s, text: s }));

  function params() {
    return {
      size: Number(size.value), stride: Number(stride.value), layer: layer.value,
      class_index: klass.value === '' ? null : Number(klass.value),
    };
  }

  function tick() {
    if (!last || last.occlusion.status !== 'loading') return;
    const s = ((Date.now() - last.occlusion.startedAt) / 1000).toFixed(1);
    const p = last.occlusion.params;
    const n = occlusionGridSide(last.inputSize, p.size, p.stride);
    elapsed.textContent = `${s} s · about ${n * n} occluded copies of the image (${p.size} px window, stride ${p.stride})`;
  }

  return {
    bind(handlers) {
      close.addEventListener('click', () => handlers.closePanels());
      form.addEventListener('change', () => handlers.setOcclusionParams(params()));
      form.addEventListener('submit', (e) => { e.preventDefault(); handlers.runOcclusion(params()); });
      cancel.addEventListener('click', () => { handlers.cancelOcclusion(); run.focus(); });
    },
    render(state, { model, layers }) {
      const open = state.panel === 'occlusion';
      const opening = open && panel.hidden;
      panel.hidden = !open;
      const o = state.occlusion;
      last = { occlusion: o, inputSize: model ? model.input_size : 224 };
      if (o.status === 'loading' && !timer) { timer = setInterval(tick, 200); tick(); }
      if (o.status !== 'loading' && timer) { clearInterval(timer); timer = null; }
      if (!open) return;

      const convs = layers.filter((l) => Array.isArray(l.shape) && l.shape.length === 3);
      rebuild(layer, convs.map((l) => l.name).join('|'), () => convs.map((l) => h('option', { value: l.name, text: l.name })));
      const classes = model ? model.classes : [];
      rebuild(klass, `${model && model.id}|${classes.length}`, () => [h('option', { value: '', text: 'the top-1 class' }),
        ...classes.map((c, i) => h('option', { value: i, text: c }))]);
      const p = o.params;
      size.value = String(p.size);
      stride.value = String(p.stride);
      if (convs.some((l) => l.name === p.layer)) layer.value = p.layer;
      else if (rebuiltFor !== (model && model.id)) {
        // No conv5 here (a ResNet): the last layer with a map over 1x1, as the server's own default.
        const deep = convs.filter((l) => l.shape[1] * l.shape[2] > 1).pop();
        if (deep) layer.value = deep.name;
      }
      rebuiltFor = model && model.id;
      klass.value = p.class_index === null || p.class_index === undefined ? '' : String(p.class_index);
      run.disabled = o.status === 'loading' || !state.image;
      cancel.hidden = o.status !== 'loading';
      progress.hidden = o.status !== 'loading';
      if (!state.image && o.status !== 'error') showStatus(status, { status: 'idle' }, { idle: 'Bring an image first.' });
      else if (o.status === 'idle' && o.cancelled) showStatus(status, { status: 'idle' }, { idle: 'Cancelled: the server stops the job at its next batch.' });
      else showStatus(status, o, { loading: '' });
      if (o.status === 'loading') status.hidden = true;
      if (opening) size.focus();

      const d = o.status === 'ok' ? o.data : null;
      const inputUrl = state.input.status === 'ok' ? state.input.data.url : null;
      rebuild(maps, `${o.key}|${o.status}|${o.startedAt}|${inputUrl}`, () => {
        if (!d) return [];
        return OCCLUSION_KINDS.map((k) => {
          const grid = d[k.id];
          let overlay, extra, caption = k.label;
          if (k.id === 'top_class') {
            overlay = canvasFrom(classRaster(grid));
            extra = h('ul', { class: 'legend', dataset: { testid: 'occlusion-legend' } }, classCounts(grid).slice(0, 8).map(({ index, count }) => h('li', {},
              h('span', { class: 'swatch', style: { background: toHex(categorical(index)) } }),
              `${d.top_class_labels[String(index)] ?? `class ${index}`} (${count})`)));
          } else {
            const [lo, hi] = extent(grid);
            overlay = canvasFrom(heatRaster(grid, { lo, hi }));
            extra = colorbar(lo, hi);
            if (k.id === 'activation') caption = `${d.layer} feature map ${d.feature_map}: total activation`;
            if (k.id === 'probability') caption = `p(${d.class_label})`;
          }
          return h('figure', { dataset: { testid: `occlusion-${k.id}` } },
            h('div', { class: 'stack' }, inputUrl ? h('img', { src: inputUrl, alt: '' }) : null, overlay),
            h('figcaption', {}, `${caption} · `, h('a', {
              href: d.urls[k.id], class: 'download', dataset: { testid: `download-occlusion-${k.id}` },
              download: figureFileName({ model: d.model, image: d.image_id, layer: d.layer, figure: `occlusion-${k.id}`, extra: `s${d.size}-${d.stride}` }),
              text: 'Download',
            })),
            extra);
        }).concat(h('p', { class: 'help', text: `${d.grid[0]}×${d.grid[1]} positions, ${d.size} px window, stride ${d.stride}.` }));
      });
    },
  };
}
