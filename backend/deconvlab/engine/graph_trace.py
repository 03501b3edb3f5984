"""Tracing any ``nn.Module`` CNN for the graph engine: a private copy, an fx graph, layer names.

``trace_model(module, input_shape)`` gives a ``Traced``:

1. **A copy that shares the weights.** ``copy.deepcopy`` with every parameter
   and buffer in the memo (so no tensor is copied), put in eval mode, with the
   hooks of the caller's modules dropped and every ``inplace=True`` flag set to
   ``False``. The caller's module is never touched: no flag flipped, no hook
   added, not even ``.eval()``.
2. **An fx graph.** torchvision's ``NodePathTracer`` (the tracer of
   ``torchvision.models.feature_extraction``, ``autowrap_modules=(math,
   torchvision.ops)``), so functional ops get the names
   ``get_graph_node_names(model)[1]`` gives them (``layer1.0.add``,
   ``layer1.0.relu_1``). One difference: torchvision makes its ``torchvision.ops``
   modules (``Conv2dNormActivation``, ``SqueezeExcitation``, ...) leaves; here
   only ``torch.nn`` modules are, so the conv, batch norm and activation inside
   such a block are nodes of their own (named by their module paths) and the
   block's functional ops get names under its path (``features.1.block.1.mul``).
3. **Functionalised.** In-place ops become their out-of-place twins
   (``relu_`` -> ``relu``, ``F.relu(x, inplace=True)`` -> ``inplace=False``,
   ``x.add_(y)`` -> ``x.add(y)``), and every later use of the mutated tensor
   reads the op's result instead, which is what the in-place op meant. So the
   value recorded at every node is the value the op produced *when it ran*
   (``layer1.0.bn1`` holds the batch-norm output, not what the in-place ReLU
   left of it). ``x[i] = v`` (``operator.setitem``) cannot be rewritten this way:
   such a model is treated as untraceable.
4. **Checked.** On a seeded example input of ``input_shape`` the graph must give
   the module's own output (else: untraceable, with the difference as reason).

Layer names (``Traced.layers``, in forward order):

* every node whose example value is a tensor of shape (N, C) or (N, C, H, W),
  by its qualified name (leaf modules: their ``named_modules`` path; a leaf
  module called twice: ``path`` then ``path_1``; functional ops: as above);
* every non-leaf module path (``layer3.1``, ``features.denseblock2``,
  ``inception4c``), aliased to the node whose value *is* that module's output:
  found with a forward hook on the copy on the example input (the last node
  under the path whose value equals the hook's, exactly). A block whose output
  no node carries (it returns its input, or a tuple) is not a layer.

``trace_model`` never raises for a model fx cannot trace: ``Traced.graph`` is
then ``None`` and ``Traced.untraceable`` says why (the graph engine falls back to
module-path layers through forward hooks).
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from dataclasses import dataclass, field

import torch
import torchvision
from torch import fx, nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import NodePathTracer


@dataclass
class Traced:
    """A model's private copy, its functionalised graph and its layer names."""

    root: nn.Module  # the copy (eval, no hooks, no in-place flags); shares the caller's tensors
    graph: fx.Graph | None  # None when untraceable
    untraceable: str | None
    qualname: dict[str, str] = field(default_factory=dict)  # fx node name -> layer name
    layers: list[str] = field(default_factory=list)  # forward order
    node_of: dict[str, str] = field(default_factory=dict)  # layer name -> fx node name
    info: dict[str, dict] = field(default_factory=dict)  # layer name -> layer_info entry
    example_shapes: dict[str, tuple] = field(default_factory=dict)  # layer -> shape without N


def private_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` sharing its parameters and buffers (except tensors made in
    inference mode, which are copied: autograd cannot use them), in eval mode, without hooks
    and with every ``inplace`` flag off. ``module`` itself is not changed."""
    memo = {}
    with torch.inference_mode(False):
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_inference():  # made under inference mode: autograd (the vjp rule, the hook route) refuses it
                c = t.clone()
                memo[id(t)] = nn.Parameter(c, t.requires_grad) if isinstance(t, nn.Parameter) else c
            else:
                memo[id(t)] = t
        root = copy.deepcopy(module, memo)
    for m in root.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            d = getattr(m, hooks, None)
            if d is not None:
                d.clear()
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return root.eval()


def _tracer() -> NodePathTracer:
    return NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=[])


INPLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                     operator.itruediv: operator.truediv}


def _out_of_place(node: fx.Node, inplace_modules: set[str]) -> bool:
    """Rewrite ``node`` to its out-of-place twin; True if it was in place (mutating args[0])."""
    if node.op == "call_module":
        return node.target in inplace_modules
    if node.op == "call_method":
        name = node.target
        if name.endswith("_") and not name.startswith("_") and hasattr(torch.Tensor, name[:-1]):
            node.target = name[:-1]
            return True
        return False
    if node.op != "call_function":
        return False
    if node.target in INPLACE_OPERATORS:
        node.target = INPLACE_OPERATORS[node.target]
        return True
    name = getattr(node.target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        for ns in (torch, F):
            if getattr(ns, name, None) is node.target and callable(getattr(ns, name[:-1], None)):
                node.target = getattr(ns, name[:-1])
                return True
    if node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
        return True
    try:
        params = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):
        return False
    if "inplace" in params and params.index("inplace") < len(node.args) and node.args[params.index("inplace")] is True:
        i = params.index("inplace")
        node.args = node.args[:i] + (False,) + node.args[i + 1:]
        return True
    return False


def functionalise(graph: fx.Graph, inplace_modules: set[str]) -> None:
    """In-place ops -> out-of-place ones; later users of the mutated tensor read the result."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is operator.setitem:
            raise NotImplementedError(f"in-place assignment x[...] = v at node {node.name!r}")
        if not _out_of_place(node, inplace_modules) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        mutated = node.args[0]
        for user in list(mutated.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(mutated, node)


def example_input(module: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    return torch.randn((1,) + tuple(input_shape), generator=g).to(device, dtype)


def _hooked_outputs(root: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[str], object]:
    """Each submodule's first output on ``x`` (cloned when it runs: later in-place ops do not
    reach it), the paths in the order their outputs appeared, and the model's output."""
    outs: dict[str, torch.Tensor] = {}
    handles = []

    def hook(path):
        def fn(m, inp, out):
            if path not in outs and isinstance(out, torch.Tensor):
                outs[path] = out.detach().clone()
        return fn

    for path, m in root.named_modules():
        if path:
            handles.append(m.register_forward_hook(hook(path)))
    try:
        with torch.no_grad():
            y = root(x)
    finally:
        for h in handles:
            h.remove()
    return outs, list(outs), y


def first_tensor(y):
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (tuple, list)):
        for v in y:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def _parent(path: str, modules: set[str]) -> str | None:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        p = ".".join(parts[:i])
        if p in modules:
            return p
    return None


def _entry(name: str, value: torch.Tensor, kind: str, typ: str, parent: str | None) -> dict:
    shape = tuple(int(s) for s in value.shape[1:])
    kind = "fc" if value.dim() == 2 else kind
    return {"name": name, "kind": kind, "type": typ, "channels": shape[0], "shape": shape, "parent": parent}


def _op_type(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def trace_model(module: nn.Module, input_shape: tuple[int, int, int]) -> Traced:
    """The private copy, its functionalised graph and layer names (see the module docstring)."""
    inplace_modules = {p for p, m in module.named_modules() if getattr(m, "inplace", False) is True}
    root = private_copy(module)
    x = example_input(root, input_shape)
    hooked, hook_order, y_ref = _hooked_outputs(root, x)
    try:
        tracer = _tracer()
        graph = tracer.trace(root)
        qual = {n.name: tracer.node_to_qualname.get(n, n.name) for n in graph.nodes}
        functionalise(graph, inplace_modules)
        graph.lint()
    except Exception as e:  # noqa: BLE001 - any failure of fx means: no graph
        return _untraceable(root, f"{type(e).__name__}: {e}".strip(), hooked, hook_order)
    from .graph import run_graph  # the recording interpreter lives with the engine

    try:
        env = run_graph(root, graph, x)
    except Exception as e:  # noqa: BLE001
        return _untraceable(root, f"the traced graph does not run: {type(e).__name__}: {e}", hooked, hook_order)
    out_node = next(n for n in graph.nodes if n.op == "output")
    y = first_tensor(fx.node.map_arg(out_node.args[0], lambda a: env[a.name]))
    ref = first_tensor(y_ref)
    if y is None or ref is None or y.shape != ref.shape or not torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
        return _untraceable(root, "the traced graph's output differs from the module's own forward "
                                  "(data-dependent control flow?)", hooked, hook_order)
    return _name_layers(Traced(root, graph, None, qual), env, hooked)


def _name_layers(t: Traced, env: dict, hooked: dict[str, torch.Tensor]) -> Traced:
    modules = {p for p, _ in t.root.named_modules() if p}
    leaf_paths = {n.target for n in t.graph.nodes if n.op == "call_module"}
    nodes = [n for n in t.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    by_node: dict[str, list[str]] = {}
    for n in nodes:
        v = env.get(n.name)
        if isinstance(v, torch.Tensor) and v.dim() in (2, 4) and v.shape[0] == 1:
            name = t.qualname[n.name]
            by_node.setdefault(n.name, []).append(name)
            kind = "conv" if n.op == "call_module" else "op"
            t.info[name] = _entry(name, v, kind, _op_type(n, t.root), _parent(name, modules))
    # container paths, deepest first so that layer3.1 comes before layer3 at the same node
    for path in sorted(modules - leaf_paths, key=lambda p: -p.count(".")):
        ref = hooked.get(path)
        if ref is None or ref.dim() not in (2, 4):
            continue
        for n in reversed(nodes):
            if not t.qualname[n.name].startswith(path + "."):
                continue
            v = env.get(n.name)
            if isinstance(v, torch.Tensor) and v.shape == ref.shape and torch.equal(v, ref):
                by_node.setdefault(n.name, []).append(path)
                t.info[path] = _entry(path, v, "conv", type(t.root.get_submodule(path)).__name__,
                                      _parent(path, modules))
                break
    for n in nodes:
        for name in by_node.get(n.name, []):
            t.layers.append(name)
            t.node_of[name] = n.name
            t.example_shapes[name] = t.info[name]["shape"]
    return t


def _untraceable(root: nn.Module, why: str, hooked: dict[str, torch.Tensor], order: list[str]) -> Traced:
    t = Traced(root, None, why)
    modules = {p for p, _ in root.named_modules() if p}
    for path in order:
        v = hooked[path]
        if v.dim() in (2, 4):
            m = root.get_submodule(path)
            kind = "conv" if any(True for _ in m.children()) or v.dim() == 4 else "fc"
            t.info[path] = _entry(path, v, kind, type(m).__name__, _parent(path, modules))
            t.layers.append(path)
            t.example_shapes[path] = t.info[path]["shape"]
    return t
