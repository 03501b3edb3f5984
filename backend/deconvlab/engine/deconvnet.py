"""The deconvnet: project an activation back to pixel space.

Zeiler & Fergus (2013), Sec. 2.1: "To examine a given convnet activation, we
set all other activations in the layer to zero and pass the feature maps as
input to the attached deconvnet layer. Then we successively (i) unpool, (ii)
rectify and (iii) filter to reconstruct the activity in the layer beneath that
gave rise to the chosen activation. This is then repeated until input pixel
space is reached."

``project`` walks a flat ``nn.Sequential`` from the chosen child down to the
input, one backward rule per kind of child, without autograd:

* ``MaxPool2d`` (unpool): each output's signal goes to the input position its
  switch recorded. With *overlapping* pooling (3x3, stride 2) several outputs
  can share one maximum; their signals are **added** (``scatter_add``).
  ``nn.MaxUnpool2d`` writes once per index and would drop all but one.
* ``ReLU`` (rectify) -- the only place where the three methods differ:

  ===========  ===========================================  =====================
  method       rule on the backward signal g                 what it is
  ===========  ===========================================  =====================
  ``deconv``   ``relu(g)``                                   Zeiler & Fergus
  ``guided``   ``relu(g) * [forward input > 0]``             guided backprop
  ``backprop`` ``g * [forward input > 0]``                   the plain gradient
  ===========  ===========================================  =====================

* ``Conv2d`` (filter): the transposed filters (``conv_transpose2d`` with the
  forward weights, stride, dilation and groups), no bias.
* ``Linear``: the transposed weight matrix, no bias.
* ``Flatten``, ``Dropout`` (eval: identity), ``Identity``: their exact adjoint.
* ``AdaptiveAvgPool2d``: its exact adjoint (spread each bin's signal evenly over
  the bin); it is the identity at 224 px for ZFNet/AlexNet and then skipped.
* Normalisation (``LocalResponseNorm``, eval ``BatchNorm2d``): passed through
  unchanged for ``deconv`` and ``guided``, as the paper passes its contrast
  normalisation through. For ``backprop`` their exact gradient is used (LRN's
  through autograd on the recorded input, BatchNorm's per-channel scale), so that
  ``backprop`` is exactly the gradient of the seeded activation.

Seeds (the "chosen activation"):

* ``point``: one position of one unit, by default the unit's strongest activation
  (the first maximum in row-major order); every other activation of the layer is
  zero and the seed's value is the activation itself (as in the paper). For an fc
  unit the one activation (for the last fc layer: the logit, which may be
  negative). A zero activation projects to zero.
* ``map``: the unit's whole feature map, weighted by its activations (other
  units zero). For fc units it is the same as ``point``.

Speed. A point seed only reaches its receptive field, so each signal is kept as
a *window* of its map: a tensor (K, C, h, w) plus a per-item offset (top, left).
All items of one layer have windows of the same size (the size does not depend
on the position), so K items run as one batch: a transposed conv on the window
gives the window below (size ``(h-1)*s + d*(k-1) + 1``, offset ``top*s - p``;
parts outside the map are zeroed), unpooling scatters into the window below, and
ReLU masks and switches are gathered from the record at each item's offset.
While the signal still lives in a single channel per item (from the seed down to
the first conv or linear layer), it is kept as one channel and that layer uses
only the seeded unit's filter (or weight row). Windows that grow past their map
are cut back to it; whole maps (fc and map seeds) run the padded transposed
conv directly. Transposed convolutions onto the 3 colours run as a
polyphase forward convolution (``conv_transpose``).

Below a max pool, on the CPU, the three rules "unpool, rectify, filter" run as
one sparse step (``sparse_step``): the unpooled map is about a quarter
non-zero and rectification halves that, so that step only touches the values
kept. It gives the same windows as the rules here, up to float rounding.

Assumptions: a flat ``nn.Sequential`` of the children listed above, eval mode,
the record of ``switches.record_forward`` for the same model.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .._util import pair
from . import sparse_step
from .receptive_field import Window
from .switches import Record
from .windows import Signal, _zero_outside, fit, gather_window, place

METHODS = ("deconv", "guided", "backprop")
SEEDS = ("point", "map")


# ------------------------------------------------------------------ backward rules

def _relu(m: nn.ReLU, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    g = sig.values  # every signal is a fresh tensor of the backward pass: safe to change in place
    if method in ("deconv", "guided"):
        g = g.clamp_min_(0)
    if method in ("guided", "backprop"):
        out = rec.outputs[name]  # relu output > 0  <=>  relu input > 0
        if sig.spatial:
            mask = gather_window(out, sig, g.shape[-2], g.shape[-1]) > 0
        else:
            rows = out.index_select(0, sig.index)
            mask = (rows.gather(1, sig.units[:, None]) if sig.units is not None else rows) > 0
        g = g.mul_(mask)
    return sig.with_values(g)


PHASE_MAX_CHANNELS = 4  # transposed convs onto at most this many channels (conv1: RGB) run as polyphase conv2d


def phase_weight(weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """The forward-conv weight that computes ``conv_transpose2d(., weight, stride)`` one output
    phase per channel (see ``conv_transpose``): (Cin * sy * sx, C, my, mx), taps flipped."""
    C, cin, kh, kw = weight.shape
    sy, sx = stride
    my, mx = -(-kh // sy), -(-kw // sx)
    wp = weight.new_zeros(C, cin, sy, sx, my, mx)
    for py in range(sy):
        for px in range(sx):
            sub = weight[:, :, py::sy, px::sx]
            wp[:, :, py, px, :sub.shape[2], :sub.shape[3]] = sub
    wp = wp.flip(-1).flip(-2)
    return wp.permute(1, 2, 3, 0, 4, 5).reshape(cin * sy * sx, C, my, mx).contiguous()


def conv_transpose(g: torch.Tensor, weight: torch.Tensor, stride, dilation, groups: int = 1) -> torch.Tensor:
    """``F.conv_transpose2d(g, weight, stride=stride, dilation=dilation, groups=groups)`` (no
    padding: the full window).

    Onto few channels (a first layer: 3 colours) it runs as a *polyphase* forward
    convolution on the CPU: output pixel ``s*q + p`` only meets taps ``s*m + p``
    of the filter, so each of the s*s output phases is a plain correlation of the
    signal with a sub-filter (flipped), computed as one ``conv2d`` whose output
    channels are (colour, phase), then interleaved with ``pixel_shuffle``. The
    same sums; the deconvolution kernel is two to three times slower for this
    shape on a CPU.
    """
    st, dl = pair(stride), pair(dilation)
    cin = weight.shape[1] * groups
    if groups != 1 or cin > PHASE_MAX_CHANNELS or dl != (1, 1) or g.device.type != "cpu" or st[0] != st[1]:
        return F.conv_transpose2d(g, weight, stride=stride, dilation=dilation, groups=groups)
    K, C, h, w = g.shape
    kh, kw = weight.shape[-2:]
    wp = phase_weight(weight, st)
    my, mx = wp.shape[-2:]
    out = F.pixel_shuffle(F.conv2d(g, wp, padding=(my - 1, mx - 1)), st[0])
    return out[:, :, :(h - 1) * st[0] + kh, :(w - 1) * st[1] + kw]


def _conv(m: nn.Conv2d, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    if m.padding_mode != "zeros":
        raise ValueError(f"{name}: expected zero padding, got padding_mode={m.padding_mode!r}")
    geo = Window.of(m)
    Hin, Win = rec.in_shapes[name][-2:]
    weight = m.weight
    if sig.units is not None and m.groups == 1:
        # one channel per item: transpose only the seeded unit's filter (grouped over items)
        K, _, h, w = sig.values.shape
        wk = weight.index_select(0, sig.units)  # (K, Cin, kh, kw)
        if h == 1 and w == 1 and pair(m.dilation) == (1, 1):  # a point: the filter, scaled
            g = wk * sig.values
        else:
            g = F.conv_transpose2d(sig.values.reshape(1, K, h, w), wk, stride=m.stride, dilation=m.dilation, groups=K)
            g = g.reshape(K, weight.shape[1], g.shape[-2], g.shape[-1])
    else:
        sig = sig.dense()
        h, w = sig.values.shape[-2:]
        if (h, w) == (sig.H, sig.W) and not bool(sig.oy.any()) and not bool(sig.ox.any()):
            # whole maps (fc and map seeds): the padded transposed conv gives the input map directly
            out_pad = [geo.output_padding(h, Hin, 0), geo.output_padding(w, Win, 1)]
            if None not in out_pad:
                g = F.conv_transpose2d(sig.values, weight, stride=m.stride, padding=m.padding, output_padding=out_pad,
                                       dilation=m.dilation, groups=m.groups)
                zeros = torch.zeros_like(sig.oy)
                return Signal(g, sig.index, zeros, zeros, Hin, Win, None, g.shape[1])
        g = conv_transpose(sig.values, weight, m.stride, m.dilation, m.groups)
    oy = sig.oy * geo.stride[0] - geo.padding[0]
    ox = sig.ox * geo.stride[1] - geo.padding[1]
    return fit(_zero_outside(sig.with_values(g, oy, ox, Hin, Win, keep_units=False)))


def _maxpool(m: nn.MaxPool2d, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    if name not in rec.switches:
        raise ValueError("record has no max-pool switches: make it with forward(x, switches=True)")
    geo = Window.of(m)
    Hin, Win = rec.in_shapes[name][-2:]
    K, C, h, w = sig.values.shape
    # a window as large as the map along an axis becomes the map (every switch lies in it)
    oy, hi = geo.below(sig.oy, h, 0, Hin)
    ox, wi = geo.below(sig.ox, w, 1, Win)
    # local index in the input window: (iy - oy) * wi + (ix - ox) = idx + iy * (wi - Win) - (oy * wi + ox),
    # with idx = iy * Win + ix the recorded switch and iy its row (computed once per record).
    # Off the map the windows are filled so that local = 0 there (where the signal is 0).
    base = oy * wi + ox
    idx = gather_window(rec.switches[name], sig, h, w, fill=base.tolist())
    if wi != Win:
        rows = rec.switch_yx(name)[..., 0].view(rec.switches[name].shape)
        local = gather_window(rows, sig, h, w, fill=0).long()
        local.mul_(wi - Win).add_(idx).sub_(base.view(K, 1, 1, 1))
    else:
        local = idx.sub_(base.view(K, 1, 1, 1))
    out = sig.values.new_zeros((K, C, hi * wi))
    out.scatter_add_(2, local.reshape(K, C, h * w), sig.values.reshape(K, C, h * w))
    return fit(sig.with_values(out.view(K, C, hi, wi), oy, ox, Hin, Win))


def _linear(m: nn.Linear, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    if sig.units is not None:
        g = m.weight.index_select(0, sig.units) * sig.values  # (K, in) * (K, 1)
    else:
        g = sig.values @ m.weight
    return Signal(g, sig.index)


def _flatten(m: nn.Flatten, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    if m.start_dim != 1 or m.end_dim != -1:
        raise ValueError(f"{name}: expected Flatten(start_dim=1, end_dim=-1), got ({m.start_dim}, {m.end_dim})")
    sig = sig.dense()
    shape = rec.in_shapes[name]
    K = sig.values.shape[0]
    g = sig.values.reshape((K,) + tuple(shape))
    if g.dim() != 4:
        return Signal(g, sig.index)
    zeros = torch.zeros(K, dtype=torch.long, device=g.device)
    return Signal(g, sig.index, zeros, zeros, shape[-2], shape[-1], None, shape[0])


def _identity(m, name, sig, rec, method):
    return sig


def _adaptive_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """(n_out, n_in) averaging matrix of AdaptiveAvgPool along one axis."""
    P = torch.zeros(n_out, n_in, dtype=dtype, device=device)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        P[i, a:b] = 1.0 / (b - a)
    return P


def _adaptive_avgpool(m: nn.AdaptiveAvgPool2d, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    Hin, Win = rec.in_shapes[name][-2:]
    if (sig.H, sig.W) == (Hin, Win):
        return sig  # output size == input size: the identity
    g = place(sig)  # full output maps (K, C, Ho, Wo)
    Ph = _adaptive_matrix(Hin, sig.H, g.dtype, g.device)
    Pw = _adaptive_matrix(Win, sig.W, g.dtype, g.device)
    g = torch.einsum("ih,kcij,jw->kchw", Ph, g, Pw)  # Ph^T G Pw: adjoint of Ph X Pw^T
    zeros = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
    return Signal(g, sig.index, zeros, zeros, Hin, Win, None, g.shape[1])


def _lrn(m: nn.LocalResponseNorm, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    if method != "backprop":
        return sig  # passed through, as the paper's deconvnet does
    sig = sig.dense()
    x = gather_window(rec.inputs[name], sig, sig.values.shape[-2], sig.values.shape[-1])
    with torch.inference_mode(False), torch.enable_grad():
        xi = x.detach().clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(m(xi), xi, sig.values.detach().clone())
    return sig.with_values(gi.detach())


def _batchnorm(m: nn.BatchNorm2d, name: str, sig: Signal, rec: Record, method: str) -> Signal:
    if method != "backprop":
        return sig
    if m.running_var is None:
        raise ValueError(f"{name}: BatchNorm2d without running statistics has no fixed eval-mode gradient")
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    if sig.units is not None:
        return sig.with_values(sig.values * scale.index_select(0, sig.units).view(-1, 1, 1, 1))
    return sig.with_values(sig.values * scale.view(1, -1, 1, 1))


RULES = [
    (nn.ReLU, _relu),
    (nn.Conv2d, _conv),
    (nn.MaxPool2d, _maxpool),
    (nn.Linear, _linear),
    (nn.Flatten, _flatten),
    (nn.Dropout, _identity),
    (nn.Identity, _identity),
    (nn.AdaptiveAvgPool2d, _adaptive_avgpool),
    (nn.LocalResponseNorm, _lrn),
    (nn.BatchNorm2d, _batchnorm),
]


def rule_for(m: nn.Module):
    for cls, fn in RULES:
        if isinstance(m, cls):
            return fn
    names = ", ".join(cls.__name__ for cls, _ in RULES)
    raise TypeError(f"deconvnet: no backward rule for a {type(m).__name__}; expected one of {names}")


# ------------------------------------------------------------------ seeds and the pass

def seed_signal(act: torch.Tensor, n: torch.Tensor, units: torch.Tensor, ys: torch.Tensor | None,
                xs: torch.Tensor | None, seed: str) -> Signal:
    """The seeds of K items at one child's output ``act`` (N, C, H, W) or (N, C).

    ``ys``/``xs``: positions of point seeds (already resolved); ignored for maps.
    """
    K = n.shape[0]
    C = act.shape[1]
    if act.dim() == 2:
        value = act[n, units].view(K, 1)
        return Signal(value, n, units=units, channels=C)
    H, W = act.shape[-2:]
    if seed == "point":
        value = act[n, units, ys, xs].view(K, 1, 1, 1)
        return Signal(value, n, ys.clone(), xs.clone(), H, W, units, C)
    g = act[n, units].unsqueeze(1)  # (K, 1, H, W)
    zeros = torch.zeros(K, dtype=torch.long, device=act.device)
    return Signal(g, n, zeros, zeros, H, W, units, C)


CHUNK_ELEMENTS = 6 << 20  # items per backward pass are chosen so that no buffer passes 24 MB


def peak_elements(children: list[tuple[str, nn.Module]], start: int, rec: Record, seed: str) -> int:
    """The largest signal (in elements) one item holds on its way down from child ``start``.

    Batches are cut so that K times this stays under ``CHUNK_ELEMENTS``: buffers
    over 32 MB are fresh ``mmap`` pages for the C allocator on every call, and
    their page faults can cost more than the arithmetic. The unpooled maps that
    ``sparse_step`` never makes (a pool and its ReLU) do not count.
    """
    nxt = children[start + 1][0] if start + 1 < len(children) else None
    out = rec.in_shapes[nxt] if nxt in rec.in_shapes else tuple(rec.logits.shape[1:])
    h = w = None
    if len(out) == 3:
        h, w = ((1, 1) if seed == "point" else out[1:])
    peak = 1
    unmade: set[int] = set()
    for i in range(start, -1, -1):
        name, m = children[i]
        if isinstance(m, nn.MaxPool2d) and sparse_step.fuses(children, i):
            unmade.update((i, i - 1))
        shape = rec.in_shapes[name]
        if len(shape) != 3:
            peak, h, w = max(peak, shape[0]), None, None
            continue
        C, Hin, Win = shape
        if h is None or isinstance(m, (nn.Flatten, nn.AdaptiveAvgPool2d)):
            h, w = Hin, Win
        elif isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            geo = Window.of(m)
            h = min((h - 1) * geo.stride[0] + geo.extent(0), Hin + geo.extent(0))
            w = min((w - 1) * geo.stride[1] + geo.extent(1), Win + geo.extent(1))
        if i not in unmade:
            peak = max(peak, C * h * w)
    return peak


@torch.no_grad()
def backward(children: list[tuple[str, nn.Module]], start: int, sig: Signal, rec: Record,
             method: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``sig`` (the signal at child ``start``'s output) down to the input: (K, C_in, H, W),
    written into ``out`` (zeros of that shape) when given."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    i = start
    while i >= 0:
        if sparse_step.applies(children, i, sig, rec):  # unpool, rectify, filter as one sparse step
            sig = sparse_step.unpool_rectify_filter(children, i, sig, rec, method)
            i -= 3
            continue
        name, m = children[i]
        sig = rule_for(m)(m, name, sig, rec, method)
        i -= 1
    if not sig.spatial:
        raise ValueError("deconvnet: the signal reached the input as a vector; expected an image input")
    return place(sig, out)
