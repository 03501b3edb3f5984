"""The graph engine's route for models torch.fx cannot trace: forward hooks + autograd.

A model with data-dependent control flow (``if x.sum() > 0:``) has no fixed
graph to walk. Its layers are then its module paths only (no functional ops),
recorded by forward hooks on the engine's private copy, and a projection runs
autograd on the K items' inputs (``rec.input[n]``, one batch) up to the seeded
module (a hook stops the forward there), with the seed as the output gradient.

``backprop`` is that gradient as it is. For ``deconv`` and ``guided`` the
forward runs under ``RuleMode``, a ``TorchFunctionMode`` that gives the ops of
``graph_rules``' table their rule by *name* (``relu``, ``relu6``, ``hardtanh``,
``silu``, ``local_response_norm``, a gate product, ...), whatever route calls
them (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu_``):

* ReLU family: the output is the op's, the backward is ``relu(g)`` (``deconv``)
  or ``relu(g) * mask`` (``guided``), as in the table;
* LocalResponseNorm: the backward passes the signal through;
* ``a * s`` with both requiring grad and ``s`` broadcast (a gate): ``a * s.detach()``;
* ops known to be linear (conv, linear, pools, add, cat, views, batch norm,
  dropout, ...) and ops whose output needs no gradient: unchanged;
* any other op whose output needs a gradient: its output is wrapped so that the
  backward raises ``UnsupportedOp`` naming it, if (and only if) a signal reaches it.

In-place calls (``relu_``, ``inplace=True``) run out of place here, which is
what the model meant unless it reads the mutated input afterwards.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .graph_rules import UnsupportedOp
from .graph_trace import first_tensor

RECTIFIERS = {"relu": None, "relu6": 6.0, "silu": None, "gelu": None, "hardswish": None, "elu": None,
              "leaky_relu": None, "mish": None, "celu": None}
LINEAR = set("""conv1d conv2d conv3d conv_transpose2d linear batch_norm instance_norm max_pool2d
max_pool2d_with_indices adaptive_max_pool2d avg_pool2d adaptive_avg_pool2d add __add__ __radd__ __iadd__ sub
__sub__ __rsub__ __isub__ cat concat concatenate stack flatten view reshape permute transpose contiguous clone
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout layer_norm group_norm mean sum chunk
split unbind squeeze unsqueeze __getitem__ pad interpolate upsample expand expand_as narrow select neg __neg__
to float double half type_as detach pixel_shuffle channel_shuffle roll flip t view_as reshape_as unflatten
__get__ identity""".split())


class _Rectify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, method, upper):
        ctx.save_for_backward(x)
        ctx.method, ctx.upper = method, upper
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g = g.clamp_min(0)
        if ctx.method == "guided":
            g = g * ((x > 0) if ctx.upper is None else ((x > 0) & (x < ctx.upper)))
        return g, None, None, None


class _PassThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        return g, None


class _Refuse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, label):
        ctx.label = label
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        raise UnsupportedOp(f"no rule for {ctx.label} reached by the signal (untraceable model, hook route); "
                            f"expected an op of the rule table of deconvlab.engine.graph_rules, or method='backprop'")


def _grad_tensor(v) -> bool:
    """A tensor that carries the signal: it needs a gradient and is not a parameter (a leaf)."""
    return isinstance(v, torch.Tensor) and v.requires_grad and v.grad_fn is not None


class RuleMode(TorchFunctionMode):
    """Apply the ``deconv`` / ``guided`` rules to ops by name (see the module docstring)."""

    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        if "inplace" in kwargs:
            kwargs["inplace"] = False
        if base in RECTIFIERS or base == "hardtanh":
            return self._rectifier(func, base, args, kwargs)
        if base in ("mul", "__mul__", "__rmul__", "__imul__") and len(args) >= 2 and all(
                _grad_tensor(a) for a in args[:2]):
            return self._gate(args[0], args[1], name)
        if base == "local_response_norm":
            return _PassThrough.apply(args[0], func(*args, **kwargs))
        out = func(*args, **kwargs)
        if base in LINEAR or base in ("mul", "__mul__", "__rmul__", "__imul__") or (
                base in ("div", "__truediv__", "__itruediv__") and not any(_grad_tensor(a) for a in args[1:2])):
            return out  # linear (a product here has at most one operand carrying the signal)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            return _Refuse.apply(out, name)
        return out

    def _rectifier(self, func, base, args, kwargs):
        x = args[0]
        fn = getattr(torch.nn.functional, base, None) or func
        y = fn(*args, **kwargs)
        upper = RECTIFIERS.get(base)
        if base == "hardtanh":
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            if (lo, hi) != (0.0, 6.0):
                return _Refuse.apply(y, f"hardtanh({lo}, {hi})") if y.requires_grad else y
            upper = 6.0
        if not y.requires_grad:
            return y
        return _Rectify.apply(x, y, self.method, upper)

    def _gate(self, a, b, name):
        if a.shape == b.shape:
            return _Refuse.apply(a * b, f"{name} of two signals of the same shape")
        big, gate = (a, b) if a.numel() > b.numel() else (b, a)
        return big * gate.detach()


class _Stop(Exception):
    pass


class HookRoute:
    """Module-path layers through forward hooks; projections through autograd."""

    def __init__(self, root: nn.Module, layers: list[str]):
        self.root, self.layers = root, layers

    def forward(self, x: torch.Tensor):
        from .graph import GraphRecord

        acts: dict[str, torch.Tensor] = {}
        handles = []
        for path in self.layers:
            def hook(m, inp, out, path=path):
                if path not in acts and isinstance(out, torch.Tensor):
                    acts[path] = out.detach().clone()
            handles.append(self.root.get_submodule(path).register_forward_hook(hook))
        try:
            with torch.no_grad():
                y = self.root(x)
        finally:
            for h in handles:
                h.remove()
        return GraphRecord(x, first_tensor(y), {k: acts[k] for k in self.layers if k in acts})

    def project(self, rec, layer: str, n: torch.Tensor, g: torch.Tensor, method: str) -> torch.Tensor:
        box: dict[str, torch.Tensor] = {}

        def hook(m, inp, out):
            if isinstance(out, torch.Tensor):
                box["out"] = out
                raise _Stop

        with torch.inference_mode(False), torch.enable_grad():
            x = rec.input.index_select(0, n).detach().clone().requires_grad_(True)
            h = self.root.get_submodule(layer).register_forward_hook(hook)
            try:
                if method == "backprop":
                    self.root(x)
                else:
                    with RuleMode(method):
                        self.root(x)
            except _Stop:
                pass
            finally:
                h.remove()
            if "out" not in box:
                raise ValueError(f"layer {layer!r}: expected its module to run on the input, got no output")
            out = box["out"]
            if not out.requires_grad:
                return torch.zeros_like(x)
            (gx,) = torch.autograd.grad(out, x, g.to(out.dtype), allow_unused=True)
        return torch.zeros_like(x) if gx is None else gx.detach()
