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


def projection_png(p: np.ndarray) -> bytes:
    """A 3xHxW projection, contrast-normalised with zero at mid grey (``render.projection_image``)."""
    from .. import render

    return png_bytes(render.projection_image(p))


def feature_map_png(a: np.ndarray, size: int, lo: float | None = None, hi: float | None = None) -> bytes:
    """An HxW feature map through viridis (``lo``..``hi``, default its range), upscaled (nearest) to ``size``."""
    from .. import render

    return png_bytes(render.feature_map_image(a, lo, hi, size=size))


def heat_map_png(a: np.ndarray, lo: float | None, hi: float | None, scale: int) -> bytes:
    """An occlusion map through viridis between ``lo`` and ``hi`` (default: its range), each cell ``scale`` px."""
    from .. import render

    return png_bytes(render.feature_map_image(a, lo, hi, size=(a.shape[0] * scale, a.shape[1] * scale)))


def class_map_png(classes: np.ndarray, scale: int) -> bytes:
    """A map of class indices, one categorical colour per class, each cell ``scale`` px."""
    from .. import render

    return png_bytes(render.upscale(render.class_colors(classes), (classes.shape[0] * scale, classes.shape[1] * scale)))
