"""The graph engine against an independent autograd reference, on torchvision's own CNNs.

The reference (``reference`` below) runs the *caller's* module as it is (its
in-place ReLUs, its ReLU module called twice, GoogLeNet's and DenseNet's
functional ``F.relu(..., inplace=True)``), with ``torch.nn.functional.relu``,
``relu6``, ``hardtanh`` and ``torch.relu`` monkeypatched for the duration of one
forward pass to a custom ``autograd.Function`` whose backward is the method's
rule, and takes ``torch.autograd.grad`` of the seeded activation (captured by a
forward hook) with respect to the input. For ``backprop`` nothing is patched: it
is the plain gradient. The engine instead walks the fx graph with its own
per-op rules; none of its code runs here.

Models (``weights=None``, seeded He weights, random batch-norm statistics, 64 px):
resnet18, densenet121, googlenet, mobilenet_v2, squeezenet1_1, vgg16_bn (its
4096-wide classifier shrunk to 64 so the test stays small). Seeds: each
layer's strongest unit at its strongest position, and a unit at a border position.

Also here: the recorded activations of in-place ReLU nets are the values each op
produced; the caller's module is unchanged; ``project_many`` equals single
projections and follows a permutation of a batched record.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from deconvlab.engine.graph import GraphEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64


# ------------------------------------------------------------------ models

@torch.no_grad()
def init_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-normal conv/linear weights, small biases, random batch-norm affine and running
    statistics (so that a wrong batch-norm rule shows), layer scales of 0.5."""
    g = torch.Generator().manual_seed(seed)
    for t in list(model.parameters()) + list(model.buffers()):
        t.zero_()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        if isinstance(getattr(m, "layer_scale", None), torch.Tensor):
            m.layer_scale.fill_(0.5)
    return model.eval()


def build(name: str, **kwargs) -> nn.Module:
    """torchvision's ``name`` (weights=None), made on the meta device, then seeded."""
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, **kwargs)
        if name.startswith("vgg"):
            model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                             nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))
    return init_model(model.to_empty(device="cpu"))


def image(n: int = 1, c: int = 3, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, c, size, size), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the reference

class _RefRectify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, method, hi):
        ctx.save_for_backward(x)
        ctx.method, ctx.hi = method, hi
        return x.clamp_min(0) if hi is None else x.clamp(0, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        on = (x > 0) if ctx.hi is None else (x > 0) & (x < ctx.hi)
        g = g.clamp_min(0)
        return (g * on if ctx.method == "guided" else g), None, None


@contextlib.contextmanager
def patched_relus(method: str):
    """``F.relu`` / ``F.relu6`` / ``F.hardtanh(0, 6)`` / ``torch.relu`` with the method's rule."""
    if method == "backprop":
        yield
        return
    saved = (F.relu, F.relu6, F.hardtanh, torch.relu)
    orig_hardtanh = F.hardtanh

    def relu(input, inplace=False):
        return _RefRectify.apply(input, method, None)

    def relu6(input, inplace=False):
        return _RefRectify.apply(input, method, 6.0)

    def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
        if (min_val, max_val) == (0.0, 6.0):
            return relu6(input)
        return orig_hardtanh(input, min_val, max_val)

    F.relu, F.relu6, F.hardtanh, torch.relu = relu, relu6, hardtanh, relu
    try:
        yield
    finally:
        F.relu, F.relu6, F.hardtanh, torch.relu = saved


def reference(model: nn.Module, x: torch.Tensor, path: str, unit: int, pos, method: str,
              seed: str = "point") -> tuple[torch.Tensor, torch.Tensor]:
    """(the input-space projection (C, H, W), the module's output (C, ...)) for one image ``x``."""
    box = {}

    def hook(m, inp, out):
        if "o" not in box:
            box["o"] = out
            return out.clone()  # later in-place ops (out += identity) change the clone, not the seed
    h = model.get_submodule(path).register_forward_hook(hook)
    xr = x.clone().requires_grad_(True)
    try:
        with patched_relus(method):
            model(xr)
    finally:
        h.remove()
    o = box["o"]
    seed_t = torch.zeros_like(o)
    if o.dim() == 2:
        seed_t[0, unit] = o[0, unit].detach()
    elif seed == "map":
        seed_t[0, unit] = o[0, unit].detach()
    else:
        if pos is None:
            flat = int(o[0, unit].detach().flatten().argmax())
            pos = divmod(flat, o.shape[-1])
        seed_t[0, unit, pos[0], pos[1]] = o[0, unit, pos[0], pos[1]].detach()
    (gx,) = torch.autograd.grad(o, xr, seed_t)
    return gx[0], o.detach()[0]


def assert_close(p: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = 1e-4):
    scale = float(ref.abs().max())
    assert scale > 0, f"{what}: the reference projection is all zeros (a test that cannot fail)"
    err = float((p - ref).abs().max()) / scale
    assert err < rtol, f"{what}: relative error {err:.2e} (max |ref| {scale:.3g})"


def items_for(rec, layers: list[str]) -> list[tuple]:
    """Per layer: the strongest unit at its strongest position, and a border position."""
    items = []
    for layer in layers:
        a = rec.activations[layer][0]
        if a.dim() == 1:
            items.append((layer, int(a.abs().argmax()), None, 0))
            continue
        unit = int(a.flatten(1).amax(1).argmax())
        m = a[unit]
        if float(m.max()) == 6.0:  # a saturated ReLU6: guided backprop's mask is 0 there; take the best below 6
            flat = int(torch.where(m < 6, m, torch.zeros(())).flatten().argmax())
            items.append((layer, unit, divmod(flat, a.shape[-1]), 0))
        else:
            items.append((layer, unit, None, 0))
        y, x = 0, a.shape[-1] - 1
        v = a[:, y, x]
        items.append((layer, int((v.abs() * (v != 6)).argmax()), (y, x), 0))  # not a saturated ReLU6
    return items


MODELS = {
    "resnet18": ({}, ["layer1.0.relu", "layer2.0", "layer3.1.bn1", "layer4", "fc"]),
    "densenet121": ({}, ["features.denseblock1", "features.transition2.pool",
                         "features.denseblock3.denselayer5.conv2"]),
    "googlenet": (dict(aux_logits=False, init_weights=True), ["maxpool2", "inception3b", "inception4c.branch3.1",
                                                              "inception5b"]),
    "mobilenet_v2": ({}, ["features.3", "features.7.conv.0.2", "features.14"]),
    "squeezenet1_1": ({}, ["features.3", "features.7.expand3x3_activation", "features.12"]),
    "vgg16_bn": ({}, ["features.12", "features.33", "classifier.1"]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_projections_equal_the_autograd_reference(name):
    kwargs, layers = MODELS[name]
    model = build(name, **kwargs)
    eng = GraphEngine(model, (3, SIZE, SIZE))
    assert eng.untraceable is None
    x = image()
    rec = eng.forward(x)
    items = items_for(rec, layers)
    refs = {}
    for method in ("backprop", "deconv", "guided"):
        got = eng.project_many(rec, items, method=method)
        assert got.shape == (len(items), 3, SIZE, SIZE)
        for k, (layer, unit, pos, _) in enumerate(items):
            ref, out = reference(model, x, layer, unit, pos, method)
            assert torch.allclose(rec.activations[layer][0], out, rtol=1e-5, atol=1e-5), f"{name} {layer} activation"
            assert_close(got[k], ref, f"{name} {method} {layer} unit {unit} at {pos}")
            refs[method, k] = ref
    differs = [k for k in range(len(items)) if not torch.allclose(refs["deconv", k], refs["backprop", k], rtol=1e-3)]
    assert differs, f"{name}: deconv never differed from backprop (the rules were not exercised)"


def test_map_seeds_equal_the_reference():
    model = build("resnet18")
    eng = GraphEngine(model, (3, SIZE, SIZE))
    x = image()
    rec = eng.forward(x)
    seeds = [(layer, int(rec.activations[layer][0].sum((1, 2)).argmax())) for layer in ("layer2.1", "layer1.0.conv2")]
    for method in ("deconv", "guided", "backprop"):
        got = eng.project_many(rec, [(layer, unit, None, 0) for layer, unit in seeds], method=method, seed="map")
        for k, (layer, unit) in enumerate(seeds):
            ref, _ = reference(model, x, layer, unit, None, method, seed="map")
            assert_close(got[k], ref, f"map seed {method} {layer}")


# ------------------------------------------------------------------ records and the caller's module

def _snapshot(model: nn.Module):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {p: m.inplace for p, m in model.named_modules() if hasattr(m, "inplace")}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules())
    return state, flags, hooks, model.training


def test_inplace_relu_records_and_the_callers_module_is_unchanged():
    model = build("resnet18").train()  # a caller's module in training mode stays in training mode
    state, flags, hooks, training = _snapshot(model)
    assert any(flags.values()), "resnet18 should come with in-place ReLUs"
    eng = GraphEngine(model, (3, SIZE, SIZE))
    x = image(2)
    rec = eng.forward(x)
    eng.project_many(rec, [("layer2.0", 1, None, 0), ("fc", 3, None, 1)], method="guided")

    after = _snapshot(model)
    assert after[1] == flags and after[2] == hooks and after[3] == training
    assert all(torch.equal(state[k], v) for k, v in after[0].items())

    # the values each op produced, read independently: eval copy, hooks that clone at once
    model.eval()
    seen = {}

    def keep(path):
        def hook(m, i, o):
            seen.setdefault(path, o.clone())  # (returns None: a hook's return value would replace the output)
        return hook
    hs = [model.get_submodule(p).register_forward_hook(keep(p)) for p in ("layer1.0.bn1", "layer1.0.bn2", "layer1.0")]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    bn1, relu = rec.activations["layer1.0.bn1"], rec.activations["layer1.0.relu"]
    assert bool((bn1 < 0).any()), "layer1.0.bn1 must be the pre-ReLU values"
    assert torch.allclose(bn1, seen["layer1.0.bn1"], atol=1e-6)
    assert torch.equal(relu, bn1.clamp_min(0))
    assert torch.allclose(rec.activations["layer1.0.bn2"], seen["layer1.0.bn2"], atol=1e-6)  # before `+= identity`
    assert torch.allclose(rec.activations["layer1.0"], seen["layer1.0"], atol=1e-6)
    assert torch.equal(rec.activations["layer1.0.relu_1"], rec.activations["layer1.0"])
    assert torch.allclose(rec.activations["layer1.0.add"], rec.activations["layer1.0.bn2"] + rec.activations["maxpool"])
    with torch.no_grad():
        assert torch.allclose(rec.logits, model(x), atol=1e-5)


def test_layer_names_and_info():
    from torchvision.models.feature_extraction import get_graph_node_names

    model = build("resnet18")
    eng = GraphEngine(model, (3, SIZE, SIZE))
    names = get_graph_node_names(model)[1]
    assert [n for n in names if n not in eng.layers] == ["x"]  # every node torchvision names, but the input
    for path in ("layer3.1", "layer3", "layer1.0.downsample" if False else "layer2.0.downsample"):
        assert path in eng.layers
    order = eng.layers
    assert order.index("layer3.1.relu_1") < order.index("layer3.1") < order.index("layer3") < order.index("layer4.0.conv1")
    info = {d["name"]: d for d in eng.layer_info()}
    assert info["layer3.1"] == {"name": "layer3.1", "kind": "conv", "type": "BasicBlock", "channels": 256,
                                "shape": (256, 4, 4), "parent": "layer3"}
    assert info["layer1.0.add"]["kind"] == "op" and info["layer1.0.add"]["parent"] == "layer1.0"
    assert info["fc"]["kind"] == "fc" and info["fc"]["shape"] == (1000,) and info["fc"]["parent"] is None
    assert info["layer1.0.relu_1"]["type"] == "ReLU"
    with pytest.raises(KeyError, match="unknown layer"):
        eng.project_many(eng.forward(image()), [("layer9", 0, None)])


def test_project_many_equals_single_projections_and_follows_permutations():
    model = build("resnet18")
    eng = GraphEngine(model, (3, SIZE, SIZE))
    x = image(3)
    rec = eng.forward(x)
    g = torch.Generator().manual_seed(3)
    layers = ["layer1.0", "layer2.1.bn2", "layer3.0.add", "layer4", "fc", "maxpool"]
    items = []
    for k in range(64):
        layer = layers[k % len(layers)]
        a = rec.activations[layer]
        unit = int(torch.randint(a.shape[1], (1,), generator=g))
        pos = None
        if a.dim() == 4 and k % 3 == 0:
            pos = (int(torch.randint(a.shape[2], (1,), generator=g)), int(torch.randint(a.shape[3], (1,), generator=g)))
        items.append((layer, unit, pos, k % 3))
    for method in ("guided",):
        many = eng.project_many(rec, items, method=method)
        singles = torch.stack([eng.project(rec, it[0], it[1], method=method, position=it[2], index=it[3])
                               for it in items])
        assert torch.allclose(many, singles, rtol=1e-4, atol=1e-6 * float(singles.abs().max()))
        assert float(singles.abs().max()) > 0
    perm = [2, 0, 1]
    rec_p = eng.forward(x[perm])
    back = [perm.index(i) for i in range(3)]  # image i of x is image back[i] of x[perm]
    moved = [(l, u, p, back[i]) for l, u, p, i in items]
    assert torch.allclose(eng.project_many(rec_p, moved, method="guided"), many, rtol=1e-4, atol=1e-6)


def test_bad_items_say_what_was_expected():
    eng = GraphEngine(build("squeezenet1_1"), (3, SIZE, SIZE))
    rec = eng.forward(image())
    with pytest.raises(ValueError, match="unit: expected 0..63"):
        eng.project_many(rec, [("features.0", 64, None)])
    with pytest.raises(ValueError, match="method: expected"):
        eng.project_many(rec, [("features.0", 0, None)], method="lrp")
    with pytest.raises(ValueError, match="position: expected"):
        eng.project_many(rec, [("features.0", 0, (99, 0))])
    with pytest.raises(ValueError, match="x: expected a float tensor of shape \\(N, 3, H, W\\)"):
        eng.forward(torch.zeros(1, 1, SIZE, SIZE))
