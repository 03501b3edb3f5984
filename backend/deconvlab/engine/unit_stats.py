"""Per-unit statistics of one layer of a forward record: the strongest activation, the mean, where.

Sec. 2 of Zeiler & Fergus (2013) picks, for a projection, "the strongest
activation" of a feature map; the browser app lists every unit of a layer by
it. ``layer_stats(rec, layer)`` gives, for each unit (channel) of ``layer``
in item ``item`` of the record:

==========  =================================================================
field       what it is
==========  =================================================================
``unit``    the channel
``max``     its largest activation over the map (an fc unit: its value)
``min``     its smallest activation over the map (an fc unit: its value); with
            ``max``, the ends of the colour scale a feature map is drawn on
``mean``    its mean activation over the map (an fc unit: its value)
``argmax``  (y, x) of the first maximum in row-major order, as the point seed
            takes it (``Net.seed_box``); None for an fc unit
==========  =================================================================

No data, no HTTP: a record in, numbers out. An unknown layer is a
``KeyError`` naming the record's layers; an item out of range a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .switches import Record


@dataclass(frozen=True)
class UnitStats:
    unit: int
    max: float
    mean: float
    argmax: tuple[int, int] | None  # (y, x); None for fc units
    min: float  # its smallest activation (last: the fields before it kept their places)


def layer_stats(rec: Record, layer: str, item: int = 0) -> list[UnitStats]:
    """Every unit of ``layer`` in item ``item`` of ``rec`` (see the module doc)."""
    if layer not in rec.activations:
        raise KeyError(f"unknown layer: expected one of {list(rec.activations)}, got {layer!r}")
    if not 0 <= item < len(rec):
        raise ValueError(f"item: expected 0..{len(rec) - 1}, got {item}")
    a = rec.activations[layer][item].float()
    flat = a.reshape(a.shape[0], -1)
    top, where = flat.max(dim=1)
    mean = flat.mean(dim=1)
    low = flat.amin(dim=1)
    conv = a.dim() == 3
    width = a.shape[-1] if conv else 1
    top, where, mean, low = top.cpu().tolist(), where.cpu().tolist(), mean.cpu().tolist(), low.cpu().tolist()
    return [UnitStats(u, top[u], mean[u], divmod(where[u], width) if conv else None, low[u])
            for u in range(len(top))]
