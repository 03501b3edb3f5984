"""The graph engine: deconvnet, guided backprop and gradient projections for any CNN.

The sequential engine (``deconvnet``) walks a flat ``nn.Sequential``. This one
takes any ``nn.Module`` that maps (N, C, H, W) images to logits (ResNets,
DenseNets, GoogLeNet, MobileNets, EfficientNets, ConvNeXts, a user's own
module) and projects a unit the way Zeiler & Fergus (2013, Sec. 2.1) describe:
"we set all other activations in the layer to zero and pass the feature maps as
input to the attached deconvnet layer", down every branch of the graph to the
input pixels.

    eng = GraphEngine(model, (3, 224, 224))       # traces a private copy; model is not changed
    rec = eng.forward(x)                          # every layer's activation, logits (no autograd graph)
    p = eng.project_many(rec, [("layer3.1", 7, None, 0)], method="guided")   # (1, 3, 224, 224)

How:

* ``graph_trace.trace_model``: a private copy (weights shared), an fx graph
  with torchvision's node names, in-place ops rewritten out of place, module
  paths mapped to the nodes that carry their outputs (checked by hooks).
* ``forward``: an fx interpreter that keeps the value of every node (no
  autograd graph: ``torch.no_grad``).
* ``project_many``: K seeds as one (K, ...) batch at the seeded node, then one
  reverse walk over the graph: each node hands its signal to its inputs with the
  rule of ``graph_rules`` (the table there says what each op does under each
  method, and why); signals of a node's users are added (a residual add sends
  the same signal down both branches, a ``cat`` splits it). Only nodes that lie
  between the input and the seed are visited. Max-pool switches are computed
  once per record from the recorded pool input.
* Speed: no autograd on the hot path (conv, linear, batch norm, ReLU family,
  max pool, add, cat, reshapes have hand-written rules); a batch norm's scale
  is folded into the filters of the conv before it (once per record); while a
  seed's signal lives in one channel only that unit's filter is transposed, and
  transposed convs onto the colours run polyphase (``graph_kernels``). K items
  run as one batch, cut so that no signal buffer passes 32 MB.
* Windows (``graph_windows``): a point seed's signal only reaches its
  receptive field, so by default (``window=True``) each rule runs over the
  window of each map that the signal can reach, clipped to the map; items whose
  windows have the same sizes batch together. Where the signal turns global (a
  linear layer, a global or adaptive pool, a gate, an op with no windowed rule)
  the walk goes on over whole maps. ``window=False`` (engine or call) is the
  whole-map walk, kept as the reference the tests compare it with;
  ``last_visit`` says what the last call touched (elements, multiply-adds,
  windows).

Seeds (as in the sequential engine and ``Net.project_many``): ``point``: one
activation of one unit, by default its first maximum in row-major order, with
its own value (all else zero); ``map``: the unit's whole map, weighted by its
activations; an fc unit (N, C layers): its one value.

Models fx cannot trace (data-dependent control flow, ``x[i] = v``) still work
with module-path layers only: forward hooks record them, and projections run
autograd on the items' inputs under a ``TorchFunctionMode`` that applies the same
ReLU-family rules (``graph_hooks``); ``untraceable`` says why fx failed.

Errors: an unknown layer raises ``KeyError("unknown layer: expected one of
[...], got 'x'")``; a bad unit, position, index, method or seed a ``ValueError``
in the ``expected ..., got ...`` form; an op with no ``deconv``/``guided`` rule
reached by the signal ``graph_rules.UnsupportedOp`` naming the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import fx, nn

from .graph_rules import Ctx, UnsupportedOp, fold_pairs, rule_for  # noqa: F401 (UnsupportedOp: re-exported)
from .graph_trace import first_tensor, trace_model
from .graph_windows import Visit, WindowCtx, plan, walk, window_sizes
from .items import check_form, check_item, strongest  # noqa: F401 (strongest: re-exported)

METHODS = ("deconv", "guided", "backprop")
SEEDS = ("point", "map")


def run_graph(root: nn.Module, graph: fx.Graph, x: torch.Tensor, gm: fx.GraphModule | None = None) -> dict:
    """Run ``graph`` on ``x`` and return every node's value, by node name."""
    gm = gm if gm is not None else fx.GraphModule(root, graph)
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interp.run(x)
    return {n.name: v for n, v in interp.env.items()}


@dataclass
class GraphRecord:
    """What one forward pass of the graph engine leaves behind (a batch of N inputs)."""

    input: torch.Tensor  # (N, C, H, W)
    logits: torch.Tensor  # the model's output (its first tensor when it returns several)
    activations: dict[str, torch.Tensor]  # layer -> (N, C, H, W) or (N, C), every layer
    values: dict = field(default_factory=dict, repr=False)  # fx node name -> value (traced models)
    cache: dict = field(default_factory=dict, repr=False)  # max-pool switches, made on first use

    def __len__(self) -> int:
        return int(self.input.shape[0])

    def select(self, index: int | list[int]) -> "GraphRecord":
        """The record of a sub-batch (e.g. one image of a batch)."""
        idx = [index] if isinstance(index, int) else list(index)
        for i in idx:
            if not 0 <= i < len(self):
                raise ValueError(f"index: expected 0..{len(self) - 1}, got {i}")
        sel = torch.tensor(idx, dtype=torch.long, device=self.input.device)
        N = len(self)

        def pick(v):
            return v.index_select(0, sel) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == N else v

        values = {k: pick(v) for k, v in self.values.items()}
        acts = {k: pick(v) for k, v in self.activations.items()}
        return GraphRecord(pick(self.input), pick(self.logits), acts, values)


class GraphEngine:
    """Projections for any ``nn.Module`` CNN (see the module docstring)."""

    max_batch = 64  # items per backward pass
    budget_elements = 8 << 20  # K is cut so that K x the largest map (per item) stays under this (32 MB)

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], window: bool = True):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if len(input_shape) != 3 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in input_shape):
            raise ValueError(f"input_shape: expected (C, H, W) of positive ints, got {input_shape!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.window = bool(window)  # point seeds walk windows (``graph_windows``); False: whole maps
        self.whole_map_fraction = WHOLE_MAP_FRACTION  # windows above this share of the maps walk whole maps (1.0: never)
        self.last_visit: Visit | None = None  # what the last backward pass touched
        self._plans: dict = {}
        t = trace_model(module, self.input_shape)
        self._t = t
        self.root = t.root
        self.untraceable: str | None = t.untraceable
        self.layers: list[str] = list(t.layers)
        if t.graph is not None:
            self._graph = t.graph
            self._gm = fx.GraphModule(t.root, t.graph)
            self._order = [n for n in t.graph.nodes]
            self._index = {n.name: i for i, n in enumerate(self._order)}
            self._input = next(n for n in self._order if n.op == "placeholder")
            self._out = next(n for n in self._order if n.op == "output")
            self._dep = self._depends_on_input()
            self._rules = {n.name: rule_for(n, t.root) for n in self._order if n.op.startswith("call_")}
            self._modules = {n.target: t.root.get_submodule(n.target) for n in self._order if n.op == "call_module"}
            self._folded = fold_pairs(self._order, t.root, self._rules)
        else:
            from .graph_hooks import HookRoute

            self._hooks = HookRoute(t.root, self.layers)

    def _depends_on_input(self) -> set[str]:
        dep = {self._input.name}
        for n in self._order:
            if any(a.name in dep for a in n.all_input_nodes):
                dep.add(n.name)
        return dep

    def __repr__(self) -> str:
        return f"GraphEngine({type(self.root).__name__}, {len(self.layers)} layers, untraceable={self.untraceable!r})"

    # ------------------------------------------------------------ layers

    def layer_info(self) -> list[dict]:
        """``[{"name", "kind", "type", "channels", "shape", "parent"}]`` in forward order, at
        ``input_shape``. ``kind``: ``"fc"`` for (N, C) outputs; ``"conv"`` for a module's
        (N, C, H, W) output; ``"op"`` for a functional op's (N, C, H, W) output. ``type``: the
        module's class name or the op's name; ``parent``: the enclosing module path or None."""
        return [dict(self._t.info[name]) for name in self.layers]

    def node_of(self, layer: str) -> str:
        """The fx node whose value is ``layer`` (traced models)."""
        self._check_layer(layer)
        return self._t.node_of.get(layer, layer)

    def unsupported(self, method: str) -> list[str]:
        """Layer names of nodes that would raise under ``method`` if the signal reached them
        (an empty list for ``backprop``; some may never get a signal, e.g. a gate's sigmoid)."""
        if method == "backprop" or self.untraceable:
            return []
        from .graph_rules import unknown_rule

        return [self._t.qualname.get(k, k) for k, r in self._rules.items() if r is unknown_rule]

    def _check_layer(self, layer: str) -> None:
        if layer not in self._t.info:
            raise KeyError(f"unknown layer: expected one of {self.layers}, got {layer!r}")

    # ------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> GraphRecord:
        """Run the model on ``x`` (N, C, H, W) without autograd; record every layer."""
        C = self.input_shape[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != C or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a float tensor of shape (N, {C}, H, W), got {got}")
        if self.untraceable:
            return self._hooks.forward(x)
        env = run_graph(self.root, self._graph, x, self._gm)
        out = fx.node.map_arg(self._out.args[0], lambda a: env[a.name])
        acts = {layer: env[self._t.node_of[layer]] for layer in self.layers}
        return GraphRecord(x, first_tensor(out), acts, env)

    # ------------------------------------------------------------ projections

    def project(self, rec: GraphRecord, layer: str, unit: int, method: str = "deconv", seed: str = "point",
                position: tuple[int, int] | None = None, index: int = 0, window: bool | None = None) -> torch.Tensor:
        """One unit's projection: (C_in, H, W)."""
        return self.project_many(rec, [(layer, unit, position, index)], method=method, seed=seed, window=window)[0]

    def project_many(self, rec: GraphRecord, items: Iterable[Sequence], method: str = "deconv",
                     seed: str = "point", window: bool | None = None) -> torch.Tensor:
        """Project K items ``(layer, unit, position_or_None[, index])``: (K, C_in, H, W) in
        the order of ``items``; items of one layer run as batched passes. ``window``: point
        seeds walk only the windows their signal reaches (None: the engine's ``window``)."""
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
        if seed not in SEEDS:
            raise ValueError(f"seed: expected one of {list(SEEDS)}, got {seed!r}")
        if not isinstance(rec, GraphRecord):
            raise TypeError(f"rec: expected a GraphRecord from GraphEngine.forward, got {type(rec).__name__}")
        items = [self._check_item(rec, it, seed) for it in items]
        if not items:
            raise ValueError("items: expected at least one (layer, unit, position) item, got none")
        groups: dict[str, list[int]] = {}
        for k, it in enumerate(items):
            groups.setdefault(it[0], []).append(k)
        out = rec.input.new_zeros((len(items),) + tuple(rec.input.shape[1:]))
        window = self.window if window is None else bool(window)
        self.last_visit = Visit()
        for layer, ks in groups.items():
            step = self._step(rec, layer)
            for i in range(0, len(ks), step):
                part = ks[i:i + step]
                res = self._project_group(rec, layer, [items[k] for k in part], method, seed, window)
                out[torch.tensor(part, device=out.device)] = res
        return out

    def _step(self, rec: GraphRecord, layer: str) -> int:
        if self.untraceable:
            return self.max_batch
        stop = self._index[self._t.node_of[layer]]
        peak = max((v[0].numel() for n in self._order[:stop + 1] if n.name in self._dep
                    for v in [rec.values.get(n.name)] if isinstance(v, torch.Tensor) and v.dim()), default=1)
        return max(1, min(self.max_batch, self.budget_elements // max(peak, 1)))

    def _check_item(self, rec: GraphRecord, item: Sequence, seed: str) -> tuple:
        check_form(item)
        self._check_layer(item[0])
        act = rec.activations.get(item[0])
        if act is None:
            raise ValueError(f"rec: expected a record with layer {item[0]!r}, got one without it")
        return check_item(item, act, len(rec), item[0], seed)

    def _project_group(self, rec: GraphRecord, layer: str, items: list[tuple], method: str,
                       seed: str, window: bool = False) -> torch.Tensor:
        act = rec.activations[layer]
        n = torch.tensor([it[3] for it in items], dtype=torch.long, device=act.device)
        units = torch.tensor([it[1] for it in items], dtype=torch.long, device=act.device)
        positions = [it[2] for it in items]
        if window and not self.untraceable and seed == "point" and act.dim() == 4:
            return self._walk_windows(rec, self._t.node_of[layer], act, n, units, positions, method)
        g = seed_batch(act, n, units, positions, seed)
        if self.untraceable:
            return self._hooks.project(rec, layer, n, g, method)
        return self._walk(rec, self._t.node_of[layer], g, n, method)

    def _ctx(self, cls, rec: GraphRecord, n: torch.Tensor, method: str, start: str):
        ctx = cls(self.root, rec.values, rec.cache, n, method, self._dep, self._t.qualname)
        ctx.modules, ctx.folded, ctx.start = self._modules, self._folded, start
        return ctx

    def _walk_windows(self, rec: GraphRecord, start: str, act: torch.Tensor, n: torch.Tensor, units: torch.Tensor,
                      positions: list, method: str) -> torch.Tensor:
        """Point seeds on windows (``graph_windows``): each rule runs over the part of each map
        the seeds' signals reach; the same sums as ``_walk``. Items whose windows have the same
        sizes at every node (clipped to the maps) run as one batch, so no item computes over
        another's border."""
        ys, xs = strongest(act, n, units)
        for i, p in enumerate(positions):
            if p is not None:
                ys[i], xs[i] = p
        K = int(n.shape[0])
        g = act.new_zeros((K, act.shape[1], 1, 1))
        g[torch.arange(K, device=act.device), units, 0, 0] = act[n, units, ys, xs]
        node = self._order[self._index[start]]
        key = (start, method, tuple(rec.input.shape[1:]))
        if key not in self._plans:
            ctx = self._ctx(WindowCtx, rec, n, method, start)
            self._plans[key] = (plan(self._order, node, self._rules, ctx, method), {})
        steps, sizes = self._plans[key]
        groups: dict[tuple, list[int]] = {}
        dense: list[int] = []  # items whose windows cover most of the maps: one whole-map batch
        for k, yx in enumerate(zip(ys.tolist(), xs.tolist())):
            if yx not in sizes:
                sizes[yx] = window_sizes(steps, rec.values, *yx)
            if _window_fraction(steps, rec.values, sizes[yx]) > self.whole_map_fraction:
                dense.append(k)
            else:
                groups.setdefault(sizes[yx], []).append(k)
        out = rec.input.new_zeros((K,) + tuple(rec.input.shape[1:]))
        if dense:
            sel = torch.tensor(dense, device=act.device)
            seeds = seed_batch(act, n.index_select(0, sel), units.index_select(0, sel),
                               [(int(ys[k]), int(xs[k])) for k in dense], "point")
            out[sel] = self._walk(rec, start, seeds, n.index_select(0, sel), method)
        for ks in groups.values():
            sel = torch.tensor(ks, device=act.device)
            ctx = self._ctx(WindowCtx, rec, n.index_select(0, sel), method, start)
            with torch.no_grad():
                res = walk(self._order, self._input, node, self._rules, ctx, steps, g.index_select(0, sel),
                           ys[sel].tolist(), xs[sel].tolist(), self.last_visit)
            if res is not None:
                out[sel] = res
        return out

    def _walk(self, rec: GraphRecord, start: str, g: torch.Tensor, n: torch.Tensor, method: str) -> torch.Tensor:
        """The reverse walk: ``g`` at node ``start`` down to the input, (K, C, H, W)."""
        ctx = self._ctx(Ctx, rec, n, method, start)
        visit = self.last_visit if self.last_visit is not None else Visit()
        sig: dict[str, object] = {start: g}
        result = None
        with torch.no_grad():
            for node in reversed(self._order[:self._index[start] + 1]):
                s = sig.pop(node.name, None)
                if s is None:
                    continue
                if node is self._input:
                    result = s
                    break
                if node.op == "placeholder":
                    continue
                visit.add(node, s, self._rules[node.name], ctx)
                visit.windows[node.name] = None
                for a, ga in self._rules[node.name](node, s, ctx):
                    if ga is not None:
                        sig[a.name] = _accumulate(sig.get(a.name), ga)
        if result is None:  # the seed does not depend on the input (or is dead everywhere)
            return rec.input.new_zeros((len(n),) + tuple(rec.input.shape[1:]))
        return result


# Windows pay where they are small. Items with different clipped windows batch apart and each
# windowed rule has a fixed cost of its own, so a seed whose windows hold most of the maps runs
# as fast, or faster, as one whole-map batch with the other items. resnet18 at 224 px, two
# threads (bench/bench_graph.py): a layer3.1 seed's windows hold 0.28 of the windowed maps'
# elements (0.23 of the multiply-adds); on a quiet machine they were faster than whole maps for
# one unit (80 against 124 ms) and even for 64, on a loaded one slower (427 against 160 ms); a
# layer1.1 seed's windows hold 0.07 and always win (6 against 42 ms). A layer2.1 seed at 112 px
# holds 0.46. An item walks whole maps when its windows hold more than this fraction.
WHOLE_MAP_FRACTION = 0.5


def _window_fraction(steps: dict, values: dict, sizes: tuple) -> float:
    """The elements of one seed's windows over those of the whole maps, at the nodes a plan
    windows (``sizes`` from ``window_sizes``; None there is a whole map)."""
    part = whole = 0
    names = [name for name, (f, _) in steps.items() if f is not None]
    for name, hw in zip(names, sizes):
        v = values[name]
        c, H, W = (v.shape[1] if v.dim() == 4 else 1), v.shape[-2], v.shape[-1]
        whole += c * H * W
        part += c * (H * W if hw is None else hw[0] * hw[1])
    return part / whole if whole else 1.0


def _accumulate(old, new):
    if old is None:
        return new
    if isinstance(new, list):
        return [b if a is None else (a if b is None else a + b) for a, b in zip(old, new)]
    return old + new


def seed_batch(act: torch.Tensor, n: torch.Tensor, units: torch.Tensor, positions: list, seed: str) -> torch.Tensor:
    """The K seeds at one layer ``act`` (N, C[, H, W]): (K, C[, H, W]), zero but for the seeded
    activation (point seed: its value at the position; map seed: the unit's map; fc: its value)."""
    K = int(n.shape[0])
    g = act.new_zeros((K,) + tuple(act.shape[1:]))
    k = torch.arange(K, device=act.device)
    if act.dim() == 2:
        g[k, units] = act[n, units]
    elif seed == "point":
        ys, xs = strongest(act, n, units)
        for i, p in enumerate(positions):
            if p is not None:
                ys[i], xs[i] = p
        g[k, units, ys, xs] = act[n, units, ys, xs]
    else:
        g[k, units] = act[n, units]
    return g
