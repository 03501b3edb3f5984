"""The items a projection is asked for, checked the same way by both engines.

An item is ``(layer, unit, position_or_None)`` or ``(layer, unit, position_or_None,
index)``: a unit of a layer, seeded at one position (default: its strongest
activation, the first maximum in row-major order) of image ``index`` of a record.

==============================  ==========================================================
found                           error
==============================  ==========================================================
not a 3- or 4-tuple             ``item: expected (layer, unit, position) ..., got ...``
no items                        ``items: expected at least one ... item, got none``
index outside the record        ``index: expected 0..N-1, got ...``
unit outside the layer          ``unit: expected 0..C-1, got ...``
a position on an fc layer       ``position: <layer> is a fully connected layer; expected None``
a position with a map seed      ``position: a map seed uses the whole feature map; expected None``
a position off the map          ``position: expected (y, x) with y in 0..H-1 and x in 0..W-1``
==============================  ==========================================================
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch


def strongest(act: torch.Tensor, n: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) of each item's strongest activation (first maximum in row-major order)."""
    maps = act[n, units]  # (K, H, W)
    flat = maps.flatten(1).argmax(1)
    W = act.shape[-1]
    return flat // W, flat % W


def check_item(item: Sequence, act: torch.Tensor, n_images: int, layer: str, seed: str) -> tuple:
    """``(layer, unit, position, index)`` checked against ``act`` (the layer's tensor): the
    ``expected X, got Y`` errors of ``Net.project_many``; returns plain ints."""
    unit, position = item[1], item[2]
    index = item[3] if len(item) == 4 else 0
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n_images:
        raise ValueError(f"index: expected 0..{n_images - 1}, got {index!r}")
    C = act.shape[1]
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < C:
        raise ValueError(f"unit: expected 0..{C - 1}, got {unit!r}")
    if position is not None:
        if act.dim() == 2:
            raise ValueError(f"position: {layer} is a fully connected layer; expected None, got {position!r}")
        if seed == "map":
            raise ValueError(f"position: a map seed uses the whole feature map; expected None, got {position!r}")
        H, W = act.shape[-2:]
        is_pair = isinstance(position, (tuple, list)) and len(position) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in position)
        if not is_pair or not (0 <= position[0] < H and 0 <= position[1] < W):
            raise ValueError(f"position: expected (y, x) with y in 0..{H - 1} and x in 0..{W - 1}, "
                             f"got {position!r}")
        position = (int(position[0]), int(position[1]))
    return layer, int(unit), position, int(index)


def check_form(item: Sequence) -> None:
    """``item`` is a 3- or 4-tuple (or list)."""
    if isinstance(item, (str, bytes)) or not 3 <= len(item) <= 4:
        raise ValueError(f"item: expected (layer, unit, position) or (layer, unit, position, index), "
                         f"got {item!r}")


def iter_checked(items: Iterable[Sequence]) -> list[Sequence]:
    """``items`` as a list, each of the right form, at least one."""
    items = list(items)
    for item in items:
        check_form(item)
    if not items:
        raise ValueError("items: expected at least one (layer, unit, position) item, got none")
    return items
