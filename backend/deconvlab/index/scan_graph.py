"""The scan loop for graph-engine nets (a ResNet, a user's module): which layers, and a streaming run.

Zeiler & Fergus (2013, Fig. 2) show, for each feature map, "the top 9
activations ... across the validation data" of the rectified maps of each
layer. A flat paper model has one such map per layer (``conv3`` is read after
its ReLU). A graph net lists many more layers (``net.layers``: every module
output and every functional op, e.g. resnet18's ``conv1, bn1, relu, ...,
layer1.0.add, layer1.0.relu_1, layer1.0``), most of them one step of a
``conv -> bn -> relu`` chain whose last value is the one the paper shows.

Which layers a graph net indexes (:func:`graph_index_layers`)
    =====================================================  ==========================================
    a layer of ``net.layers`` (kind conv, fc or op) ...    indexed?
    =====================================================  ==========================================
    whose value's *only* reader is a point-wise op         no: that op's output is the map to show
    (batch norm in eval, a ReLU-family rectifier,          (``conv1`` -> ``bn1`` -> ``relu``: only
    dropout, identity), a reshape (flatten, view) or a     ``relu``; ``layer1.0.add`` -> ``relu_1``:
    sum (a residual ``add``)                               only ``relu_1``; ``avgpool`` -> ``flatten``;
                                                           ``layer1.0.bn2`` and ``downsample.1`` ->
                                                           ``add``: the block output shows them)
    a second name of an fx node already indexed           no: it is indexed once, under the module
    (``layer1.0`` is ``layer1.0.relu_1``'s node)           path (the block), the other names are
                                                           ``aliases`` in the manifest
    any other (rectified maps, pools, the block outputs,   yes
    the logits)
    =====================================================  ==========================================

    resnet18: 20 layers (``relu``, ``maxpool``, per block its inner ``relu``
    and its output, ``flatten``, ``fc``) out of the 80 of ``net.layers``.
    Indexing all of them (69 distinct nodes, 3.2x the units) costs 0.87x of a
    plain forward's throughput against the rule's 0.92x at 224 px
    (``bench/bench_index_graph.py``), and fills the index with pre-activation
    copies of the same maps.

    A paper model on the graph engine (``engine="graph"``) keeps its paper
    layers (``conv1`` .. ``fc8``), as the sequential engine indexes them. A
    model fx cannot trace has module-path layers only and no graph to ask who
    reads what: every layer but the batch norms is indexed.

Streaming (:func:`stream`)
    ``GraphEngine.forward`` keeps every node's value (resnet18, batch 64, 224
    px: several GB). The scan needs each wanted node's per-unit max and argmax
    only, so :func:`stream` runs the net's fx graph node by node
    (``torch.fx.Interpreter.run_node``), hands each wanted value out as soon as
    it exists, and deletes every value after its last reader (the
    interpreter's own ``user_to_last_uses``). Models fx cannot trace: forward
    hooks on the engine's private copy collect the wanted layers (only those)
    during one ordinary forward call.

This module reads the graph engine's private state (``_graph``, ``_gm``,
``_t``) of the ``Net`` it is given; it changes nothing there.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import fx, nn

__all__ = ["graph_index_layers", "stream", "OUTPUT"]

OUTPUT = "<output>"  # the name :func:`stream` gives the model's output, when asked for

POINTWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.GELU,
                     nn.SiLU, nn.Hardswish, nn.Mish, nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity,
                     nn.Flatten)
POINTWISE_OPS = {"relu", "relu6", "leaky_relu", "elu", "celu", "gelu", "silu", "hardswish", "mish", "hardtanh",
                 "batch_norm", "dropout", "dropout2d", "identity", "flatten", "view", "reshape", "clamp",
                 "clamp_min", "contiguous"}


def _engine(net):
    g = getattr(net, "_graph", None)
    if g is None:
        raise TypeError(f"net: expected a Net on the graph engine, got {type(net).__name__} "
                        f"(engine {getattr(net, 'engine', None)!r})")
    return g


SUMS = {"add", "iadd", "__add__", "__radd__"}


def _pointwise(node: fx.Node, root: nn.Module) -> bool:
    """Is ``node`` a point-wise op, a reshape or a sum: an op whose output shows what its input did?"""
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), POINTWISE_MODULES)
    if node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        return name in POINTWISE_OPS or name in SUMS
    return False


def _layer_node(net, layer: str) -> str:
    return _engine(net).node_of(net.node(layer))


def graph_index_layers(net, input_size: int | None = None, every: bool = False) -> list[dict]:
    """The layers a graph-engine ``net`` indexes (the module docstring's rule), as
    ``LayerInfo`` fields ``{name, child (the fx node), kind, units, shape, offset}``, forward order.

    ``every=True``: every fx node that is a layer, once (the benchmark's upper bound).
    ``input_size`` other than the net's own is a ``ValueError`` (the shapes are the net's)."""
    eng = _engine(net)
    if input_size is not None and int(input_size) != int(net.meta.input_size):
        raise ValueError(f"input_size: a graph net is indexed at its own input size, expected "
                         f"{net.meta.input_size}, got {input_size}")
    info = {d["name"]: d for d in net.layer_info()}
    if getattr(net, "_alias", None):  # a paper model on the graph engine: its paper layers
        names = list(net._alias)
    elif eng.untraceable:
        names = [d["name"] for d in info.values() if not d["type"].startswith("BatchNorm")]
    else:
        by_name = {n.name: n for n in eng._order}
        modules = {path for path, _ in eng.root.named_modules() if path}
        names, seen = [], {}
        for layer in net.layers:
            node = by_name[_layer_node(net, layer)]
            readers = list(node.users)
            if not every and len(readers) == 1 and _pointwise(readers[0], eng.root):
                continue
            if node.name in seen:  # a second name for one node: the first module path (the block) wins
                if names[seen[node.name]] not in modules and layer in modules:
                    names[seen[node.name]] = layer
                continue
            seen[node.name] = len(names)
            names.append(layer)
    out, offset = [], 0
    for layer in names:
        shape = tuple(int(s) for s in info[layer]["shape"])
        if len(shape) not in (1, 3):
            raise ValueError(f"layer {layer}: expected an activation of shape (C, H, W) or (C,), got {shape}")
        node = layer if eng.untraceable else _layer_node(net, layer)
        out.append({"name": layer, "child": node, "kind": "conv" if len(shape) == 3 else "fc",
                    "units": shape[0], "shape": shape, "offset": offset})
        offset += shape[0]
    if not out:
        raise ValueError(f"the model has no layer to index (expected conv or fc layers, got {net.layers})")
    return out


def aliases(net, layers: list[str]) -> dict[str, list[str]]:
    """Each indexed layer's other names: the layers of ``net`` that are the same fx node."""
    eng = _engine(net)
    if eng.untraceable or getattr(net, "_alias", None):
        return {layer: [] for layer in layers}
    node_of = {layer: _layer_node(net, layer) for layer in layers}
    by_node: dict[str, list[str]] = {}
    for layer in net.layers:
        by_node.setdefault(_layer_node(net, layer), []).append(layer)
    return {layer: [n for n in by_node.get(node_of[layer], []) if n != layer] for layer in layers}


def stream(net, x: torch.Tensor, nodes: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(node, value)`` for each of ``nodes`` (fx node names; :data:`OUTPUT` for the model's
    output) as the graph computes it, in forward order, keeping no value past its last reader.

    An untraceable net: ``nodes`` are module paths, collected by forward hooks during one
    forward call, then handed out in forward order (only they are kept)."""
    eng = _engine(net)
    p = next(eng.root.parameters(), None)
    x = x.to(p.device if p is not None else x.device, p.dtype if p is not None and p.is_floating_point()
             else x.dtype)
    if eng.untraceable:
        yield from _stream_hooks(eng.root, x, nodes)
        return
    interp = fx.Interpreter(eng._gm, garbage_collect_values=True)
    interp.args_iter = iter([x])
    last_uses = interp.user_to_last_uses
    env = interp.env
    left = set(nodes)
    for node in eng._order:
        if not left:
            return
        if node.op == "output":
            if OUTPUT in left:
                from ..engine.graph_trace import first_tensor

                yield OUTPUT, first_tensor(fx.node.map_arg(node.args[0], lambda a: env[a]))
            return
        env[node] = interp.run_node(node)
        if node.name in left:
            left.discard(node.name)
            yield node.name, env[node]
        for dead in last_uses.get(node, ()):
            del env[dead]


def _stream_hooks(root: nn.Module, x: torch.Tensor, nodes: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    got: dict[str, torch.Tensor] = {}
    handles = []

    def hook(path):
        def fn(m, inp, out):
            if path not in got and isinstance(out, torch.Tensor):
                got[path] = out.clone()  # an in-place op later must not reach it
        return fn

    for path, m in root.named_modules():
        if path in nodes:
            handles.append(m.register_forward_hook(hook(path)))
    try:
        y = root(x)
    finally:
        for h in handles:
            h.remove()
    for path in list(got):
        yield path, got.pop(path)
    if OUTPUT in nodes:
        from ..engine.graph_trace import first_tensor

        yield OUTPUT, first_tensor(y)
