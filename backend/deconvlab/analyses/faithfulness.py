"""Faithfulness of the projections: deletion and insertion curves with ROAD's imputation.

Petsiuk, Das and Saenko, *RISE: Randomized Input Sampling for Explanation of
Black-box Models* (BMVC 2018), Sec. 4.1: "The deletion metric measures a
decrease in the probability of the predicted class as more and more important
pixels are removed ... the insertion metric captures the importance of the
pixels in terms of their ability to synthesize an image". Rong, Leemann,
Borisov, Kasneci and Kasneci, *A Consistent and Efficient Evaluation Strategy
for Attribution Methods* (ROAD, ICML 2022): filling removed pixels with a
constant lets the *shape* of the mask carry class information into the model;
their noisy linear imputation fills each removed pixel with the weighted mean of
its neighbours (known or themselves imputed: one sparse linear system per
image) plus a little Gaussian noise, so the mask no longer shows.

What is measured, stated once:

=================  ===========================================================================
thing              here
=================  ===========================================================================
unit               a conv layer: the channel with the largest activation in the clean image,
                   at the (y, x) of its first maximum (row-major); that position is both the
                   point seed of the projection and the activation recorded on every step.
                   An fc layer: the unit with the largest value (for ``fc8`` of the paper
                   nets: the top-1 class, and the value is its *logit*, where RISE used the
                   softmax probability)
pixels ranked      ``cell`` x ``cell`` squares of the input grid (``cell=1``: pixels) that
                   meet the unit's receptive field (``region="rf"``, ``Net.seed_box``; an
                   fc unit's is the whole image) or every cell (``region="image"``); pixels
                   outside a conv unit's field cannot change it, so they are not counted
relevance          a projection: per pixel the largest |value| over the colour channels,
                   summed over the cell; ``sobel``: the Sobel edge magnitude of the grey
                   image (``skimage.filters.sobel``), summed over the cell; ``random``: none.
                   Ties (every zero of a projection) are broken in a seeded random order
steps              ``steps + 1`` points at fractions 0, 1/steps, .., 1 of the ranked cells;
                   step k removes (deletion) or keeps (insertion) the ``round(k n / steps)``
                   most relevant cells; the 2 * ``steps`` changed images of one curve pair
                   run through one batched ``net.forward``
AUC                the mean of the curve over the fraction removed/inserted (trapezoid on
                   [0, 1]), divided by the unit's clean activation (``auc_*``: 1 is "as
                   active as the clean image throughout"); ``*_raw``: not divided. Deletion:
                   lower is more faithful; insertion: higher
=================  ===========================================================================

Fills (what a removed pixel becomes) and the start of insertion:

============  ==========================================  ====================================
``fill``      deletion: removed cells become              insertion starts from
============  ==========================================  ====================================
``road``      ROAD's noisy linear imputation from the     the same imputation of every ranked
              cells still there (``road_impute``)         cell (ROAD's "least relevant first")
``constant``  ``value`` (0: the data set's mean, grey,    ``start="blur"``: the image blurred
              in normalised input units; RISE's zeros)    by a Gaussian of sigma 5 px in an
                                                          11 x 11 window (RISE's); or
                                                          ``start="constant"``: ``value``
============  ==========================================  ====================================

ROAD's imputation (``road_impute``): for every removed pixel i,
``sum_j w_ij (x_i - x_j) = 0`` over its 8 neighbours j inside the image, with
w = 1/6 for the 4 direct and 1/12 for the 4 diagonal ones (ROAD's weights), so
x_i is the mean of its neighbours weighted by w and normalised by the weight of
those that exist. Known neighbours move to the right-hand side; the system
(one unknown per removed pixel, one right-hand side per channel) is solved by
``scipy.sparse.linalg.spsolve``; then N(0, ``noise``^2) is added to the imputed
pixels only. Every 8-connected group of removed pixels short of the whole
image has a known neighbour, so the system is regular; when every pixel is
removed there is nothing to impute from and the result is 0 (the mean) plus
the noise.

Cost, and ``cell``: ``spsolve`` on a 224 x 224 image with half of it removed
takes 0.3 to 1 s here (2 shared CPU cores; 2 to 7 s at 94%), and a benchmark
needs a system per step, curve, method, layer and image. With ``cell`` > 1
the imputation is ROAD's on the image average-pooled to the cell grid (the
cells are the pixels), and the removed pixels take the bilinear upsampling of
that imputed grid (plus per-pixel noise): a coarse version of ROAD, exact for
``cell=1``. The published run says which it used.

Errors: an unknown layer ``KeyError`` (``Net.check_layer``); a bad fill,
method, order, mask or step count ``ValueError("... expected ..., got ...")``.

(Over 500 lines: the imputation, the cell grid, the curves and the benchmark
share one set of conventions, stated once above; the table and figure are
written by ``cli.faithfulness``.)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("deconv", "guided", "backprop")
BASELINES = ("random", "sobel")
FILLS = ("road", "constant")
STARTS = ("blur", "constant")
REGIONS = ("rf", "image")
# ROAD's neighbourhood: (dy, dx) -> weight; 4 x 1/6 + 4 x 1/12 = 1
NEIGHBOURS = (((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
              ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12))
BLUR_SIGMA, BLUR_RADIUS = 5.0, 5  # RISE's insertion start: gkern(klen=11, nsig=5)


# ---------------------------------------------------------------- ROAD's noisy linear imputation

def _as_image(image) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"image: expected a (C, H, W) or (H, W) array of numbers, got shape {a.shape}")
    return a.astype(np.float64)


def road_system(mask: np.ndarray, image: np.ndarray, weights=NEIGHBOURS):
    """The sparse system ``A u = b`` of ROAD's imputation: ``A`` (n, n) CSC over the n removed
    pixels (row-major order of ``mask``), ``b`` (n, C) from the known neighbours."""
    from scipy.sparse import coo_matrix

    H, W = mask.shape
    flat = mask.ravel()
    idx = np.flatnonzero(flat)
    var = np.full(H * W, -1, np.int64)
    var[idx] = np.arange(len(idx))
    yy, xx = np.divmod(idx, W)
    img = image.reshape(image.shape[0], -1)
    diag = np.zeros(len(idx))
    b = np.zeros((len(idx), image.shape[0]))
    rows, cols, vals = [np.arange(len(idx))], [np.arange(len(idx))], []
    for (dy, dx), w in weights:
        y2, x2 = yy + dy, xx + dx
        inside = (y2 >= 0) & (y2 < H) & (x2 >= 0) & (x2 < W)
        i = np.flatnonzero(inside)
        j = (y2 * W + x2)[inside]
        diag[i] += w
        removed = flat[j]
        rows.append(i[removed])
        cols.append(var[j[removed]])
        vals.append(np.full(int(removed.sum()), -w))
        np.add.at(b, i[~removed], w * img[:, j[~removed]].T)
    vals.insert(0, diag)
    A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(idx),) * 2)
    return A.tocsc(), b


def road_impute(image, mask, noise: float = 0.01, seed: int | np.random.Generator = 0) -> np.ndarray:
    """ROAD's noisy linear imputation (see the module docstring): ``image`` (C, H, W) or (H, W),
    ``mask`` (H, W) bool, True where a pixel is removed -> float64 array of ``image``'s shape with
    the removed pixels imputed plus N(0, ``noise``^2) noise (``seed``: an int or a Generator);
    the other pixels unchanged."""
    from scipy.sparse.linalg import spsolve

    squeeze = np.ndim(image) == 2
    a = _as_image(image)
    m = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask)
    if m.shape != a.shape[1:] or m.dtype != bool:
        raise ValueError(f"mask: expected a bool array of shape {a.shape[1:]}, got {m.dtype} {m.shape}")
    if not noise >= 0:
        raise ValueError(f"noise: expected a standard deviation >= 0, got {noise!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = a.copy()
    n = int(m.sum())
    if n:
        if n == m.size:  # nothing known to impute from: the mean
            values = np.zeros((n, a.shape[0]))
        else:
            A, b = road_system(m, a)
            values = spsolve(A, b).reshape(n, a.shape[0])
        if noise:
            values = values + noise * rng.standard_normal(values.shape)
        out.reshape(a.shape[0], -1)[:, np.flatnonzero(m.ravel())] = values.T
    return out[0] if squeeze else out


# ---------------------------------------------------------------- cells, orders, fills

def cell_grid(height: int, width: int, cell: int) -> tuple[int, int]:
    """Rows and columns of ``cell`` x ``cell`` squares covering the image (the last may be cut)."""
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or not 1 <= cell <= min(height, width):
        raise ValueError(f"cell: expected an integer from 1 to {min(height, width)}, got {cell!r}")
    return math.ceil(height / cell), math.ceil(width / cell)


def cells_to_pixels(cell_mask: np.ndarray, cell: int, height: int, width: int) -> np.ndarray:
    """A (gh, gw) mask of cells -> the (height, width) mask of their pixels."""
    return np.repeat(np.repeat(cell_mask, cell, 0), cell, 1)[:height, :width]


def relevance_order(scores, cell: int = 1, box: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
    """Flat (row-major) indices of the cells that meet ``box`` = (top, left, bottom, right) (default
    the whole image), most relevant first: ``scores`` (H, W) summed per cell, ties in a seeded
    random order (all-equal scores: a random order)."""
    s = np.asarray(scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores: expected an (H, W) map, got shape {s.shape}")
    H, W = s.shape
    gh, gw = cell_grid(H, W, cell)
    padded = np.zeros((gh * cell, gw * cell))
    padded[:H, :W] = s
    per_cell = padded.reshape(gh, cell, gw, cell).sum(axis=(1, 3)).ravel()
    t, l, b, r = box if box is not None else (0, 0, H, W)
    if not (0 <= t < b <= H and 0 <= l < r <= W):
        raise ValueError(f"box: expected (top, left, bottom, right) inside {H}x{W} with top < bottom, "
                         f"left < right, got {tuple(box)}")
    rows, cols = np.arange(t // cell, (b - 1) // cell + 1), np.arange(l // cell, (r - 1) // cell + 1)
    cells = (rows[:, None] * gw + cols[None, :]).ravel()
    tie = np.random.default_rng(seed).permutation(len(cells))
    return cells[np.lexsort((tie, -per_cell[cells]))]


def projection_scores(projection: torch.Tensor) -> np.ndarray:
    """A (C, H, W) projection -> (H, W) magnitude: the largest |value| over the channels."""
    return projection.detach().abs().amax(dim=0).double().cpu().numpy()


def sobel_scores(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The Sobel edge magnitude of the image ``x`` (C, H, W, normalised), its channels' mean in
    [0, 1] pixel units: (H, W)."""
    from skimage.filters import sobel

    m = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    grey = (x.detach().double().cpu() * s + m).mean(dim=0).numpy()
    return sobel(grey)


def blurred(x: torch.Tensor) -> torch.Tensor:
    """RISE's insertion start: ``x`` (C, H, W) blurred by a Gaussian of sigma 5 px in an 11 x 11 window."""
    from scipy.ndimage import gaussian_filter

    a = x.detach().double().cpu().numpy()
    out = gaussian_filter(a, sigma=(0, BLUR_SIGMA, BLUR_SIGMA), truncate=BLUR_RADIUS / BLUR_SIGMA, mode="nearest")
    return torch.from_numpy(out).to(x.dtype)


class _Filler:
    """Images of ``x`` (C, H, W) with given cells removed, for one fill (see the module docstring)."""

    def __init__(self, x, fill, cell, noise, seed, start, value):
        if fill not in FILLS:
            raise ValueError(f"fill: expected one of {list(FILLS)}, got {fill!r}")
        if start not in STARTS:
            raise ValueError(f"start: expected one of {list(STARTS)}, got {start!r}")
        self.x, self.fill, self.cell, self.noise, self.seed = x, fill, cell, noise, seed
        self.H, self.W = x.shape[-2:]
        self.grid = cell_grid(self.H, self.W, cell)
        base = x.detach().double().cpu()
        if fill == "road" and cell > 1:  # ROAD on the cell grid: the image average-pooled to it
            gh, gw = self.grid
            pad = F.pad(base[None], (0, gw * cell - self.W, 0, gh * cell - self.H), mode="replicate")
            self.coarse = F.avg_pool2d(pad, cell)[0].numpy()
        self.substrate = {"deletion": torch.full_like(x, float(value)),
                          "insertion": blurred(x) if start == "blur" else torch.full_like(x, float(value))}

    def __call__(self, cell_mask: np.ndarray, curve: str, k: int) -> torch.Tensor:
        pixels = torch.from_numpy(cells_to_pixels(cell_mask, self.cell, self.H, self.W))
        if self.fill == "constant":
            return torch.where(pixels, self.substrate[curve], self.x)
        rng = np.random.default_rng([*self.seed, int(curve == "insertion"), int(k)])
        if self.cell == 1:
            return torch.from_numpy(road_impute(self.x, cell_mask, self.noise, rng)).to(self.x.dtype)
        coarse = torch.from_numpy(road_impute(self.coarse, cell_mask, 0.0).astype(np.float32))
        gh, gw = self.grid
        up = F.interpolate(coarse[None], size=(gh * self.cell, gw * self.cell), mode="bilinear",
                           align_corners=False)[0, :, :self.H, :self.W]
        if self.noise:
            up += self.noise * torch.from_numpy(rng.standard_normal(tuple(up.shape), dtype=np.float32))
        return torch.where(pixels, up.to(self.x.dtype), self.x)


# ---------------------------------------------------------------- curves

def fractions(steps: int) -> np.ndarray:
    """The curves' x axis: 0, 1/steps, .., 1."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    return np.arange(steps + 1) / steps


def auc(curve: Sequence[float]) -> float:
    """The mean of a curve sampled at equal steps over [0, 1] (the trapezoid rule)."""
    c = np.asarray(curve, np.float64)
    return float(np.trapezoid(c, np.linspace(0.0, 1.0, len(c))))


def _readout(net, rec, layer: str, unit: int, position) -> torch.Tensor:
    a = net.activation(rec, layer)
    return a[:, unit] if a.dim() == 2 else a[:, unit, position[0], position[1]]


def _deepest(net, layers: Sequence[str]) -> str | None:
    """The layer ``forward(upto=)`` must reach for all of ``layers`` (None: run the whole net)."""
    if net.engine != "sequential" or not all(L in net.layers for L in layers):
        return None
    return max(layers, key=net.layers.index)


def _check_order(order, grid: tuple[int, int]) -> np.ndarray:
    o = np.asarray(order)
    if o.ndim != 1 or len(o) == 0 or not np.issubdtype(o.dtype, np.integer) \
            or o.min() < 0 or o.max() >= grid[0] * grid[1] or len(np.unique(o)) != len(o):
        raise ValueError(f"order: expected distinct cell indices 0..{grid[0] * grid[1] - 1} of the "
                         f"{grid[0]}x{grid[1]} grid, most relevant first, got {o.dtype} of shape {o.shape}")
    return o.astype(np.int64)


def _curves(net, x, readouts, order, filler, steps: int, batch_size: int, clean) -> dict:
    """Deletion and insertion curves of ``readouts`` [(layer, unit, position)] at once:
    {"deletion": (R, steps + 1), "insertion": (R, steps + 1)}, raw activations."""
    gh, gw = filler.grid
    counts = np.round(fractions(steps) * len(order)).astype(np.int64)
    jobs = []
    for k in range(1, steps + 1):  # deletion: the counts[k] most relevant cells removed
        jobs.append(("deletion", k, order[:counts[k]]))
    for k in range(steps):  # insertion: the counts[k] most relevant kept, the rest of the order removed
        jobs.append(("insertion", k, order[counts[k]:]))
    out = {c: np.empty((len(readouts), steps + 1)) for c in ("deletion", "insertion")}
    out["deletion"][:, 0] = out["insertion"][:, steps] = clean
    upto = _deepest(net, [r[0] for r in readouts])
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        images = []
        for curve, k, cells in chunk:
            m = np.zeros(gh * gw, bool)
            m[cells] = True
            images.append(filler(m.reshape(gh, gw), curve, k))
        with torch.inference_mode():
            rec = net.forward(torch.stack(images).to(net.device), switches=False, upto=upto)
            vals = [_readout(net, rec, *r).double().cpu().numpy() for r in readouts]
        for j, (curve, k, _) in enumerate(chunk):
            out[curve][:, k] = [v[j] for v in vals]
    return out


def _aucs(curves: dict, clean: float) -> dict:
    d, i = auc(curves["deletion"]), auc(curves["insertion"])
    norm = clean if clean > 0 else float("nan")  # a unit silent on the clean image has no scale
    return {"auc_deletion": d / norm, "auc_insertion": i / norm, "auc_deletion_raw": d, "auc_insertion_raw": i}


def _unit(net, rec, layer: str) -> dict:
    """The unit measured at ``layer`` (see the module docstring): unit, position, clean value, box."""
    a = net.activation(rec, layer)[0].detach().float()
    if a.dim() == 1:
        u, pos = int(a.argmax()), None
        clean = float(a[u])
    else:
        flat = a.reshape(a.shape[0], -1)
        u = int(flat.max(dim=1).values.argmax())
        pos = divmod(int(flat[u].argmax()), a.shape[-1])
        clean = float(flat[u].max())
    position, box = net.seed_box(rec, layer, u, pos)
    return {"layer": layer, "unit": u, "position": None if position is None else list(position),
            "clean": clean, "box": [int(v) for v in box]}


def deletion_insertion(net, x: torch.Tensor, layer: str, unit: int, order, fill: str = "road",
                       steps: int = 16, cell: int = 1, position: tuple[int, int] | None = None,
                       noise: float = 0.01, seed=0, start: str = "blur", value: float = 0.0,
                       batch_size: int = 32) -> dict:
    """Deletion and insertion curves of one unit of ``layer`` on one image ``x`` (1xCxHxW or CxHxW,
    normalised), removing the cells of ``order`` (flat indices of the ``cell`` grid, most relevant
    first; ``relevance_order`` makes one) ``steps`` times (see the module docstring for fills).

    ``unit``: a channel; on a conv layer the activation read is at ``position`` (default: the
    channel's first maximum in ``x``). Returns {"fractions", "deletion", "insertion" (raw
    activations, ``steps + 1`` each), "clean", "cells", "auc_deletion", "auc_insertion" (divided
    by the clean activation), "auc_deletion_raw", "auc_insertion_raw"}.
    """
    net.check_layer(layer)
    x = x[0] if x.dim() == 4 else x
    if x.dim() != 3:
        raise ValueError(f"x: expected one image, 1xCxHxW or CxHxW, got shape {tuple(x.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    fr = fractions(steps)
    filler = _Filler(x.detach().float().cpu(), fill, cell, noise, _seed_list(seed), start, value)
    order = _check_order(order, filler.grid)
    with torch.inference_mode():
        rec = net.forward(x[None].to(net.device), switches=False, upto=_deepest(net, [layer]))
        a = net.activation(rec, layer)[0]
        if not 0 <= unit < a.shape[0]:
            raise ValueError(f"unit: expected 0..{a.shape[0] - 1} for layer {layer}, got {unit!r}")
        if a.dim() == 3 and position is None:
            position = divmod(int(a[unit].flatten().argmax()), a.shape[-1])
        clean = float(_readout(net, rec, layer, unit, position)[0])
    c = _curves(net, filler.x, [(layer, unit, position)], order, filler, steps, batch_size, clean)
    curves = {"deletion": c["deletion"][0], "insertion": c["insertion"][0]}
    return {"fractions": fr.tolist(), "deletion": curves["deletion"].tolist(),
            "insertion": curves["insertion"].tolist(), "clean": clean, "cells": len(order),
            **_aucs(curves, clean)}


def _seed_list(seed) -> list[int]:
    return [int(s) for s in (seed if isinstance(seed, (list, tuple)) else [seed])]


# ---------------------------------------------------------------- the benchmark

def default_layers(net) -> list[str]:
    """``conv2``, ``conv5``, ``fc8`` where the net has them (the paper nets), else its last layer
    with a map over 1x1 and its last layer (the logits)."""
    paper = [L for L in ("conv2", "conv5", "fc8") if L in net.layers]
    if len(paper) == 3:
        return paper
    info = net.layer_info()
    convs = [d["name"] for d in info if len(d["shape"]) == 3 and d["shape"][1] * d["shape"][2] > 1]
    return convs[-1:] + [info[-1]["name"]]


def _orders(net, rec, x, units, methods, baselines, cell, region, seed) -> dict:
    """{(layer, name): cell order} for every layer's unit, method and baseline of one image."""
    scores = {}
    for m in methods:
        ps = net.project_many(rec, [(u["layer"], u["unit"], u["position"]) for u in units], method=m)
        scores.update({(u["layer"], m): projection_scores(p) for u, p in zip(units, ps)})
    sob = sobel_scores(x, net.meta.mean, net.meta.std) if "sobel" in baselines else None
    for u in units:
        for b in baselines:
            scores[(u["layer"], b)] = sob if b == "sobel" else np.zeros(x.shape[-2:])
    names = list(methods) + list(baselines)
    out = {}
    for li, u in enumerate(units):
        box = u["box"] if region == "rf" else None
        for ni, name in enumerate(names):
            out[(u["layer"], name)] = relevance_order(scores[(u["layer"], name)], cell, box, [*seed, li, ni])
    return out


def _check_names(methods, baselines, fills, region) -> None:
    for label, got, allowed in (("methods", methods, METHODS), ("baselines", baselines, BASELINES),
                                ("fills", fills, FILLS)):
        bad = [g for g in got if g not in allowed]
        if bad or len(set(got)) != len(got):
            raise ValueError(f"{label}: expected distinct names from {list(allowed)}, got {list(got)}")
    if not methods and not baselines:
        raise ValueError("methods, baselines: expected at least one order to measure, got none")
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {list(REGIONS)}, got {region!r}")


def faithfulness(net, images: torch.Tensor, layers: Sequence[str] | None = None,
                 methods: Sequence[str] = METHODS, baselines: Sequence[str] = BASELINES,
                 fills: Sequence[str] = FILLS, steps: int = 16, cell: int = 4, region: str = "rf",
                 noise: float = 0.01, seed: int = 0, start: str = "blur", value: float = 0.0,
                 fill_images: dict | None = None, batch_size: int = 32, n_boot: int = 2000,
                 progress=None) -> dict:
    """The deletion/insertion benchmark over ``images`` (N, C, H, W, normalised): for every image,
    layer (its unit, see the module docstring), order (each projection method, each baseline) and
    fill, both curves and their AUCs; then per fill, layer and order the mean AUC over the images
    with a 95% bootstrap interval (``summarise``) and the mean curves.

    ``fill_images``: {fill: K} runs that fill on the first K images only (e.g. the constant fill
    for comparison on a subset). ``progress``: optional callable ``(done, total)`` per image.
    Returns a JSON-ready dict: "config", "fractions", "units" (per image), "auc" ({fill: {layer:
    {order: {"deletion": [...], "insertion": [...]}}}}, normalised, per image, None where the clean
    activation is not positive), "curves" (mean normalised curves), "summary".
    """
    layers = list(layers) if layers else default_layers(net)
    for L in layers:
        net.check_layer(L)
    _check_names(methods, baselines, fills, region)
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images: expected a normalised (N, C, H, W) batch, got shape {tuple(images.shape)}")
    names = list(methods) + list(baselines)
    limit = {f: min(len(images), int((fill_images or {}).get(f, len(images)))) for f in fills}
    res = {f: {L: {n: {"deletion": [], "insertion": [], "curves": []} for n in names} for L in layers} for f in fills}
    units_all = []
    for i in range(len(images)):
        x = images[i].detach().float().cpu()
        rec = net.forward(x[None].to(net.device))
        units = [_unit(net, rec, L) for L in layers]
        units_all.append(units)
        todo = [f for f in fills if i < limit[f]]
        orders = _orders(net, rec, x, units, methods, baselines, cell, region, [seed, i]) if todo else {}
        del rec
        for f in todo:
            filler = _Filler(x, f, cell, noise, [seed, i], start, value)
            for u in units:
                for n in names:
                    c = _curves(net, x, [(u["layer"], u["unit"], u["position"])], orders[(u["layer"], n)],
                                filler, steps, batch_size, u["clean"])
                    _keep(res[f][u["layer"]][n], {k: v[0] for k, v in c.items()}, u["clean"])
        if progress is not None:
            progress(i + 1, len(images))
    config = {"layers": layers, "methods": list(methods), "baselines": list(baselines), "fills": list(fills),
              "steps": steps, "cell": cell, "region": region, "noise": noise, "seed": seed, "start": start,
              "value": value, "images": len(images), "fill_images": limit}
    return {"config": config, "fractions": fractions(steps).tolist(), "units": units_all,
            "auc": {f: {L: {n: {c: r[c] for c in ("deletion", "insertion")} for n, r in by.items()}
                        for L, by in res[f].items()} for f in fills},
            "curves": {f: {L: {n: _mean_curves(r["curves"]) for n, r in by.items()} for L, by in res[f].items()}
                       for f in fills},
            "summary": summarise(res, n_boot=n_boot, seed=seed, reference="random" if "random" in names else None)}


def _keep(store: dict, curves: dict, clean: float) -> None:
    a = _aucs(curves, clean)
    ok = clean > 0
    store["deletion"].append(round(a["auc_deletion"], 4) if ok else None)
    store["insertion"].append(round(a["auc_insertion"], 4) if ok else None)
    if ok:
        store["curves"].append(np.stack([curves["deletion"], curves["insertion"]]) / clean)


def _mean_curves(curves: list) -> dict:
    if not curves:
        return {"deletion": [], "insertion": []}
    m = np.mean(curves, axis=0)
    return {"deletion": np.round(m[0], 5).tolist(), "insertion": np.round(m[1], 5).tolist()}


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{"mean", "lo", "hi", "n"}: the mean of ``values`` (None and NaN left out) and its percentile
    bootstrap interval (``n_boot`` resamples of the values with replacement, seeded)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    means = v[np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    q = (1 - level) / 2
    return {"mean": float(v.mean()), "lo": float(np.quantile(means, q)), "hi": float(np.quantile(means, 1 - q)),
            "n": int(len(v))}


def _paired(a: list, b: list) -> list:
    return [None if x is None or y is None else x - y for x, y in zip(a, b)]


def summarise(res: dict, n_boot: int = 2000, seed: int = 0, reference: str | None = "random") -> dict:
    """Per fill, layer and order: deletion and insertion AUC, insertion - deletion, and (paired, per
    image) each order minus ``reference``, each a ``bootstrap_ci`` over the images."""
    out = {}
    for f, by_layer in res.items():
        for L, by_name in by_layer.items():
            for n, r in by_name.items():
                d, i = r["deletion"], r["insertion"]
                s = {"deletion": bootstrap_ci(d, n_boot, seed), "insertion": bootstrap_ci(i, n_boot, seed),
                     "insertion_minus_deletion": bootstrap_ci(_paired(i, d), n_boot, seed)}
                if reference is not None and n != reference:
                    ref = by_name[reference]
                    s[f"deletion_minus_{reference}"] = bootstrap_ci(_paired(d, ref["deletion"]), n_boot, seed)
                    s[f"insertion_minus_{reference}"] = bootstrap_ci(_paired(i, ref["insertion"]), n_boot, seed)
                out.setdefault(f, {}).setdefault(L, {})[n] = s
    return out
