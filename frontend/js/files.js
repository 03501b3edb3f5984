// Pure: file names for downloaded figures. A name says what the figure shows, in a
// fixed order, so a folder of them sorts by model, image, layer and unit:
//
//   <model>_<image>_<layer>_unit<N>_<method>-<seed>[_y<Y>x<X>]_<figure>.png
//   zfnet-imagenette_3fa2b1c4d5e6_conv2_unit3_deconv-point_y4x7_projection.png
//   tiny-resnet_3fa2b1c4d5e6_layer3.1_unit12_guided-map_projection.png
//
// Parts that do not apply (no image for the filters, no method for a feature map)
// are left out. Characters other than letters, digits, '.', '-' become '-'; dots
// stay (layer3.1, layer1.0.relu_1 -> layer1.0.relu-1 keeps the block readable).
const IMAGE_CHARS = 12; // content-addressed ids are 24 hex digits; 12 are plenty to tell images apart

export function safePart(text) {
  return String(text).replace(/[^A-Za-z0-9.-]+/g, '-').replace(/^[-.]+|[-.]+$/g, '') || 'x';
}

/**
 * figureFileName({figure, model, image, layer, unit, method, seed, position, extra, ext})
 * `figure`: projection | crop | map | topk | filters | evolution | occlusion-<kind> | input.
 */
export function figureFileName({
  figure, model = null, image = null, layer = null, unit = null, method = null, seed = null,
  position = null, extra = null, ext = 'png',
} = {}) {
  if (!figure) throw new TypeError('figure: expected a name such as "projection", got nothing');
  const parts = [];
  if (model) parts.push(safePart(model));
  if (image) parts.push(safePart(String(image).slice(0, IMAGE_CHARS)));
  if (layer) parts.push(safePart(layer));
  if (unit !== null && unit !== undefined) parts.push(`unit${Number(unit)}`);
  if (method) parts.push(seed ? `${safePart(method)}-${safePart(seed)}` : safePart(method));
  if (Array.isArray(position)) parts.push(`y${Number(position[0])}x${Number(position[1])}`);
  if (extra) parts.push(safePart(extra));
  parts.push(safePart(figure));
  return `${parts.join('_')}.${ext}`;
}
