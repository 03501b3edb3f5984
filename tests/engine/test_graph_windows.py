"""The graph engine's windowed backward pass (``graph_windows``) against its whole-map walk.

Two routes to one projection: ``window=True`` runs every rule over the window of
each map that a point seed's signal can reach, ``window=False`` over whole maps.
They must agree (rtol 1e-5, atol 1e-6 of the largest value) on every method, at
seeds in the middle and on the border of the maps, on a hand-set net made of
what the windows must get right (strided, dilated and grouped convs, padded
and dilated max pools with ceil_mode, an avg pool, a residual add whose
branches reach windows of different extents, a cat of a 1x1 and a 5x5 branch,
``F.conv2d``, ReLU6, a gate and a global pool, where windows must give way to
whole maps) and on resnet18; ``test_graph_windows_models`` does densenet121,
googlenet, mobilenet_v2 and vgg16_bn. ``backprop`` is also checked against
autograd on the caller's module, a third route.

The windows are checked against ``graph_receptive_field``, code that shares
nothing with them: a single seed's window at the image is its receptive-field
box. And the windowed walk must really touch less: for an early-layer seed,
a fraction of the elements and multiply-adds of the whole-map walk.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconvlab.engine.graph import GraphEngine
from deconvlab.engine.graph_receptive_field import GraphGeometry
from test_graph_engine import build, image, items_for, reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ("deconv", "guided", "backprop")


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = float(b.abs().max())
    assert scale > 0, f"{what}: the whole-map projection is all zeros (a test that cannot fail)"
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * scale), \
        f"{what}: windowed differs from whole maps by {float((a - b).abs().max()) / scale:.2e} of the largest value"


def both_routes(eng, rec, items, method):
    eng.whole_map_fraction = 1.0  # every point seed on windows, however large: the route under test
    win = eng.project_many(rec, items, method=method, window=True)
    visit = eng.last_visit
    whole = eng.project_many(rec, items, method=method, window=False)
    return win, whole, visit, eng.last_visit


class HandSet(nn.Module):
    """Every windowed rule, and the ops that make the signal global."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.down = nn.Conv2d(8, 16, 1, stride=2)  # the short branch: a smaller window than the long one
        self.long1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.long2 = nn.Conv2d(16, 16, 3, padding=1)
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b5 = nn.Conv2d(16, 8, 5, padding=2)
        self.w6 = nn.Parameter(torch.randn(16, 16, 3, 3) * 0.2)
        self.pool2 = nn.MaxPool2d(2, stride=2, padding=1, dilation=2, ceil_mode=True)
        self.avg = nn.AvgPool2d(2)
        self.gate = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.stem(x))))
        x = F.relu(x + self.grouped(F.relu(self.dil(x))))
        y = F.relu(self.down(x) + self.long2(F.relu(self.long1(x))))
        y = torch.cat([F.relu(self.b1(y)), F.relu6(self.b5(y))], 1)
        y = F.relu(F.conv2d(y, self.w6, padding=1))
        y = self.avg(self.pool2(y))
        s = torch.sigmoid(self.gate(y.mean((2, 3))))[:, :, None, None]
        z = F.relu(y * s)  # the gate: whole maps from here down
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


HAND_LAYERS = ["pool", "dil", "grouped", "add_1", "b5", "cat", "relu_6", "pool2", "avg", "relu_7"]


@pytest.fixture(scope="module")
def hand():
    torch.manual_seed(0)
    model = HandSet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    eng = GraphEngine(model, (3, 61, 61))
    assert eng.untraceable is None
    return model, eng, image(size=61)


def test_hand_set_net_windows_equal_whole_maps_and_autograd(hand):
    model, eng, x = hand
    rec = eng.forward(x)
    layers = [la for la in HAND_LAYERS if la in eng.layers]
    assert len(layers) == len(HAND_LAYERS), sorted(set(HAND_LAYERS) - set(eng.layers))
    items = items_for(rec, layers)
    items += [(la, 1, (rec.activations[la].shape[2] - 1, 0), 0) for la in layers]  # the bottom-left corner
    for method in METHODS:
        win, whole, v_win, v_whole = both_routes(eng, rec, items, method)
        for k, it in enumerate(items):
            if float(whole[k].abs().max()) > 0:
                assert_same(win[k], whole[k], f"{method} {it}")
        assert v_win.elements < v_whole.elements
    for k, (layer, unit, pos, _) in enumerate(items[:6]):  # an independent route for the gradient
        path = layer if layer in dict(model.named_modules()) else None
        if path is None:
            continue
        ref, _ = reference(model, x, path, unit, pos, "backprop")
        got = eng.project(rec, layer, unit, method="backprop", position=pos)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), (layer, pos)


def test_a_gate_and_a_global_pool_make_the_maps_whole(hand):
    model, eng, x = hand
    rec = eng.forward(x)
    eng.project(rec, "relu_7", 0, method="guided")  # below the gate: whole maps from the gate down
    w = eng.last_visit.windows
    assert w[eng.node_of("relu_7")] is not None and w[eng.node_of("mul")] is None
    assert all(v is None for k, v in w.items() if k != eng.node_of("relu_7")), w
    eng.project(rec, "dil", 0, method="guided", position=(2, 3))  # above it: windows down to the image
    w = eng.last_visit.windows
    assert w[eng._input.name] is not None and w[eng.node_of("stem")] is not None


def test_resnet18_windows_equal_whole_maps():
    model = build("resnet18")
    eng = GraphEngine(model, (3, 64, 64))
    rec = eng.forward(image(2))
    items = items_for(rec, ["layer1.0.relu", "layer1.1", "layer2.0.downsample.0", "layer3.1.bn1", "layer4"])
    items += [("layer2.1", 7, (0, 0), 1), ("layer1.0.conv2", 3, (15, 0), 1)]
    for method in METHODS:
        win, whole, _, _ = both_routes(eng, rec, items, method)
        for k, it in enumerate(items):
            assert_same(win[k], whole[k], f"resnet18 {method} {it}")


def test_one_seeds_window_at_the_image_is_its_receptive_field():
    eng = GraphEngine(build("resnet18"), (3, 112, 112))
    geo = GraphGeometry(eng._gm, (112, 112), qualnames=eng._t.qualname)
    eng.whole_map_fraction = 1.0  # windows even where they cover most of the maps
    rec = eng.forward(image(size=112))
    for layer, pos in (("layer1.1", (3, 20)), ("layer2.0.conv1", (0, 13)), ("layer1.0.relu", (27, 27)),
                       ("maxpool", (13, 0))):
        unit = int(rec.activations[layer][0, :, pos[0], pos[1]].argmax())  # a unit that is on there
        p = eng.project(rec, layer, unit, method="deconv", position=pos)
        top, left, h, w = eng.last_visit.windows[eng._input.name]
        assert (top, left, top + h, left + w) == geo.box(eng.node_of(layer), *pos), (layer, pos)
        outside = p.clone()
        outside[:, top:top + h, left:left + w] = 0
        assert float(p.abs().max()) > 0 and float(outside.abs().max()) == 0, (layer, pos)


def test_an_early_seed_touches_a_fraction_of_the_maps():
    eng = GraphEngine(build("resnet18"), (3, 112, 112))
    rec = eng.forward(image(size=112))
    on = rec.activations["layer1.1"][0, :, 14, 14].argsort(descending=True)[:4].tolist()  # units on there
    items = [("layer1.1", u, (14, 14), 0) for u in on]
    win, whole, v_win, v_whole = both_routes(eng, rec, items, "guided")
    for k in range(len(items)):
        assert_same(win[k], whole[k], f"layer1.1 unit {k}")
    assert v_win.elements < 0.15 * v_whole.elements, (v_win.elements, v_whole.elements)
    assert v_win.macs < 0.15 * v_whole.macs, (v_win.macs, v_whole.macs)
    sizes = {k: v for k, v in v_win.windows.items() if v is not None}
    assert sizes[eng.node_of("layer1.0.conv1")][2:] == (7, 7)  # three 3x3 convs above its output
    assert all(v is None for v in v_whole.windows.values())


def test_seeds_whose_windows_cover_most_maps_walk_whole_maps():
    """The default rule (``WHOLE_MAP_FRACTION``): a deep seed whose windows hold most of the
    maps joins one whole-map batch, an early one keeps its windows; both equal whole maps."""
    eng = GraphEngine(build("resnet18"), (3, 112, 112))
    rec = eng.forward(image(size=112))
    on = {layer: rec.activations[layer][0, :, y, x].argsort(descending=True)[:3].tolist()  # units on there
          for layer, (y, x) in (("layer3.0.conv1", (3, 3)), ("layer1.1", (14, 14)))}
    deep = [("layer3.0.conv1", u, (3, 3), 0) for u in on["layer3.0.conv1"]]
    early = [("layer1.1", u, (14, 14), 0) for u in on["layer1.1"]]
    for items, windowed in ((deep, False), (early, True)):
        auto = eng.project_many(rec, items, method="guided")
        used = any(v is not None for v in eng.last_visit.windows.values())
        whole = eng.project_many(rec, items, method="guided", window=False)
        assert used == windowed, (items[0][0], eng.last_visit.windows)
        for k in range(len(items)):
            assert_same(auto[k], whole[k], f"{items[k]}")
    mixed = eng.project_many(rec, deep + early, method="deconv")
    whole = eng.project_many(rec, deep + early, method="deconv", window=False)
    for k, it in enumerate(deep + early):
        assert_same(mixed[k], whole[k], f"mixed {it}")
