// Pure: the layer picker's model. Groups a model's layers by stage and block
// (from GET /api/models' `parent` fields, i.e. Net.layer_info()), filters them,
// and picks a sensible layer when the model changes. No DOM.
//
// | model                         | groups                                                       |
// |-------------------------------|--------------------------------------------------------------|
// | paper nets (every parent null) | one flat group: the tabs of old (conv1 .. fc7)               |
// | graph nets (resnet18: 84)      | a run of top-level leaves before the first stage: "stem";     |
// |                               | each top-level container (layer1 .. layer4) a stage;          |
// |                               | top-level leaves after the last stage: "head"                 |
//
// In a stage, `main` holds the block outputs (the stage's direct children that are
// containers, e.g. layer3.0, layer3.1, then the stage itself, layer3); `inner`
// holds everything inside each block (layer3.1.conv1 .. layer3.1.relu_1), one
// click away. A stage without sub-blocks (VGG's `features`) shows its children.
import { DEFAULTS } from './config.js';

/** A layer with a (C, H, W) output (conv, bn, relu, pool, add ...) has feature maps; (C,) is fc-like. */
export function isSpatial(info) {
  return !!(info && Array.isArray(info.shape) && info.shape.length === 3);
}

const nameOf = (l) => (typeof l === 'string' ? l : l.name);

/** Names of the layers that enclose others (values of `parent`). */
export function containers(layers) {
  const out = new Set();
  for (const l of layers ?? []) if (l.parent) out.add(l.parent);
  return out;
}

/** The top-level ancestor of a layer (itself when its parent is null). */
export function stageOf(info, byName) {
  let cur = info;
  const seen = new Set();
  while (cur && cur.parent && !seen.has(cur.name)) {
    seen.add(cur.name);
    const up = byName.get(cur.parent);
    if (!up) return cur.parent; // a parent that is no layer of its own: still the stage's name
    cur = up;
  }
  return cur ? cur.name : null;
}

/**
 * Group layers (forward order kept) -> {flat, groups: [{id, label, stage, info, main, inner, all}]}.
 * `all`: the group's layers in forward order.
 * `inner`: [{block, layers}] where `block` is the block's name (the prefix shortened away).
 */
export function groupLayers(layers) {
  const list = Array.isArray(layers) ? layers : [];
  const parents = containers(list);
  if (!parents.size) {
    return { flat: true, groups: list.length ? [{ id: 'all', label: null, stage: null, info: null, main: list.slice(), inner: [], all: list.slice() }] : [] };
  }
  const byName = new Map(list.map((l) => [l.name, l]));
  const groups = [];
  const stages = new Map();
  let run = null; // consecutive top-level leaves
  for (const l of list) {
    const stage = stageOf(l, byName);
    if (stage === l.name && !parents.has(l.name)) {
      if (!run) { run = { id: `run:${l.name}`, label: null, stage: null, info: null, main: [], inner: [] }; groups.push(run); }
      run.main.push(l);
      continue;
    }
    run = null;
    let g = stages.get(stage);
    if (!g) {
      g = { id: `stage:${stage}`, label: stage, stage, info: byName.get(stage) ?? null, main: [], inner: [], blocks: new Map() };
      stages.set(stage, g);
      groups.push(g);
    }
    g.members = g.members ?? [];
    g.members.push(l);
  }
  for (const g of stages.values()) splitStage(g, parents, byName);
  nameRuns(groups);
  return { flat: false, groups: groups.map(({ blocks, members, ...g }) => ({ ...g, all: members ?? g.main })) };
}

/** Block outputs into `main`, the rest into `inner` by block. */
function splitStage(g, parents, byName) {
  const members = g.members ?? [];
  const hasBlocks = members.some((l) => l.parent === g.stage && parents.has(l.name));
  for (const l of members) {
    if (l.name === g.stage) { g.main.push(l); continue; }
    if (!hasBlocks) { if (l.parent === g.stage) g.main.push(l); else innerOf(g, childOf(l, g.stage, byName)).push(l); continue; }
    if (l.parent === g.stage && parents.has(l.name)) { g.main.push(l); continue; }
    const block = l.parent === g.stage ? g.stage : childOf(l, g.stage, byName);
    innerOf(g, block).push(l);
  }
  g.inner = [...g.blocks.entries()].map(([block, ls]) => ({ block, layers: ls }));
}

function innerOf(g, block) {
  if (!g.blocks.has(block)) g.blocks.set(block, []);
  return g.blocks.get(block);
}

/** The ancestor of `info` whose parent is `stage` (its block). */
function childOf(info, stage, byName) {
  let cur = info;
  for (let i = 0; i < 64 && cur && cur.parent && cur.parent !== stage; i++) {
    const up = byName.get(cur.parent);
    if (!up) return cur.parent;
    cur = up;
  }
  return cur ? cur.name : stage;
}

function nameRuns(groups) {
  const firstStage = groups.findIndex((g) => g.stage !== null);
  let lastStage = -1;
  groups.forEach((g, i) => { if (g.stage !== null) lastStage = i; });
  groups.forEach((g, i) => {
    if (g.stage !== null) return;
    if (firstStage < 0) g.label = 'layers';
    else if (i < firstStage) g.label = 'stem';
    else if (i > lastStage) g.label = 'head';
    else g.label = `after ${groups[i - 1].label}`;
  });
}

/** A layer's label inside its block: the part after the block's name (layer3.1.conv1 -> conv1). */
export function shortName(name, block) {
  return block && name.startsWith(`${block}.`) ? name.slice(block.length + 1) : name;
}

/**
 * Does a layer match a query? Every space-separated term, any case, is part of its
 * name, or is its type, or begins its type without digits ("conv" finds
 * Conv2d, "batchnorm" BatchNorm2d; "conv2" finds only names, not every Conv2d).
 */
export function matches(info, query) {
  const terms = String(query ?? '').toLowerCase().split(/\s+/).filter(Boolean);
  if (!terms.length) return true;
  const name = String(info.name).toLowerCase();
  const type = String(info.type ?? '').toLowerCase();
  return terms.every((t) => name.includes(t) || t === type || (!/\d/.test(t) && type.startsWith(t)));
}

/** Groups narrowed to the matching layers, flattened (main then inner); empty groups dropped. */
export function filterGroups(grouped, query) {
  const out = [];
  for (const g of grouped.groups) {
    const hit = g.all.filter((l) => matches(l, query)); // forward order
    if (hit.length) out.push({ id: g.id, label: g.label, layers: hit });
  }
  return out;
}

/** The block outputs of every group (what the picker shows before a click). */
export function mainLayers(grouped) {
  return grouped.groups.flatMap((g) => g.main);
}

/** The group and the block (or null) that hold `name`. */
export function locate(grouped, name) {
  for (const g of grouped.groups) {
    if (g.main.some((l) => l.name === name)) return { group: g.id, block: null, main: true };
    for (const b of g.inner) if (b.layers.some((l) => l.name === name)) return { group: g.id, block: b.block, main: false };
  }
  return null;
}

/**
 * The layer to show after a model change: the same name when the new model has it;
 * else the block output at the same relative depth among layers of the same sort (maps
 * larger than 1x1, or vectors): conv5, the last conv of ZFNet -> layer4 of a ResNet; else conv1, else the first layer.
 */
export function sensibleLayer(newLayers, oldName = null, oldLayers = []) {
  const names = (newLayers ?? []).map(nameOf);
  if (!names.length) return null;
  if (oldName && names.includes(oldName)) return oldName;
  const grouped = groupLayers(newLayers);
  const main = mainLayers(grouped);
  const old = oldLayers ?? [];
  const was = old.find((l) => nameOf(l) === oldName);
  if (was && main.length) {
    // Depth among layers of the same sort (maps, or vectors), 0 at the first and 1 at the last.
    const spatial = isSpatial(was);
    const same = old.filter((l) => isSpatial(l) === spatial);
    const depth = same.length > 1 ? same.indexOf(was) / (same.length - 1) : 0;
    let pool = main.filter((l) => isSpatial(l) === spatial && (!spatial || l.shape[1] * l.shape[2] > 1));
    if (!pool.length) pool = main;
    return pool[Math.round(depth * (pool.length - 1))].name;
  }
  if (names.includes(DEFAULTS.layer)) return DEFAULTS.layer;
  return (main[0] ?? newLayers[0]).name;
}

/** The classifier is no tab: a final (C,) layer with one unit per class, or a name listed in `hidden`. */
export function visibleLayerList(model, hidden = []) {
  if (!model || !Array.isArray(model.layers)) return [];
  const ls = model.layers;
  const last = ls[ls.length - 1];
  const classes = Array.isArray(model.classes) ? model.classes.length : -1;
  return ls.filter((l) => !hidden.includes(l.name)
    && !(l === last && !isSpatial(l) && l.channels === classes && ls.length > 1));
}
