"""Signals and their windows: what the deconvnet hands from one layer down to the next.

A point seed only reaches its receptive field, so each backward signal is kept
as a *window* of its map (Zeiler & Fergus, Sec. 2.1, done per item and in
batches): a tensor (K, C, h, w) plus a per-item offset (top, left) into an
H x W map. These helpers move windows around; the rules that change the values
are in ``deconvnet``.

====================  ====================================================
name                  what it does
====================  ====================================================
``Signal``            K windows at one layer's output (or K flat vectors)
``crop``              per-item windows of a record tensor, with a fill
``gather_window``     the record under each item's window
``fit``               windows that outgrew their map cut back to it
``place``             windows -> whole maps
====================  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Signal:
    """A batch of K backward signals at one child's output.

    Spatial: ``values`` is (K, C, h, w), item k's window starts at (``oy[k]``,
    ``ox[k]``) of an ``H`` x ``W`` map, and is zero outside the map. Flat:
    ``values`` is (K, F). With ``units`` set, ``values`` holds one channel per
    item: item k's signal lives in channel ``units[k]`` only (all other channels
    are zero). ``index`` is each item's image in the record (as ``Net.project``'s
    ``index``).
    """

    values: torch.Tensor
    index: torch.Tensor
    oy: torch.Tensor | None = None
    ox: torch.Tensor | None = None
    H: int = 0
    W: int = 0
    units: torch.Tensor | None = None
    channels: int = 0  # C of the full signal (needed when ``units`` is set)

    @property
    def spatial(self) -> bool:
        return self.values.dim() == 4

    def dense(self) -> "Signal":
        """The same signal with every channel present."""
        if self.units is None:
            return self
        K = self.values.shape[0]
        full = self.values.new_zeros((K, self.channels) + tuple(self.values.shape[2:]))
        idx = self.units.view((K, 1) + (1,) * (self.values.dim() - 2)).expand_as(self.values)
        full.scatter_(1, idx, self.values)
        return Signal(full, self.index, self.oy, self.ox, self.H, self.W, None, self.channels)

    def with_values(self, values: torch.Tensor, oy=None, ox=None, H=None, W=None, keep_units: bool = True) -> "Signal":
        return Signal(values, self.index, self.oy if oy is None else oy, self.ox if ox is None else ox,
                      self.H if H is None else H, self.W if W is None else W,
                      self.units if keep_units else None, self.channels)


# ------------------------------------------------------------------ windows

def _rows(o: torch.Tensor, size: int, limit: int):
    r = o[:, None] + torch.arange(size, device=o.device)
    valid = (r >= 0) & (r < limit)
    return r.clamp(0, limit - 1), valid


def crop(t: torch.Tensor, n: torch.Tensor, units: torch.Tensor | None, oy: torch.Tensor, ox: torch.Tensor,
         h: int, w: int, fill: float | list = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item windows ``t[n[k], c, oy[k]:oy[k]+h, ox[k]:ox[k]+w]`` of ``t`` (N, C, H, W):
    (K, C|1, h, w), with ``fill`` (one value, or one per item) where a window lies
    outside ``t``'s map. Into ``out`` when given, which then already holds the fill
    (only the parts inside ``t``'s map are written).

    Channels: all, or only ``units[k]`` (then the result has one channel).
    Copies one slice per item (a strided copy is several times cheaper than a
    gather by computed indices, and the loop costs microseconds per item).
    """
    K = int(n.shape[0])
    H, W = t.shape[-2:]
    C = t.shape[1] if units is None else 1
    ns, ys, xs = n.tolist(), oy.tolist(), ox.tolist()
    us = units.tolist() if units is not None else None
    fills = fill if isinstance(fill, list) else None
    filled = out is not None
    if out is None:
        out = torch.empty((K, C, h, w), dtype=t.dtype, device=t.device)
    for k in range(K):
        y0, x0 = ys[k], xs[k]
        a, b, c, d = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
        if a >= b or c >= d:
            if not filled:
                out[k].fill_(fills[k] if fills is not None else fill)
            continue
        if not filled and (a, b, c, d) != (y0, y0 + h, x0, x0 + w):  # partly outside: fill the border strips
            v = fills[k] if fills is not None else fill
            out[k, :, :a - y0].fill_(v)
            out[k, :, b - y0:].fill_(v)
            out[k, :, a - y0:b - y0, :c - x0].fill_(v)
            out[k, :, a - y0:b - y0, d - x0:].fill_(v)
        src = t[ns[k]] if us is None else t[ns[k], us[k]:us[k] + 1]
        out[k, :, a - y0:b - y0, c - x0:d - x0] = src[:, a:b, c:d]
    return out


def gather_window(t: torch.Tensor, sig: Signal, h: int, w: int, fill: float | list = 0) -> torch.Tensor:
    """The record tensor ``t`` (N, C, H, W) under each item's window (see ``crop``)."""
    return crop(t, sig.index, sig.units, sig.oy, sig.ox, h, w, fill)


def _inside(o: torch.Tensor, size: int, limit: int) -> bool:
    return bool(o.min() >= 0) and bool(o.max() + size <= limit)


def _zero_outside(sig: Signal) -> Signal:
    """Zero the parts of each window that lie outside the map (padding positions)."""
    h, w = sig.values.shape[-2:]
    if _inside(sig.oy, h, sig.H) and _inside(sig.ox, w, sig.W):
        return sig
    _, vr = _rows(sig.oy, h, sig.H)
    _, vc = _rows(sig.ox, w, sig.W)
    mask = (vr[:, None, :, None] & vc[:, None, None, :]).to(sig.values.dtype)
    return sig.with_values(sig.values * mask)


def _recrop(sig: Signal, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int) -> Signal:
    """The same signal in new windows (offsets ``oy``/``ox``, size h x w); what falls outside is dropped."""
    K = sig.values.shape[0]
    k = torch.arange(K, device=sig.values.device)
    return sig.with_values(crop(sig.values, k, None, oy - sig.oy, ox - sig.ox, h, w), oy, ox)


def fit(sig: Signal) -> Signal:
    """Shrink windows that have grown past the map along an axis to the map itself (offset 0)."""
    h, w = sig.values.shape[-2:]
    if h < sig.H and w < sig.W:
        return sig
    zeros = torch.zeros_like(sig.oy)
    oy, nh = (zeros, sig.H) if h >= sig.H else (sig.oy, h)
    ox, nw = (zeros, sig.W) if w >= sig.W else (sig.ox, w)
    if nh == h and nw == w and bool((oy == sig.oy).all()) and bool((ox == sig.ox).all()):
        return sig
    return _recrop(sig, oy, ox, nh, nw)


def place(sig: Signal, out: torch.Tensor | None = None) -> torch.Tensor:
    """Windows -> full maps (K, C, H, W), cropping what lies outside; written into ``out``
    (zeros of that shape) when given."""
    sig = sig.dense()
    K, C, h, w = sig.values.shape
    if out is None:
        if (h, w) == (sig.H, sig.W) and bool((sig.oy == 0).all()) and bool((sig.ox == 0).all()):
            return sig.values.contiguous()
        out = sig.values.new_zeros((K, C, sig.H, sig.W))
    # the map as a window of each item's window (offset -oy, -ox): the window's parts inside the map
    k = torch.arange(K, device=sig.values.device)
    return crop(sig.values, k, None, -sig.oy, -sig.ox, sig.H, sig.W, out=out)
