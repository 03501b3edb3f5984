"""First-layer filters as images, and dead filters per layer (Zeiler & Fergus 2013, Fig. 6).

Fig. 6 of the paper shows the first layer's filters, each contrast-normalised
on its own, and points out "dead" features (filters with no structure) in
Krizhevsky's layer 1 that ZFNet's smaller stride and filter renormalisation
avoid. Two readings of "dead" are reported here:

* by weight: a filter whose RMS is below ``weight_fraction`` of the median
  filter RMS of its layer (a near-zero filter: it carries no pattern);
  ``filter_stats`` gives each filter's norm, RMS and this verdict (the
  browser app's Fig. 6 panel and ``GET /api/layers/{layer}/filters``);
* by activation (when images are given): a unit whose rectified activation is
  zero at every position of every image (it never fires).

Any model: the first layer is its first ``nn.Conv2d`` (``modules()`` order;
``"conv1"`` names it when the model has no module of that path); dead filters
by weight are counted for every ``nn.Conv2d`` / ``nn.Linear`` (by module path),
by activation for the rectified maps the top-k index scans
(:mod:`deconvlab.index.scan_graph`), through the same scan loop. A paper model
keeps its paper names.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..nets import layer_map

FIRST = "conv1"  # the paper's name of the first layer; any model's first Conv2d when it has no such path


def _module(net_or_module) -> nn.Module:
    return getattr(net_or_module, "module", net_or_module)


def first_conv(net_or_module) -> tuple[str, nn.Conv2d]:
    """``(path, conv)`` of the model's first ``nn.Conv2d`` in ``modules()`` order (its first layer)."""
    for path, m in _module(net_or_module).named_modules():
        if isinstance(m, nn.Conv2d):
            return path, m
    raise ValueError(f"filters: expected a model with an nn.Conv2d, got none in "
                     f"{type(_module(net_or_module)).__name__}")


def _conv(module: nn.Module, layer: str | None) -> nn.Conv2d:
    """The conv of ``layer``: a paper name or module path of an ``nn.Conv2d``; None (or ``"conv1"`` in a
    model without that path) is the first conv."""
    convs = {p: m for p, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    if layer is None or (layer == FIRST and layer not in convs):
        return first_conv(module)[1]
    if layer not in convs:
        raise KeyError(f"unknown layer: expected one of {list(convs)}, got {layer!r}")
    return convs[layer]


def filter_images(net_or_module, layer: str | None = FIRST) -> np.ndarray:
    """The layer's filters as uint8 RGB arrays (N, k, k, 3), each min-max normalised on its own.

    ``layer``: the first conv by default (any model: its first ``nn.Conv2d``), or a conv's
    paper name / module path. Only filters over the input colours (3 channels, or 1 for a
    grayscale model: shown grey) are images; deeper filters are shown through the deconvnet.
    """
    conv = _conv(_module(net_or_module), layer)
    w = conv.weight.detach().float().cpu()
    if w.shape[1] not in (1, 3):
        raise ValueError(f"filters: expected a layer over the 3 input colours (or the 1 of a grayscale model: "
                         f"the first layer), got {layer!r} with {w.shape[1]} input channels")
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    norm = (w - lo) / (hi - lo).clamp_min(1e-12)
    norm = norm.expand(-1, 3, -1, -1) if w.shape[1] == 1 else norm
    return (norm.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def filters_mosaic(net_or_module, layer: str | None = FIRST, scale: int = 4, columns: int | None = None) -> Image.Image:
    """Fig. 6: the first layer's filters as one RGB mosaic, each tile enlarged ``scale`` times."""
    from ..render import mosaic

    tiles = filter_images(net_or_module, layer)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    return mosaic(list(tiles), columns=columns)


DEAD_RULE = "RMS of its weights below {fraction:g} of the median filter RMS of its layer"


def filter_stats(net_or_module, layer: str | None = FIRST, weight_fraction: float = 0.05) -> dict:
    """Numbers for each filter of a conv layer (the first by default), as the Fig. 6 panel lists them.

    ``{"filters": [{"unit", "norm", "rms", "dead"}], "dead": count, "median_rms", "rule"}``: ``norm``
    is the L2 norm of the filter's weights (bias left out), ``rms`` = norm / sqrt(weights per filter),
    and a filter is dead by weight exactly as :func:`dead_filters` counts it (``rule``)."""
    if not 0 <= weight_fraction < 1:
        raise ValueError(f"weight_fraction: expected 0 <= f < 1, got {weight_fraction!r}")
    w = _conv(_module(net_or_module), layer).weight.detach().float().cpu().flatten(1)
    norm = w.norm(dim=1)
    rms = w.pow(2).mean(1).sqrt()
    median = rms.median()
    dead = rms < weight_fraction * median
    return {"filters": [{"unit": u, "norm": float(norm[u]), "rms": float(rms[u]), "dead": bool(dead[u])}
                        for u in range(w.shape[0])],
            "dead": int(dead.sum()), "median_rms": float(median),
            "rule": DEAD_RULE.format(fraction=weight_fraction)}


def _by_weight(module: nn.Module, weight_fraction: float) -> dict[str, dict]:
    """Dead filters by weight of every conv/fc layer: paper names of a paper model, else module paths."""
    lmap = layer_map(module) if isinstance(module, nn.Sequential) else {}
    if lmap:
        children = dict(module.named_children())
        layers = {layer: children[layer] for layer in lmap}
    else:
        layers = {p: m for p, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    out = {}
    for layer, m in layers.items():
        w = m.weight.detach().float().flatten(1)
        rms = w.pow(2).mean(1).sqrt()
        dead = int((rms < weight_fraction * rms.median()).sum())
        out[layer] = {"filters": int(w.shape[0]), "dead_by_weight": dead, "fraction_by_weight": dead / w.shape[0]}
    return out


def _fired_sequential(module: nn.Sequential, images: torch.Tensor) -> dict[str, torch.Tensor]:
    lmap = layer_map(module)
    names = {v: k for k, v in lmap.items()}
    fired, x = {}, images.to(next(module.parameters()).device)
    for name, m in module.named_children():
        x = m(x)
        if name in names and names[name] != list(lmap)[-1]:  # the logits are not rectified: skipped
            a = x.flatten(2).amax(2) if x.ndim == 4 else x
            fired[names[name]] = (a > 0).any(0)
    return fired


def _fired_graph(net, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per indexed layer of a graph net (the top-k index's layers, :mod:`deconvlab.index.scan_graph`),
    through the same streaming scan loop; the last layer (the logits) is skipped."""
    from ..index.scan import index_layers, layer_outputs

    layers = index_layers(net)
    fired = {}
    for L, a in layer_outputs(net, images, layers[:-1]):
        fired[L.name] = ((a.flatten(2).amax(2) if a.dim() == 4 else a) > 0).any(0)
    return fired


@torch.no_grad()
def dead_filters(net_or_module, images: torch.Tensor | None = None, weight_fraction: float = 0.05) -> dict:
    """Per conv/fc layer: how many filters are dead by weight and, given images, by activation.

    ``images`` is a normalised N x C x S x S batch (e.g. ``net.preprocess`` of a few hundred
    data-set images). A paper model: ``{layer: {"filters", "dead_by_weight",
    "fraction_by_weight", ["dead_by_activation", "fraction_by_activation"]}}`` by paper name.
    Any other model (a graph-engine ``Net``, or a module, wrapped with ``Net.from_module`` at the
    images' size): by weight, every ``nn.Conv2d`` and ``nn.Linear`` by module path; by activation,
    the rectified maps the top-k index scans (``relu``, ``layer1.0``, ...), each with ``units``.
    """
    module = _module(net_or_module)
    out = _by_weight(module, weight_fraction)
    if images is None:
        return out
    if isinstance(module, nn.Sequential) and layer_map(module):
        fired = _fired_sequential(module, images)
    else:
        net = net_or_module
        if getattr(net, "engine", None) != "graph":
            from ..net import Net

            net = Net.from_module(module, input_size=int(images.shape[-1]))
        fired = _fired_graph(net, images)
    for layer, f in fired.items():
        d = int((~f).sum())
        entry = out.setdefault(layer, {"units": int(f.numel())})
        entry.update(dead_by_activation=d, fraction_by_activation=d / f.numel())
    return out
