"""First-layer filters as images, and dead filters per layer (Zeiler & Fergus 2013, Fig. 6).

Fig. 6 of the paper shows the first layer's filters, each contrast-normalised
on its own, and points out "dead" features (filters with no structure) in
Krizhevsky's layer 1 that ZFNet's smaller stride and filter renormalisation
avoid. Two readings of "dead" are reported here:

* by weight: a filter whose RMS is below ``weight_fraction`` of the median
  filter RMS of its layer (a near-zero filter: it carries no pattern);
* by activation (when images are given): a unit whose rectified activation is
  zero at every position of every image (it never fires).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..nets import layer_map


def _module(net_or_module) -> nn.Sequential:
    return getattr(net_or_module, "module", net_or_module)


def _conv(module: nn.Sequential, layer: str) -> nn.Conv2d:
    children = dict(module.named_children())
    convs = [n for n, m in children.items() if isinstance(m, nn.Conv2d)]
    if layer not in convs:
        raise KeyError(f"unknown layer: expected one of {convs}, got {layer!r}")
    return children[layer]


def filter_images(net_or_module, layer: str = "conv1") -> np.ndarray:
    """The layer's filters as uint8 RGB arrays (N, k, k, 3), each min-max normalised on its own.

    Only filters over 3 input channels (the first layer) are images; deeper
    filters are shown through the deconvnet instead.
    """
    conv = _conv(_module(net_or_module), layer)
    w = conv.weight.detach().float().cpu()
    if w.shape[1] != 3:
        raise ValueError(f"filters: expected a layer over the 3 input colours (the first layer), "
                         f"got {layer!r} with {w.shape[1]} input channels")
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    norm = (w - lo) / (hi - lo).clamp_min(1e-12)
    return (norm.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def filters_mosaic(net_or_module, layer: str = "conv1", scale: int = 4, columns: int | None = None) -> Image.Image:
    """Fig. 6: the first layer's filters as one RGB mosaic, each tile enlarged ``scale`` times."""
    from ..render import mosaic

    tiles = filter_images(net_or_module, layer)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    return mosaic(list(tiles), columns=columns)


@torch.no_grad()
def dead_filters(net_or_module, images: torch.Tensor | None = None, weight_fraction: float = 0.05) -> dict:
    """Per conv/fc layer: how many filters are dead by weight and, given images, by activation.

    ``images`` is a normalised N x 3 x S x S batch (e.g. ``net.preprocess`` of a
    few hundred data-set images). Returns ``{layer: {"filters", "dead_by_weight",
    "fraction_by_weight", ["dead_by_activation", "fraction_by_activation"]}}``.
    """
    module = _module(net_or_module)
    children = dict(module.named_children())
    lmap = layer_map(module)
    out: dict[str, dict] = {}
    for layer in lmap:
        m = children[layer]
        w = m.weight.detach().float().flatten(1)
        rms = w.pow(2).mean(1).sqrt()
        dead = int((rms < weight_fraction * rms.median()).sum())
        out[layer] = {"filters": int(w.shape[0]), "dead_by_weight": dead,
                      "fraction_by_weight": dead / w.shape[0]}
    if images is not None:
        fired: dict[str, torch.Tensor] = {}
        names = {v: k for k, v in lmap.items()}
        x = images.to(next(module.parameters()).device)
        for name, m in module.named_children():
            x = m(x)
            if name in names:
                a = x.flatten(2).amax(2) if x.ndim == 4 else x
                fired[names[name]] = (a > 0).any(0)
        for layer, f in fired.items():
            if layer == list(lmap)[-1]:
                continue  # the logits are not rectified: "never fires" means nothing there
            d = int((~f).sum())
            out[layer].update(dead_by_activation=d, fraction_by_activation=d / f.numel())
    return out
