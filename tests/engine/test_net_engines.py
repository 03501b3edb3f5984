"""``Net``'s two engines agree, and ``Net.from_module`` takes a user's module without changing it.

1. The graph engine (``engine="graph"``: an fx walk with per-op rules) against the
   sequential engine (the paper's chain walked child by child, with the compiled
   sparse step) on ZFNet (LRN and none), AlexNet and VGG-16 with random weights:
   every paper layer and every pool, all three methods, point seeds (default and
   given positions, borders included) and map seeds, and the receptive fields.
   The two share no projection code, so equal maps say both are right or both
   are wrong in the same way (test_deconvnet.py checks the second against autograd).
2. ``from_module``: the caller's module keeps its ReLU flags, mode and hooks; a
   one-channel 28 x 28 net works from a PIL image to a projection.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import fast_build, make_sample_image, small_zfnet_module
from deconvlab.net import Net
from deconvlab.nets import ModelMeta
from deconvlab.nets.torchvision_nets import alexnet, vgg16

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ("deconv", "guided", "backprop")


def _pair(module: nn.Module, meta: ModelMeta) -> tuple[Net, Net]:
    return Net(module, meta), Net(module, meta, engine="graph")


def _items(net: Net, rec, rng: torch.Generator, units: int = 2) -> list[tuple]:
    """``units`` units of every layer and pool: the strongest position, a random one, a corner."""
    items = []
    for layer in net.layers + net.pools:
        act = net.activation(rec, layer)
        for unit in torch.randint(act.shape[1], (units,), generator=rng).tolist():
            items.append((layer, unit, None))
            if act.dim() == 4:
                H, W = act.shape[-2:]
                items.append((layer, unit, (int(torch.randint(H, (1,), generator=rng)),
                                            int(torch.randint(W, (1,), generator=rng)))))
                items.append((layer, unit, (H - 1, 0)))
    return items


def _assert_engines_agree(seq: Net, graph: Net, x: torch.Tensor, rtol: float = 1e-4, units: int = 2) -> None:
    assert graph.engine == "graph" and seq.engine == "sequential"
    assert graph.layers == seq.layers and graph.pools == seq.pools
    rs, rg = seq.forward(x), graph.forward(x)
    assert torch.allclose(rs.logits, rg.logits, rtol=1e-5, atol=1e-5)
    for layer in seq.layers + seq.pools:
        assert torch.allclose(seq.activation(rs, layer), graph.activation(rg, layer), rtol=1e-5, atol=1e-5), layer
    items = _items(seq, rs, torch.Generator().manual_seed(0), units)
    nonzero = 0
    for method in METHODS:
        a = seq.project_many(rs, items, method=method)
        b = graph.project_many(rg, items, method=method)
        for k, it in enumerate(items):
            scale = float(a[k].abs().max())
            assert float((a[k] - b[k]).abs().max()) <= rtol * max(scale, 1e-12), (method, it)
            nonzero += scale > 0
        maps = [(layer, u, None) for layer, u, _ in items[::3]]
        a = seq.project_many(rs, maps, method=method, seed="map")
        b = graph.project_many(rg, maps, method=method, seed="map")
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(a.abs().max())), method
    assert nonzero >= len(items), "most projections were zero: the comparison would prove little"
    size = tuple(x.shape[-2:])
    for layer, _, pos in items:
        if pos is not None:
            assert seq.receptive_field(layer, *pos, input_size=size) == graph.receptive_field(
                layer, *pos, input_size=size), (layer, pos)
            assert seq.receptive_field_size(layer, size) == graph.receptive_field_size(layer, size), layer


@pytest.mark.parametrize("norm", ["none", "lrn"])
def test_zfnet_graph_engine_equals_sequential_engine(norm):
    module, meta = small_zfnet_module(norm=norm)
    seq, graph = _pair(module, meta)
    _assert_engines_agree(seq, graph, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))


@pytest.mark.slow
def test_alexnet_graph_engine_equals_sequential_engine():
    seq, graph = _pair(fast_build(alexnet, 10), ModelMeta(arch="alexnet", config={"num_classes": 10}))
    _assert_engines_agree(seq, graph, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)), units=1)


@pytest.mark.slow
def test_vgg16_graph_engine_equals_sequential_engine():
    meta = ModelMeta(arch="vgg16", config={"num_classes": 10}, input_size=48)
    seq, graph = _pair(fast_build(vgg16, 10), meta)
    _assert_engines_agree(seq, graph, torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(3)), units=1)


def test_paper_models_keep_their_names_and_module_paths_on_the_graph_engine():
    module, meta = small_zfnet_module()
    net = Net(module, meta, engine="graph")
    rec = net.forward(torch.randn(1, 3, 224, 224))
    # conv1 is read after its ReLU (the paper's rectified map); the module path relu1 is the same tensor
    assert torch.equal(net.activation(rec, "conv1"), net.activation(rec, "relu1"))
    assert net.node("conv1") == "relu1" and net.layer("conv1") is net.layer("relu1")
    with pytest.raises(KeyError, match="unknown layer: expected one of"):
        net.project(rec, "conv9", 0)


class UserNet(nn.Module):
    """A user's one-channel CNN for 28 x 28 inputs, written the way people write them:
    a functional ReLU, an in-place one, a module called twice, a residual add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        y = self.pool(F.relu(self.conv1(x)))
        y = self.act(self.conv2(y) + y)
        y = self.act(y)  # the same module again
        return self.head(torch.flatten(y, 1))


def test_from_module_leaves_the_callers_module_as_it_was():
    torch.manual_seed(0)
    user = UserNet().train()
    calls = []
    hook = user.conv1.register_forward_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in user.state_dict().items()}
    net = Net.from_module(user, input_size=28, mean=(0.5,), std=(0.25,), name="mnist-ish")
    rec = net.forward(torch.randn(2, 1, 28, 28))
    net.project_many(rec, [("conv2", 3, None), ("head", 1, None, 1)], method="guided")
    assert user.training and user.act.inplace and all(m.training for m in user.modules())
    assert len(user.conv1._forward_hooks) == 1
    hook.remove()
    calls.clear()
    user(torch.randn(1, 1, 28, 28))
    assert calls == []  # the hook fired only on the caller's own calls, never on deconvlab's
    assert all(torch.equal(before[k], v) for k, v in user.state_dict().items())
    assert net.meta.classes == [str(i) for i in range(10)] and net.in_channels == 1 and net.engine == "graph"


def test_a_one_channel_net_goes_from_a_photo_to_a_projection():
    torch.manual_seed(1)
    net = Net.from_module(UserNet(), input_size=28, mean=(0.5,), std=(0.25,), classes=list("abcdefghij"))
    x = net.preprocess(make_sample_image())  # an RGB photo, seen as the model takes it: one channel
    assert x.shape == (1, 1, 28, 28)
    rec = net.forward(x)
    assert rec.logits.shape == (1, 10)
    p = net.project(rec, "conv2", 0)
    assert p.shape == (1, 28, 28) and bool(p.abs().sum() > 0)
    pos, box = net.seed_box(rec, "conv2", 0)
    top, left, bottom, right = box
    outside = p.clone()
    outside[:, top:bottom, left:right] = 0
    assert bool((outside == 0).all()), "a point seed's projection leaked outside its receptive field"
    assert net.receptive_field("head", input_size=28) == (0, 0, 28, 28)
    info = {d["name"]: d for d in net.layer_info()}
    assert info["conv2"]["kind"] == "conv" and info["head"]["kind"] == "fc" and info["head"]["shape"] == (10,)


@pytest.mark.parametrize("bad, match", [
    (nn.Conv2d(3, 4, 3), "expected output of shape \\(N, classes\\)"),
    (nn.Sequential(nn.Flatten(), nn.Linear(10, 2)), "image tensor"),
])
def test_from_module_refuses_what_is_not_an_image_classifier(bad, match):
    with pytest.raises(ValueError, match=match):
        Net.from_module(bad, input_size=16)


def test_from_module_checks_mean_and_std_per_channel():
    with pytest.raises(ValueError, match="mean: expected 1 value"):
        Net.from_module(UserNet(), input_size=28, mean=(0.5, 0.5, 0.5), std=(0.2,))
