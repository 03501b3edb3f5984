"""Units from an image region: which units of a layer respond to what is inside a box (issue 16).

Zeiler & Fergus (2013) read a unit through the input patch its strongest
activation sees (its receptive field, Fig. 2). This turns the question round:
given a box drawn on the input, which units of a layer see it best?

The rule, stated once:

1. **Positions.** For every position (y, x) of the layer's map, the overlap is
   the number of input pixels its receptive field (``Net.receptive_field``,
   clipped to the image) shares with the box. The positions kept are those of
   the *largest* overlap, all of them when several tie (a box inside the
   receptive fields of a deep layer keeps every position whose field holds
   it; a box over many fields of an early layer keeps every position whose
   field lies inside it).
2. **Units.** Each unit's value is its strongest activation among the kept
   positions (the first such position in row-major order on ties).
3. **Ranking.** Units by value, largest first; ties to the lower unit; the
   first ``k``.

An fc layer has one "position" whose field is the whole image: its units are
ranked by their values (``positions`` is None).

The box is ``(top, left, bottom, right)`` in input pixels of the model's view
(``Net.preprocess``'s S x S), bottom/right exclusive, with ``0 <= top < bottom
<= S`` and ``0 <= left < right <= S``.

Errors (``ValueError``, saying what was expected): a box that is not four
integers, empty, inverted or out of the image; ``k`` outside 1..channels; a
box that overlaps no receptive field. An unknown layer: ``KeyError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

DEFAULT_K = 20
RULE = ("positions whose receptive field (clipped to the image) overlaps the box in the most pixels (all "
        "that tie); each unit's strongest activation among them; largest first, ties to the lower unit")


def check_box(box: Sequence, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` as four ints inside an image of ``size`` (H, W), else ``ValueError`` naming it."""
    H, W = size
    if not isinstance(box, (list, tuple)) or len(box) != 4 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in box):
        text = repr(box)
        raise ValueError(f"box: expected four integers [top, left, bottom, right], got "
                         f"{text if len(text) <= 80 else text[:79] + '…'}")
    t, l, b, r = (int(v) for v in box)
    if not (0 <= t < b <= H and 0 <= l < r <= W):
        raise ValueError(f"box: expected 0 <= top < bottom <= {H} and 0 <= left < right <= {W} (a non-empty box "
                         f"inside the {H}x{W} input, bottom/right exclusive), got {[t, l, b, r]}")
    return t, l, b, r


def _overlap_1d(lo: np.ndarray, hi: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0, None)


def region_positions(net, layer: str, box: Sequence, input_size: int | tuple[int, int] | None = None,
                     shape: tuple | None = None) -> tuple[list[tuple[int, int]] | None, int]:
    """``(positions, overlap)``: the positions of ``layer``'s map whose receptive field overlaps ``box``
    the most, in row-major order, and that overlap in pixels (an fc layer: ``(None, box area)``).

    A receptive field is a rectangle whose rows depend on y only and columns on x only, so the H + W
    fields of the first column and the first row give every position's. ``shape``: the map's (H, W),
    or () for an fc layer (default: found by a forward pass of a zero image)."""
    size = net._size(input_size)
    t, l, b, r = check_box(box, size)
    shape = _map_shape(net, layer, size) if shape is None else (tuple(shape) or None)
    if shape is None:
        return None, (b - t) * (r - l)
    H, W = shape
    rows = np.array([net.receptive_field(layer, y, 0, input_size=size) for y in range(H)])
    cols = np.array([net.receptive_field(layer, 0, x, input_size=size) for x in range(W)])
    oy = _overlap_1d(rows[:, 0], rows[:, 2], t, b)
    ox = _overlap_1d(cols[:, 1], cols[:, 3], l, r)
    area = np.outer(oy, ox)
    best = int(area.max())
    if best <= 0:
        raise ValueError(f"box: expected a box some receptive field of layer {layer} overlaps, got {[t, l, b, r]}")
    ys, xs = np.nonzero(area == best)
    return [(int(y), int(x)) for y, x in zip(ys, xs)], best


def _map_shape(net, layer: str, size: tuple[int, int]) -> tuple[int, int] | None:
    """(H, W) of ``layer``'s map at ``size`` (None for an fc layer), from one zero image's forward pass."""
    net.check_layer(layer)
    x = torch.zeros(1, net.in_channels, *size, device=net.device)
    a = net.activation(net.forward(x, switches=False), layer)
    return None if a.dim() == 2 else (int(a.shape[2]), int(a.shape[3]))


@dataclass
class RegionUnit:
    unit: int
    value: float  # the strongest activation among the kept positions
    position: tuple[int, int] | None  # where (None: fc)
    box: tuple[int, int, int, int]  # that position's receptive field

    def to_dict(self) -> dict:
        return {"unit": self.unit, "value": self.value,
                "position": None if self.position is None else list(self.position), "box": list(self.box)}


@dataclass
class Region:
    layer: str
    box: tuple[int, int, int, int]
    positions: list[tuple[int, int]] | None
    overlap: int
    units: list[RegionUnit]
    rule: str = RULE

    def to_dict(self) -> dict:
        return {"layer": self.layer, "box": list(self.box), "rule": self.rule, "overlap": self.overlap,
                "positions": None if self.positions is None else [list(p) for p in self.positions],
                "units": [u.to_dict() for u in self.units]}


def rank_units(net, rec, layer: str, box: Sequence, k: int | None = None, index: int = 0) -> Region:
    """The ``k`` units of ``layer`` (default 20, or all when fewer) that respond most strongly inside
    ``box`` (the module docstring's rule), from a record of ``net.forward`` (``index``: the image in a
    batched record)."""
    act = net.activation(rec, layer)
    if not 0 <= index < act.shape[0]:
        raise ValueError(f"index: expected 0..{act.shape[0] - 1}, got {index}")
    C = int(act.shape[1])
    k = min(DEFAULT_K, C) if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= C:
        raise ValueError(f"k: expected 1..{C} (the units of layer {layer}), got {k!r}")
    size = tuple(int(s) for s in rec.input.shape[-2:])
    box = check_box(box, size)
    positions, overlap = region_positions(net, layer, box, size, shape=tuple(act.shape[2:]))
    a = act[index].detach().float().cpu()
    if positions is None:
        values, where = a.numpy(), [None] * C
    else:
        ys = torch.tensor([p[0] for p in positions])
        xs = torch.tensor([p[1] for p in positions])
        v = a[:, ys, xs]  # (C, P), positions in row-major order
        best = v.argmax(dim=1)  # first maximum
        values = v.gather(1, best[:, None])[:, 0].numpy()
        where = [positions[int(i)] for i in best]
    order = np.lexsort((np.arange(C), -values.astype(np.float64)))[:int(k)]
    units = []
    for u in order:
        pos = where[u]
        rf = net.receptive_field(layer, *(pos if pos is not None else (None, None)), input_size=size)
        units.append(RegionUnit(int(u), float(values[u]), pos, tuple(int(v) for v in rf)))
    return Region(layer, box, positions, overlap, units)
