// Every constant of the app lives here: API base, defaults, names shown to people.
export const API_BASE = '/api';

// `help`: the one line shown under the controls (the paper's Sec. 2.1 and its successors).
export const METHODS = Object.freeze([
  { id: 'deconv', label: 'Deconvnet', help: 'Deconvnet (Zeiler & Fergus): back through the net with the transposed filters, max-unpooling by the forward pass\'s switches, and a ReLU on the way back that keeps only positive signal.' },
  { id: 'guided', label: 'Guided backprop', help: 'Guided backprop (Springenberg et al. 2014): like the gradient, but a ReLU passes signal back only where both its input was positive and the signal coming back is positive.' },
  { id: 'backprop', label: 'Gradient', help: 'Gradient (Simonyan et al. 2013): the ordinary derivative of the unit with respect to the input pixels; a ReLU passes signal back where its forward input was positive.' },
]);
export const SEEDS = Object.freeze([
  { id: 'point', label: 'Strongest position', help: 'Point seed: only one activation of the map is kept (the strongest, or the one you pick) and all others set to zero, as in Fig. 2; its receptive field is outlined.' },
  { id: 'map', label: 'Whole map', help: 'Map seed: the whole feature map is projected at once, every position at its own strength.' },
]);
export const PAPER_URL = 'https://arxiv.org/abs/1311.2901';
export const SORTS = Object.freeze([
  { id: 'index', label: 'Unit order' },
  { id: 'activation', label: 'Strongest first' },
]);

export const DEFAULTS = Object.freeze({
  model: null, // null: the registry's default, as GET /api/models says
  image: null,
  layer: 'conv1',
  unit: null,
  method: 'deconv',
  seed: 'point',
  position: null,
  sort: 'index',
});

// Layers the app offers as tabs: the paper's conv1..conv5, fc6, fc7 (fc8 is the classifier).
export const HIDDEN_LAYERS = Object.freeze(['fc8']);

export const PREDICTIONS_K = 5;
export const TOP_K = 9;
export const SAMPLES_N = 12;
export const THUMB_SIZE = 64; // px of a feature-map thumbnail (map.png?size=)
export const MAP_SIZE = 224; // px of the selected unit's feature map
export const MAX_CONCURRENT_REQUESTS = 4; // the server's inference queue is bounded
export const MAX_RETRIES_429 = 5;
export const RETRY_DEFAULT_S = 1;

export const OCCLUSION_DEFAULTS = Object.freeze({ size: 32, stride: 8, layer: 'conv5', class_index: null });
export const OCCLUSION_SIZES = Object.freeze([16, 24, 32, 48, 64]);
export const OCCLUSION_STRIDES = Object.freeze([4, 8, 16, 32]);
export const OCCLUSION_KINDS = Object.freeze([
  { id: 'activation', label: 'Strongest feature map' },
  { id: 'probability', label: 'Probability of the class' },
  { id: 'top_class', label: 'Most probable class' },
]);
export const OCCLUSION_OPACITY = 0.7;

export const FILTERS_LAYER = 'conv1';

// URL (hash) keys: short and stable, they are part of shared links.
export const URL_KEYS = Object.freeze({
  model: 'model', image: 'image', layer: 'layer', unit: 'unit',
  method: 'method', seed: 'seed', position: 'pos', sort: 'sort',
});

export const ACCEPTED_TYPES = 'image/jpeg,image/png,image/webp,image/bmp,image/gif,image/tiff';
