"""Occlusion sensitivity (Zeiler & Fergus 2013, Sec. 4.2 and Fig. 7).

A grey square slides over the input. For every position of the square the
network is run on the occluded image and three things are recorded, the three
maps of Fig. 7:

(a) ``activation``: the total activation (sum over positions) of one feature
    map of ``layer``, the one with the strongest response (largest maximum)
    in the unoccluded image, as in Fig. 7(b) of the paper;
(b) ``probability``: the softmax probability of the chosen class (default: the
    unoccluded image's top-1 class), Fig. 7(d);
(c) ``top_class``: the most probable class, Fig. 7(e).

Assumptions, stated once:

* The input is already normalised (``net.preprocess``), so "grey, the data
  set's mean" is the value 0 in every channel.
* Square positions follow Captum's ``Occlusion``: top-left corners at
  ``0, stride, 2*stride, ...`` while the square still fits, so the grid is
  ``(H - size) // stride + 1`` by ``(W - size) // stride + 1``.
* The model is an ``nn.Sequential`` in eval mode whose children carry the
  paper's names (``deconvlab.nets``); a layer's activation is the output of
  ``layer_map(model)[layer]`` (after its ReLU). Or it is a ``Net`` on the graph
  engine (any CNN): a layer is one of ``net.layers``, and every occluded image
  runs the whole network (batched; the incremental route below follows a chain
  of layers only).

Speed: incremental recomputation, after Krypton (Nakandala, Kumar and
Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019). The unoccluded forward
pass is done once and every layer's input is kept. An occluder changes only a
small patch of the input; through a convolution or a pooling layer the
changed patch grows by the receptive field of one layer, and through a
point-wise layer (ReLU, LRN across channels, eval batch norm, dropout) it keeps
its size. So for a whole batch of occluder positions each layer computes only
its changed patch, reading the cached unoccluded input around it (a crop of
one common size per layer, pasted with the patch from the layer below), with
the layer's own padding applied explicitly to the crop. Once the changed patch
covers ``fallback`` of a layer's output (or a layer is not spatially local,
e.g. ``flatten``), the patches are pasted into full copies of the cached
activation and the rest of the network runs as usual. The results equal the
plain full forward pass of every occluded image up to float rounding
(``method="full"`` computes exactly that, for checking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._util import pair
from ..nets.registry import layer_map

# layers that act on each spatial position separately: a changed patch stays the same patch
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LocalResponseNorm,
             nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class OcclusionResult:
    """The three Fig. 7 maps, each ``grid`` = (gh, gw), row-major over square positions."""

    size: int  # side of the grey square, input pixels
    stride: int  # step between square positions, input pixels
    grid: tuple  # (gh, gw) square positions
    layer: str  # layer whose feature map is tracked
    feature_map: int  # the tracked feature map (channel) of ``layer``
    class_index: int  # the class whose probability is tracked
    activation: np.ndarray  # float32 (gh, gw): total activation of ``feature_map``
    probability: np.ndarray  # float32 (gh, gw): probability of ``class_index``
    top_class: np.ndarray  # int64 (gh, gw): most probable class
    base_activation: float = 0.0  # the same three, unoccluded
    base_probability: float = 0.0
    base_top_class: int = 0
    passes: int = 0  # forward passes counted (one per position, plus the unoccluded one)
    positions: list = field(default_factory=list)  # (top, left) of the square, row-major
    method: str = "incremental"  # what ran: "incremental" or "full" (always "full" for a graph net)


def occlusion_grid(height: int, width: int, size: int, stride: int) -> tuple[int, int]:
    """(gh, gw) square positions for an input of ``height`` x ``width``; ValueError if out of range."""
    if not isinstance(size, int) or not 1 <= size <= min(height, width):
        raise ValueError(f"size: expected an integer from 1 to {min(height, width)} (the input side), got {size!r}")
    if not isinstance(stride, int) or not 1 <= stride <= min(height, width):
        raise ValueError(f"stride: expected an integer from 1 to {min(height, width)}, got {stride!r}")
    return (height - size) // stride + 1, (width - size) // stride + 1


def occlusion_passes(height: int, width: int, size: int, stride: int) -> int:
    """Forward passes an occlusion run costs: one per square position plus the unoccluded image."""
    gh, gw = occlusion_grid(height, width, size, stride)
    return gh * gw + 1


def occlusion(net, x: torch.Tensor, size: int = 32, stride: int = 8, layer: str | None = None,
              class_index: int | None = None, feature_map: int | None = None, batch_size: int = 128,
              max_passes: int | None = None, method: str = "incremental", fallback: float = 0.9,
              progress=None) -> OcclusionResult:
    """Slide a grey ``size`` x ``size`` square with ``stride`` over ``x`` and record Fig. 7's maps.

    ``net``: a :class:`deconvlab.net.Net` (either engine) or a named ``nn.Sequential`` (eval mode).
    ``x``: the normalised input, 1xCxHxW (or CxHxW), on the model's device.
    ``layer``: the layer whose feature map is tracked (default: ``conv5`` of a paper model, the
    last layer of a graph net with a map over 1x1, e.g. resnet18's ``layer4``, as the API picks).
    ``class_index``: the class whose probability is mapped (default: top-1 of ``x``).
    ``feature_map``: the channel of ``layer`` to track (default: the strongest in ``x``).
    ``max_passes``: refuse (ValueError, saying the budget) runs needing more forward passes.
    ``method``: ``"incremental"`` (Krypton-style, the default) or ``"full"`` (every occluded
    image through the whole network; the reference). A graph-engine net always runs
    ``"full"`` (the patch bookkeeping follows a chain of layers, not a graph), in batches
    of at most ``GRAPH_BATCH`` through the streaming scan loop (``index.scan_graph.stream``:
    only ``layer`` and the logits are kept); ``OcclusionResult.method`` says what ran.
    ``progress``: optional callable ``(done, total)`` called after each batch.

    Raises KeyError for an unknown layer and ValueError for a bad size, stride,
    class index, feature map or budget.
    """
    if method not in ("incremental", "full"):
        raise ValueError(f"method: expected 'incremental' or 'full', got {method!r}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x: expected one image, 1xCxHxW, got shape {tuple(x.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    H, W = int(x.shape[2]), int(x.shape[3])
    gh, gw = occlusion_grid(H, W, size, stride)
    passes = gh * gw + 1
    if max_passes is not None and passes > max_passes:
        raise ValueError(f"occlusion with size {size} and stride {stride} needs {passes} forward passes "
                         f"({gh}x{gw} positions + 1); the budget is {max_passes}")
    positions = [(i * stride, j * stride) for i in range(gh) for j in range(gw)]
    if getattr(net, "engine", None) == "graph":
        layer = layer if layer is not None else _last_conv_layer(net)
        net.check_layer(layer)
        run = _GraphRun(net, layer, x, size, min(batch_size, GRAPH_BATCH))
        method = "full"
    else:
        module = getattr(net, "module", net)
        if not isinstance(module, nn.Sequential):
            raise ValueError(f"occlusion needs a Net or a named nn.Sequential, got {type(module).__name__}")
        layer = "conv5" if layer is None else layer
        run = _SequentialRun(module, layer, x, size, method, fallback, positions)
    with torch.inference_mode():
        act0, logits0 = run.base()
        feature_map, class_index, prob0 = _choose(act0, logits0, layer, feature_map, class_index)
        order = run.order if run.order is not None else list(range(len(positions)))
        act, prob, top = _maps(run, positions, order, batch_size, feature_map, class_index, progress)
    return OcclusionResult(
        size=size, stride=stride, grid=(gh, gw), layer=layer, feature_map=feature_map,
        class_index=class_index,
        activation=act.reshape(gh, gw).astype(np.float32),
        probability=prob.reshape(gh, gw).astype(np.float32),
        top_class=top.reshape(gh, gw),
        base_activation=float(_total(act0, feature_map)[0]), base_probability=float(prob0[class_index]),
        base_top_class=int(prob0.argmax()), passes=passes, positions=positions, method=method)


GRAPH_BATCH = 32  # occluded images per forward pass of a graph net (its live values, not one layer's, are held)


def _last_conv_layer(net) -> str:
    convs = [d["name"] for d in net.layer_info() if len(d["shape"]) == 3 and d["shape"][1] * d["shape"][2] > 1]
    if not convs:
        raise ValueError(f"occlusion: expected a model with a spatial layer to track, got only {net.layers}")
    return convs[-1]


def _choose(act0, logits0, layer, feature_map, class_index):
    """The tracked feature map (default: the strongest) and class (default: top-1), and p(unoccluded)."""
    if feature_map is None:
        feature_map = int(act0[0].reshape(act0.shape[1], -1).max(dim=1).values.argmax())
    elif not isinstance(feature_map, int) or not 0 <= feature_map < act0.shape[1]:
        raise ValueError(f"feature_map: expected 0..{act0.shape[1] - 1} for layer {layer}, got {feature_map!r}")
    num_classes = logits0.shape[1]
    prob0 = torch.softmax(logits0.float(), dim=1)[0]
    if class_index is None:
        class_index = int(prob0.argmax())
    elif not isinstance(class_index, int) or not 0 <= class_index < num_classes:
        raise ValueError(f"class_index: expected 0..{num_classes - 1}, got {class_index!r}")
    return feature_map, class_index, prob0


def _maps(run, positions, order, batch_size, c, class_index, progress):
    """The three maps over ``positions``, batches taken in ``order``."""
    act = np.empty(len(positions), np.float64)
    prob = np.empty(len(positions), np.float64)
    top = np.empty(len(positions), np.int64)
    step = run.batch_size or batch_size
    for s in range(0, len(order), step):
        idx = order[s:s + step]
        a, logits = run.batch([positions[k] for k in idx], c)
        p = torch.softmax(logits.float(), dim=1)
        act[idx] = a.double().cpu().numpy()
        prob[idx] = p[:, class_index].double().cpu().numpy()
        top[idx] = p.argmax(dim=1).cpu().numpy()
        if progress is not None:
            progress(s + len(idx), len(positions))
    return act, prob, top


class _SequentialRun:
    """A named Sequential: every child's unoccluded input cached, batches incremental or full."""

    batch_size = 0  # the caller's

    def __init__(self, module, layer, x, size, method, fallback, positions):
        lmap = layer_map(module)
        if layer not in lmap:
            raise KeyError(f"unknown layer: expected one of {list(lmap)}, got {layer!r}")
        self.children = list(module.named_children())
        self.t_index = [n for n, _ in self.children].index(lmap[layer])
        self.x, self.size, self.method, self.fallback = x, size, method, fallback
        self.positions = positions
        self.order = list(range(len(positions)))

    def base(self):
        # the unoccluded pass: keep every child's input (the cache the patches read from)
        self.inputs = [self.x]  # inputs[i] is child i's input, inputs[i + 1] its output
        for _, m in self.children:
            self.inputs.append(m(self.inputs[-1]))
        if self.method == "incremental":  # batch positions whose changed regions are alike: smaller patches
            self.order.sort(key=_extent_key(self.children, self.inputs, self.positions, self.size))
        return self.inputs[self.t_index + 1], self.inputs[-1]

    def batch(self, batch, c):
        run = _run_incremental if self.method == "incremental" else _run_full
        return run(self.children, self.inputs, self.x, batch, self.size, self.t_index, c, self.fallback)


class _GraphRun:
    """A graph-engine net: full forward passes of the occluded images, streamed (layer + logits kept)."""

    def __init__(self, net, layer, x, size, batch_size):
        from ..index.scan_graph import _layer_node

        self.net, self.x, self.size, self.batch_size = net, x, size, batch_size
        self.node = layer if net.untraceable else _layer_node(net, layer)
        self.order = None

    def _run(self, xb):
        from ..index.scan_graph import OUTPUT, stream

        got = dict(stream(self.net, xb, {self.node, OUTPUT}))
        return got[self.node], got[OUTPUT]

    def base(self):
        return self._run(self.x)

    def batch(self, batch, c):
        a, logits = self._run(_occluded_inputs(self.x, batch, self.size))
        return _total(a, c), logits


def _total(a: torch.Tensor, c: int) -> torch.Tensor:
    """Total activation of channel ``c`` per batch element (sum over positions; an fc unit's value)."""
    return a[:, c].reshape(a.shape[0], -1).sum(dim=1)


def _occluded_inputs(x: torch.Tensor, batch, size: int) -> torch.Tensor:
    xb = x.expand(len(batch), -1, -1, -1).clone()
    for b, (y0, x0) in enumerate(batch):
        xb[b, :, y0:y0 + size, x0:x0 + size] = 0
    return xb


def _run_full(children, inputs, x, batch, size, t_index, c, fallback):
    """The reference: every occluded image through the whole network."""
    h = _occluded_inputs(x, batch, size)
    a = None
    for i, (_, m) in enumerate(children):
        h = m(h)
        if i == t_index:
            a = _total(h, c)
    return a, h


def _local_geometry(m: nn.Module):
    """(kernel, stride, padding, dilation, pad value, op) of a spatially local layer, else None."""
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            return None
        k, s, p, d = pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation)
        return k, s, p, d, 0.0, lambda t: F.conv2d(t, m.weight, m.bias, s, 0, d, m.groups)
    if isinstance(m, nn.MaxPool2d):
        k, s, p, d = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation)
        return k, s, p, d, -math.inf, lambda t: F.max_pool2d(t, k, s, 0, d)
    if isinstance(m, nn.AvgPool2d) and pair(m.padding) == (0, 0) and not m.ceil_mode \
            and m.divisor_override is None:
        k, s = pair(m.kernel_size), pair(m.stride or m.kernel_size)
        return k, s, (0, 0), (1, 1), 0.0, lambda t: F.avg_pool2d(t, k, s)
    return None


def _changed_range(lo: int, n: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[int, int]:
    """Output rows [first, last] whose window reads any of input rows [lo, lo + n)."""
    first = max(0, -((-(lo + p - d * (k - 1))) // s))  # ceil((lo + p - d(k-1)) / s)
    last = min(n_out - 1, (lo + n - 1 + p) // s)
    return first, last


def _extent_key(children, inputs, positions, size):
    """Sort key of a position: its changed region's (rows, cols) at the last local layer, 1-D each."""
    geos = []
    for i, (_, m) in enumerate(children):
        g = _local_geometry(m)
        if g is not None and inputs[i + 1].dim() == 4:
            geos.append((g, inputs[i + 1].shape[2], inputs[i + 1].shape[3]))
        elif not isinstance(m, POINTWISE):
            break

    def extent(lo, n, axis):
        for (k, s, p, d, _, _), Ho, Wo in geos:
            first, last = _changed_range(lo, n, k[axis], s[axis], p[axis], d[axis], Ho if axis == 0 else Wo)
            lo, n = first, last - first + 1
        return n

    rows = {y: extent(y, size, 0) for y in {y for y, _ in positions}}
    cols = {x: extent(x, size, 1) for x in {x for _, x in positions}}
    return lambda k: (-rows[positions[k][0]] * cols[positions[k][1]], -rows[positions[k][0]], k)


def _run_incremental(children, inputs, x, batch, size, t_index, c, fallback):
    """Krypton-style: per layer recompute only each occluder's changed patch (see the module doc)."""
    B = len(batch)
    # the changed patch of the current tensor, one common size, at per-element offsets; ``true``
    # is each element's truly changed region (top, rows, left, cols), which the patch contains
    patch = x.new_zeros((B, x.shape[1], size, size))
    offs = [(y0, x0) for y0, x0 in batch]
    true = [(y0, size, x0, size) for y0, x0 in batch]
    full = None  # once set: the full tensor for the batch (fallback)
    a = None
    for i, (_, m) in enumerate(children):
        base_in = inputs[i]
        if full is None:
            geo = _local_geometry(m)
            if isinstance(m, POINTWISE):
                patch = m(patch)
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and base_in.dim() == 4 \
                    and inputs[i + 1].shape == base_in.shape:
                pass  # the identity at this input size (ZFNet's avgpool at 224 px)
            elif geo is not None:
                out = _local_patch(geo, base_in, inputs[i + 1], patch, offs, true, fallback)
                if out is None:
                    full = _paste(base_in, patch, offs)
                else:
                    patch, offs, true = out
            else:
                full = _paste(base_in, patch, offs)
            if full is not None:
                full = m(full)
            elif i == t_index:
                a = _total(_paste(inputs[i + 1][:, c:c + 1], patch[:, c:c + 1], offs), 0)
        else:
            full = m(full)
        if i == t_index and full is not None:
            a = _total(full, c)
    if full is None:  # a network that ends while still spatial (logits as a map): paste the last patch
        full = _paste(inputs[-1], patch, offs)
    return a, full.reshape(B, -1)


def _paste(base: torch.Tensor, patch: torch.Tensor, offs) -> torch.Tensor:
    """Full tensors for the batch: copies of the unoccluded ``base`` (1xCxHxW) with each patch pasted."""
    B, _, ph, pw = patch.shape
    out = base.expand(B, -1, -1, -1).clone()
    for b, (oy, ox) in enumerate(offs):
        out[b, :, oy:oy + ph, ox:ox + pw] = patch[b]
    return out


def _local_patch(geo, base_in, base_out, patch, offs, true, fallback):
    """One conv/pool layer on the changed patches only; None when the patch covers most of the output."""
    (kh, kw), (sh, sw), (ph_, pw_), (dh, dw), pad_value, op = geo
    B, _, ph, pw = patch.shape
    H, W = base_in.shape[2], base_in.shape[3]
    Ho, Wo = base_out.shape[2], base_out.shape[3]
    rows = [_changed_range(ty, tn, kh, sh, ph_, dh, Ho) for ty, tn, _, _ in true]
    cols = [_changed_range(tx, tm, kw, sw, pw_, dw, Wo) for _, _, tx, tm in true]
    oh = max(1, max(last - first + 1 for first, last in rows))  # (an input row no output reads: 0)
    ow = max(1, max(last - first + 1 for first, last in cols))
    if oh * ow >= fallback * Ho * Wo:
        return None
    starts = [(min(r[0], Ho - oh), min(q[0], Wo - ow)) for r, q in zip(rows, cols)]
    # the input window those outputs read, in padded coordinates (input row + padding)
    lh, lw = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
    pad_b = max(0, (Ho - 1) * sh + dh * (kh - 1) + 1 - ph_ - H)
    pad_r = max(0, (Wo - 1) * sw + dw * (kw - 1) + 1 - pw_ - W)
    padded = base_in
    if ph_ or pw_ or pad_b or pad_r:
        padded = F.pad(base_in, (pw_, pad_r, ph_, pad_b), value=pad_value)
    crops = []
    for b, (oy, ox) in enumerate(starts):
        r0, c0 = oy * sh, ox * sw
        crop = padded[0, :, r0:r0 + lh, c0:c0 + lw].clone()
        # paste the part of this element's changed patch that falls in the window
        py, px = offs[b][0] + ph_ - r0, offs[b][1] + pw_ - c0  # patch origin in crop coordinates
        y_lo, y_hi = max(py, 0), min(py + ph, lh)
        x_lo, x_hi = max(px, 0), min(px + pw, lw)
        if y_lo < y_hi and x_lo < x_hi:
            crop[:, y_lo:y_hi, x_lo:x_hi] = patch[b, :, y_lo - py:y_hi - py, x_lo - px:x_hi - px]
        crops.append(crop)
    out = op(torch.stack(crops))
    assert out.shape[2:] == (oh, ow), (out.shape, oh, ow)
    new_true = [(r[0], max(0, r[1] - r[0] + 1), q[0], max(0, q[1] - q[0] + 1)) for r, q in zip(rows, cols)]
    return out, starts, new_true
