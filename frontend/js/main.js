// Wiring: build the views over the page, the API client and the location, then start.
import { createApi } from './api.js';
import { withInspectRoutes } from './api_inspect.js';
import { createController } from './controller.js';
import { createEvolutionView } from './views/evolution.js';
import { createFiltersView } from './views/filters.js';
import { createHeaderView } from './views/header.js';
import { createInputView } from './views/input.js';
import { createKeyboardView } from './views/keyboard.js';
import { createLayersView } from './views/layers.js';
import { createOcclusionView } from './views/occlusion.js';
import { createPickerView } from './views/picker.js';
import { createTopkView } from './views/topk.js';
import { createUnitView } from './views/unit.js';
import { createSanityView } from './views/sanity.js';
import { createCompareView } from './views/compare.js';
import { createRegionView } from './views/region.js';
import { createShareView } from './views/share.js';
import { createUploadView } from './views/upload.js';

const layers = createLayersView();
const picker = createPickerView();
let controller = null;
const views = {
  header: createHeaderView(),
  upload: createUploadView(),
  input: createInputView(),
  picker,
  layers,
  unit: createUnitView(),
  topk: createTopkView(),
  evolution: createEvolutionView(),
  occlusion: createOcclusionView(),
  filters: createFiltersView(),
  sanity: createSanityView(),
  compare: createCompareView(),
  region: createRegionView(),
  share: createShareView(),
  keyboard: createKeyboardView({
    columns: () => layers.columns(),
    afterMove: () => layers.focusSelected(),
    afterLayerMove: (onTab) => (onTab ? picker.focusSelected(controller.get()) : layers.focusGrid()),
  }),
};

const nav = {
  read: () => window.location.hash,
  write: (hash, { replace = false } = {}) => {
    // A new history entry for a new image or layer (Back returns to it); tweaks replace.
    const url = `${window.location.pathname}${window.location.search}${hash}`;
    if (replace) window.history.replaceState(null, '', url);
    else window.history.pushState(null, '', url);
  },
  onChange: (fn) => {
    window.addEventListener('hashchange', () => fn(window.location.hash));
    window.addEventListener('popstate', () => fn(window.location.hash));
  },
};

controller = createController({
  api: withInspectRoutes(createApi()),
  views,
  nav,
  release: (url) => URL.revokeObjectURL(url),
});
controller.start();
// For the browser tests and the curious: the state as plain data.
// onChange(fn): fn(state) after every render (the browser tests note the order answers arrive in).
window.deconvlab = { state: () => controller.get(), onChange: (fn) => controller.onChange(fn) };
