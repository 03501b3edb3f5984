"""Windows of the graph engine's backward pass: a point seed only reaches its receptive field.

Zeiler & Fergus (2013, Sec. 2.1) project "a given convnet activation" with all
others set to zero; on the way down its signal is zero outside the unit's
receptive field (Araujo et al., Distill 2019: the input pixels that can
influence it). The sequential engine keeps each signal as a window of its map
(``windows``); this module does the same on any fx graph, so that every rule of
``graph_rules`` runs over the part of each map the signal can reach, not the
whole map.

**The plan** (``plan``, once per seeded node, method and input size). A
window along one axis of a node's map is a *form* ``(S, T, h)``: item k's window
is ``[S*y_k + T, S*y_k + T + h)`` for a seed at row ``y_k`` (columns alike). All
K items of a batch share ``h`` (the geometry is the same at every position), so
they run as one (K, C, h, w) tensor with per-item offsets. Forms go backwards
from the seed's ``(1, 0, 1)`` node by node, the same boxes
``graph_receptive_field`` computes (a unit's box at each node, unclipped), as
rules of their own:

======================================  ================================================================
node (its rule in ``graph_rules``)      the form its input gets
======================================  ================================================================
conv, max pool, avg pool (kernel k,     ``(S*s, T*s - p, (h-1)*s + d*(k-1) + 1)``; the transposed conv
stride s, padding p, dilation d)        runs without padding on the window (``full_conv_transpose``),
                                        the switches are read under the window and scattered into the
                                        input's window; ceil_mode changes only the map size
ReLU family, eval batch norm, add/sub   the same form (masks and the record are read under the window)
of equal shapes, cat along channels,
identity, dropout (eval), LRN (not
backprop), detach
several users                           the union of their forms: ``(S, min T, max end - min T)`` when
                                        the scales agree, else the whole axis
a window as large as the map            the whole axis ``(0, 0, H)``; both axes whole: the node runs
                                        the unwindowed rule
anything else (linear, flatten,         the whole map, for the node and all its inputs: the signal is
adaptive or global pools, gates, mean,  global from there down (as the receptive field is)
autograd rules, tuples)
======================================  ================================================================

**The walk** (``walk``): at each node the forms become windows clipped to
the map (``clip``: the largest clipped size over the batch, each item's window
moved inside the map), so no rule computes over padding; items whose clipped
windows have the same sizes at every node (``window_sizes``) run as one batch.
A rule's output is moved into its input's windows (``move``: one slice where
every item is offset alike, else a per-item copy; what a transposed conv puts
on the padding is dropped there). Conv-transpose, unpool and masks do the
same sums as on whole maps, restricted to the windows; ``GraphEngine`` keeps
the whole-map walk (``window=False``) and the tests compare the two.

``walk`` counts what it touched (``Visit``: the elements of every signal it
ran a rule on, the convs' multiply-adds), so that a test can see the windows
shrink the work and the bench can state its floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .._util import pair
from . import graph_rules as R
from .graph_kernels import full_conv_transpose
from .windows import crop

Axis = tuple[int, int, int]  # (S, T, h): item k's window is [S*y_k + T, S*y_k + T + h)
Form = tuple[Axis, Axis] | None  # rows, columns; None: the whole map (or not a map)


@dataclass
class Visit:
    """What one walk touched: the signal elements every rule ran on, and each node's window."""

    elements: int = 0
    macs: int = 0  # multiply-adds of the convs' transposes, dense (as if every channel carried signal)
    windows: dict = field(default_factory=dict)  # node -> (top, left, h, w) of the last batch's first item, or None

    def add(self, node: fx.Node, s, rule, ctx: R.Ctx) -> None:
        """Count the signal ``s`` a rule runs on at ``node`` (and a conv's multiply-adds)."""
        n = _numel(s)
        self.elements += n
        if rule is R.conv_rule:
            w = R.module(node, ctx).weight if node.op == "call_module" else ctx.val(
                R.bind(F.conv2d, node, ["input", "weight"], {})["weight"])
            self.macs += n * w[0].numel()


# ------------------------------------------------------------------ which rules run on windows

def _geom(k, s, p, d) -> tuple:
    return tuple(zip(pair(k), pair(s), pair(p), pair(d)))


def classify(node: fx.Node, rule, ctx: R.Ctx, method: str):
    """``("same", None)``, ``("window", (kind, ((k, s, p, d) rows, cols)))`` or None (whole maps)."""
    v = ctx.values.get(node.name)
    if not isinstance(v, torch.Tensor) or v.dim() != 4:
        return None
    ins = [a for a in node.all_input_nodes if ctx.carries(a)]
    if any(ctx.val(a).dim() != 4 for a in ins):
        return None
    if rule in (R.RELU, R.RELU6, R.blocked_rule) or (rule is R.SMOOTH and method != "backprop") or (
            rule is R.lrn_rule and method != "backprop"):
        return "same", None
    if rule is R.batchnorm_rule:
        m = R.module(node, ctx) if node.op == "call_module" else None
        ok = m is not None and not m.training and m.running_var is not None
        return ("same", None) if ok or (node.op == "call_function" and not node.kwargs.get("training")
                                        and not (len(node.args) > 5 and node.args[5])) else None
    if rule is R.identity_rule:
        b = R.bind(node.target, node, ["input"], {}) if node.op == "call_function" else {}
        return None if b.get("training", False) else ("same", None)
    if rule is R.cat_rule:
        dim = R.bind(torch.cat, node, ["tensors", "dim"], dict(dim=0))["dim"]
        return ("same", None) if dim % 4 == 1 else None
    if getattr(rule, "__name__", "") in ("add", "sub"):
        ok = "alpha" not in node.kwargs and len(node.args) == 2 and all(ctx.val(a).shape == v.shape for a in ins)
        return ("same", None) if ok else None
    if rule is R.conv_rule:
        return _conv_geom(node, ctx)
    if rule is R.maxpool_rule:
        return _pool_geom(node, ctx, nn.MaxPool2d, F.max_pool2d, "maxpool")
    if rule is R.vjp:
        return _pool_geom(node, ctx, nn.AvgPool2d, F.avg_pool2d, "avgpool")
    return None


def _conv_geom(node, ctx):
    if node.op == "call_module":
        m = R.module(node, ctx)
        if m.padding_mode != "zeros" or isinstance(m.padding, str) or m.weight.dim() != 4:
            return None
        return "window", ("conv", _geom(m.kernel_size, m.stride, m.padding, m.dilation))
    b = R.bind(F.conv2d, node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
               dict(bias=None, stride=1, padding=0, dilation=1, groups=1))
    w = ctx.val(b["weight"])
    if ctx.carries(b["weight"]) or isinstance(b["padding"], str) or w.dim() != 4:
        return None
    return "window", ("conv", _geom(tuple(w.shape[-2:]), b["stride"], b["padding"], b["dilation"]))


def _pool_geom(node, ctx, cls, fn, kind):
    if node.op == "call_module":
        m = R.module(node, ctx)
        if type(m) is not cls:
            return None
        k, s, p, d = m.kernel_size, m.stride or m.kernel_size, m.padding, getattr(m, "dilation", 1)
        extra = dict(ceil=m.ceil_mode, include=getattr(m, "count_include_pad", True),
                     div=getattr(m, "divisor_override", None))
    elif node.op == "call_function" and node.target is fn:
        names = ["input", "kernel_size", "stride", "padding"] + (
            ["dilation", "ceil_mode"] if kind == "maxpool" else ["ceil_mode", "count_include_pad", "divisor_override"])
        b = R.bind(fn, node, names, dict(stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True,
                                         divisor_override=None))
        k, s, p, d = b["kernel_size"], b["stride"] or b["kernel_size"], b["padding"], b.get("dilation", 1)
        extra = dict(ceil=b["ceil_mode"], include=b.get("count_include_pad", True), div=b.get("divisor_override"))
    else:
        return None
    if kind == "avgpool" and (extra["ceil"] or extra["div"] is not None or (any(pair(p)) and not extra["include"])):
        return None  # the divisor would vary at the borders
    return "window", (kind, _geom(k, s, p, d))


# ------------------------------------------------------------------ the plan

def _fit(ax: Axis, n: int) -> Axis:
    return (0, 0, n) if ax[2] >= n else ax


def _union(a: Form, b: Form, hw) -> Form:
    if a is None or b is None:
        return None
    out = []
    for (s1, t1, h1), (s2, t2, h2), n in zip(a, b, hw):
        if s1 != s2:
            out.append((0, 0, n))
        else:
            t = min(t1, t2)
            out.append(_fit((s1, t, max(t1 + h1, t2 + h2) - t), n))
    return _whole(tuple(out), hw)


def _whole(f: Form, hw) -> Form:
    return None if f is None or all(ax == (0, 0, n) for ax, n in zip(f, hw)) else f


def _back(f: Form, geom, hw_in) -> Form:
    out = []
    for (S, T, h), (k, s, p, d), n in zip(f, geom, hw_in):
        out.append(_fit((S * s, T * s - p, (h - 1) * s + d * (k - 1) + 1), n))
    return _whole(tuple(out), hw_in)


def _hw(ctx, a) -> tuple[int, int]:
    return tuple(ctx.val(a).shape[-2:])


def plan(order: list[fx.Node], start: fx.Node, rules: dict, ctx: R.Ctx, method: str) -> dict:
    """Node name -> (form, classification) for every node the seed's signal reaches (the
    placeholders included): see the module docstring."""
    forms: dict[str, Form] = {start.name: _whole(((1, 0, 1), (1, 0, 1)), _hw(ctx, start))}
    out = {}
    for node in reversed(order[:order.index(start) + 1]):
        if node.name not in forms:
            continue
        f = forms[node.name]
        if node.op == "placeholder":
            out[node.name] = (f, None)
            continue
        c = classify(node, rules[node.name], ctx, method) if f is not None else None
        f = f if c is not None else None
        out[node.name] = (f, c)
        for a in node.all_input_nodes:
            if not ctx.carries(a):
                continue
            fa = None if f is None else (f if c[0] == "same" else _back(f, c[1][1], _hw(ctx, a)))
            forms[a.name] = _union(forms[a.name], fa, _hw(ctx, a)) if a.name in forms else fa
    return out


# ------------------------------------------------------------------ moving signals between windows

@dataclass
class Win:
    """K windows of one size inside a map: item k's is rows ``[oy[k], oy[k] + h)``, columns
    ``[ox[k], ox[k] + w)``."""

    oy: list[int]
    ox: list[int]
    h: int
    w: int


def _clip_axis(ax: Axis, ys: list[int], n: int) -> tuple[list[int], int]:
    S, T, h = ax
    lo = [max(S * y + T, 0) for y in ys]
    hi = [min(S * y + T + h, n) for y in ys]
    c = max(b - a for a, b in zip(lo, hi))
    return [min(a, n - c) for a in lo], c


def clip(f: Form, hw, ys: list[int], xs: list[int]) -> Win | None:
    """The K items' windows of form ``f`` on a map of ``hw``, clipped to it: the largest
    clipped size, each window moved inside the map (it still holds its item's part of the
    map the form covers). None for the whole map."""
    if f is None:
        return None
    (oy, h), (ox, w) = _clip_axis(f[0], ys, hw[0]), _clip_axis(f[1], xs, hw[1])
    return None if (h, w) == tuple(hw) else Win(oy, ox, h, w)


def window_sizes(steps: dict, values: dict, y: int, x: int) -> tuple:
    """The (h, w) of one seed's clipped window at every windowed node of a plan: items with the
    same sizes batch without waste."""
    out = []
    for name, (f, _) in steps.items():
        if f is not None:
            w = clip(f, tuple(values[name].shape[-2:]), [y], [x])
            out.append(None if w is None else (w.h, w.w))
    return tuple(out)


def move(t: torch.Tensor, src: Win, dst: Win | None, hw) -> torch.Tensor:
    """Signals in the windows ``src`` (which may stick out of the map) as the windows ``dst``
    (None: the whole map ``hw``): zero where ``src`` does not reach, what lies outside dropped
    (it is zero there, or outside the map)."""
    K, C, h, w = t.shape
    d = dst if dst is not None else Win([0] * K, [0] * K, hw[0], hw[1])
    dy = [b - a for a, b in zip(src.oy, d.oy)]
    dx = [b - a for a, b in zip(src.ox, d.ox)]
    if dy == [0] * K and dx == [0] * K and (h, w) == (d.h, d.w):
        return t
    if len(set(dy)) == 1 and len(set(dx)) == 1 and -dy[0] >= 0 and -dx[0] >= 0 \
            and h - dy[0] <= d.h and w - dx[0] <= d.w:  # src is one slice of dst for every item
        out = t.new_zeros((K, C, d.h, d.w))
        out[:, :, -dy[0]:h - dy[0], -dx[0]:w - dx[0]] = t
        return out
    if len(set(dy)) == 1 and len(set(dx)) == 1 and dy[0] >= 0 and dx[0] >= 0 \
            and dy[0] + d.h <= h and dx[0] + d.w <= w:  # dst is one slice of src
        return t[:, :, dy[0]:dy[0] + d.h, dx[0]:dx[0] + d.w]
    return crop(t, torch.arange(K), None, torch.tensor(dy), torch.tensor(dx), d.h, d.w)


class WindowCtx(R.Ctx):
    """A rule's context whose record reads (``rows``, ``batched``) are the record under the
    current node's windows."""

    win: Win | None = None  # the windows of the signal the rule is given

    def rows(self, a):
        return super().rows(a) if self.win is None else self._under(a)

    def batched(self, a):
        return super().batched(a) if self.win is None else self._under(a)

    def _under(self, a):
        w = self.win
        return crop(self.val(a), self.n, None, torch.tensor(w.oy), torch.tensor(w.ox), w.h, w.w)


# ------------------------------------------------------------------ rules on windows

def _natural(win: Win, geom) -> Win:
    """The window a transposed conv or pool makes of ``win`` (unpadded: it may stick out)."""
    (k0, s0, p0, d0), (k1, s1, p1, d1) = geom
    return Win([o * s0 - p0 for o in win.oy], [o * s1 - p1 for o in win.ox],
               (win.h - 1) * s0 + d0 * (k0 - 1) + 1, (win.w - 1) * s1 + d1 * (k1 - 1) + 1)


def _conv(node, g, ctx, geom, win, one_channel=True):
    a = node.args[0] if node.op == "call_module" else R.bind(F.conv2d, node, ["input", "weight"], {})["input"]
    if node.op == "call_module":
        m = R.module(node, ctx)
        w, groups = m.weight, m.groups
    else:
        b = R.bind(F.conv2d, node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                   dict(bias=None, stride=1, padding=0, dilation=1, groups=1))
        w, groups = ctx.val(b["weight"]), b["groups"]
    bn = ctx.folded.get(node.name) if node.name != ctx.start else None
    if bn is not None:  # as conv_rule: the batch norm's scale folded into the filters
        key = ("folded", node.name)
        if key not in ctx.cache:
            ctx.cache[key] = w * R.bn_scale(bn.running_var, bn.weight, bn.eps).view(-1, 1, 1, 1)
        w = ctx.cache[key]
    (_, s0, _, d0), (_, s1, _, d1) = geom
    return [(a, full_conv_transpose(g, w, (s0, s1), (d0, d1), groups, one_channel), _natural(win, geom))]


def _avgpool(node, g, ctx, geom, win, one_channel=True):
    (k0, s0, _, _), (k1, s1, _, _) = geom
    C = g.shape[1]
    w = g.new_full((C, 1, k0, k1), 1.0 / (k0 * k1))  # every window divides by k*k (checked by classify)
    return [(node.args[0], F.conv_transpose2d(g, w, None, (s0, s1), 0, 0, C), _natural(win, geom))]


def _maxpool(node, g, ctx, geom, win, one_channel=True):
    """The switches under the window, scattered into the input's windows."""
    a = node.args[0]
    x = ctx.val(a)
    H, W = x.shape[-2:]
    key = ("switch_yx", node.name)
    if key not in ctx.cache:
        idx = ctx.cache.get(node.name)
        if idx is None:
            idx = ctx.cache[node.name] = R._switches(node, x, ctx)
        ctx.cache[key] = (idx // W, idx % W)
    iy, ix = ctx.cache[key]
    K, C, h, w = g.shape
    fa = ctx.win_of(a)
    fa = fa if fa is not None else Win([0] * K, [0] * K, H, W)
    oy, ox = torch.tensor(win.oy), torch.tensor(win.ox)
    ry = crop(iy, ctx.n, None, oy, ox, h, w).sub_(torch.tensor(fa.oy).view(K, 1, 1, 1))
    rx = crop(ix, ctx.n, None, oy, ox, h, w).sub_(torch.tensor(fa.ox).view(K, 1, 1, 1))
    # positions of the window outside the signal's support carry zeros: wherever their index lands
    local = ry.mul_(fa.w).add_(rx).clamp_(0, fa.h * fa.w - 1)
    out = g.new_zeros((K, C, fa.h * fa.w))
    out.scatter_add_(2, local.reshape(K, C, h * w), g.reshape(K, C, h * w))
    return [(a, out.view(K, C, fa.h, fa.w), fa)]


WINDOW_RULES = {"conv": _conv, "maxpool": _maxpool, "avgpool": _avgpool}


def _run(node, s, rule, ctx, c, win, one_channel):
    """One node on windows: [(input node, signal, its windows)]."""
    if c[0] == "window":
        return WINDOW_RULES[c[1][0]](node, s, ctx, c[1][1], win, one_channel)
    if getattr(rule, "__name__", "") in ("add", "sub"):  # equal shapes (classify): the signal, or -signal
        return [(a, -s if (i == 1 and rule.__name__ == "sub") else s, win)
                for i, a in enumerate(node.args) if ctx.carries(a)]
    ctx.win = win
    try:
        return [(a, ga, win) for a, ga in rule(node, s, ctx)]
    finally:
        ctx.win = None


def walk(order: list[fx.Node], image: fx.Node, start: fx.Node, rules: dict, ctx: WindowCtx, steps: dict,
         g: torch.Tensor, ys: list[int], xs: list[int], visit: Visit) -> torch.Tensor | None:
    """The reverse walk on windows from ``g`` (K, C, 1, 1), the point seeds at (``ys``, ``xs``)
    of node ``start`` (``steps``: its ``plan``), down to the input ``image``: (K, C_in, H, W),
    or None when the signal never gets there."""
    wins: dict = {}

    def win_of(a: fx.Node) -> Win | None:
        if a.name not in wins:
            wins[a.name] = clip(steps[a.name][0], _hw(ctx, a), ys, xs)
        return wins[a.name]

    ctx.win_of = win_of
    sig = {start.name: move(g, Win(ys, xs, 1, 1), win_of(start), _hw(ctx, start))}
    sparse = {start.name}  # nodes whose signal may still live in one channel per item (no conv above)
    for node in reversed(order[:order.index(start) + 1]):
        s = sig.pop(node.name, None)
        if s is None:
            continue
        if node is image:
            w = win_of(node)
            visit.windows[node.name] = None if w is None else (w.oy[0], w.ox[0], w.h, w.w)
            return s if w is None else move(s, w, None, _hw(ctx, node))
        if node.op == "placeholder":
            continue
        win, c = win_of(node), steps[node.name][1]
        visit.add(node, s, rules[node.name], ctx)
        visit.windows[node.name] = None if win is None else (win.oy[0], win.ox[0], win.h, win.w)
        one = node.name in sparse
        if win is None:
            outs = [(a, ga, None) for a, ga in rules[node.name](node, s, ctx)]
        else:
            outs = _run(node, s, rules[node.name], ctx, c, win, one)
        for a, ga, wa in outs:
            if ga is None:
                continue
            if one and rules[node.name] not in (R.conv_rule, R.cat_rule):
                sparse.add(a.name)
            if isinstance(ga, torch.Tensor) and wa is not win_of(a):
                K = ga.shape[0]
                hw = _hw(ctx, a)
                ga = move(ga, wa if wa is not None else Win([0] * K, [0] * K, hw[0], hw[1]), win_of(a), hw)
            old = sig.get(a.name)
            sig[a.name] = ga if old is None else _add_signals(old, ga)
    return None


def _numel(s) -> int:
    if isinstance(s, torch.Tensor):
        return s.numel()
    return sum(t.numel() for t in s if isinstance(t, torch.Tensor))


def _add_signals(a, b):
    if isinstance(b, list):
        return [y if x is None else (x if y is None else x + y) for x, y in zip(a, b)]
    return a + b
