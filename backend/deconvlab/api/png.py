"""PNG bodies: the library's renderings (``deconvlab.render``) encoded for HTTP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# same model + image + parameters -> same picture, for the lifetime of a server
PNG_HEADERS = {"Cache-Control": "private, max-age=300"}


def png_bytes(im) -> bytes:
    """A PIL image or an HxW / HxWx3 uint8 array as PNG bytes."""
    if not isinstance(im, Image.Image):
        im = Image.fromarray(np.ascontiguousarray(im))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _upscale(rgb: np.ndarray, size: int | tuple[int, int]) -> Image.Image:
    w, h = (size, size) if isinstance(size, int) else size
    return Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.NEAREST)


def projection_png(p: np.ndarray) -> bytes:
    """A 3xHxW projection, contrast-normalised with zero at mid grey (``render.projection_image``)."""
    from .. import render

    return png_bytes(render.projection_image(p))


def feature_map_png(a: np.ndarray, size: int) -> bytes:
    """An HxW feature map through viridis, upscaled (nearest) to ``size`` x ``size``."""
    from .. import render

    return png_bytes(_upscale(np.asarray(render.feature_map_image(a)), size))


def heat_map_png(a: np.ndarray, lo: float | None, hi: float | None, scale: int) -> bytes:
    """An occlusion map through viridis between ``lo`` and ``hi`` (default: its range), each cell ``scale`` px."""
    from .. import render

    rgb = np.asarray(render.colormap(a, lo, hi))
    return png_bytes(_upscale(rgb, (a.shape[1] * scale, a.shape[0] * scale)))


def class_map_png(classes: np.ndarray, scale: int) -> bytes:
    """A map of class indices, one categorical colour per class, each cell ``scale`` px."""
    from .. import render

    rgb = np.asarray(render.class_colors(classes))
    return png_bytes(_upscale(rgb, (classes.shape[1] * scale, classes.shape[0] * scale)))
