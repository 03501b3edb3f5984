// Pure: the sanity strip (issue 15). Adebayo et al., "Sanity Checks for Saliency Maps"
// (NeurIPS 2018), Sec. 3: re-initialise a model's weights from the top layer down and
// watch the explanation; one that does not change is not explaining what the model
// learned. GET .../units/{unit}/sanity answers one method (api/README.md, "Sanity");
// the strip asks for all three and lays them out side by side:
//
//   columns   the steps: 0 is the trained model, step k has k more groups of weights
//             randomised (cascading: cumulatively, from the unit's layer down)
//   rows      deconvnet, guided backprop, gradient
//   a cell    that step's projection, Spearman's rho of |projection| and SSIM of the
//             rendered pictures against step 0, inside the seed's receptive field
//   silent    the unit does not fire at the seed in that model (seed_value 0): its
//             projection is zero and rho is null ("–")

/** How to read the strip, in one plain sentence. */
export const SANITY_READING = 'Left to right, the weights are replaced by random ones from this unit\'s layer down to the first; '
  + 'a projection that still looks the same (Spearman and SSIM near 1) shows the image\'s edges rather than what the model learned, '
  + 'one that falls apart depends on the weights.';

/**
 * What the published checks say, in general words: Adebayo et al. 2018 (Sec. 5) for guided
 * backprop and the gradient, Nie, Zhang & Patel (ICML 2018) for why deconvnet and guided
 * backprop reconstruct the image. The strip runs the same test on this unit.
 */
export const SANITY_FINDING = 'Published checks: guided backprop changes little when the weights are randomised while the plain gradient '
  + 'changes (Adebayo et al. 2018), and the deconvnet and guided backprop largely reconstruct the image through '
  + 'the max-pool switches and ReLU masks, whatever the higher weights (Nie et al. 2018). '
  + 'On zfnet-imagenette (100 val images, models/analyses/sanity): with fc8 to fc6 random, guided backprop keeps a '
  + 'rank correlation of 0.92 to 0.97 and the gradient falls to 0.69 at once, as the paper found; but with every layer '
  + 'random guided backprop keeps only 0.57, so it does depend on the conv weights. In the deletion and insertion test '
  + '(models/analyses/faithfulness) all three methods beat a random order and an edge map at conv2, conv5 and fc8, '
  + 'and guided backprop and the deconvnet beat the gradient on insertion.';

/** The groups a step randomised that the step before did not (its column's name). */
export function newlyRandomised(steps, k) {
  if (k === 0) return [];
  const before = new Set(steps[k - 1] ? steps[k - 1].randomized : []);
  const added = (steps[k].randomized || []).filter((m) => !before.has(m));
  return added.length ? added : steps[k].randomized || [];
}

/** A column's heading: "trained", "+ conv5" (cascading) or "conv3 only" (independent). */
export function stepLabel(steps, k, mode = 'cascading') {
  if (k === 0) return 'trained';
  const names = mode === 'independent' ? steps[k].randomized || [] : newlyRandomised(steps, k);
  const first = names[0] ?? `step ${k}`;
  const more = names.length > 1 ? ` (+${names.length - 1})` : '';
  return mode === 'independent' ? `${first}${more} only` : `+ ${first}${more}`;
}

/**
 * The strip as rows of cells. `byMethod`: {method id: sanity answer}; `methods`: the
 * config's [{id, label}] in the order shown. Methods without an answer yet have no cells.
 */
export function sanityRows(byMethod, methods) {
  return methods.map((m) => {
    const r = byMethod[m.id];
    if (!r) return { method: m.id, label: m.label, cells: [] };
    return {
      method: m.id,
      label: m.label,
      cells: r.steps.map((s, k) => ({
        step: k,
        heading: stepLabel(r.steps, k, r.mode),
        randomized: s.randomized,
        spearman: s.spearman,
        ssim: s.ssim,
        silent: !(Number(s.seed_value) > 0) && k > 0,
        url: s.projection_url,
      })),
    };
  });
}

/** Each method's scores at the last step (everything down to the first layer randomised). */
export function lastScores(byMethod, methods) {
  return methods.filter((m) => byMethod[m.id] && byMethod[m.id].steps.length > 1).map((m) => {
    const steps = byMethod[m.id].steps;
    const s = steps[steps.length - 1];
    return { method: m.id, label: m.label, spearman: s.spearman, ssim: s.ssim };
  });
}

/** A sentence on this unit: which method changed least and most when every layer was randomised. */
export function sanityVerdict(byMethod, methods) {
  const scores = lastScores(byMethod, methods).filter((s) => s.ssim !== null && Number.isFinite(s.ssim));
  if (scores.length < 2) return '';
  const sorted = [...scores].sort((a, b) => b.ssim - a.ssim);
  const hi = sorted[0], lo = sorted[sorted.length - 1];
  const f = (v) => (v === null || !Number.isFinite(v) ? '–' : v.toFixed(2));
  return `With every layer down to the first randomised, this unit's ${hi.label.toLowerCase()} projection keeps SSIM ${f(hi.ssim)} `
    + `(Spearman ${f(hi.spearman)}) with the trained one, the ${lo.label.toLowerCase()} ${f(lo.ssim)} (Spearman ${f(lo.spearman)}).`;
}
