"""The deconvnet engine against two independent routes.

1. A tiny net with hand-set weights whose projections are written out below.
2. Autograd through the same ``nn.Module`` with each ReLU's backward rule
   replaced by a custom ``autograd.Function`` (installed with forward hooks in
   try/finally), on ZFNet (LRN and none), AlexNet and VGG-16 with random weights,
   for conv, pool and fc layers, all three methods, point and map seeds.
   For ``backprop`` no rule is replaced at all: it must be the plain gradient.
   Each runs twice: with ``sparse_step``'s sparse step below the max pools (the
   CPU's default) and with the three dense rules there (the GPU's route).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import fast_build, he_init
from deconvlab.nets import ModelMeta, ZFNetConfig, zfnet
from deconvlab.nets.torchvision_nets import alexnet, vgg16
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------ 1. hand-set tiny net
#
# input 1x5x5 -> conv1 (1 filter 3x3, pad 1, bias -1) -> relu1 -> pool1 (3x3, stride 2, ceil) -> 2x2
# The filter is the centre pixel only (value 1) plus 0.5 at its right neighbour, so
# conv1[y, x] = in[y, x] + 0.5 * in[y, x + 1] - 1.

X = torch.tensor([[0, 0, 0, 0, 0],
                  [0, 1, 0, 0, 0],
                  [0, 0, 4, 0, 0],
                  [0, 0, 0, 0, 3],
                  [0, 0, 0, 0, 0]], dtype=torch.float32)
# conv1 = X + 0.5 * X shifted left - 1; relu1:
RELU1 = torch.tensor([[0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0],
                      [0, 1, 3, 0, 0],
                      [0, 0, 0, 0.5, 2],
                      [0, 0, 0, 0, 0]], dtype=torch.float32)
# pool windows rows/cols [0,3) and [2,5): every output's maximum is relu1[2,2] = 3 except
# the bottom-right one: window rows 2..4, cols 2..4 -> max is relu1[2,2] = 3 as well.
# So all four outputs share one switch, (2, 2): the unpooled map must hold 4 * 3 = 12 there
# for a map seed (MaxUnpool2d would keep only one write: 3).


def tiny_net() -> Net:
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[0, 0, 1, 2] = 0.5
        conv.bias.fill_(-1.0)
    module = nn.Sequential(OrderedDict(conv1=conv, relu1=nn.ReLU(), pool1=nn.MaxPool2d(3, 2, ceil_mode=True)))
    meta = ModelMeta(arch="tiny", input_size=5, mean=(0.0,), std=(1.0,))
    return Net(module, meta)


def test_tiny_net_forward_and_switches():
    net = tiny_net()
    rec = net.forward(X.view(1, 1, 5, 5))
    assert torch.equal(rec.activations["conv1"][0, 0], RELU1)
    assert torch.equal(rec.outputs["pool1"][0, 0], torch.full((2, 2), 3.0))
    assert torch.equal(rec.switches["pool1"][0, 0], torch.full((2, 2), 2 * 5 + 2))


def test_tiny_net_conv_projections_written_out():
    net = tiny_net()
    rec = net.forward(X.view(1, 1, 5, 5))
    # point seed at the strongest conv1 activation (2, 2), value 3: the transposed filter places
    # 3 * w at the pixels that fed it: (2, 2) gets 3 * 1, (2, 3) gets 3 * 0.5.
    p = net.project(rec, "conv1", 0)
    expected = torch.zeros(1, 5, 5)
    expected[0, 2, 2], expected[0, 2, 3] = 3.0, 1.5
    assert torch.equal(p, expected)
    # point seed at a given position on the right border: (3, 4), value 2; its right neighbour
    # would be column 5, which is padding: dropped.
    p = net.project(rec, "conv1", 0, position=(3, 4))
    expected = torch.zeros(1, 5, 5)
    expected[0, 3, 4] = 2.0
    assert torch.equal(p, expected)
    # map seed: every position weighted by its activation: sum of the two point projections + the rest
    p = net.project(rec, "conv1", 0, seed="map")
    expected = torch.tensor([[[0, 0, 0, 0, 0],
                              [0, 0, 0, 0, 0],
                              [0, 1, 3 + 0.5, 1.5, 0],
                              [0, 0, 0, 0.5, 2 + 0.25],
                              [0, 0, 0, 0, 0]]])
    assert torch.allclose(p, expected, atol=0, rtol=0)


def test_tiny_net_overlapping_unpooling_adds_shared_switches():
    net = tiny_net()
    rec = net.forward(X.view(1, 1, 5, 5))
    # map seed at pool1: all four outputs (value 3 each) unpool onto relu1[2, 2]: 12 there,
    # then the transposed filter: (2, 2) = 12, (2, 3) = 6.
    expected = torch.zeros(1, 5, 5)
    expected[0, 2, 2], expected[0, 2, 3] = 12.0, 6.0
    for method in ("deconv", "guided", "backprop"):
        assert torch.equal(net.project(rec, "pool1", 0, seed="map", method=method), expected), method
    # a point seed at pool1 (0, 1) alone: 3 at relu1[2, 2]
    expected = torch.zeros(1, 5, 5)
    expected[0, 2, 2], expected[0, 2, 3] = 3.0, 1.5
    assert torch.equal(net.project(rec, "pool1", 0, position=(0, 1)), expected)
    # MaxUnpool2d, for contrast, keeps one write: 3, not 12
    unpooled = nn.MaxUnpool2d(3, 2)(rec.outputs["pool1"], rec.switches["pool1"], output_size=(5, 5))
    assert unpooled[0, 0, 2, 2] == 3.0


def _one_pixel_net(w1: list[float], w2: list[float]) -> Net:
    """input 1x1x1 -> conv1 (1 -> 2, 1x1, weights w1) -> relu1 -> conv2 (2 -> 1, 1x1, weights w2), no biases."""
    c1, c2 = nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        c1.weight.copy_(torch.tensor(w1).view(2, 1, 1, 1))
        c2.weight.copy_(torch.tensor(w2).view(1, 2, 1, 1))
    module = nn.Sequential(OrderedDict(conv1=c1, relu1=nn.ReLU(), conv2=c2))
    return Net(module, ModelMeta(arch="tiny", input_size=1, mean=(0.0,), std=(1.0,)))


def test_tiny_net_methods_differ_only_at_the_relu():
    one = torch.ones(1, 1, 1, 1)
    # A: conv2 = relu(x) + 2 relu(-x). At x = 1: relu1 inputs (1, -1), seed value 1,
    # backward signal into relu1 g = 1 * (1, 2): a positive signal on the inactive unit 1.
    #   deconv:   relu(g) = (1, 2)           -> conv1^T: 1 * 1 + 2 * (-1) = -1
    #   guided:   relu(g) * [in > 0] = (1, 0) -> 1
    #   backprop: g * [in > 0] = (1, 0)       -> 1  (= d conv2 / dx * seed = 1 * 1)
    a = _one_pixel_net([1.0, -1.0], [1.0, 2.0])
    rec = a.forward(one)
    got = {m: a.project(rec, "conv2", 0, method=m).item() for m in ("deconv", "guided", "backprop")}
    assert got == {"deconv": -1.0, "guided": 1.0, "backprop": 1.0}
    # B: conv2 = relu(x) - relu(2x). At x = 1: relu1 inputs (1, 2), both active; seed value -1
    # (an unrectified layer, like the logits), g = -1 * (1, -1) = (-1, 1): a negative signal on
    # an active unit.
    #   deconv:   (0, 1)                  -> 0 * 1 + 1 * 2 = 2
    #   guided:   (0, 1) * (1, 1)         -> 2
    #   backprop: (-1, 1) * (1, 1)        -> -1 + 2 = 1  (= d conv2 / dx * seed = -1 * -1)
    b = _one_pixel_net([1.0, 2.0], [1.0, -1.0])
    rec = b.forward(one)
    assert rec.activations["conv2"].item() == -1.0
    got = {m: b.project(rec, "conv2", 0, method=m).item() for m in ("deconv", "guided", "backprop")}
    assert got == {"deconv": 2.0, "guided": 2.0, "backprop": 1.0}


# ------------------------------------------------------------------ 2. against autograd with replaced ReLU rules

class _ReluRule(torch.autograd.Function):
    """relu forward; backward by the method in ``MODE[0]`` (read at backward time, so one
    forward serves several methods): deconv relu(g), guided relu(g) * [x > 0]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if MODE[0] == "deconv":
            return g.clamp_min(0)
        if MODE[0] == "guided":
            return g.clamp_min(0) * (x > 0).to(g.dtype)
        raise AssertionError(MODE[0])


MODE = ["deconv"]


class _PassThrough(torch.autograd.Function):
    """Forward: the module's output; backward: the signal unchanged (normalisation passed through)."""

    @staticmethod
    def forward(ctx, x, out):
        return out.clone()

    @staticmethod
    def backward(ctx, g):
        return g, None


def reference(module: nn.Sequential, x: torch.Tensor, seeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """For each method: d(sum over children c of <seeds[c], output of c>)/dx.

    deconv and guided: every ReLU's backward replaced by ``_ReluRule`` and every
    normalisation layer passed through, installed with forward hooks in
    try/finally. backprop: plain autograd on the untouched module.
    """
    grads = {}
    for hooked in (True, False):
        handles = []
        outputs = {}
        try:
            for name, m in module.named_children():
                if hooked and isinstance(m, nn.ReLU):
                    handles.append(m.register_forward_hook(lambda mod, inp, out: _ReluRule.apply(inp[0])))
                elif hooked and isinstance(m, (nn.LocalResponseNorm, nn.BatchNorm2d)):
                    handles.append(m.register_forward_hook(lambda mod, inp, out: _PassThrough.apply(inp[0], out)))
                if name in seeds:
                    handles.append(m.register_forward_hook(
                        lambda mod, inp, out, name=name: outputs.__setitem__(name, out)))
            with torch.enable_grad():
                xi = x.detach().clone().requires_grad_(True)
                module(xi)
                names = list(seeds)
                for method in (("deconv", "guided") if hooked else ("backprop",)):
                    MODE[0] = method
                    (grads[method],) = torch.autograd.grad([outputs[n] for n in names], xi,
                                                           [seeds[n] for n in names], retain_graph=True)
        finally:
            for h in handles:
                h.remove()
    return grads


def check_against_autograd(net: Net, x: torch.Tensor, items: list[tuple], rtol: float = 1e-5) -> None:
    """Project ``items`` ``(layer, rank, position or None, seed)`` with every method, alone and
    batched, and compare each with ``reference`` on the same image.

    ``rank`` picks the unit with that rank by its strongest activation (0: the most active),
    so that no item is a dead unit. Both routes read the same forward pass: the image
    repeated K times (conv kernels may round differently for other batch sizes, and a
    ReLU input or a max-pool tie that flips would change the answer), item k at index k.
    """
    K = len(items)
    xs = x.expand(K, -1, -1, -1).contiguous()
    rec = net.forward(xs)
    seeds: dict[str, torch.Tensor] = {}
    resolved = []
    for k, (layer, rank, pos, seed) in enumerate(items):
        child = net.node(layer)
        act = net.activation(rec, layer)
        peak = act[k].flatten(1).max(1).values if act.dim() == 4 else act[k]
        unit = int(peak.argsort(descending=True)[rank])
        s = seeds.setdefault(child, act.new_zeros((K,) + tuple(act.shape[1:])))
        if act.dim() == 2 or seed == "map":
            s[k, unit] = act[k, unit]
        else:
            # the default position is the strongest activation (first in row-major order)
            y, xx = pos if pos is not None else divmod(int(act[k, unit].flatten().argmax()), act.shape[-1])
            s[k, unit, y, xx] = act[k, unit, y, xx]
        resolved.append((layer, unit, pos, k, seed))
    wants = reference(net.module, xs, seeds)
    nonzero = 0
    for method, want in wants.items():
        got = torch.cat([net.project_many(rec, [item[:4]], method=method, seed=item[4]) for item in resolved])
        for k, item in enumerate(resolved):
            scale = float(want[k].abs().max())
            err = float((got[k] - want[k]).abs().max())
            assert err <= rtol * scale, (method, item, err, scale)
            nonzero += scale > 0
        # the same items in one call per seed kind (batched, grouped by layer) give the same
        for seed in ("point", "map"):
            ks = [k for k, it in enumerate(resolved) if it[4] == seed]
            if ks:
                batched = net.project_many(rec, [resolved[k][:4] for k in ks], method=method, seed=seed)
                assert torch.allclose(batched, got[ks], rtol=1e-5, atol=1e-6 * float(got[ks].abs().max()))
    assert nonzero >= 2 * K, "too many all-zero projections: the comparison would prove little"


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["sparse", "dense"])
def route(request, monkeypatch):
    """Both routes below each max pool: ``sparse_step``'s sparse step (the CPU default) and the
    three dense rules (the GPU's route, and the CPU's without Numba)."""
    from deconvlab.engine import sparse_step

    if request.param == "sparse" and not sparse_step.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(sparse_step, "ENABLED", request.param == "sparse")
    return request.param


@pytest.mark.parametrize("norm", ["lrn", "none"])
def test_zfnet_equals_autograd(norm, route):
    cfg = ZFNetConfig(num_classes=10, width=0.25, fc_size=64, norm=norm)
    net = Net(he_init(zfnet(cfg), seed=3), ModelMeta(arch="zfnet", config=cfg.to_dict()))
    items = [("conv1", 5, (0, 109), "point"), ("conv2", 0, None, "point"), ("conv2", 3, None, "map"),
             ("pool2", 1, (12, 0), "point"), ("conv5", 0, None, "point"), ("conv4", 2, (6, 7), "point"),
             ("pool5", 4, None, "map"), ("fc6", 0, None, "point"), ("fc8", 1, None, "map")]
    check_against_autograd(net, _image(224), items)


def test_alexnet_equals_autograd(route):
    net = Net(fast_build(alexnet, 10), ModelMeta(arch="alexnet", config={"num_classes": 10}))
    items = [("conv1", 7, (54, 1), "point"), ("pool2", 3, None, "map"), ("conv5", 0, None, "point"),
             ("fc7", 1, None, "point")]
    check_against_autograd(net, _image(224, 1), items)


def test_vgg16_equals_autograd_with_a_non_identity_avgpool(route):
    net = Net(fast_build(vgg16, 10), ModelMeta(arch="vgg16", config={"num_classes": 10}, input_size=64))
    x = _image(64, 2)
    # at 64 px the features end at 2x2 and the adaptive pool spreads them to 7x7
    rec = net.forward(x)
    assert rec.in_shapes["avgpool"][-2:] == (2, 2) and rec.in_shapes["flatten"][-2:] == (7, 7)
    items = [("conv2", 9, (63, 30), "point"), ("pool4", 2, None, "map"), ("conv13", 0, None, "point"),
             ("fc7", 0, None, "point")]
    check_against_autograd(net, x, items)


@pytest.mark.parametrize("cout,cin,k,s,h,w", [(8, 3, 7, 2, 9, 5), (6, 3, 11, 4, 4, 7), (5, 1, 3, 1, 6, 6),
                                              (4, 3, 5, 3, 3, 8), (7, 16, 3, 2, 5, 4)])
def test_conv_transpose_paths_equal_torch(cout, cin, k, s, h, w):
    from deconvlab.engine.deconvnet import conv_transpose

    g = torch.Generator().manual_seed(cout * k)
    weight = torch.randn(cout, cin, k, k, generator=g)
    x = torch.randn(3, cout, h, w, generator=g)
    want = torch.nn.functional.conv_transpose2d(x, weight, stride=s)
    got = conv_transpose(x, weight, s, 1)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
