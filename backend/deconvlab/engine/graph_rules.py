"""Backward rules of the graph engine, one per kind of fx node.

Zeiler & Fergus (2013), Sec. 2.1: the deconvnet "unpools", "rectifies" ("we
pass the reconstructed signal through a relu non-linearity") and "filters"
("uses transposed versions of the same filters"). On a general graph that reads:
every *linear* op is replaced by its transpose, which is exactly its gradient
(its vector-Jacobian product), every max pool by its switches, which is its
gradient too, and only the rectifiers differ between the three methods:

=====================================  ============================  ==========================================  ===========
op                                     ``deconv``                    ``guided``                                  ``backprop``
=====================================  ============================  ==========================================  ===========
ReLU in any form (``nn.ReLU``,         ``relu(g)``                   ``relu(g) * [x > 0]``                       gradient
``F.relu``, ``torch.relu``, ``relu_``,
in place, a module called twice,
``clamp(min=0)``)
ReLU6, ``hardtanh(0, 6)``,             ``relu(g)``                   ``relu(g) * [0 < x < 6]``                   gradient
``clamp(0, 6)``
SiLU, GELU, Hardswish, ELU,            ``relu(g)``                   ``relu(g) * [x > 0]``                       gradient
LeakyReLU, Mish, CELU (*choice 1*)
max pool, adaptive max pool            switches (overlaps add up)    same                                        same
conv, linear, avg / adaptive avg       transpose = gradient          same                                        same
pool, add, sub, cat, stack, batch
norm (eval), flatten, view, reshape,
permute, getitem, chunk, split,
mean, sum, pad, interpolate, dropout
and stochastic depth (eval), identity,
a product or quotient with one
signal-free operand (layer scale)
LayerNorm, GroupNorm (*choice 2*)      gradient at the recorded x    same                                        gradient
``a * s``, both carrying signal, ``s`` ``g * s`` to ``a``, none to    same                                        gradient
broadcast (squeeze-excitation gate;    ``s``
*choice 3*)
LocalResponseNorm                      passed through unchanged      passed through unchanged                    gradient
anything else non-linear (sigmoid      ``UnsupportedOp`` naming it   ``UnsupportedOp``                           gradient
outside a gate, tanh, softmax, ``a *
b`` of equal shapes, ``x / y(x)``,
batch statistics, ...)
=====================================  ============================  ==========================================  ===========

``x`` is the op's recorded forward input, ``g`` the backward signal at its output.
Why these choices:

1. *Smooth rectifiers are rectifiers.* SiLU, GELU, Hardswish, ELU, LeakyReLU,
   Mish and CELU are drop-in replacements for a ReLU (same sign pattern up to a
   small negative lobe). The deconvnet's rule does not look at the forward
   pass at all, so the faithful transfer is the same ``relu(g)``; guided
   backprop keeps its "where the unit was on" mask, ``x > 0``. Using their
   gradient instead would make ``deconv`` on an EfficientNet a plain gradient
   with sign flips, which is not what the method is.
2. *Normalisations over features are linear-ish.* The deconvnet passes its
   contrast normalisation through; LayerNorm / GroupNorm, however, are what
   ConvNeXt's blocks are made of and centre the signal, so they use their exact
   vector-Jacobian product at the recorded input (linear in ``g``). LRN keeps
   the paper's pass-through so that this engine and the sequential one agree on
   ZFNet.
3. *Gates are fixed scalings.* A squeeze-excitation block multiplies a map by a
   per-channel gate computed from the same map. The deconvnet treats the gate as
   the forward pass left it (like a batch-norm scale): the signal goes to the map,
   scaled by the gate; the gate's branch (pool, fc, sigmoid) gets none, so its
   sigmoid never needs a rule. ``backprop`` differentiates through both.

``backprop`` is the gradient everywhere: ops without a hand-written rule get it
from autograd, by re-running the op on the recorded inputs of the K items.
Hand-written rules (conv, linear, batch norm, ReLU family, max pool, add, cat,
reshape, identity) exist for speed; the tests check each against autograd.

A rule is ``rule(node, g, ctx) -> [(input node, signal), ...]``; ``g`` is the
(K, ...) signal at the node's output (a list for tuple-valued nodes). (This
module passes 500 lines because it is the whole table: one rule per kind of op,
and the lists that classify fx nodes into them.)
"""

from __future__ import annotations

import inspect
import operator

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from .graph_kernels import PHASE_MAX_CHANNELS, phase_conv_transpose, sparse_conv_transpose
from .._util import pair


class UnsupportedOp(TypeError):
    """An op with no ``deconv``/``guided`` rule was reached by the backward signal."""


class Ctx:
    """What a rule may read: the record, the items' image indices, the method."""

    def __init__(self, root: nn.Module, values: dict, cache: dict, n: torch.Tensor, method: str,
                 dep: set[str], qualname: dict[str, str]):
        self.root, self.values, self.cache, self.n, self.method = root, values, cache, n, method
        self.dep, self.qualname = dep, qualname
        self.K = int(n.shape[0])
        self.modules: dict[str, nn.Module] = {}
        self.folded: dict[str, nn.Module] = {}
        self.start: str | None = None  # the seeded node (a folded conv seeded itself has no batch norm above)

    def val(self, a):
        return self.values[a.name] if isinstance(a, fx.Node) else a

    def carries(self, a) -> bool:
        return isinstance(a, fx.Node) and a.name in self.dep and isinstance(self.values.get(a.name), torch.Tensor)

    def rows(self, a) -> torch.Tensor:
        """The recorded value of ``a`` for each item: (K, ...), or (1, ...) when the record
        holds one image (it then broadcasts)."""
        v = self.val(a)
        return v if v.shape[0] == 1 else v.index_select(0, self.n)

    def batched(self, a) -> torch.Tensor:
        return self.val(a).index_select(0, self.n)


# ------------------------------------------------------------------ helpers

def bind(fn, node: fx.Node, names: list[str], defaults: dict) -> dict:
    """Arguments of a call by name: from ``inspect.signature`` when ``fn`` has one, else by
    the positional ``names`` and ``defaults``."""
    try:
        sig = inspect.signature(fn)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
            raise ValueError("no named parameters")
        b = sig.bind(*node.args, **node.kwargs)
        b.apply_defaults()
        return dict(b.arguments)
    except (TypeError, ValueError):
        out = dict(defaults)
        out.update(zip(names, node.args))
        out.update(node.kwargs)
        return out


def module(node: fx.Node, ctx_or_root) -> nn.Module:
    if isinstance(ctx_or_root, Ctx):
        m = ctx_or_root.modules.get(node.target)
        return m if m is not None else ctx_or_root.root.get_submodule(node.target)
    return ctx_or_root.get_submodule(node.target)


def _op_label(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"{type(module(node, root)).__name__} module"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__qualname__", getattr(node.target, "__name__", str(node.target)))


def _sum_to(g: torch.Tensor, shape: tuple) -> torch.Tensor:
    return g if tuple(g.shape) == tuple(shape) else g.sum_to_size(shape)


# ------------------------------------------------------------------ the generic rule: autograd

def vjp(node: fx.Node, g, ctx: Ctx) -> list:
    """The exact vector-Jacobian product of ``node`` at the recorded inputs of the K items,
    by autograd on a re-run of the op."""
    leaves: list[tuple[fx.Node, torch.Tensor]] = []

    def mat(a):
        if ctx.carries(a):
            t = ctx.batched(a).detach().requires_grad_(True)
            leaves.append((a, t))
            return t
        return ctx.val(a)

    with torch.inference_mode(False), torch.enable_grad():
        args = fx.node.map_arg(node.args, mat)
        kwargs = fx.node.map_arg(node.kwargs, mat)
        if not leaves:
            return []
        if node.op == "call_module":
            out = module(node, ctx)(*args, **kwargs)
        elif node.op == "call_method":
            out = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            out = node.target(*args, **kwargs)
        outs, gs = _pairs(out, g)
        if not outs:
            return []
        grads = torch.autograd.grad(outs, [t for _, t in leaves], gs, allow_unused=True)
    return [(a, None if gi is None else gi.detach()) for (a, _), gi in zip(leaves, grads)]


def _pairs(out, g):
    if isinstance(out, torch.Tensor):
        return ([out], [g]) if out.requires_grad else ([], [])
    outs, gs = [], []
    for o, gi in zip(out, g):
        if gi is not None and isinstance(o, torch.Tensor) and o.requires_grad:
            outs.append(o)
            gs.append(gi)
    return outs, gs


# ------------------------------------------------------------------ rectifiers

def _rectify(g: torch.Tensor, x: torch.Tensor, method: str, upper: float | None) -> torch.Tensor:
    if method == "deconv":
        return g.clamp_min(0)
    on = x > 0 if upper is None else (x > 0) & (x < upper)
    out = g * on  # a fresh tensor (g itself may be shared with another branch): safe to clamp in place
    return out if method == "backprop" else out.clamp_min_(0)


def relu_rule(upper: float | None = None, smooth: bool = False):
    def rule(node, g, ctx):
        a = node.args[0]
        if not ctx.carries(a):
            return []
        if smooth and ctx.method == "backprop":
            return vjp(node, g, ctx)
        x = ctx.rows(a)
        return [(a, _rectify(g, x, ctx.method, upper))]
    rule.__name__ = "relu6" if upper else ("smooth_rectifier" if smooth else "relu")
    return rule


# ------------------------------------------------------------------ linear ops with their own rule

def conv_rule(node, g, ctx):
    if node.op == "call_module":
        m = module(node, ctx)
        a, w, p = node.args[0], m.weight, dict(stride=m.stride, padding=m.padding, dilation=m.dilation,
                                               groups=m.groups)
        mode = m.padding_mode
    else:
        b = bind(F.conv2d, node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                 dict(bias=None, stride=1, padding=0, dilation=1, groups=1))
        a, w, mode = b["input"], ctx.val(b["weight"]), "zeros"
        p = {k: b[k] for k in ("stride", "padding", "dilation", "groups")}
        if ctx.carries(b["weight"]):
            return vjp(node, g, ctx)
    if not ctx.carries(a):
        return []
    if mode != "zeros" or isinstance(p["padding"], str) or w.dim() != 4:
        return vjp(node, g, ctx)
    bn = ctx.folded.get(node.name) if node.name != ctx.start else None
    if bn is not None:  # the batch norm after it passed g on unscaled: its scale is in the filters
        key = ("folded", node.name)
        if key not in ctx.cache:
            ctx.cache[key] = w * bn_scale(bn.running_var, bn.weight, bn.eps).view(-1, 1, 1, 1)
        w = ctx.cache[key]
    st, pd, dl = (pair(p[k]) for k in ("stride", "padding", "dilation"))
    hin, win = ctx.val(a).shape[-2:]
    kh, kw = w.shape[-2:]
    ho, wo = g.shape[-2:]
    op = [hin + 2 * pd[0] - dl[0] * (kh - 1) - 1 - (ho - 1) * st[0],
          win + 2 * pd[1] - dl[1] * (kw - 1) - 1 - (wo - 1) * st[1]]
    if p["groups"] == 1 and dl == (1, 1):
        gi = sparse_conv_transpose(g, w, st, pd, (hin, win))
        if gi is not None:
            return [(a, gi)]
        if w.shape[1] <= PHASE_MAX_CHANNELS and st[0] == st[1] and g.device.type == "cpu":
            return [(a, phase_conv_transpose(g, w, st[0], pd, (hin, win)))]
    gi = F.conv_transpose2d(g, w, None, st, pd, op, p["groups"], dl)
    return [(a, gi)]



def linear_rule(node, g, ctx):
    if node.op == "call_module":
        a, w = node.args[0], module(node, ctx).weight
    else:
        b = bind(F.linear, node, ["input", "weight", "bias"], dict(bias=None))
        if ctx.carries(b["weight"]):
            return vjp(node, g, ctx)
        a, w = b["input"], ctx.val(b["weight"])
    return [(a, g @ w)] if ctx.carries(a) else []


def batchnorm_rule(node, g, ctx):
    if node.op == "call_module":
        m = module(node, ctx)
        a, var, w, eps = node.args[0], m.running_var, m.weight, m.eps
        if m.training or var is None:
            return _unknown(node, g, ctx, "batch norm with batch statistics")
    else:
        b = bind(F.batch_norm, node, ["input", "running_mean", "running_var", "weight", "bias", "training",
                                      "momentum", "eps"], dict(weight=None, bias=None, training=False, eps=1e-5))
        a, var, w, eps = b["input"], ctx.val(b["running_var"]), ctx.val(b["weight"]), b["eps"]
        if b["training"] or var is None:
            return _unknown(node, g, ctx, "batch norm with batch statistics")
    if not ctx.carries(a):
        return []
    if isinstance(a, fx.Node) and a.name in ctx.folded:
        return [(a, g)]  # the conv before it applies the scale (see ``fold_pairs``)
    return [(a, g * bn_scale(var, w, eps).view((1, -1) + (1,) * (g.dim() - 2)))]


def bn_scale(var, weight, eps) -> torch.Tensor:
    scale = torch.rsqrt(var + eps)
    return scale if weight is None else scale * weight


def fold_pairs(nodes: list[fx.Node], root: nn.Module, rules: dict) -> dict[str, nn.Module]:
    """Conv nodes whose only user is an eval batch norm module: conv node name -> that
    batch norm. Its backward scale ``g * s`` is then folded into the conv's filters
    (``conv_transpose(g * s, w) = conv_transpose(g, w * s)``, made once per record): one
    pass over the signal less per pair."""
    out = {}
    for n in nodes:
        if n.op != "call_module" or rules.get(n.name) is not conv_rule or len(n.users) != 1:
            continue
        (user,) = n.users
        m = root.get_submodule(user.target) if user.op == "call_module" else None
        if isinstance(m, nn.BatchNorm2d) and not m.training and m.running_var is not None and user.args[0] is n:
            out[n.name] = m
    return out


def maxpool_rule(node, g, ctx):
    """The switches: each output's signal to the input position of its maximum, added up
    where overlapping windows share one (``scatter_add``, as max pool's gradient does)."""
    a = node.args[0]
    if not ctx.carries(a):
        return []
    x = ctx.val(a)
    if x.dim() != 4:
        return vjp(node, g, ctx)
    idx = ctx.cache.get(node.name)
    if idx is None:
        idx = ctx.cache[node.name] = _switches(node, x, ctx)
    K, C = g.shape[:2]
    idx = idx.expand(K, -1, -1, -1) if idx.shape[0] == 1 else idx.index_select(0, ctx.n)
    out = g.new_zeros((K, C, x.shape[-2] * x.shape[-1]))
    out.scatter_add_(2, idx.reshape(K, C, -1), g.reshape(K, C, -1))
    return [(a, out.view((K,) + tuple(x.shape[1:])))]


def _switches(node, x, ctx) -> torch.Tensor:
    with torch.no_grad():
        if node.op == "call_module":
            m = module(node, ctx)
            if isinstance(m, nn.AdaptiveMaxPool2d):
                return F.adaptive_max_pool2d(x, m.output_size, return_indices=True)[1]
            return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                                return_indices=True)[1]
        if node.target is F.adaptive_max_pool2d:
            b = bind(F.adaptive_max_pool2d, node, ["input", "output_size"], {})
            return F.adaptive_max_pool2d(x, b["output_size"], return_indices=True)[1]
        b = bind(F.max_pool2d, node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"],
                 dict(stride=None, padding=0, dilation=1, ceil_mode=False))
        return F.max_pool2d(x, b["kernel_size"], b["stride"], b["padding"], b["dilation"],
                            ceil_mode=b["ceil_mode"], return_indices=True)[1]


def add_rule(sign: float = 1.0):
    def rule(node, g, ctx):
        if "alpha" in node.kwargs or len(node.args) != 2:
            return vjp(node, g, ctx)
        out = []
        for i, a in enumerate(node.args):
            if not ctx.carries(a):
                continue
            shape = (ctx.K,) + tuple(ctx.val(a).shape[1:])
            if ctx.val(a).dim() != g.dim():
                return vjp(node, g, ctx)
            gi = _sum_to(g, shape)
            out.append((a, -gi if (i == 1 and sign < 0) else gi))
        return out
    rule.__name__ = "sub" if sign < 0 else "add"
    return rule


def cat_rule(node, g, ctx):
    b = bind(torch.cat, node, ["tensors", "dim"], dict(dim=0))
    dim = b["dim"] if b["dim"] >= 0 else g.dim() + b["dim"]
    if dim == 0:
        return vjp(node, g, ctx)
    parts = list(b["tensors"])
    sizes = [ctx.val(a).shape[dim] for a in parts]
    return [(a, gi) for a, gi in zip(parts, torch.split(g, sizes, dim)) if ctx.carries(a)]


def reshape_rule(node, g, ctx):
    a = node.args[0]
    if not ctx.carries(a):
        return []
    if ctx.val(node).shape[0] != ctx.val(a).shape[0]:
        return vjp(node, g, ctx)
    return [(a, g.reshape((ctx.K,) + tuple(ctx.val(a).shape[1:])))]


def identity_rule(node, g, ctx):
    a = node.args[0]
    if node.op == "call_function":
        b = bind(node.target, node, ["input"], {})
        if b.get("training", False):
            return vjp(node, g, ctx)
    return [(a, g)] if ctx.carries(a) else []


def getitem_rule(node, g, ctx):
    a, i = node.args
    v = ctx.val(a)
    if isinstance(v, torch.Tensor):
        return vjp(node, g, ctx)
    if not isinstance(a, fx.Node) or a.name not in ctx.dep or not isinstance(i, int):
        return []
    sig = [None] * len(v)
    sig[i] = g
    return [(a, sig)]


def lrn_rule(node, g, ctx):
    if ctx.method == "backprop":
        return vjp(node, g, ctx)
    a = node.args[0]
    return [(a, g)] if ctx.carries(a) else []


def mul_rule(node, g, ctx):
    """One signal-free operand: linear (its gradient). Both carry signal: a gate (choice 3)."""
    ops = [a for a in node.args[:2] if ctx.carries(a)]
    if len(ops) < 2 or ctx.method == "backprop":
        return vjp(node, g, ctx)
    a, b = node.args[:2]
    va, vb = ctx.val(a), ctx.val(b)
    if va.shape == vb.shape:
        return _unknown(node, g, ctx, "a product of two signals of the same shape")
    big, gate = (a, b) if va.numel() > vb.numel() else (b, a)
    if ctx.val(big).shape != ctx.val(node).shape:
        return _unknown(node, g, ctx, "a product of two broadcast signals")
    return [(big, g * ctx.rows(gate))]


def div_rule(node, g, ctx):
    if len(node.args) >= 2 and ctx.carries(node.args[1]) and ctx.method != "backprop":
        return _unknown(node, g, ctx, "a division by a signal")
    return vjp(node, g, ctx)


def _unknown(node, g, ctx, what: str | None = None):
    if ctx.method == "backprop":
        return vjp(node, g, ctx)
    label = _op_label(node, ctx.root)
    raise UnsupportedOp(f"{ctx.method}: no rule for {label}" + (f" ({what})" if what else "")
                        + f" at {ctx.qualname.get(node.name, node.name)!r}; expected an op of the rule "
                        f"table of deconvlab.engine.graph_rules (ReLU family, max pool, linear ops, gates), "
                        f"or method='backprop'")


def unknown_rule(node, g, ctx):
    return _unknown(node, g, ctx)


def blocked_rule(node, g, ctx):
    return []


# ------------------------------------------------------------------ classification

RELU, RELU6, SMOOTH = relu_rule(), relu_rule(6.0), relu_rule(smooth=True)

MODULE_RULES = [
    (nn.ReLU, RELU), (nn.ReLU6, RELU6),
    ((nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU, nn.LeakyReLU, nn.Mish, nn.CELU), SMOOTH),
    ((nn.MaxPool2d, nn.AdaptiveMaxPool2d), maxpool_rule),
    (nn.Conv2d, conv_rule), (nn.Linear, linear_rule),
    ((nn.BatchNorm1d, nn.BatchNorm2d), batchnorm_rule),
    ((nn.Flatten, nn.Unflatten), reshape_rule),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity), identity_rule),
    (nn.LocalResponseNorm, lrn_rule),
    ((nn.LayerNorm, nn.GroupNorm), vjp),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.ZeroPad2d, nn.ConstantPad2d,
      nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.ConvTranspose2d, nn.Conv1d,
      nn.Conv3d, nn.BatchNorm3d), vjp),
]

FUNCTION_RULES = {
    F.relu: RELU, torch.relu: RELU, F.relu6: RELU6,
    **{f: SMOOTH for f in (F.silu, F.gelu, F.hardswish, F.elu, F.leaky_relu, F.mish, F.celu)},
    F.max_pool2d: maxpool_rule, F.adaptive_max_pool2d: maxpool_rule,
    F.conv2d: conv_rule, F.linear: linear_rule, F.batch_norm: batchnorm_rule,
    torch.flatten: reshape_rule, torch.reshape: reshape_rule,
    **{f: identity_rule for f in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                                  torchvision.ops.stochastic_depth)},
    operator.getitem: getitem_rule,
    torch.cat: cat_rule, torch.concat: cat_rule, torch.concatenate: cat_rule,
    operator.add: add_rule(), torch.add: add_rule(), operator.sub: add_rule(-1.0), torch.sub: add_rule(-1.0),
    operator.mul: mul_rule, torch.mul: mul_rule, operator.truediv: div_rule, torch.div: div_rule,
    F.local_response_norm: lrn_rule, F.layer_norm: vjp, F.group_norm: vjp,
    torch.detach: blocked_rule,
    **{f: vjp for f in (F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, torch.sum, torch.permute,
                        torch.transpose, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, torch.stack,
                        F.pad, F.interpolate, F.pixel_shuffle, F.pixel_unshuffle, torch.narrow, torch.roll,
                        torch.flip, operator.neg, torch.neg, F.channel_shuffle, torch.channel_shuffle)},
}

METHOD_RULES = {
    "relu": RELU, "view": reshape_rule, "reshape": reshape_rule, "flatten": reshape_rule,
    "contiguous": identity_rule, "clone": identity_rule, "detach": blocked_rule,
    "add": add_rule(), "sub": add_rule(-1.0), "mul": mul_rule, "div": div_rule,
    **{m: vjp for m in ("mean", "sum", "permute", "transpose", "squeeze", "unsqueeze", "chunk", "split",
                        "expand", "expand_as", "narrow", "repeat", "roll", "flip", "neg", "__getitem__",
                        "view_as", "reshape_as", "type_as", "float", "to")},
}


def _aten_rules() -> dict:
    """Rules of the ATen ops a ``torch.export`` program's graph is made of (``.pt2`` files): the
    ReLU family and max pools by the rules above, ops that are linear in the signal (conv,
    linear/addmm, eval batch norm, pools, reshapes, add, cat, ...) by their exact gradient
    (``vjp``), a product by ``mul_rule``. Any other ATen op is unknown, as for modules."""
    aten = torch.ops.aten
    rules = {aten.relu.default: RELU, aten.relu_.default: RELU, aten.relu6.default: RELU6,
             aten.max_pool2d.default: maxpool_rule, aten.mul.Tensor: mul_rule,
             aten.add.Tensor: add_rule(), aten.sub.Tensor: add_rule(-1.0)}
    linear = ("conv2d.default", "convolution.default", "linear.default", "addmm.default", "mm.default",
              "t.default", "batch_norm.default", "_native_batch_norm_legit_no_training.default",
              "flatten.using_ints", "view.default", "reshape.default", "_unsafe_view.default",
              "permute.default", "transpose.int", "squeeze.dim", "squeeze.dims", "unsqueeze.default",
              "expand.default", "clone.default", "cat.default", "avg_pool2d.default",
              "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default", "mean.dim", "sum.dim_IntList",
              "dropout.default", "slice.Tensor", "select.int", "constant_pad_nd.default", "alias.default",
              "contiguous.default", "split.Tensor", "split_with_sizes.default", "chunk.default")
    for name in linear:
        packet, overload = name.split(".")
        op = getattr(getattr(aten, packet, None), overload, None)
        if op is not None:
            rules[op] = vjp
    return rules


FUNCTION_RULES.update(_aten_rules())


def _hardtanh_rule(node, root):
    b = bind(F.hardtanh, node, ["input", "min_val", "max_val"], dict(min_val=-1.0, max_val=1.0))
    return RELU6 if (b["min_val"], b["max_val"]) == (0.0, 6.0) else unknown_rule


def _clamp_rule(node, root):
    b = bind(torch.clamp, node, ["input", "min", "max"], dict(min=None, max=None))
    lo, hi = b.get("min"), b.get("max")
    if lo == 0 and hi is None:
        return RELU
    if lo == 0 and hi == 6:
        return RELU6
    return unknown_rule


def rule_for(node: fx.Node, root: nn.Module):
    """The backward rule of an fx node (see the table in the module docstring)."""
    if node.op == "call_module":
        m = module(node, root)
        if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6):
            return RELU6 if (m.min_val, m.max_val) == (0.0, 6.0) else unknown_rule
        if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and m.return_indices:
            return vjp
        for cls, rule in MODULE_RULES:
            if isinstance(m, cls):
                return rule
        return unknown_rule
    if node.op == "call_method":
        if node.target in ("clamp", "clamp_min"):
            return _clamp_rule(node, root) if node.target == "clamp" else (
                RELU if node.args[1:] == (0,) or node.kwargs.get("min") == 0 else unknown_rule)
        return METHOD_RULES.get(node.target, unknown_rule)
    if node.op == "call_function":
        if node.target is F.hardtanh or node.target is torch.ops.aten.hardtanh.default:
            return _hardtanh_rule(node, root)
        if node.target in (torch.clamp, torch.clip):
            return _clamp_rule(node, root)
        if node.target in (F.max_pool2d, F.adaptive_max_pool2d) and (
                node.kwargs.get("return_indices") or (len(node.args) > 6 and node.args[6])):
            return vjp
        try:
            return FUNCTION_RULES.get(node.target, unknown_rule)
        except TypeError:  # unhashable target
            return unknown_rule
    return blocked_rule
