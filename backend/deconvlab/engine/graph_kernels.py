"""Two transposed-convolution kernels of the graph engine's conv rule (same sums, less work).

* ``sparse_conv_transpose``: while each item's signal lives in one channel (from
  a seed down to the first rectifier that spreads it, including both branches
  of a residual add), only the seeded unit's filter takes part: one grouped
  transposed conv over the K items, 1/C of the dense work.
* ``phase_conv_transpose``: a transposed conv onto a few channels (a first
  layer onto the colours) as one polyphase forward conv, which the CPU runs
  two to three times faster than its transposed-conv kernel for this shape.

Both return the gradient of ``conv2d(x, w, stride, padding)`` with respect to an
``x`` of spatial ``size``; the tests compare them with autograd through the models.
``full_conv_transpose`` is the same choice of kernel without the padding: the
whole transpose of a window of the signal, as the windowed walk
(``graph_windows``) needs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparse_conv_transpose(g, w, st, pd, size) -> torch.Tensor | None:
    """When each item's signal lives in one channel (the seed, before the first
    rectifier spreads it): that channel's filter only, as one grouped transposed
    conv over the K items (1/C of the dense work). None when the signal is dense."""
    full = _sparse_full(g, w, st)
    if full is None:
        return None
    return full[:, :, pd[0]:pd[0] + size[0], pd[1]:pd[1] + size[1]].contiguous() if (
        full.shape[-2] >= pd[0] + size[0] and full.shape[-1] >= pd[1] + size[1]) else _crop_pad(full, pd, size)


def _sparse_full(g, w, st) -> torch.Tensor | None:
    """The unpadded transpose through each item's one channel (None when a signal is dense)."""
    K, C = g.shape[:2]
    if C < 8 or int(torch.count_nonzero(torch.count_nonzero(g[0].reshape(C, -1), dim=1))) > 1:
        return None  # (item 0 first: a dense signal costs 1/K of a pass to recognise)
    nz = torch.count_nonzero(g.reshape(K, C, -1), dim=2) > 0  # (K, C)
    if bool((nz.sum(1) > 1).any()):
        return None
    units = nz.to(torch.int8).argmax(1)
    gk = g[torch.arange(K, device=g.device), units].unsqueeze(0)  # (1, K, h, w)
    wk = w.index_select(0, units)  # (K, Cin, kh, kw)
    full = F.conv_transpose2d(gk, wk, None, st, 0, 0, K)  # (1, K*Cin, ...) the whole transpose, unpadded
    return full.view(K, w.shape[1], full.shape[-2], full.shape[-1])


def full_conv_transpose(g, w, st, dl, groups: int = 1, one_channel: bool = True) -> torch.Tensor:
    """``conv_transpose2d(g, w, stride=st, dilation=dl, groups=groups)`` without padding:
    (K, Cin, (h-1)*s + d*(k-1) + 1, ...), by the one-channel or the polyphase kernel where
    they apply (as ``conv_rule`` picks them), else PyTorch's. ``one_channel=False``: the
    caller knows the signal is dense (no test for the one-channel kernel)."""
    if groups == 1 and tuple(dl) == (1, 1):
        full = _sparse_full(g, w, st) if one_channel else None
        if full is not None:
            return full
        if w.shape[1] <= PHASE_MAX_CHANNELS and st[0] == st[1] and g.device.type == "cpu":
            h = (g.shape[-2] - 1) * st[0] + w.shape[-2]
            wd = (g.shape[-1] - 1) * st[1] + w.shape[-1]
            return _phase_full(g, w, st[0])[:, :, :h, :wd]
    return F.conv_transpose2d(g, w, None, st, 0, 0, groups, dl)


def _crop_pad(full, pd, size):
    out = full.new_zeros(full.shape[:2] + tuple(size))
    h = min(size[0], full.shape[-2] - pd[0])
    w = min(size[1], full.shape[-1] - pd[1])
    out[:, :, :h, :w] = full[:, :, pd[0]:pd[0] + h, pd[1]:pd[1] + w]
    return out


PHASE_MAX_CHANNELS = 4  # transposed convs onto at most this many channels (a first layer) run polyphase


def phase_conv_transpose(g, w, s: int, pd, size) -> torch.Tensor:
    """``conv_transpose2d`` onto few channels as one forward conv (the CPU's transposed-conv
    kernel is slow for this shape): output pixel ``s*q + r`` of the unpadded transpose only
    meets the taps ``r, r + s, ...`` of the filter, so each of the s*s phases is a
    correlation of ``g`` with a flipped sub-filter; all phases are one ``conv2d`` whose
    output channels are (input channel, phase), interleaved by ``pixel_shuffle``."""
    full = _phase_full(g, w, s)  # the unpadded transpose, and more
    return _crop_pad(full, pd, size) if (full.shape[-2] < pd[0] + size[0] or full.shape[-1] < pd[1] + size[1]) \
        else full[:, :, pd[0]:pd[0] + size[0], pd[1]:pd[1] + size[1]].contiguous()


def _phase_full(g, w, s: int) -> torch.Tensor:
    C, cin, kh, kw = w.shape
    my, mx = -(-kh // s), -(-kw // s)
    wp = w.new_zeros(C, cin, s, s, my, mx)
    for ry in range(s):
        for rx in range(s):
            sub = w[:, :, ry::s, rx::s]
            wp[:, :, ry, rx, :sub.shape[2], :sub.shape[3]] = sub
    wp = wp.flip(-1).flip(-2).permute(1, 2, 3, 0, 4, 5).reshape(cin * s * s, C, my, mx)
    return F.pixel_shuffle(F.conv2d(g, wp, padding=(my - 1, mx - 1)), s)
