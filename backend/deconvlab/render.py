"""Display helpers: projections, feature maps and mosaics as RGB images.

* ``projection_rgb`` / ``projection_image``: a deconvnet projection (3 x H x W,
  signed) as RGB with the contrast normalisation of Zeiler & Fergus (2013),
  Figs. 1-2: zero at mid grey (128), positive and negative values scaled by
  the same factor (the largest magnitude, or a ``scale`` shared by a gallery),
  so that +s -> 255 and -s -> 1.
* ``colormap`` / ``feature_map_image``: a 2-D array through viridis (the
  perceptually uniform map of van der Walt & Smith, CC0; its 256 entries are
  written out below, so no matplotlib is needed).
* ``class_colors``: a map of class indices, one categorical colour per class.
* ``mosaic``: equal-sized tiles in a grid with a border (filters, galleries).

All functions take numpy arrays or torch tensors (moved to the CPU) and
return uint8 arrays (``*_rgb``, ``colormap``, ``class_colors``) or PIL images.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

# viridis, 256 entries from dark purple (0) to yellow (255), as RRGGBB
_VIRIDIS_HEX = """
440154 440256 450457 450559 46075a 46085c 460a5d 460b5e
470d60 470e61 471063 471164 471365 481467 481668 481769
48186a 481a6c 481b6d 481c6e 481d6f 481f70 482071 482173
482374 482475 482576 482677 482878 482979 472a7a 472c7a
472d7b 472e7c 472f7d 46307e 46327e 46337f 463480 453581
453781 453882 443983 443a83 443b84 433d84 433e85 423f85
424086 424186 414287 414487 404588 404688 3f4788 3f4889
3e4989 3e4a89 3e4c8a 3d4d8a 3d4e8a 3c4f8a 3c508b 3b518b
3b528b 3a538b 3a548c 39558c 39568c 38588c 38598c 375a8c
375b8d 365c8d 365d8d 355e8d 355f8d 34608d 34618d 33628d
33638d 32648e 32658e 31668e 31678e 31688e 30698e 306a8e
2f6b8e 2f6c8e 2e6d8e 2e6e8e 2e6f8e 2d708e 2d718e 2c718e
2c728e 2c738e 2b748e 2b758e 2a768e 2a778e 2a788e 29798e
297a8e 297b8e 287c8e 287d8e 277e8e 277f8e 27808e 26818e
26828e 26828e 25838e 25848e 25858e 24868e 24878e 23888e
23898e 238a8d 228b8d 228c8d 228d8d 218e8d 218f8d 21908d
21918c 20928c 20928c 20938c 1f948c 1f958b 1f968b 1f978b
1f988b 1f998a 1f9a8a 1e9b8a 1e9c89 1e9d89 1f9e89 1f9f88
1fa088 1fa188 1fa187 1fa287 20a386 20a486 21a585 21a685
22a785 22a884 23a983 24aa83 25ab82 25ac82 26ad81 27ad81
28ae80 29af7f 2ab07f 2cb17e 2db27d 2eb37c 2fb47c 31b57b
32b67a 34b679 35b779 37b878 38b977 3aba76 3bbb75 3dbc74
3fbc73 40bd72 42be71 44bf70 46c06f 48c16e 4ac16d 4cc26c
4ec36b 50c46a 52c569 54c568 56c667 58c765 5ac864 5cc863
5ec962 60ca60 63cb5f 65cb5e 67cc5c 69cd5b 6ccd5a 6ece58
70cf57 73d056 75d054 77d153 7ad151 7cd250 7fd34e 81d34d
84d44b 86d549 89d548 8bd646 8ed645 90d743 93d741 95d840
98d83e 9bd93c 9dd93b a0da39 a2da37 a5db36 a8db34 aadc32
addc30 b0dd2f b2dd2d b5de2b b8de29 bade28 bddf26 c0df25
c2df23 c5e021 c8e020 cae11f cde11d d0e11c d2e21b d5e21a
d8e219 dae319 dde318 dfe318 e2e418 e5e419 e7e419 eae51a
ece51b efe51c f1e51d f4e61e f6e620 f8e621 fbe723 fde725
"""
VIRIDIS = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in _VIRIDIS_HEX.split()], dtype=np.uint8)
assert VIRIDIS.shape == (256, 3)

# 20 categorical colours (Tableau 20 order) for class maps
_CLASSES_HEX = ("1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
                "aec7e8 ffbb78 98df8a ff9896 c5b0d5 c49c94 f7b6d2 c7c7c7 dbdb8d 9edae5")
CLASS_COLORS = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in _CLASSES_HEX.split()], dtype=np.uint8)


def _array(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().float().cpu().numpy()
    return np.asarray(a)


def projection_rgb(p, scale: float | None = None) -> np.ndarray:
    """A projection (C x H x W with C in {1, 3}, or H x W) -> H x W x 3 uint8, zero at mid grey.

    ``value -> 128 + 127 * value / scale``, clipped to 1..255, with ``scale`` the
    largest magnitude of ``p`` unless given (give one scale to several
    projections to compare their strength). An all-zero projection is flat grey.
    """
    a = _array(p).astype(np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"projection: expected an array of shape (3, H, W), (1, H, W) or (H, W), "
                         f"got {tuple(_array(p).shape)}")
    if not np.isfinite(a).all():
        raise ValueError("projection: expected finite values, got NaN or infinity")
    s = float(np.abs(a).max()) if scale is None else float(scale)
    if s < 0 or not math.isfinite(s):
        raise ValueError(f"scale: expected a finite number >= 0, got {scale!r}")
    v = np.full(a.shape, 128.0) if s == 0 else 128.0 + 127.0 * a / s
    v = np.clip(np.rint(v), 1, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(v, 3, axis=2) if v.shape[2] == 1 else np.ascontiguousarray(v)


def projection_image(p, scale: float | None = None) -> Image.Image:
    """``projection_rgb`` as a PIL image."""
    return Image.fromarray(projection_rgb(p, scale), "RGB")


def colormap(a, lo: float | None = None, hi: float | None = None, table: np.ndarray = VIRIDIS) -> np.ndarray:
    """A 2-D array -> H x W x 3 uint8 through ``table`` (viridis), ``lo`` -> first entry, ``hi`` -> last.

    ``lo``/``hi`` default to the array's range; a constant array maps to the first entry.
    """
    x = _array(a).astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"feature map: expected a 2-D array (H, W), got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("feature map: expected finite values, got NaN or infinity")
    if x.size == 0:
        return np.zeros(x.shape + (3,), dtype=np.uint8)
    lo = float(x.min()) if lo is None else float(lo)
    hi = float(x.max()) if hi is None else float(hi)
    t = np.zeros_like(x) if hi <= lo else np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    idx = np.rint(t * (len(table) - 1)).astype(np.intp)
    return table[idx]


def upscale(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H x W (x 3) array to ``size`` (int: square; else (height, width))."""
    h, w = rgb.shape[:2]
    oh, ow = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"size: expected at least 1 pixel, got {size!r}")
    rows = (np.arange(oh) * h) // oh
    cols = (np.arange(ow) * w) // ow
    return rgb[rows][:, cols]


def feature_map_image(a, lo: float | None = None, hi: float | None = None,
                      size: int | tuple[int, int] | None = None) -> Image.Image:
    """A feature map (H x W) through viridis as a PIL image, optionally upscaled (nearest) to ``size``."""
    rgb = colormap(a, lo, hi)
    if size is not None:
        rgb = upscale(rgb, size)
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def class_colors(classes) -> np.ndarray:
    """A 2-D array of class indices -> H x W x 3 uint8, one categorical colour per class (20, cycled)."""
    c = _array(classes)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"classes: expected a 2-D integer array, got {c.dtype} of shape {tuple(c.shape)}")
    if c.size and c.min() < 0:
        raise ValueError(f"classes: expected indices >= 0, got {int(c.min())}")
    return CLASS_COLORS[c % len(CLASS_COLORS)]


def mosaic(tiles: Sequence, columns: int | None = None, border: int = 1,
           border_color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Equal-sized tiles (each H x W x 3 uint8, or H x W grey) in a grid, ``border`` px apart and around.

    ``columns`` defaults to ceil(sqrt(K)); empty cells of the last row stay ``border_color``.
    """
    arrs = [_array(t) for t in tiles]
    if not arrs:
        raise ValueError("tiles: expected at least one tile, got none")
    arrs = [np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t for t in arrs]
    shape = arrs[0].shape
    for i, t in enumerate(arrs):
        if t.shape != shape or t.ndim != 3 or t.shape[2] != 3:
            raise ValueError(f"tiles: expected every tile to be H x W x 3 like the first {shape}, "
                             f"got {t.shape} at index {i}")
        if t.dtype != np.uint8:
            raise ValueError(f"tiles: expected uint8 tiles, got {t.dtype} at index {i}")
    if border < 0:
        raise ValueError(f"border: expected >= 0, got {border}")
    k = len(arrs)
    cols = columns or math.ceil(math.sqrt(k))
    if cols < 1:
        raise ValueError(f"columns: expected >= 1, got {columns}")
    rows = math.ceil(k / cols)
    h, w = shape[:2]
    out = np.empty((rows * (h + border) + border, cols * (w + border) + border, 3), dtype=np.uint8)
    out[:] = np.asarray(border_color, dtype=np.uint8)
    for i, t in enumerate(arrs):
        r, c = divmod(i, cols)
        y, x = border + r * (h + border), border + c * (w + border)
        out[y:y + h, x:x + w] = t
    return Image.fromarray(out, "RGB")
