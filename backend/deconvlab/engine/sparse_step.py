"""One deconvnet layer -- unpool, rectify, filter -- as one sparse step.

Zeiler & Fergus (2013), Sec. 2.1 and Fig. 1 (top): below a max-pool layer the
deconvnet "successively (i) unpool, (ii) rectify and (iii) filter". Run as
three dense operations (``deconvnet``'s rules), the unpooled map is mostly
zeros: each pooled value lands on the one position its switch recorded, so a
3x3 / stride 2 pool leaves at most a quarter of the positions non-zero, and
rectification then zeroes about half of the rest. The transposed convolution
after it (conv1's onto the pixels, conv2's onto pool1) is where a projection
spends most of its time, and dense kernels multiply all those zeros.

``unpool_rectify_filter`` does the three steps for a batch of windowed signals
from the *pooled* signal, item by item:

1. unpool: per channel, add every pooled value into a scratch plane at its
   switch (under overlapping pooling several outputs can share one maximum,
   and their signals add, exactly as ``deconvnet``'s ``scatter_add``);
2. rectify: visit each switch once (the plane is zeroed on the first visit,
   so a shared maximum is taken once, with its sum) and apply the method's
   ReLU rule (``deconv``: ``relu(g)``; ``guided``: ``relu(g) * [x > 0]``;
   ``backprop``: ``g * [x > 0]``, with ``x`` the ReLU's recorded output); the
   values kept are listed, then bucketed by position (a counting sort);
3. filter: per position, ``sum_c v_c * filter_c`` over its kept channels is
   built in a small patch (four channels per sweep, so a sweep reads the patch
   once for four filters) and added into the output window at the filter's
   taps (the transposed convolution, no bias), dropping taps that fall on the
   padding outside the map.

Only kept values cost anything: about an eighth of the dense route's
multiply-adds. The output is written channels-last (a tap row of the filter is
then ``kernel_width * in_channels`` contiguous numbers, padded to whole
vectors) and handed back as (K, C, h, w) windows with the same offsets and
sizes as the three dense rules give, so everything before and after is
unchanged. The result equals the dense route up to float rounding (the sums run
in another order); ``tests/test_engine_deconv_layer.py`` checks the two routes
against each other, and the engine's autograd cross-checks run through this
step.

The kernel is compiled by Numba on first use (about two seconds, then cached
on disk: about 0.4 s in a new process; the server does it at start-up). The
items of a batch are split between ``torch.get_num_threads()`` threads (the
kernel releases the GIL; each item's sums run in the same order whatever the
split, so the answer does not depend on the thread count). It runs on the CPU, for
float32, where the forward pass has ``Conv2d -> ReLU -> MaxPool2d`` (plain
zero-padded convolutions, no groups): conv1/conv2 of ZFNet and AlexNet (and
conv5/pool5 for fc seeds), every stage of VGG-16. Anywhere else ``deconvnet``
uses its dense rules (on a GPU those are the fast route anyway), as it does
when Numba is missing or fails to import, or ``ENABLED`` is False.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .receptive_field import Window

log = logging.getLogger(__name__)

ENABLED = True  # False: always use the three dense rules (benchmarks and tests compare the two routes)

RULES = {"deconv": 0, "guided": 1, "backprop": 2}
LANES = 8  # a filter's tap rows are padded to a multiple of this many floats (whole vector registers)


_numba = None  # the numba module once imported; False where importing it failed
_numba_lock = threading.Lock()


def available() -> bool:
    """Whether Numba imports here (tried once). It is a dependency, but a broken install (say a
    NumPy newer than it supports) must not break projections: the dense rules run instead."""
    global _numba
    if _numba is not None:
        return _numba is not False
    with _numba_lock:
        if _numba is None:
            try:
                import numba  # on first use: a plain ``import deconvlab`` stays quick
                _numba = numba
            except Exception as e:  # ImportError, or whatever a broken install raises
                log.warning("numba does not import (%s: %s); projections use the dense rules", type(e).__name__, e)
                _numba = False
        return _numba is not False


def fuses(children: list[tuple[str, nn.Module]], i: int) -> bool:
    """Whether children ``i-2, i-1, i`` are ``Conv2d, ReLU, MaxPool2d`` this step can run (the
    modules alone: a plain zero-padded float32 conv on the CPU, no groups), and Numba imports."""
    if not ENABLED or i < 2:
        return False
    (_, conv), (_, relu), (_, pool) = children[i - 2:i + 1]
    return (isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU) and isinstance(conv, nn.Conv2d)
            and conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu" and conv.weight.dtype == torch.float32 and available())


def applies(children: list[tuple[str, nn.Module]], i: int, sig, rec) -> bool:
    """Whether this step runs at child ``i`` for the signal ``sig`` (``fuses``, and a float32
    spatial signal on the CPU with the record's switches and ReLU outputs at hand)."""
    if not sig.spatial or not fuses(children, i):
        return False
    relu_name, pool_name = children[i - 1][0], children[i][0]
    return (pool_name in rec.switches and relu_name in rec.outputs
            and sig.values.device.type == "cpu" and sig.values.dtype == torch.float32
            and rec.outputs[relu_name].dtype == torch.float32)


_rows_cache: "weakref.WeakKeyDictionary[nn.Conv2d, tuple]" = weakref.WeakKeyDictionary()


def _filter_rows(conv: nn.Conv2d, rowp: int) -> np.ndarray:
    """The conv's filters as (C, kh * rowp): each filter's tap rows channels-last, like the
    output, padded with zeros to ``rowp`` (the padding adds zeros past the row: harmless).
    Made once per conv and kept until its weights change (their version counter moves);
    weights made in inference mode have no version counter, so those are re-laid out on
    every call (0.1 ms)."""
    weight = conv.weight.detach()
    key = None if weight.is_inference() else (weight.data_ptr(), weight._version, rowp)
    hit = _rows_cache.get(conv)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    C, cin, kh, kw = weight.shape
    wt = torch.zeros(C, kh, rowp)
    wt[:, :, :kw * cin] = weight.permute(0, 2, 3, 1).reshape(C, kh, kw * cin)
    wt = wt.reshape(C, kh * rowp).numpy()
    if key is not None:
        _rows_cache[conv] = (key, wt)
    return wt


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """One pool for the process, as wide as the machine (its threads start as work needs them)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="deconv-layer")
        return _pool


class Geometry(NamedTuple):
    """The sizes one sparse step works with, handed to the compiled kernel as one tuple."""

    pooled_h: int  # the pool's output map (the signal's map)
    pooled_w: int
    conv_h: int  # the conv's output map (= the ReLU's, = the pool's input)
    conv_w: int
    in_h: int  # the conv's input map (the map the step writes into)
    in_w: int
    stride_y: int  # the conv's stride, padding and dilation
    stride_x: int
    pad_y: int
    pad_x: int
    dilation_y: int
    dilation_x: int
    in_channels: int  # the conv's input channels
    kernel_h: int  # the conv's kernel
    kernel_w: int
    row_padded: int  # one filter row (kernel_w * in_channels floats) padded to a multiple of LANES
    unpooled_h: int  # the unpooled window (the pool rule's window below the signal's)
    unpooled_w: int
    out_h: int  # the output window (the conv rule's window below that)
    out_w: int
    rule: int  # RULES[method]


def unpool_rectify_filter(children: list[tuple[str, nn.Module]], i: int, sig, rec, method: str):
    """Children ``i`` (MaxPool2d), ``i-1`` (ReLU), ``i-2`` (Conv2d) backwards in one sparse step.

    ``sig``: the ``windows.Signal`` at the pool's output; returns the signal at
    the conv's input (dense channels), as the three rules would.
    """
    (conv_name, conv), (relu_name, _), (pool_name, pool) = children[i - 2:i + 1]
    pw, cw = Window.of(pool), Window.of(conv)
    Hc, Wc = rec.in_shapes[pool_name][-2:]  # the conv's (= ReLU's = pool's input) map
    Hp, Wp = rec.switches[pool_name].shape[-2:]
    Cin, Hi, Wi = rec.in_shapes[conv_name]
    K, Cg, h, w = sig.values.shape
    oy1, hi = pw.below(sig.oy, h, 0, Hc)  # the pool rule's windows ...
    ox1, wi = pw.below(sig.ox, w, 1, Wc)
    if (sig.units is None and (hi, wi) == (Hc, Wc) and not bool(oy1.any()) and not bool(ox1.any())
            and cw.output_padding(Hc, Hi, 0) is not None and cw.output_padding(Wc, Wi, 1) is not None):
        oy2, h2, ox2, w2 = torch.zeros_like(oy1), Hi, torch.zeros_like(ox1), Wi  # the conv rule's whole maps
    else:
        oy2, h2 = cw.below(oy1, hi, 0, Hi)  # ... and the conv rule's (``deconvnet.fit``)
        ox2, w2 = cw.below(ox1, wi, 1, Wi)

    C, _, kh, kw = conv.weight.shape
    row = kw * Cin
    rowp = -(-row // LANES) * LANES
    wt = _filter_rows(conv, rowp)
    g = sig.values.contiguous().numpy()
    yx = rec.switch_yx(pool_name).numpy()  # each switch as (row, column), computed once per record
    rule = RULES[method]
    if rule:
        mask = rec.outputs[relu_name]
        mask = mask.reshape(mask.shape[0], mask.shape[1], -1).contiguous().numpy()
    else:
        mask = np.zeros((1, 1, 1), np.float32)
    units = (sig.units if sig.units is not None else torch.full((K,), -1, dtype=torch.long)).numpy()
    off = torch.stack([sig.index, sig.oy, sig.ox, oy1, ox1, oy2, ox2], 1).contiguous().numpy()
    out = np.zeros((K, h2, w2 * Cin + rowp - row), np.float32)
    geo = Geometry(Hp, Wp, Hc, Wc, Hi, Wi, cw.stride[0], cw.stride[1], cw.padding[0], cw.padding[1],
                   cw.dilation[0], cw.dilation[1], Cin, kh, kw, rowp, hi, wi, h2, w2, rule)
    kern = _kernel()

    def run(a: int, b: int) -> None:
        plane = np.zeros(hi * wi, np.float32)  # the unpooled map of one channel (kept zero between uses)
        where = np.empty(h * w, np.int32)  # each pooled value's switch, as a position in the window
        n = Cg * h * w
        tc, tp, tv = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32)
        ec, ev = np.empty(n, np.int32), np.empty(n, np.float32)
        cnt = np.empty(hi * wi + 1, np.int64)
        patch = np.empty(kh * rowp, np.float32)
        kern(g, units, off, yx, mask, wt, geo, out, plane, where, tc, tp, tv, ec, ev, cnt, patch, a, b)

    workers = max(1, min(torch.get_num_threads(), K, os.cpu_count() or 1))
    if workers == 1:
        run(0, K)
    else:
        cuts = [K * t // workers for t in range(workers + 1)]
        for f in [_executor().submit(run, cuts[t], cuts[t + 1]) for t in range(workers)]:
            f.result()
    # channels-last windows seen as (K, C, h, w): a view; the next step copies what it needs
    res = torch.from_numpy(out)[:, :, :w2 * Cin].view(K, h2, w2, Cin).permute(0, 3, 1, 2)
    return type(sig)(res, sig.index, oy2, ox2, Hi, Wi, None, Cin)


def warm_up() -> bool:
    """Compile the kernel now (or load it from Numba's cache), through a projection on a
    tiny net, so that the first real projection does not wait for it. False where the
    sparse step is off or Numba is missing."""
    if not (ENABLED and available()):
        return False
    from . import deconvnet  # (deconvnet imports this module: a call-time import keeps the engine acyclic)
    from .switches import record_forward

    with torch.random.fork_rng(devices=[]):  # the layers' random init leaves the caller's generator alone
        module = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 2, 3), relu1=nn.ReLU(),
                                           pool1=nn.MaxPool2d(3, 2), conv2=nn.Conv2d(2, 2, 1))).eval()
    with torch.no_grad():
        rec = record_forward(module, {"conv2": "conv2"}, torch.ones(1, 3, 9, 9))
        one = torch.zeros(1, dtype=torch.long)
        sig = deconvnet.seed_signal(rec.activations["conv2"], one, one, None, None, "map")
        deconvnet.backward(list(module.named_children()), 3, sig, rec, "deconv")
    return _compiled is not None


_compiled = None
_compile_lock = threading.Lock()


def _kernel():
    global _compiled
    with _compile_lock:
        if _compiled is None:
            numba = _numba
            # fastmath: only "contract" (fused multiply-add); the slices in the loops let them vectorise
            options = dict(nogil=True, boundscheck=False, fastmath={"contract"})
            try:
                _compiled = numba.njit(cache=True, **options)(_unpool_rectify_filter)
            except RuntimeError:  # no writable cache folder (a read-only install, no home): compile each run
                _compiled = numba.njit(**options)(_unpool_rectify_filter)
        return _compiled


def _unpool_rectify_filter(g, units, off, yx, mask, wt, geo, out, plane, where, tc, tp, tv, ec, ev, cnt,
                           patch, k0, k1):
    """The kernel (plain Python, compiled by Numba): items ``k0 .. k1-1``; see the module docstring.

    Per item: (1) per channel, add the pooled values into the unpooled plane at
    their switches, then (2) visit each switch once (the plane is zeroed on the
    first visit, so a shared maximum is taken once, with its sum), rectify, and
    list the values kept; (3) bucket that list by position (a counting sort);
    (4) per position, build ``sum_c v_c * filter_c`` in ``patch`` (four channels
    per sweep) and add it into the output at the filter's taps.
    """
    Hp, Wp, Hc, Wc, Hi, Wi = geo.pooled_h, geo.pooled_w, geo.conv_h, geo.conv_w, geo.in_h, geo.in_w
    sy, sx, pady, padx, dy, dx = geo.stride_y, geo.stride_x, geo.pad_y, geo.pad_x, geo.dilation_y, geo.dilation_x
    Cin, kh, kw, rowp = geo.in_channels, geo.kernel_h, geo.kernel_w, geo.row_padded
    hi, wi, h2, w2, rule = geo.unpooled_h, geo.unpooled_w, geo.out_h, geo.out_w, geo.rule
    Cg, h, w = g.shape[1], g.shape[2], g.shape[3]
    L = kh * rowp
    P = hi * wi
    for k in range(k0, k1):
        nk, y0, x0, wy1, wx1, wy, wx = off[k, 0], off[k, 1], off[k, 2], off[k, 3], off[k, 4], off[k, 5], off[k, 6]
        i0, i1 = max(0, -y0), min(h, Hp - y0)  # rows/columns of the window inside the pooled map
        j0, j1 = max(0, -x0), min(w, Wp - x0)
        kept = 0
        for cg in range(Cg):
            c = units[k] if units[k] >= 0 else cg
            # 1. unpool
            for i in range(i0, i1):
                base = (y0 + i) * Wp + x0
                for j in range(j0, j1):
                    p = (yx[nk, c, base + j, 0] - wy1) * wi + (yx[nk, c, base + j, 1] - wx1)
                    where[i * w + j] = p
                    plane[p] += g[k, cg, i, j]
            # 2. rectify, once per switch
            for i in range(i0, i1):
                for j in range(j0, j1):
                    p = where[i * w + j]
                    v = plane[p]
                    plane[p] = 0.0
                    if rule == 0:
                        keep = v > 0.0
                    else:
                        pu = p // wi
                        on = mask[nk, c, (wy1 + pu) * Wc + wx1 + p - pu * wi] > 0.0
                        keep = on and (v > 0.0 if rule == 1 else v != 0.0)
                    tc[kept] = c
                    tp[kept] = p
                    tv[kept] = v
                    kept += 1 if keep else 0
        # 3. bucket by position: afterwards cnt[p] is the end of position p's run (and the start of p + 1's)
        for p in range(P + 1):
            cnt[p] = 0
        for e in range(kept):
            cnt[tp[e] + 1] += 1
        for p in range(P):
            cnt[p + 1] += cnt[p]
        for e in range(kept):
            q = cnt[tp[e]]
            ec[q] = tc[e]
            ev[q] = tv[e]
            cnt[tp[e]] = q + 1
        # 4. filter
        a = 0
        for p in range(P):
            b = cnt[p]
            if b == a:
                continue
            e = a
            if b - a >= 2:
                v0, v1 = ev[e], ev[e + 1]
                f0, f1 = wt[ec[e]], wt[ec[e + 1]]
                for q in range(L):
                    patch[q] = v0 * f0[q] + v1 * f1[q]
                e += 2
            else:
                v0 = ev[e]
                f0 = wt[ec[e]]
                for q in range(L):
                    patch[q] = v0 * f0[q]
                e += 1
            while e + 4 <= b:
                v0, v1, v2, v3 = ev[e], ev[e + 1], ev[e + 2], ev[e + 3]
                f0, f1, f2, f3 = wt[ec[e]], wt[ec[e + 1]], wt[ec[e + 2]], wt[ec[e + 3]]
                for q in range(L):
                    patch[q] += v0 * f0[q] + v1 * f1[q] + v2 * f2[q] + v3 * f3[q]
                e += 4
            while e < b:
                v0 = ev[e]
                f0 = wt[ec[e]]
                for q in range(L):
                    patch[q] += v0 * f0[q]
                e += 1
            a = b
            # the patch at the filter's taps, dropping those on padding outside the map
            pu = p // wi
            Y0 = (wy1 + pu) * sy - pady
            X0 = (wx1 + p - pu * wi) * sx - padx
            fast = dx == 1 and X0 >= 0 and X0 + kw <= Wi and X0 >= wx and X0 + kw <= wx + w2
            for ty in range(kh):
                Y = Y0 + ty * dy
                if Y < 0 or Y >= Hi or Y < wy or Y >= wy + h2:
                    continue
                pr = patch[ty * rowp:(ty + 1) * rowp]
                if fast:
                    o = out[k, Y - wy, (X0 - wx) * Cin:(X0 - wx) * Cin + rowp]
                    for q in range(rowp):
                        o[q] += pr[q]
                else:
                    o = out[k, Y - wy]
                    for tx in range(kw):
                        X = X0 + tx * dx
                        if X < 0 or X >= Wi or X < wx or X >= wx + w2:
                            continue
                        for ci in range(Cin):
                            o[(X - wx) * Cin + ci] += pr[tx * Cin + ci]
