"""Comparing two networks unit by unit and layer by layer (issue 16).

Li, Yosinski, Clune, Lipson & Hopcroft, *Convergent Learning: Do different
neural networks learn the same representations?* (ICLR 2016): "we compute the
correlation between the activations of each pair of units ... over all
positions and images", then pair each unit of one net with its most correlated
unit of the other (a "one-to-many" match, "semi-matching"), or find "a
one-to-one assignment" maximising the summed correlation ("bipartite
matching", the Hungarian method). Kornblith, Norouzi, Lee & Hinton,
*Similarity of Neural Network Representations Revisited* (ICML 2019): linear
centred kernel alignment, CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
for centred X (n x p1), Y (n x p2) of the same n examples; equivalently
HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the Gram matrices K = X X^T,
L = Y Y^T. It is invariant to orthogonal transforms (a permutation of the
units) and to isotropic scaling, and is 1 for a layer with itself.

=========================  ================================================================
name                       what it does
=========================  ================================================================
``match_units``            every unit of ``layer_a`` of A -> its best unit of ``layer_b`` of
                           B and their correlation (``one_to_one=True``: the Hungarian
                           assignment, ``scipy.optimize.linear_sum_assignment``)
``cka``                    the linear CKA matrix of ``layers_a`` x ``layers_b``
``correlations``           the Pearson matrix behind ``match_units`` (units A x units B)
``linear_cka``,            the two formulas above, on features / on Gram matrices
``linear_cka_gram``
``default_layers``         the layers ``cka`` compares when none are named
``DatasetImages``          images of a data-set split, each net reading them at its own size
``compare_key``            sha256 naming a result: both models' weights, the images, the layers
=========================  ================================================================

The rules, stated once:

==================  ====================================================================
``by``              samples correlated (per pair of units)
==================  ====================================================================
``"position"``      the two units' values at every position of every image (n x H x W);
                    both layers' maps must be the same H x W (else ``ValueError`` naming
                    both shapes)
``"max"``           each unit's spatial maximum per image (n samples; any two layers, fc
                    layers too: an fc unit's value is its maximum)
``"auto"``          ``"position"`` when both maps are the same size, else ``"max"``
==================  ====================================================================

* A unit constant over the samples (a dead unit: all zeros) has no correlation:
  its row (or column) is NaN; its best match is -1 and it is never a best match.
* Best match: the largest correlation, ties to the lower unit. One-to-one: the
  assignment maximising the summed correlation over the units that have one
  (NaN counts as -2, below any correlation); a unit left without a partner
  (A wider than B, or a NaN pair) is -1.
* CKA features (examples = images): a conv layer's map average-pooled to at
  most ``grid`` x ``grid`` cells (``adaptive_avg_pool2d``; ``grid=None``: the
  whole map), flattened with its channels; an fc layer as it is. Features are
  centred over the images. A layer constant over the images has CKA NaN.
* ``images``: a float tensor (N, C, H, W), fed as it is to both nets (already
  normalised); a sequence of PIL images, each net's ``preprocess``; or a
  ``DatasetImages``, read as ``Net.preprocess`` reads them at each net's input
  size, mean and std. Work goes ``batch_size`` images at a time through
  ``Net.forward`` (any engine: paper nets, graph nets such as resnet18).

Errors: an unknown layer is ``KeyError`` (``Net``'s message); no images,
``by`` not one of the three, position-by-position layers of different map
sizes, a grid below 1: ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

BYS = ("auto", "position", "max")
DEFAULT_GRID = 8


# ------------------------------------------------------------------ images

@dataclass
class DatasetImages:
    """Images ``indices`` of ``split`` (a ``data.Split``), each net reading them at its own size, mean, std."""

    split: object
    indices: np.ndarray

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def key(self) -> str:
        h = hashlib.sha256(f"{self.split.name}|{self.split.listing_hash()}|".encode())
        h.update(self.indices.tobytes())
        return h.hexdigest()


def _count(images) -> int:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images: expected a float tensor (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
        return int(images.shape[0])
    if isinstance(images, DatasetImages) or isinstance(images, Sequence):
        return len(images)
    raise TypeError(f"images: expected a tensor, a sequence of PIL images or DatasetImages, "
                    f"got {type(images).__name__}")


def _batch(net, images, start: int, stop: int) -> torch.Tensor:
    """Images ``start:stop`` as ``net``'s input batch."""
    if isinstance(images, torch.Tensor):
        return images[start:stop]
    if isinstance(images, DatasetImages):
        from .evolution import image_loader

        m = net.meta
        return image_loader(images.split, int(m.input_size), m.mean, m.std)(images.indices[start:stop])
    return torch.cat([net.preprocess(im) for im in images[start:stop]], 0)


def images_key(images) -> str:
    """sha256 naming an image set: a tensor's bytes, PIL images' pixels, or a data set's listing and indices."""
    if isinstance(images, DatasetImages):
        return images.key()
    h = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        t = images.detach().float().cpu().contiguous()
        h.update(f"tensor{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    else:
        for im in images:
            h.update(f"{im.mode}{im.size}".encode())
            h.update(im.tobytes())
    return h.hexdigest()


def _forward_batches(nets: Sequence, images, layers: Sequence[Sequence[str]], batch_size: int,
                     progress: Callable[[int, int], None] | None):
    """Yield, per batch, one ``{layer: activation}`` per net (a net given twice is run once)."""
    n = _count(images)
    if n < 1:
        raise ValueError("images: expected at least one image, got none")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
    for net, names in zip(nets, layers):
        for layer in names:
            net.check_layer(layer)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        out, done = [], {}
        for net, names in zip(nets, layers):
            if id(net) not in done:
                rec = net.forward(_batch(net, images, start, stop).to(net.device), switches=False)
                done[id(net)] = rec
            rec = done[id(net)]
            out.append({layer: net.activation(rec, layer).detach().double().cpu() for layer in names})
        done.clear()
        yield out
        if progress is not None:
            progress(stop, n)


# ------------------------------------------------------------------ correlations

def _shape(net, layer: str) -> tuple:
    for d in net.layer_info():
        if d["name"] == layer:
            return tuple(d["shape"])
    net.check_layer(layer)  # a pool or alias layer_info does not list: ask the net itself
    return ()


def resolve_by(net_a, layer_a: str, net_b, layer_b: str, by: str = "auto") -> str:
    """``"position"`` or ``"max"``: what ``by`` means for these two layers (see the module docstring)."""
    if by not in BYS:
        raise ValueError(f"by: expected one of {list(BYS)}, got {by!r}")
    sa, sb = _shape(net_a, layer_a), _shape(net_b, layer_b)
    same = len(sa) == 3 and len(sb) == 3 and sa[1:] == sb[1:]
    if by == "position" and not same:
        def say(s):
            return "x".join(str(v) for v in s[1:]) if len(s) == 3 else "an fc layer (no map)"
        raise ValueError(f"by=position: expected two maps of the same height and width, got layer {layer_a} "
                         f"{say(sa)} and layer {layer_b} {say(sb)}; use by='max'")
    return by if by != "auto" else ("position" if same else "max")


def _samples(a: torch.Tensor, by: str) -> torch.Tensor:
    """(samples, C) of one batch's activation under rule ``by``."""
    if a.dim() == 2:
        return a
    if by == "max":
        return a.amax(dim=(2, 3))
    return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])


@dataclass
class _Moments:
    """Running sums for Pearson correlations between the columns of A and B (float64)."""

    n: int = 0
    sa: torch.Tensor | None = None
    sb: torch.Tensor | None = None
    saa: torch.Tensor | None = None
    sbb: torch.Tensor | None = None
    sab: torch.Tensor | None = None

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.sa is None:
            self.sa, self.sb = a.sum(0), b.sum(0)
            self.saa, self.sbb, self.sab = (a * a).sum(0), (b * b).sum(0), a.T @ b
        else:
            self.sa += a.sum(0)
            self.sb += b.sum(0)
            self.saa += (a * a).sum(0)
            self.sbb += (b * b).sum(0)
            self.sab += a.T @ b
        self.n += a.shape[0]

    def pearson(self) -> np.ndarray:
        n = float(self.n)
        ma, mb = self.sa / n, self.sb / n
        va, vb = self.saa / n - ma * ma, self.sbb / n - mb * mb
        cov = self.sab / n - torch.outer(ma, mb)
        dead_a = va <= 1e-12 * torch.clamp(self.saa / n, min=1e-300)
        dead_b = vb <= 1e-12 * torch.clamp(self.sbb / n, min=1e-300)
        r = cov / torch.outer(va.clamp(min=1e-300).sqrt(), vb.clamp(min=1e-300).sqrt())
        r = r.clamp(-1.0, 1.0)
        r[dead_a, :] = float("nan")
        r[:, dead_b] = float("nan")
        return r.numpy()


def correlations(net_a, layer_a: str, net_b, layer_b: str, images, by: str = "auto", batch_size: int = 16,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, str]:
    """``(R, by)``: the Pearson correlation R[i, j] of unit i of ``layer_a`` and unit j of ``layer_b``
    over the images under rule ``by`` (NaN for a constant unit), and the rule used."""
    used = resolve_by(net_a, layer_a, net_b, layer_b, by)
    m = _Moments()
    for acts in _forward_batches([net_a, net_b], images, [[layer_a], [layer_b]], batch_size, progress):
        a, b = _samples(acts[0][layer_a], used), _samples(acts[1][layer_b], used)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"images: the two nets gave {a.shape[0]} and {b.shape[0]} samples per batch "
                             f"(expected the same positions; use by='max')")
        m.add(a, b)
    return m.pearson(), used


@dataclass
class Matches:
    """``match_units``' answer: per unit of A, its match in B (-1: none) and their correlation (NaN: none)."""

    layer_a: str
    layer_b: str
    by: str
    one_to_one: bool
    unit: np.ndarray  # (Ca,) int64
    correlation: np.ndarray  # (Ca,) float64
    matrix: np.ndarray = field(repr=False)  # (Ca, Cb) Pearson correlations

    def to_dict(self) -> dict:
        return {"layer_a": self.layer_a, "layer_b": self.layer_b, "by": self.by, "one_to_one": self.one_to_one,
                "matches": [{"unit": i, "match": int(u) if u >= 0 else None,
                             "correlation": None if np.isnan(c) else float(c)}
                            for i, (u, c) in enumerate(zip(self.unit, self.correlation))]}


def best_matches(matrix: np.ndarray, one_to_one: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(unit, correlation)`` per row of a correlation matrix: the best column, or the Hungarian partner."""
    r = np.asarray(matrix, dtype=np.float64)
    rows = np.arange(r.shape[0])
    unit = np.full(r.shape[0], -1, np.int64)
    if not one_to_one:
        filled = np.where(np.isnan(r), -np.inf, r)
        best = np.argmax(filled, axis=1) if r.shape[1] else np.zeros(r.shape[0], np.int64)
        ok = np.isfinite(filled[rows, best]) if r.shape[1] else np.zeros(r.shape[0], bool)
        unit[ok] = best[ok]
    else:
        from scipy.optimize import linear_sum_assignment

        i, j = linear_sum_assignment(np.where(np.isnan(r), -2.0, r), maximize=True)
        keep = ~np.isnan(r[i, j])
        unit[i[keep]] = j[keep]
    corr = np.full(r.shape[0], np.nan)
    has = unit >= 0
    corr[has] = r[rows[has], unit[has]]
    return unit, corr


def top_matches(matrix: np.ndarray, unit: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` columns of row ``unit`` of largest correlation, best first (ties: the lower column; NaN left out)."""
    row = np.asarray(matrix[unit], dtype=np.float64)
    order = np.lexsort((np.arange(len(row)), -np.where(np.isnan(row), -np.inf, row)))
    return [(int(j), float(row[j])) for j in order[:k] if not np.isnan(row[j])]


def match_units(net_a, layer_a: str, net_b, layer_b: str, images, one_to_one: bool = False, by: str = "auto",
                batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> Matches:
    """For each unit of ``layer_a`` of ``net_a``, its best match in ``layer_b`` of ``net_b`` and their
    correlation over ``images`` (the module docstring's rules); ``one_to_one``: the Hungarian assignment."""
    r, used = correlations(net_a, layer_a, net_b, layer_b, images, by, batch_size, progress)
    unit, corr = best_matches(r, one_to_one)
    return Matches(layer_a, layer_b, used, bool(one_to_one), unit, corr, r)


# ------------------------------------------------------------------ CKA

def _centre(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of features ``x`` (n x p1) and ``y`` (n x p2) of the same n examples, the feature-space
    formula ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features (NaN for constant features)."""
    x, y = _centre(x), _centre(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x, y: expected the same examples (rows), got {x.shape[0]} and {y.shape[0]}")
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / den) if den > 0 else float("nan")


def centred_gram(x: np.ndarray) -> np.ndarray:
    """H K H for the linear kernel K = X X^T and the centring matrix H = I - 11^T/n."""
    k = np.asarray(x, dtype=np.float64) @ np.asarray(x, dtype=np.float64).T
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def linear_cka_gram(k: np.ndarray, l: np.ndarray) -> float:
    """CKA from two centred Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC = <K, L>_F
    (the 1/(n-1)^2 factors cancel)."""
    den = np.sqrt(np.sum(k * k) * np.sum(l * l))
    return float(np.sum(k * l) / den) if den > 0 else float("nan")


def cka_features(a: torch.Tensor, grid: int | None = DEFAULT_GRID) -> torch.Tensor:
    """(N, features) of one batch's activation: a map pooled to at most ``grid`` x ``grid``, flattened."""
    if a.dim() == 4:
        if grid is not None:
            if grid < 1:
                raise ValueError(f"grid: expected at least 1 cell a side (or None), got {grid}")
            a = torch.nn.functional.adaptive_avg_pool2d(a, (min(grid, a.shape[2]), min(grid, a.shape[3])))
        return a.reshape(a.shape[0], -1)
    return a


def default_layers(net) -> list[str]:
    """The layers ``cka`` compares by default: a paper net's ``net.layers`` (conv1 .. fc8); a graph net's
    top-level modules, each top-level ``nn.Sequential`` replaced by its children, BatchNorm and flatten
    left out (resnet18: conv1, relu, maxpool, layer1.0, ..., layer4.1, avgpool, fc)."""
    if net.engine == "sequential" or getattr(net, "_alias", None):
        return list(net.layers)
    info = net.layer_info()
    names = {d["name"] for d in info}
    containers = {d["name"] for d in info if d["parent"] is None and d["type"] == "Sequential"}
    out = []
    for d in info:
        top = d["parent"] is None and d["name"] not in containers
        child = d["parent"] in containers and d["name"].rsplit(".", 1)[0] == d["parent"]
        if (top or child) and not d["type"].startswith("BatchNorm") and d["type"] != "flatten":
            out.append(d["name"])
    return out or sorted(names)


@dataclass
class CKA:
    """``cka``'s answer: ``matrix[i, j]`` = linear CKA of ``layers_a[i]`` and ``layers_b[j]``."""

    layers_a: list[str]
    layers_b: list[str]
    matrix: np.ndarray
    grid: int | None = DEFAULT_GRID
    images: int = 0

    def to_dict(self) -> dict:
        return {"layers_a": self.layers_a, "layers_b": self.layers_b, "grid": self.grid, "images": self.images,
                "cka": [[None if np.isnan(v) else float(v) for v in row] for row in self.matrix]}


def _grams(feats: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    return {layer: centred_gram(torch.cat(parts, 0).numpy()) for layer, parts in feats.items()}


def cka(net_a, net_b, images, layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None,
        grid: int | None = DEFAULT_GRID, batch_size: int = 16,
        progress: Callable[[int, int], None] | None = None) -> CKA:
    """The linear CKA matrix of ``layers_a`` of ``net_a`` x ``layers_b`` of ``net_b`` over ``images``
    (default layers: ``default_layers``; features: the module docstring's rule), through centred Gram
    matrices (``linear_cka_gram``)."""
    la = list(layers_a) if layers_a else default_layers(net_a)
    lb = list(layers_b) if layers_b else default_layers(net_b)
    fa: dict[str, list] = {L: [] for L in la}
    fb: dict[str, list] = {L: [] for L in lb}
    for acts in _forward_batches([net_a, net_b], images, [la, lb], batch_size, progress):
        for feats, got in ((fa, acts[0]), (fb, acts[1])):
            for layer, a in got.items():
                feats[layer].append(cka_features(a, grid))
    ga = _grams(fa)
    gb = ga if (net_a is net_b and la == lb) else _grams(fb)
    m = np.array([[linear_cka_gram(ga[x], gb[y]) for y in lb] for x in la], dtype=np.float64)
    return CKA(la, lb, m, grid, _count(images))


# ------------------------------------------------------------------ cache keys

def compare_key(net_a, net_b, images, *parts) -> str:
    """sha256 naming one result: both models' weights (``index.model_sha256``), the images
    (``images_key``) and ``parts`` (layers, rule, grid...)."""
    from ..index.store import model_sha256

    h = hashlib.sha256()
    for p in (model_sha256(net_a), model_sha256(net_b), images_key(images), *parts):
        h.update(f"{p!r}|".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ figure

def cka_figure(result: CKA, name_a: str = "A", name_b: str = "B"):
    """The CKA matrix as a matplotlib heat map (viridis on 0..1; rows ``layers_a``, columns ``layers_b``,
    each cell written in), for ``analyses.report.write_report``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    m = np.asarray(result.matrix, dtype=np.float64)
    rows, cols = m.shape
    fig = Figure(figsize=(1.6 + 0.55 * cols, 1.2 + 0.45 * rows))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(cols), result.layers_b, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(rows), result.layers_a, fontsize=7)
    ax.set_xlabel(name_b, fontsize=8)
    ax.set_ylabel(name_a, fontsize=8)
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5,
                            color="black" if m[i, j] > 0.6 else "white")
    ax.set_title(f"linear CKA over {result.images} images", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig
