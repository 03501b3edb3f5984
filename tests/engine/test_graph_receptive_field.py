"""Receptive fields on fx graphs against the support of an input gradient.

The oracle shares no code with ``graph_receptive_field``: a "flat" copy of the
net (every conv and linear weight positive, biases zero, activations and norms
replaced by identities, max pools by average pools of the same geometry) is a
map with positive coefficients, so nothing cancels and the input gradient of
one output position is non-zero exactly on the pixels that position can see.
Functional ReLUs (googlenet's ``F.relu``) stay, so the input is all ones: every
value in a flat net is then positive and a ReLU passes the gradient unchanged.
Outputs are read through torchvision's own ``create_feature_extractor`` (its
tracer, its node names), one batch item per seeded position, one backward pass
per model. Weights are divided by their fan-in, so values stay O(1) and the
smallest gradient (a corner pixel's, about (1/9)^depth) is far above float32's
floor. A box must equal the bounding box of that support.

One blind spot of the oracle: a product's gradient vanishes where the other
factor is zero, so a gate multiplied into zeros (zero padding, no biases) looks
as if it did not matter; the tests keep gates away from such places.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import fx, nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from deconvlab.engine.graph_receptive_field import (GraphGeometry, UnsupportedOpError, box_size, node_names,
                                                    receptive_field, trace)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Dropout,
               nn.BatchNorm2d, nn.LayerNorm)


def flat_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """Positive weights (uniform in [0.5, 1.5] / fan-in, so values stay O(1)), zero biases,
    identity activations and batch norms, average pools where there were max pools."""
    flat = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    for path, m in list(flat.named_modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                w = torch.rand(m.weight.shape, generator=g, dtype=torch.float32) + 0.5
                m.weight.copy_(w / w[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
        new = None
        if isinstance(m, ACTIVATIONS):
            new = nn.Identity()
        elif isinstance(m, nn.MaxPool2d):
            assert m.dilation in (1, (1, 1)), "an average pool cannot copy a dilated max pool"
            new = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
        elif isinstance(m, nn.AdaptiveMaxPool2d):
            new = nn.AdaptiveAvgPool2d(m.output_size)
        if new is not None:
            parent, _, name = path.rpartition(".")
            setattr(flat.get_submodule(parent), name, new)
    return flat


def support_boxes(flat: nn.Module, seeds: list[tuple[str, int | None, int | None]], hw, channels=None):
    """Bounding box (top, left, bottom, right) of the input gradient's support of each seed
    (node, y, x) (summed over channels; y = x = None: the whole output), and whether the
    support fills it. One batch item per seed, one forward and one backward pass."""
    fe = create_feature_extractor(flat, return_nodes=sorted({n for n, _, _ in seeds}))
    channels = channels or next(c for c in flat.modules() if isinstance(c, nn.Conv2d)).in_channels
    x = torch.ones(len(seeds), channels, *hw, requires_grad=True)
    out = fe(x)
    units = [out[n][k].sum() if y is None else out[n][k, :, y, xx].sum() for k, (n, y, xx) in enumerate(seeds)]
    (g,) = torch.autograd.grad(torch.stack(units).sum(), x)
    boxes = []
    for s in g.abs().sum(1) > 0:
        if not s.any():
            boxes.append(((0, 0, 0, 0), True))
            continue
        rows, cols = s.any(1).nonzero()[:, 0], s.any(0).nonzero()[:, 0]
        t, l, b, r = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
        boxes.append(((t, l, b, r), bool(s[t:b, l:r].all())))
    return boxes, {n: (tuple(v.shape[2:]) if v.dim() == 4 else None) for n, v in out.items()}


def corners_and_middle(h, w):
    pos = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w // 2), (h // 3, 1)}
    return sorted((y, x) for y, x in pos if x < w)


def check(model: nn.Module, nodes: list[str], hw, whole: set[str] = frozenset()) -> int:
    """Every node's box at corners, edges and the middle equals the flat copy's support."""
    geo = GraphGeometry(trace(model), hw)
    seeds = []
    for node in nodes:
        size = geo.out_hw(node)
        seeds += [(node, y, x) for y, x in (corners_and_middle(*size) if size else [(None, None)])]
    want, sizes = support_boxes(flat_copy(model), seeds, hw)
    for node in nodes:
        assert sizes[node] == geo.out_hw(node), (node, sizes[node], geo.out_hw(node))
    for (node, y, x), (box, _) in zip(seeds, want):
        got = geo.box(node, y, x)
        assert got == box, f"{node} at ({y}, {x}): got {got}, the gradient's support is {box}"
        if node in whole:
            assert box == (0, 0) + tuple(hw), f"{node} was expected to see the whole image"
    return len(seeds)


def built(builder, **kw) -> nn.Module:
    """A torchvision model with weights=None, made on the meta device (no slow random init) and
    zeroed: boxes depend on the architecture only, and ``flat_copy`` sets its own weights."""
    with torch.device("meta"):
        m = builder(weights=None, **kw)
    m = m.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            t.zero_()
        for bn in m.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_var.fill_(1.0)
    return m.eval()


def test_resnet18_boxes_equal_the_gradient_support():
    m = built(torchvision.models.resnet18)
    n = check(m, ["conv1", "maxpool", "layer1.0.add", "layer2.0.conv1", "layer2.0.add", "layer2.1.relu_1",
                  "layer3.0.downsample.0", "layer3.1.relu_1", "avgpool", "fc"], (64, 56),
              whole={"avgpool", "fc"})
    assert n > 50


def test_vgg16_bn_boxes_equal_the_gradient_support():
    m = built(torchvision.models.vgg16_bn)
    m.classifier = nn.Linear(512 * 7 * 7, 10)  # its 120M fc weights would dominate; same geometry
    check(m, ["features.2", "features.6", "features.13", "features.23", "features.33", "avgpool"], (40, 40))


def test_mobilenet_v2_boxes_equal_the_gradient_support():
    m = built(torchvision.models.mobilenet_v2)
    # torchvision makes Conv2dNormActivation a leaf: features.0 is one node there, and here
    # a module path that resolves to the block's last node
    check(m, ["features.0", "features.2.conv.1", "features.3.add", "features.6.add", "features.14.conv.1",
              "features.18"], (64, 72))


def test_googlenet_boxes_equal_the_gradient_support():
    m = built(torchvision.models.googlenet, aux_logits=False, init_weights=False)
    check(m, ["maxpool1", "conv3.relu", "maxpool2", "inception3a.branch3.1.relu", "inception3a.cat",
              "inception3b.branch4.0", "maxpool3", "inception4a.cat", "inception4e.cat"], (64, 64))


def test_a_squeeze_excitation_gate_makes_it_the_whole_image():
    m = built(torchvision.models.mobilenet_v3_small)
    gm = trace(m)
    geo = GraphGeometry(gm, (64, 64))
    # features.1.block.0 is before the gate, .1 (SqueezeExcitation) multiplies by it
    assert geo.box("features.1.block.0", 0, 0) != (0, 0, 64, 64)
    check(m, ["features.1.block.0", "features.1.block.1"], (64, 64), whole={"features.1.block.1"})


class Hand(nn.Module):
    """A strided branch plus a strided 1x1 shortcut, a channel cat with a dilated branch, a cat
    along columns."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.short = nn.Conv2d(1, 4, 1, stride=2)
        self.dil = nn.Conv2d(1, 2, 5, stride=2, padding=4, dilation=2)

    def forward(self, x):
        y = self.b(F.relu(self.a(x))) + self.short(x)
        z = torch.cat([y, self.dil(x)], 1)
        return torch.cat([z, z[:, :, :, ::2]], dim=3)


def test_hand_made_graph_boxes_written_out():
    gm = trace(Hand())
    g = GraphGeometry(gm, (16, 16))
    # a at i sees rows [2i-1, 2i+2), b then [2i-3, 2i+4); the shortcut [2i, 2i+1) is inside
    assert g.box("add", 0, 0) == (0, 0, 4, 4)
    assert g.box("add", 3, 5) == (3, 7, 10, 14)
    assert g.box("add", 7, 7) == (11, 11, 16, 16)
    assert g.box("short", 3, 5) == (6, 10, 7, 11)
    assert box_size(gm, "add", (16, 16)) == (7, 7)
    # the dilated branch sees [2i-4, 2i+5): the cat along channels is the union
    assert g.box("cat", 3, 5) == (2, 6, 11, 15)
    assert g.box("cat", 7, 7) == (10, 10, 16, 16)
    assert box_size(gm, "cat", (16, 16)) == (9, 9)
    # cat along columns: columns 0..7 are z, 8..11 are z's even columns 0, 2, 4, 6
    assert g.out_hw("cat_1") == (8, 12)
    assert g.box("cat_1", 3, 5) == g.box("cat", 3, 5)
    assert g.box("cat_1", 3, 9) == (2, 0, 11, 9)  # z at column 2: [0, 9)
    assert g.box("cat_1", 3, 11) == (2, 8, 11, 16)  # z at column 6: [8, 17), clipped


def test_hand_made_graph_against_the_gradient_support():
    m = Hand()
    gm = trace(m)
    g = GraphGeometry(gm, (16, 16))
    flat = flat_copy(m)
    seeds = [(node, y, x) for node in ("add", "cat", "cat_1")
             for y in range(g.out_hw(node)[0]) for x in range(g.out_hw(node)[1])]
    want, _ = support_boxes(flat, seeds, (16, 16))
    assert [g.box(*s) for s in seeds] == [b for b, _ in want]


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.pool2 = nn.MaxPool2d(2, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.adapt = nn.AdaptiveAvgPool2d((3, 4))

    def forward(self, x):
        p = self.pool(self.conv(x))
        return self.adapt(self.avg(self.pool2(p))) + F.adaptive_max_pool2d(p, (4, 3)).mean()


@pytest.mark.parametrize("hw", [(22, 23), (25, 19)])
def test_ceil_mode_and_adaptive_pools_against_the_gradient_support(hw):
    m = Pools()
    gm = trace(m)
    g = GraphGeometry(gm, hw)
    assert g.out_hw("pool")[0] == -(-(hw[0] - 2 - 3) // 2) + 1  # ceil mode kept its extra window
    flat = flat_copy(m)
    seeds = [(node, y, x) for node in ("pool", "pool2", "avg", "adapt")
             for y in range(g.out_hw(node)[0]) for x in range(g.out_hw(node)[1])]
    want, _ = support_boxes(flat, seeds, hw)
    assert [g.box(*s) for s in seeds] == [b for b, _ in want]
    # the adaptive max pool's mean is added everywhere: every output sees the whole image
    assert g.box("add", 0, 0) == (0, 0) + hw


def test_names_are_those_of_get_graph_node_names():
    for builder, kw in ((torchvision.models.resnet18, {}),
                        (torchvision.models.googlenet, dict(aux_logits=False, init_weights=False))):
        with torch.device("meta"):
            m = builder(weights=None, **kw).eval()
        want = get_graph_node_names(m)[1]
        assert list(node_names(trace(m))) == want
        # a plain torch.fx trace: the same names, made from nn_module_stack
        assert list(node_names(fx.symbolic_trace(m))) == want


def test_plain_fx_graphs_and_module_paths_give_the_same_boxes():
    m = built(torchvision.models.mobilenet_v2)
    a, b = GraphGeometry(trace(m), (64, 64)), GraphGeometry(fx.symbolic_trace(m), (64, 64))
    for node in ("features.1", "features.3.add", "features.5.conv.1", "features.7"):
        assert a.box(node, 1, 2) == b.box(node, 1, 2)
    assert a.node("features.1").meta["qualname"] == "features.1.conv.2"  # the block's last node


def test_a_leaf_block_is_traced_into():
    # torchvision's own tracer makes Conv2dNormActivation a leaf; create_feature_extractor's
    # graph has call_module nodes of such blocks and of SqueezeExcitation
    m = built(torchvision.models.mobilenet_v3_small)
    fe = create_feature_extractor(m, return_nodes=["features.2", "features.1.block.1"])
    g, ref = GraphGeometry(fe, (64, 64)), GraphGeometry(trace(m), (64, 64))
    leaf = next(n for n in fe.graph.nodes if n.op == "call_module" and n.target == "features.0")
    assert type(fe.get_submodule("features.0")).__name__ == "Conv2dNormActivation"
    assert g.box(leaf, 5, 7) == ref.box("features.0", 5, 7)
    outs = next(n for n in fe.graph.nodes if n.op == "output").args[0]
    assert g.box(outs["features.2"], 2, 3) == ref.box("features.2", 2, 3)
    assert g.box(outs["features.1.block.1"], 2, 3) == (0, 0, 64, 64)


def test_unknown_node_and_position_out_of_range():
    m = built(torchvision.models.resnet18)
    gm = trace(m)
    with pytest.raises(ValueError, match=r"expected one of 'x', 'conv1'.*got 'layer1.0.addd'.*layer1.0.add"):
        receptive_field(gm, "layer1.0.addd", 0, 0, (64, 64))
    with pytest.raises(ValueError, match=r"y in 0\.\.15 and x in 0\.\.15.*got \(16, 0\)"):
        receptive_field(gm, "layer1.0.add", 16, 0, (64, 64))
    with pytest.raises(ValueError, match=r"y in 0\.\.15.*got \(0, -1\)"):
        receptive_field(gm, "layer1.0.add", 0, -1, (64, 64))
    assert receptive_field(gm, "fc", 3, 3, (64, 64)) == (0, 0, 64, 64)  # no spatial axes: whole image


class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.roll(self.conv(x), 1, 2)


def test_an_op_without_a_rule_raises_unless_not_strict():
    gm = trace(Rolled())
    with pytest.raises(UnsupportedOpError, match="roll"):
        receptive_field(gm, "roll", 0, 0, (8, 8))
    assert receptive_field(gm, "conv", 0, 0, (8, 8)) == (0, 0, 2, 2)  # before the op: fine
    assert receptive_field(gm, "roll", 0, 0, (8, 8), strict=False) == (0, 0, 8, 8)


def test_nhwc_layout_through_permute_linear_and_layer_norm():
    # ConvNeXt's block: depthwise 7x7, permute to NHWC, LayerNorm and Linear over channels,
    # permute back, layer scale, stochastic depth, residual add
    from torchvision.models.convnext import CNBlock

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), CNBlock(8, 1.0, 0.0), nn.MaxPool2d(2), CNBlock(8, 1.0, 0.0)).eval()
    check(m, ["1.block.0", "1.block.6", "1.add", "2", "3.add"], (40, 36))
    g = GraphGeometry(trace(m), (40, 36))
    assert g.graph.axes[g.node("1.block.3")] == (1, 2)  # NHWC there
    assert g.box("1.block.3", 4, 7) == g.box("1.block.0", 4, 7)


class Functional(nn.Module):
    """Functional convs and pools, "same" padding with an even dilated kernel, reflect and
    circular padding, F.pad, a mean-gate, a view and a flatten."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, 2, 3, 3))
        self.same = nn.Conv2d(4, 4, 4, padding="same", dilation=2)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.circular = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(2 * 3 * 3, 5)

    def forward(self, x):
        a = F.conv2d(x, self.w, None, 2, 1)
        b = self.same(F.avg_pool2d(a, 3, 1, 1, True))
        d = self.circular(b)  # at a border, a window wraps round to the other side
        c = self.reflect(F.pad(d, (2, 0, 1, 3)))
        # (a product's gradient is zero where the other factor is: the slice avoids the rows
        # and columns of c that see only F.pad's zeros, where the flat copy, having no biases,
        # would say the gate does not matter)
        e = c[:, :, 2:13, 1:] * c.mean((2, 3), keepdim=True)
        f = F.adaptive_avg_pool2d(c.view(c.shape[0], 2, 2, c.shape[2], c.shape[3]).sum(1), 3)
        return self.fc(torch.flatten(f, 1)), e


def test_functional_ops_and_padding_modes_against_the_gradient_support():
    m = Functional()
    gm = trace(m)
    g = GraphGeometry(gm, (21, 18))
    nodes = ["conv2d", "avg_pool2d", "same", "circular", "pad", "reflect", "getitem", "mul", "sum",
             "adaptive_avg_pool2d"]
    seeds = [(node, y, x) for node in nodes for y in range(g.out_hw(node)[0]) for x in range(g.out_hw(node)[1])]
    # the flat copy keeps the functional ops; positive weights make them positive and linear
    want, _ = support_boxes(flat_copy(m), seeds, (21, 18), channels=2)
    for s, (box, _) in zip(seeds, want):
        assert g.box(*s) == box, s
    assert g.box("mul", 0, 0) == (0, 0, 21, 18)  # the gate
    assert g.box("fc", None, None) == (0, 0, 21, 18)
    # "same" padding, kernel 4, dilation 2: 3 pixels on each side, box of 7 rows of avg_pool2d
    assert box_size(gm, "same", (21, 18))[0] == box_size(gm, "avg_pool2d", (21, 18))[0] + 2 * 6


def test_graphs_of_torchvisions_tracer_with_a_name_table():
    # the graph engine traces with torchvision's NodePathTracer (no nn_module_stack on its
    # nodes) and hands its fx-name -> layer-name table over
    from torchvision.models.feature_extraction import NodePathTracer

    m = built(torchvision.models.resnet18)
    tracer = NodePathTracer(leaf_modules=[])
    gm = fx.GraphModule(m, tracer.trace(m))
    table = {n.name: q for n, q in tracer.node_to_qualname.items()}
    g, ref = GraphGeometry(gm, (64, 64), qualnames=table), GraphGeometry(trace(m), (64, 64))
    for node in ("layer1.0.add", "layer2.1.relu_1", "layer3", "maxpool"):
        assert g.box(node, 1, 3) == ref.box(node, 1, 3)
    with pytest.raises(ValueError, match="expected one of"):
        GraphGeometry(gm, (64, 64)).node("layer2.1.relu_1")  # without the table: fx names only


def test_flat_nets_give_the_sequential_engines_boxes():
    # two implementations of one geometry: the sequential engine's input_box on the children
    # list, this module on the traced graph; ZFNet's conv1 has padding 1 and ceil-free pools,
    # VGG-16's classifier follows an adaptive pool to 7x7 from a non-multiple (5x5 at 160 px)
    from conftest import small_zfnet_module
    from deconvlab.engine.receptive_field import box_size as seq_size, input_box

    zf, _ = small_zfnet_module()
    for model, hw in ((zf, (224, 200)), (nn.Sequential(*built(torchvision.models.vgg16).features,
                                                        nn.AdaptiveAvgPool2d(7)), (160, 160))):
        children = list(model.named_children())
        gm = trace(model)
        g = GraphGeometry(gm, hw)
        for i, (name, _) in enumerate(children):
            size = g.out_hw(name)
            for y, x in corners_and_middle(*size) if size else [(None, None)]:
                for clip in (True, False):
                    assert g.box(name, y, x, clip) == input_box(children, i, y, x, hw, clip), (name, y, x, clip)
            if size is None:
                assert box_size(gm, name, hw) == seq_size(children, i, hw) == hw
                continue
            # the sequential engine's box_size is position (0, 0)'s; here the largest over positions
            # (a chain's rows depend on y only and its columns on x only)
            boxes = [input_box(children, i, y, x, hw, clip=False)
                     for y, x in [(y, 0) for y in range(size[0])] + [(0, x) for x in range(size[1])]]
            assert box_size(gm, name, hw) == (max(b - t for t, _, b, _ in boxes), max(r - l for _, l, _, r in boxes))


@pytest.mark.parametrize("name, nodes, whole", [
    ("squeezenet1_1", ["features.2", "features.3.cat", "features.5", "features.7.cat", "classifier.1"], set()),
    ("densenet121", ["features.pool0", "features.denseblock1.denselayer2.cat", "features.transition1.pool",
                     "features.denseblock2.denselayer3.relu2"], set()),
    ("efficientnet_b0", ["features.1.0.block.0", "features.2.0.block.1", "features.2.1.add"],
     {"features.2.0.block.1", "features.2.1.add"}),  # after squeeze-excitation gates
    ("shufflenet_v2_x0_5", ["maxpool", "stage2.0.cat", "stage2.1.view_1", "stage3.0.cat"], set()),
])
def test_more_torchvision_nets(name, nodes, whole):
    # fire modules' cats (squeezenet), dense cats and transition pools (densenet), gates and
    # stochastic depth (efficientnet), chunk + channel shuffle through a 5-d view (shufflenet)
    check(built(getattr(torchvision.models, name)), nodes, (64, 64), whole=whole)
