"""Receptive fields of any traced CNN: an ``fx`` graph -> the input box of one unit.

Zeiler & Fergus (2013) show each top activation with the image patch it comes
from (Sec. 4, Fig. 2). The *receptive field* of a unit is the set of input
pixels that can influence it (Araujo, Norris & Sim, "Computing Receptive Fields
of Convolutional Neural Networks", Distill 2019; Luo et al., NIPS 2016): pixel
p is in it when, for some weights and some other pixels, the unit's value
changes with p. Its box is the bounding rectangle of that set,
``(top, left, bottom, right)`` with bottom and right exclusive.

The sequential engine's ``receptive_field`` walks a flat ``nn.Sequential``; this
module walks a ``torch.fx.GraphModule`` of any model. The box of the unit goes
*backwards* through every branch, each node handing a box to each of its
inputs, and the boxes that reach a node from several users are united (in a
multi-path net the receptive field is the union over paths; Araujo et al. work
such nets path by path). Per axis every rule is monotone, so the bounding box of a union is the
union of bounding boxes: the result is the exact bounding box of the receptive
field, not a bound (except where the table says "superset").

Map sizes come from one run of the graph on zeros of ``input_hw`` (an
``fx.Interpreter``, in eval mode, the caller's train/eval flags restored). A
forward pass over the graph then finds, for every node, which tensor dims are
its rows and columns (``permute`` moves them: NHWC blocks) and whether it
depends on the image at all (weights and constants receive no boxes).

=====================================  =====================================================
op (module or functional)              what the box ``[a, b)`` of an output axis becomes
=====================================  =====================================================
Conv2d, MaxPool2d, AvgPool2d,          ``[a*s - p, (b-1)*s - p + d*(k-1) + 1)`` (kernel k,
``F.conv2d``, ``F.max_pool2d``,        stride s, padding p, dilation d); ``padding="same"``:
``F.avg_pool2d``                       p = d*(k-1)//2 (PyTorch pads the odd pixel on the
                                       right); ``ceil_mode`` changes only the map size
conv ``padding_mode``                  reflect / replicate: as zeros (the pixels they copy are
                                       inside the clipped window); circular: the whole axis
                                       where a window wraps (superset)
AdaptiveAvg/MaxPool2d,                 ``[floor(a*n_in/n_out), ceil(b*n_in/n_out))``, PyTorch's
``F.adaptive_*_pool2d``                bins; to 1x1 (a global pool): the whole map
elementwise: activations, batch norm   the same box; an operand broadcast along an axis (size
(eval), dropout, identity, add, mul,   1) gets ``[0, 1)`` there, so a squeeze-excitation gate
sub, div, where, clamp, expand, ..     (mul by a per-channel tensor from a global pool) makes
                                       the box the whole image
cat along channels (or batch)          the same box to every input
cat along rows or columns              each input gets the part of the box on it, shifted by
                                       its offset (none if the box misses it)
``F.pad`` (constant), ZeroPad2d,       the box shifted by the padding before it; a position
ConstantPad2d                          in the padding sees nothing: box (0, 0, 0, 0)
permute, transpose, view / reshape,    the same box on the moved dims; a reshape that does not
flatten, squeeze, unsqueeze, split     keep rows and columns intact, or a split along them:
(along channels)                       "untracked" (below)
``x[..., a::s, c::t]`` (slices)        ``[a + i*s, ..)`` per sliced axis
mean/sum/amax/softmax/normalize/       over channels: the same box; over a spatial axis:
layer_norm/group_norm/instance_norm,   that whole axis (a global pool: the whole map)
Linear (last dim), LRN
a node with no spatial dims (the       "untracked": every input gets its whole map; so an fc
output of flatten, linear, a global    unit, or ``y = x = None``, sees what the whole output
mean) or an untracked one              sees: the whole image in a CNN
a module that is a leaf of the         traced on its own (``torch.fx``) and walked through;
graph's tracer but not a ``torch.nn``  one with a tuple output: untracked
op (Conv2dNormActivation,
SqueezeExcitation under torchvision's
tracer)
anything else (upsampling, roll, a     ``UnsupportedOpError`` naming the op (``strict=True``),
``torch.nn`` leaf not listed, ..)      or with ``strict=False`` every input's whole map
                                       (always a superset)
=====================================  =====================================================

The whole map is always a superset of what a unit sees, so "untracked" is safe;
it is used only where the op is known. Batch norm counts as elementwise: the
boxes are those of the net in eval mode (running statistics; in training mode
a batch norm mixes every position). Boxes are clipped to each map at every step
(positions outside a map are padding) unless ``clip=False``, which gives every
position its full, unclipped box (``box_size``).

Nodes are named by ``fx.Node``, by the qualified names of
``torchvision.models.feature_extraction.get_graph_node_names`` (eval mode:
``layer1.0.add``, ``layer3.1.relu_1``), by fx node name, or by a module path
(``layer3.1``: the last node under it, the block's output). ``trace`` records
the qualified names; for other graphs they are made from ``nn_module_stack``
(``torch.fx.symbolic_trace``) or passed as ``qualnames`` (the graph engine's
``Traced.qualname``).

Errors: an unknown node name -> ``ValueError`` ("expected one of ..., got ...");
a position outside the node's map -> ``ValueError`` naming the range; an op
with no rule -> ``UnsupportedOpError`` (a ``TypeError``). Known limit: an
in-place op whose result the code drops (``x.add_(y)``, then ``x`` is used) is
invisible in an fx graph; ``graph_trace.trace_model`` functionalises such
graphs first.

One module of about 800 lines, over the project's 500: the rule table, the
forward pass over layouts and the backward walk are one algorithm sharing every
private structure (shapes, dims, rules), and split they would be harder to read
against the table above.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
import weakref
from typing import Mapping

import torch
import torchvision
from torch import fx, nn
from torch.nn import functional as F
from .._util import pair

Box = tuple[int, int, int, int]  # internal: (top, bottom, left, right) on one node's map
ALL = None  # "every position of the node"


class UnsupportedOpError(TypeError):
    """An op on the way from a unit to the image that has no receptive-field rule."""


def _fns(names: str, *spaces) -> set:
    return {getattr(ns, n) for n in names.split() for ns in spaces if callable(getattr(ns, n, None))}


ELEMENTWISE_NAMES = ("relu relu_ relu6 hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_ silu gelu hardswish "
                     "hardsigmoid leaky_relu elu selu celu softplus mish logsigmoid dropout dropout2d "
                     "alpha_dropout abs neg exp log sqrt rsqrt pow clamp clamp_ clip add add_ sub sub_ mul mul_ "
                     "div div_ truediv iadd isub imul itruediv floordiv where maximum minimum contiguous clone "
                     "detach float half double to type_as expand expand_as broadcast_to")
_ELEMENTWISE = _fns(ELEMENTWISE_NAMES, torch, F, operator) | {torchvision.ops.stochastic_depth}
_FIRST_ARG = _fns("batch_norm", torch, F)  # elementwise in the first argument; stats etc. get ALL
_RESHAPE = _fns("flatten reshape squeeze unsqueeze unflatten", torch)
_PERMUTE = _fns("permute transpose swapaxes swapdims", torch)
_CAT = _fns("cat concat concatenate", torch)
_SPLIT = _fns("split chunk", torch)
_REDUCE = _fns("mean sum amax amin std var logsumexp", torch)
_SOFTMAX = _fns("softmax log_softmax", torch, F)
_CONV = _fns("conv2d", torch, F)
_NORM_FNS = _fns("layer_norm group_norm instance_norm normalize local_response_norm", torch, F)
_MAXPOOL = {F.max_pool2d, torch.max_pool2d}
_AVGPOOL = {F.avg_pool2d}
_ADAPTIVE = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_METHOD_KIND = {**{n: "elementwise" for n in ELEMENTWISE_NAMES.split()},
                **{n: "reshape" for n in "view reshape flatten squeeze unsqueeze unflatten view_as".split()},
                **{n: "permute" for n in "permute transpose swapaxes swapdims".split()},
                **{n: "reduce" for n in "mean sum amax amin std var logsumexp".split()},
                "softmax": "softmax", "log_softmax": "softmax", "split": "split", "chunk": "split",
                "size": "nodata", "dim": "nodata"}
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                        nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
                        nn.Softsign, nn.LogSigmoid, nn.Threshold, nn.Identity, nn.Dropout, nn.Dropout1d,
                        nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                        nn.modules.batchnorm._BatchNorm)
_NORM_ALL = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)  # mix every dim from 1 (2) on
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _aten_functions() -> dict:
    """ATen overloads (what a ``torch.export`` program's graph is made of) -> the torch function whose
    rule each shares: the same op with the same positional arguments (``aten.conv2d.default(x, w, b,
    stride, padding, dilation, groups)`` is ``F.conv2d``'s; ``aten.max_pool2d.default``'s stride ``[]``
    means the kernel, as ``None`` does). Overloads this torch lacks are skipped."""
    aten, out = torch.ops.aten, {}
    pairs = {"relu.default": F.relu, "relu_.default": F.relu, "relu6.default": F.relu6,
             "hardtanh.default": F.hardtanh, "sigmoid.default": torch.sigmoid, "tanh.default": torch.tanh,
             "dropout.default": F.dropout, "clone.default": torch.clone,
             "add.Tensor": operator.add, "sub.Tensor": operator.sub, "mul.Tensor": operator.mul,
             "conv2d.default": F.conv2d, "max_pool2d.default": F.max_pool2d, "avg_pool2d.default": F.avg_pool2d,
             "adaptive_avg_pool2d.default": F.adaptive_avg_pool2d, "flatten.using_ints": torch.flatten,
             "view.default": torch.reshape, "reshape.default": torch.reshape, "cat.default": torch.cat,
             "mean.dim": torch.mean}
    for name, fn in pairs.items():
        packet, overload = name.split(".")
        op = getattr(getattr(aten, packet, None), overload, None)
        if op is not None:
            out[op] = fn
    return out


_ATEN = _aten_functions()
EXPECTED = ("a conv/pool/adaptive pool, an elementwise op, cat, split, a reshape/permute/slice, "
            "a reduction, softmax or norm, flatten/linear, or a module fx can trace into")



def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _dims(d, rank: int) -> set[int]:
    if d is None:
        return set(range(rank))
    return {int(v) % rank for v in (d if isinstance(d, (tuple, list)) else (d,))}


def window_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's output size of a sliding window along one axis."""
    span = n + 2 * p - d * (k - 1) - 1
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= n + p else out  # the last window starts inside input or left pad


def window_back(a: int, b: int, k: int, s: int, p: int, d: int) -> tuple[int, int]:
    """Output positions ``[a, b)`` of a sliding window -> the input positions they cover."""
    return a * s - p, (b - 1) * s - p + d * (k - 1) + 1


def adaptive_back(a: int, b: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Bins ``[a, b)`` of an adaptive pool from ``n_in`` to ``n_out`` -> the input they pool."""
    return (a * n_in) // n_out, -(-(b * n_in) // n_out)


class _Shapes(fx.Interpreter):
    """Runs the graph once and keeps each node's shape: a ``torch.Size``, a tuple of them for
    tuple outputs, or None for values that are not tensors."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, object] = {}
        self.like: dict[fx.Node, dict] = {}  # dtype and device, to make zeros like a value

    def run_node(self, n: fx.Node):
        v = super().run_node(n)
        if isinstance(v, torch.Tensor):
            self.shapes[n], self.like[n] = v.shape, dict(dtype=v.dtype, device=v.device)
        elif isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v):
            self.shapes[n] = tuple(t.shape for t in v)
        else:
            self.shapes[n] = None
        return v


def record_shapes(gm: fx.GraphModule, *inputs) -> _Shapes:
    """Every node's output shape on ``inputs``, in eval mode; the modules' flags are restored."""
    flags = [(m, m.training) for m in gm.modules()]
    try:
        gm.eval()
        rec = _Shapes(gm)
        with torch.no_grad():
            rec.run(*inputs)
    finally:
        for m, t in flags:
            m.training = t
    return rec


def _module_window(m: nn.Module):
    """(rows, cols, padding mode) of a Conv2d / MaxPool2d / AvgPool2d; rows = (k, s, p, d, ceil)."""
    k = pair(m.kernel_size)
    if isinstance(m, nn.Conv2d):
        return _window(k, m.stride, m.padding, m.dilation, False, m.padding_mode)
    stride = m.stride if m.stride is not None else m.kernel_size
    dil = m.dilation if isinstance(m, nn.MaxPool2d) else 1
    return _window(k, stride, m.padding, dil, bool(m.ceil_mode), "zeros")


def _window(k, stride, padding, dilation, ceil, mode):
    k, d = pair(k), pair(dilation)
    s = pair(stride) if stride not in (None, (), []) else k
    if isinstance(padding, str):  # "valid": none; "same": PyTorch puts the odd pixel on the right
        p = (0, 0) if padding == "valid" else tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
    else:
        p = pair(padding)
    same = padding == "same"
    return tuple((k[i], s[i], p[i], d[i], ceil, same) for i in range(2)) + (mode,)


def _function_window(n: fx.Node, shapes) -> tuple:
    t = _ATEN.get(n.target, n.target)
    if t in _CONV:
        k = tuple(shapes[_arg(n, 1, "weight")][2:])
        return _window(k, _arg(n, 3, "stride", 1), _arg(n, 4, "padding", 0), _arg(n, 5, "dilation", 1),
                       False, "zeros")
    if t in _MAXPOOL:
        return _window(_arg(n, 1, "kernel_size"), _arg(n, 2, "stride"), _arg(n, 3, "padding", 0),
                       _arg(n, 4, "dilation", 1), bool(_arg(n, 5, "ceil_mode", False)), "zeros")
    return _window(_arg(n, 1, "kernel_size"), _arg(n, 2, "stride"), _arg(n, 3, "padding", 0), 1,
                   bool(_arg(n, 4, "ceil_mode", False)), "zeros")


def _index_map(idx, shape) -> tuple[dict, dict] | None:
    """``x[idx]`` on a tensor of ``shape`` -> ({in dim: out dim}, {in dim: (start, step)}), or
    None for what is not plain slicing (None, tensors, traced values in the index)."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if sum(e is Ellipsis for e in idx) > 1 or any(e is None or isinstance(e, (fx.Node, torch.Tensor))
                                                  for e in idx):
        return None
    if Ellipsis in idx:
        i = idx.index(Ellipsis)
        idx = idx[:i] + (slice(None),) * (len(shape) - len(idx) + 1) + idx[i + 1:]
    idx = idx + (slice(None),) * (len(shape) - len(idx))
    dim_map, slices, out = {}, {}, 0
    for d, e in enumerate(idx):
        if isinstance(e, slice):
            if any(isinstance(v, fx.Node) for v in (e.start, e.stop, e.step)):
                return None
            start, _, step = e.indices(int(shape[d]))
            dim_map[d], slices[d], out = out, (start, step), out + 1
        elif not isinstance(e, int):
            return None
    return dim_map, slices


def _reshape_axes(axes, s_in, s_out):
    """Rows and columns survive a reshape that keeps every dim up to them, or keeps them as the
    last two dims (row-major order then leaves each (row, column) where it was)."""
    h, w = axes
    if len(s_out) > w and tuple(s_out[:w + 1]) == tuple(s_in[:w + 1]):
        return axes
    if (h, w) == (len(s_in) - 2, len(s_in) - 1) and len(s_out) >= 2 and tuple(s_out[-2:]) == tuple(s_in[-2:]):
        return len(s_out) - 2, len(s_out) - 1
    return None


class _Graph:
    """One graph's geometry: shapes, which nodes depend on the sources, their row/column dims
    and each node's rule; ``propagate`` walks boxes from seeds back to the placeholders."""

    def __init__(self, gm: fx.GraphModule, inputs: list, source_axes: list, strict: bool):
        self.gm, self.strict, self.spatial_cat = gm, strict, False
        self.nodes = list(gm.graph.nodes)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        rec = record_shapes(gm, *inputs)
        self.shapes, self.like = rec.shapes, rec.like
        self.dep: dict[fx.Node, bool] = {}
        self.axes: dict[fx.Node, tuple[int, int] | None] = {}
        self.rules: dict[fx.Node, tuple[str, object]] = {}
        sources = dict(zip(self.placeholders, source_axes))
        for n in self.nodes:
            ins = self.inputs(n)
            self.dep[n] = (n in sources and sources[n] is not False) or (
                n.op != "get_attr" and self.shapes.get(n) is not None and bool(ins))
            if not self.dep[n]:
                self.axes[n] = None
                continue
            self.rules[n] = self._classify(n) if n.op != "placeholder" else ("source", None)
            self.axes[n] = sources[n] if n.op == "placeholder" else self._forward_axes(n)

    # -- structure -------------------------------------------------------------------------
    def inputs(self, n: fx.Node) -> list[fx.Node]:
        """The image-dependent tensor inputs of ``n``, in order, once each."""
        found: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), found.append)
        return list(dict.fromkeys(i for i in found if self.dep.get(i)))

    def hw(self, n: fx.Node) -> tuple[int, int] | None:
        if self.axes.get(n) is None:
            return None
        s = self.shapes[n]
        s = s[0] if isinstance(s, tuple) and s and isinstance(s[0], torch.Size) else s
        return int(s[self.axes[n][0]]), int(s[self.axes[n][1]])

    def _rank(self, n) -> int:
        s = self.shapes.get(n)
        return len(s) if isinstance(s, torch.Size) else -1

    # -- rules -----------------------------------------------------------------------------
    def _classify(self, n: fx.Node) -> tuple[str, object]:
        if n.op == "call_module":
            return self._classify_module(n, self.gm.get_submodule(n.target))
        if n.op == "call_method":
            kind = _METHOD_KIND.get(n.target)
            return (self._kind(kind), self._info(n, kind)) if kind else ("unknown", f"method .{n.target}()")
        if n.op != "call_function":
            return "nodata", None
        t = _ATEN.get(n.target, n.target)  # an exported program's ATen op: its torch function's rule
        table = [(_ELEMENTWISE, "elementwise"), (_FIRST_ARG, "first"), (_RESHAPE, "reshape"),
                 (_PERMUTE, "permute"), (_CAT, "cat"), (_SPLIT, "split"), (_REDUCE, "reduce"),
                 (_SOFTMAX, "softmax"), (_ADAPTIVE, "adaptive"), (_CONV | _MAXPOOL | _AVGPOOL, "window"),
                 ({operator.getitem}, "getitem"), ({F.pad}, "pad"), (_NORM_FNS, "norm")]
        for fns, kind in table:
            if t in fns:
                return self._kind(kind), self._info(n, kind)
        return "unknown", f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', t)}"

    @staticmethod
    def _kind(kind: str) -> str:
        return "mix" if kind in ("reduce", "softmax", "norm") else kind

    def _info(self, n: fx.Node, kind: str):
        x = n.args[0] if n.args else None
        r = self._rank(x) if isinstance(x, fx.Node) else -1
        if kind == "window":
            return _function_window(n, self.shapes)
        if kind in ("reduce", "softmax"):
            d = _arg(n, 1, "dim")
            keep = kind == "softmax" or bool(_arg(n, 2, "keepdim", False))
            return _dims(d, r), (set() if keep else _dims(d, r))
        if kind == "norm":
            name = n.target.__name__
            if name == "layer_norm":
                ns = _arg(n, 1, "normalized_shape")
                return set(range(r - (1 if isinstance(ns, int) else len(ns)), r)), set()
            if name == "normalize":
                return {int(_arg(n, 2, "dim", 1)) % r}, set()
            first = {"group_norm": 1, "instance_norm": 2}.get(name)  # else local_response_norm
            return (set(range(first, r)) if first else {1}), set()
        if kind == "permute":
            return self._perm(n, r)
        if kind == "pad":
            mode = _arg(n, 2, "mode", "constant")
            return tuple(_arg(n, 1, "pad")) if mode == "constant" else mode
        if kind in ("cat", "split"):
            return int(_arg(n, 1 if kind == "cat" else 2, "dim", 0))
        return None

    def _perm(self, n: fx.Node, r: int) -> list[int]:
        name = n.target if isinstance(n.target, str) else n.target.__name__
        if name == "permute":
            rest = n.args[1:] if len(n.args) > 1 else (n.kwargs.get("dims"),)
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            return [int(d) % r for d in dims]
        a, b = int(_arg(n, 1, "dim0")) % r, int(_arg(n, 2, "dim1")) % r
        perm = list(range(r))
        perm[a], perm[b] = b, a
        return perm

    def _classify_module(self, n: fx.Node, m: nn.Module) -> tuple[str, object]:
        r = self._rank(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else -1
        torch_nn = type(m).__module__.startswith("torch.nn")
        if torch_nn and isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            return "window", _module_window(m)
        if torch_nn and isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return "adaptive", None
        if torch_nn and isinstance(m, _ELEMENTWISE_MODULES):
            return "first", None
        if torch_nn and isinstance(m, (nn.Flatten, nn.Unflatten)):
            return "reshape", None
        if torch_nn and isinstance(m, nn.Linear):
            return "mix", ({r - 1}, set())
        if torch_nn and isinstance(m, nn.LayerNorm):
            return "mix", (set(range(r - len(m.normalized_shape), r)), set())
        if torch_nn and isinstance(m, _NORM_ALL):
            return "mix", (set(range(1 if isinstance(m, nn.GroupNorm) else 2, r)), set())
        if torch_nn and isinstance(m, (nn.LocalResponseNorm, nn.CrossMapLRN2d)):
            return "mix", ({1}, set())
        if torch_nn and isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)):
            return "mix", (_dims(r - 3 if isinstance(m, nn.Softmax2d) else m.dim, r), set())
        if torch_nn and isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
            return "pad", tuple(m.padding)
        if isinstance(m, torchvision.ops.Permute):
            return "permute", [int(d) % r for d in m.dims]
        if torch_nn and not isinstance(m, _CONTAINERS):
            return "unknown", f"module {type(m).__name__} ({n.target})"
        return "module", self._sub(n, m)

    def _sub(self, n: fx.Node, m: nn.Module) -> "_Graph":
        """A module the graph did not trace into (a leaf of its tracer): trace it on its own."""
        gm = fx.GraphModule(m, fx.Tracer().trace(m))
        phs = [p for p in gm.graph.nodes if p.op == "placeholder"]
        args = list(n.args) + [n.kwargs[p.target] for p in phs[len(n.args):] if p.target in n.kwargs]
        values, axes = [], []
        for a in args:
            if isinstance(a, fx.Node):
                if not isinstance(self.shapes.get(a), torch.Size):
                    raise UnsupportedOpError(f"receptive field: module {n.target!r} takes a non-tensor value "
                                             f"computed in the graph ({a.name!r}); expected tensors or constants")
                values.append(torch.zeros(self.shapes[a], **self.like[a]))
                axes.append(self.axes.get(a) if self.dep.get(a) else False)
            else:
                values.append(a)
                axes.append(False)
        sub = _Graph(gm, values, axes, self.strict)
        self.spatial_cat |= sub.spatial_cat
        return sub

    # -- forward: which dims are rows and columns --------------------------------------------
    def _forward_axes(self, n: fx.Node):
        kind, info = self.rules[n]
        ins = self.inputs(n)
        x = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else (ins[0] if ins else None)
        ax = self.axes.get(x) if x is not None else None
        s_in, s_out = self.shapes.get(x), self.shapes[n]
        if kind in ("window", "adaptive"):
            if ax != (2, 3) or len(s_out) != 4:
                return None
            if kind == "window":
                self._check_window(n, info, s_in, s_out)
            return ax
        if kind == "elementwise":
            found = {(self.axes[i][0] + len(s_out) - len(self.shapes[i]),
                      self.axes[i][1] + len(s_out) - len(self.shapes[i])) for i in ins if self.axes[i]}
            return found.pop() if len(found) == 1 else None
        if kind == "first":
            return ax if s_out == s_in else None
        if kind == "mix":
            mixed, removed = info
            if ax is None or (set(ax) & mixed and tuple(s_out) != tuple(s_in)):
                return None
            return tuple(a - sum(d < a for d in removed) for a in ax)
        if kind == "cat":
            found = {self.axes[i] for i in ins}
            if len(found) != 1 or None in found:
                return None
            self.spatial_cat |= info % len(s_out) in next(iter(found))
            return next(iter(found))
        if kind == "split":
            return None if ax is None or info % len(s_in) in ax else ax
        if kind == "permute":
            return None if ax is None else (info.index(ax[0]), info.index(ax[1]))
        if kind == "reshape":
            return None if ax is None or not isinstance(s_out, torch.Size) else _reshape_axes(ax, s_in, s_out)
        if kind == "getitem":
            return self._getitem_axes(n, x, ax)
        if kind == "pad":
            if isinstance(info, str):  # reflect, replicate, circular: copies from elsewhere
                self.rules[n] = ("unknown", f"F.pad(mode={info!r})")
                return None
            return ax  # same dims, shifted by the padding before them (negative: a crop)
        if kind == "module":
            out = next(o for o in info.nodes if o.op == "output").args[0]
            return info.axes.get(out) if isinstance(out, fx.Node) else None
        return None  # nodata, unknown

    def _getitem_axes(self, n, x, ax):
        if ax is None:
            return None
        if not isinstance(self.shapes[x], torch.Size):  # an item of a split: same rows and columns
            return ax
        m = _index_map(n.args[1], self.shapes[x])
        if m is None or ax[0] not in m[0] or ax[1] not in m[0]:
            return None
        self.rules[n] = ("slice", m[1])
        return m[0][ax[0]], m[0][ax[1]]

    def _check_window(self, n, info, s_in, s_out):
        for axis in range(2):
            k, s, p, d, ceil, same = info[axis]
            want = s_in[2 + axis] if same else window_out(s_in[2 + axis], k, s, p, d, ceil)
            if want != s_out[2 + axis]:
                raise RuntimeError(f"receptive field: node {n.name!r}: a window (k={k}, s={s}, p={p}, d={d}, "
                                   f"ceil={ceil}) gives {want}, the graph gave {s_out[2 + axis]}")

    # -- backward: the box of an output -> boxes of the inputs ---------------------------------
    def back(self, n: fx.Node, box, clip: bool) -> list[tuple[fx.Node, object]]:
        kind, info = self.rules[n]
        ins = self.inputs(n)
        if kind == "unknown":
            if self.strict:
                raise UnsupportedOpError(f"receptive field: no rule for {info} at node {n.name!r}; expected "
                                         f"{EXPECTED} (or pass strict=False to give such an op's inputs "
                                         f"their whole maps)")
            return [(i, ALL) for i in ins]
        if box is ALL or kind == "source":
            return [(i, ALL) for i in ins]
        x = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        rest = [(i, ALL) for i in ins if i is not x]
        t, b, l, r = box
        if kind == "window":
            (t, b), (l, r) = (self._window_axis(a, c, info[i], info[2], self.hw(x)[i])
                              for i, (a, c) in enumerate(((t, b), (l, r))))
        elif kind == "adaptive":
            (hi, wi), (ho, wo) = self.hw(x), self.hw(n)
            (t, b), (l, r) = adaptive_back(t, b, hi, ho), adaptive_back(l, r, wi, wo)
        elif kind == "elementwise":
            return [(i, self._broadcast(n, i, box)) for i in ins]
        elif kind == "cat":
            return self._cat_back(n, info, box)
        elif kind == "mix":
            hi, wi = self.hw(x)
            ax = self.axes[x]
            t, b = (0, hi) if ax[0] in info[0] else (t, b)
            l, r = (0, wi) if ax[1] in info[0] else (l, r)
        elif kind == "slice":
            (s0, st0), (s1, st1) = info[self.axes[x][0]], info[self.axes[x][1]]
            t, b, l, r = s0 + t * st0, s0 + (b - 1) * st0 + 1, s1 + l * st1, s1 + (r - 1) * st1 + 1
        elif kind == "module":
            return self._module_back(n, info, box, clip)
        elif kind == "pad":  # (left, right, top, bottom, ...) from the last dim on
            r_ = len(self.shapes[x])
            first = [info[2 * (r_ - 1 - d)] if 2 * (r_ - 1 - d) < len(info) else 0 for d in self.axes[x]]
            t, b, l, r = t - first[0], b - first[0], l - first[1], r - first[1]
        return ([(x, (t, b, l, r))] if x is not None else []) + rest

    @staticmethod
    def _window_axis(a, b, geom, mode, n_in):
        k, s, p, d, _, _ = geom
        lo, hi = window_back(a, b, k, s, p, d)
        if mode == "circular" and (lo < 0 or hi > n_in):
            return 0, n_in  # wraps around: conservatively the whole axis
        if mode in ("reflect", "replicate") and 2 * p > d * (k - 1):
            raise UnsupportedOpError(f"receptive field: {mode} padding of {p} wider than half the window; "
                                     f"expected padding <= {d * (k - 1) // 2}")
        return lo, hi  # reflect/replicate padding copies pixels that the clipped window covers

    def _broadcast(self, n, i, box):
        if self.axes[i] is None:
            return ALL
        out = [(box[0], box[1]), (box[2], box[3])]
        for a, (n_o, n_i) in enumerate(zip(self.hw(n), self.hw(i))):
            if n_i != n_o:
                out[a] = (0, 1)  # broadcast: every position reads the one there is
        return out[0] + out[1]

    def _cat_back(self, n, dim, box):
        rank = len(self.shapes[n])
        dim %= rank
        ax = self.axes[n]
        if dim not in ax:
            return [(i, box) for i in self.inputs(n)]
        a = ax.index(dim)
        lo, hi = box[2 * a], box[2 * a + 1]
        out, off = [], 0
        for i in n.args[0] if n.args else n.kwargs["tensors"]:
            size = int(self.shapes[i][dim]) if isinstance(i, fx.Node) else int(i.shape[dim])
            s, e = max(lo, off) - off, min(hi, off + size) - off
            if self.dep.get(i) and s < e:
                part = list(box)
                part[2 * a], part[2 * a + 1] = s, e
                out.append((i, tuple(part)))
            off += size
        return out

    def _module_back(self, n, sub: "_Graph", box, clip):
        out = next(o for o in sub.nodes if o.op == "output").args[0]
        got = sub.propagate({out: box}, clip)
        args = list(n.args) + [n.kwargs[p.target] for p in sub.placeholders[len(n.args):] if p.target in n.kwargs]
        return [(a, got[p]) for p, a in zip(sub.placeholders, args)
                if isinstance(a, fx.Node) and self.dep.get(a) and p in got]

    # -- the walk -------------------------------------------------------------------------------
    def _put(self, boxes: dict, n: fx.Node, box, clip: bool) -> None:
        if not self.dep.get(n):
            return
        hw = self.hw(n)
        if hw is None:
            box = ALL
        elif box is ALL:
            box = (0, hw[0], 0, hw[1])
        elif clip:
            box = (max(box[0], 0), min(box[1], hw[0]), max(box[2], 0), min(box[3], hw[1]))
        if box is not ALL and (box[0] >= box[1] or box[2] >= box[3]):
            return
        old = boxes.get(n, box)
        if old is ALL or box is ALL:
            boxes[n] = ALL
        else:
            boxes[n] = (min(old[0], box[0]), max(old[1], box[1]), min(old[2], box[2]), max(old[3], box[3]))

    def propagate(self, seeds: dict, clip: bool) -> dict:
        """Boxes (or ALL) of every node that the seeds reach, placeholders included."""
        boxes: dict = {}
        for n, box in seeds.items():
            self._put(boxes, n, box, clip)
        for n in reversed(self.nodes):
            if n in boxes and n.op != "placeholder":
                for i, box in self.back(n, boxes[n], clip):
                    self._put(boxes, i, box, clip)
        return boxes


# -- names -------------------------------------------------------------------------------------
def trace(module: nn.Module) -> fx.GraphModule:
    """``module`` as a GraphModule, traced in eval mode (its flags restored) by ``torch.fx``
    with ``torch.nn`` modules as leaves and ``math`` and ``torchvision.ops`` functions kept
    whole, as torchvision's feature extraction does; each node's ``meta["qualname"]`` is its
    ``get_graph_node_names`` name (``layer1.0.add``, ``layer1.0.relu_1``; see ``node_names``)."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        graph = fx.Tracer(autowrap_modules=(math, torchvision.ops)).trace(module)
    finally:
        for m, t in flags:
            m.training = t
    gm = fx.GraphModule(module, graph, type(module).__name__)
    for q, n in node_names(gm).items():
        n.meta["qualname"] = q
    return gm


def node_names(gm: fx.GraphModule, qualnames: Mapping[str, str] | None = None) -> dict[str, fx.Node]:
    """Qualified names, in forward order: ``qualnames`` (fx node name -> name) where given, else
    each node's ``meta["qualname"]`` (``trace``), else names made from ``meta["nn_module_stack"]``
    (``torch.fx.symbolic_trace``) the way ``get_graph_node_names`` makes them: the enclosing
    module's path, a dot and the op's name, ``_1``, ``_2``, .. for repeats in that module."""
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    if qualnames is not None:
        return {qualnames[n.name]: n for n in nodes if n.name in qualnames}
    if all("qualname" in n.meta for n in nodes):
        return {n.meta["qualname"]: n for n in nodes}
    if not any("nn_module_stack" in n.meta for n in nodes):
        return {}
    out, seen = {}, {}
    for n in nodes:
        if n.op == "call_module":
            q = str(n.target)
        else:
            stack = list((n.meta.get("nn_module_stack") or {}).values())
            q = f"{stack[-1][0]}.{n.name}" if stack and stack[-1][0] else n.name
        m = re.fullmatch(r"(.+)_[0-9]+", q)
        base = m.group(1) if m else q
        k = seen.get(base, 0)
        seen[base] = k + 1
        out[base if k == 0 else f"{base}_{k}"] = n
    return out


def _first_channels(gm: fx.GraphModule) -> int:
    """The input channels of the first conv in forward order (a ``Conv2d`` or ``F.conv2d`` of a
    parameter), else of the first ``Conv2d`` module, else 3."""
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d):
            return gm.get_submodule(n.target).in_channels
        w = _arg(n, 1, "weight") if n.op == "call_function" and n.target in _CONV else None
        if isinstance(w, fx.Node) and w.op == "get_attr":
            return int(getattr(gm, w.target).shape[1]) * int(_arg(n, 6, "groups", 1))
    return next((m.in_channels for m in gm.modules() if isinstance(m, nn.Conv2d)), 3)


class GraphGeometry:
    """Receptive fields of one graph at one input size (shapes are computed once).

    ``in_channels`` defaults to the first ``Conv2d``'s; ``qualnames`` maps fx node names to
    layer names (``graph_trace.Traced.qualname``) for graphs whose nodes carry none."""

    def __init__(self, gm: fx.GraphModule, input_hw: tuple[int, int], *, in_channels: int | None = None,
                 strict: bool = True, qualnames: Mapping[str, str] | None = None):
        h, w = (int(v) for v in input_hw)
        if h < 1 or w < 1:
            raise ValueError(f"input_hw: expected two positive sizes, got {tuple(input_hw)}")
        p = next(gm.parameters(), None)
        like = dict(device=p.device, dtype=p.dtype) if p is not None and p.is_floating_point() else {}
        c = in_channels if in_channels is not None else _first_channels(gm)
        self.gm, self.input_hw = gm, (h, w)
        self.graph = _Graph(gm, [torch.zeros(1, c, h, w, **like)], [(2, 3)], strict)
        self.image = self.graph.placeholders[0]
        self.names = node_names(gm, qualnames)
        self._fx = {n.name: n for n in self.graph.nodes if n.op != "output"}

    def node(self, node: str | fx.Node) -> fx.Node:
        """A node by ``fx.Node``, qualified name, fx node name or module path (``layer3.1``: the
        last node under that path, which is the block's output)."""
        if isinstance(node, fx.Node):
            if node.graph is not self.gm.graph or node.op == "output":
                raise ValueError(f"node: expected a node of this graph, got {node!r}")
            return node
        if node in self.names:
            return self.names[node]
        if node in self._fx:
            return self._fx[node]
        under = [n for q, n in self.names.items() if q.startswith(node + ".")] + [
            n for n in self.graph.nodes if n.op == "call_module" and str(n.target).startswith(node + ".")]
        if under:
            return max(under, key=self.graph.nodes.index)
        known = list(self.names) or list(self._fx)
        close = difflib.get_close_matches(str(node), known, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        shown = ", ".join(map(repr, known[:12])) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
        raise ValueError(f"node: expected one of {shown}, a module path or an fx node name, got {node!r}{hint}")

    def out_hw(self, node: str | fx.Node) -> tuple[int, int] | None:
        """Rows and columns of the node's output, or None where it has no spatial axes."""
        return self.graph.hw(self.node(node))

    def box(self, node: str | fx.Node, y: int | None, x: int | None, clip: bool = True) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive: the input pixels that position
        (y, x) of the node's output can see. For y or x None, or a node without spatial axes (an
        fc layer), what the whole output sees, clipped: the whole image in a CNN. A position that sees no
        pixel (in the zeros of an ``F.pad``, or a node that does not depend on the image) gets
        the empty box (0, 0, 0, 0)."""
        n = self.node(node)
        hw = self.graph.hw(n)
        h, w = self.input_hw
        seed = ALL if hw is None or y is None or x is None else (y, y + 1, x, x + 1)
        if seed is not ALL and not (0 <= y < hw[0] and 0 <= x < hw[1]):
            raise ValueError(f"position: expected (y, x) with y in 0..{hw[0] - 1} and x in 0..{hw[1] - 1} "
                             f"(node {n.name!r} is {hw[0]}x{hw[1]}), got ({y}, {x})")
        got = self.graph.propagate({n: seed}, clip or seed is ALL).get(self.image, False)
        if got is False:  # no pixel reaches it: zero padding (F.pad), or a constant
            return 0, 0, 0, 0
        t, b, l, r = (0, h, 0, w) if got is ALL else got
        return t, l, b, r

    def box_size(self, node: str | fx.Node) -> tuple[int, int]:
        """Unclipped (height, width) of one position's box; the largest over positions where it
        varies (adaptive pools, cat along a spatial axis)."""
        n = self.node(node)
        hw = self.graph.hw(n)
        if hw is None:
            return self.input_hw
        if self.graph.spatial_cat:  # boxes are not separable: try every position
            pos = [(y, x) for y in range(hw[0]) for x in range(hw[1])]
        else:  # rows depend on y only, columns on x only
            pos = [(y, 0) for y in range(hw[0])] + [(0, x) for x in range(hw[1])]
        boxes = [self.box(n, y, x, clip=False) for y, x in pos]
        return max(b - t for t, _, b, _ in boxes), max(r - l for _, l, _, r in boxes)


_CACHE: "weakref.WeakKeyDictionary[fx.GraphModule, dict]" = weakref.WeakKeyDictionary()


def geometry(gm: fx.GraphModule, input_hw: tuple[int, int], *, in_channels: int | None = None,
             strict: bool = True, qualnames: Mapping[str, str] | None = None) -> GraphGeometry:
    """``GraphGeometry(gm, input_hw, ...)``, kept per graph (until its code changes) and size."""
    key = (tuple(int(v) for v in input_hw), in_channels, strict, gm.code,
           tuple(sorted(qualnames.items())) if qualnames is not None else None)
    per = _CACHE.setdefault(gm, {})
    if key not in per:
        if len(per) >= 4:  # a few input sizes per graph; the oldest goes
            per.pop(next(iter(per)))
        per[key] = GraphGeometry(gm, input_hw, in_channels=in_channels, strict=strict, qualnames=qualnames)
    return per[key]


def receptive_field(gm: fx.GraphModule, node: str | fx.Node, y: int | None, x: int | None,
                    input_hw: tuple[int, int], clip: bool = True, **kw) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive: input pixels that position (y, x) of
    ``node``'s output sees, on an input of ``input_hw``. ``kw``: ``in_channels``, ``strict``,
    ``qualnames`` of ``GraphGeometry``. Errors: unknown node or position out of range: ValueError;
    an op with no rule: ``UnsupportedOpError`` (``strict=True``)."""
    return geometry(gm, input_hw, **kw).box(node, y, x, clip)


def box_size(gm: fx.GraphModule, node: str | fx.Node, input_hw: tuple[int, int], **kw) -> tuple[int, int]:
    """Unclipped (height, width) of one position's box (the largest where it varies)."""
    return geometry(gm, input_hw, **kw).box_size(node)
