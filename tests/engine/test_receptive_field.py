"""Receptive fields: written-out boxes, ZFNet's map sizes, and the deconvnet's support.

A point seed's projection must be zero outside its receptive-field box, and the
box must be tight: with positive weights nothing cancels, so some pixel on each
edge of the box can be reached. Which pixels a seed reaches depends on the
max-pool switches below it (a pool unit's box is the union over the positions
its maximum can take), so over 64 seeds every edge is reached; with no pool
below (conv1) every seed fills its box exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import he_init
from deconvlab.nets import ModelMeta, ZFNetConfig, feature_sizes, zfnet
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def zf(width=0.25, norm="none", seed=0, positive=False) -> Net:
    cfg = ZFNetConfig(num_classes=10, width=width, fc_size=64, norm=norm)
    model = he_init(zfnet(cfg), seed)
    if positive:
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
    return Net(model, ModelMeta(arch="zfnet", config=cfg.to_dict()))


def test_zfnet_map_sizes_are_those_of_fig_3():
    # 224 -> conv1 110 -> pool1 55 -> conv2 26 -> pool2 13 -> conv3..5 13 -> pool5 6
    shapes = feature_sizes(ZFNetConfig(width=0.5, fc_size=256, num_classes=10, norm="lrn"))
    got = [shapes[n][-1] for n in ("relu1", "pool1", "relu2", "pool2", "relu3", "relu4", "relu5", "pool5")]
    assert got == [110, 55, 26, 13, 13, 13, 13, 6]
    assert shapes["conv1"][0] == 48 and shapes["fc6"] == (256,) and shapes["fc8"] == (10,)
    net = zf()
    info = {d["name"]: d for d in net.layer_info()}
    assert [info[f"conv{i}"]["shape"][1] for i in range(1, 6)] == [110, 26, 13, 13, 13]
    assert info["conv1"]["kind"] == "conv" and info["fc6"]["kind"] == "fc" and info["fc6"]["shape"] == (64,)
    # the record of a forward pass has the same shapes as the geometry says
    rec = net.forward(torch.zeros(1, 3, 224, 224))
    for d in net.layer_info():
        assert tuple(rec.activations[d["name"]].shape[1:]) == d["shape"]
    assert rec.outputs["pool1"].shape[-1] == 55 and rec.outputs["pool5"].shape[-1] == 6


def test_written_out_boxes():
    net = zf()
    # conv1: 7x7, stride 2, pad 1: output y sees input [2y - 1, 2y + 6)
    assert net.receptive_field("conv1", 0, 0) == (0, 0, 6, 6)
    assert net.receptive_field("conv1", 5, 9) == (9, 17, 16, 24)
    assert net.receptive_field("conv1", 109, 109) == (217, 217, 224, 224)
    # conv5 (worked through by hand, see test below): [16y - 49, 16y + 90), 139 px unclipped
    assert net.receptive_field_size("conv5") == (139, 139)
    assert net.receptive_field("conv5", 6, 6) == (47, 47, 186, 186)
    assert net.receptive_field("conv5", 0, 12) == (0, 143, 90, 224)
    assert net.receptive_field("conv5", 6, 6, clip=False) == (47, 47, 186, 186)
    assert net.receptive_field("conv5", 0, 0, clip=False) == (-49, -49, 90, 90)
    # pool1 output y: relu1 [2y, 2y + 3) -> input [4y - 1, 4y + 10)
    assert net.receptive_field("pool1", 3, 4) == (11, 15, 22, 26)
    # fc units see the whole image
    assert net.receptive_field("fc6") == (0, 0, 224, 224)
    assert net.receptive_field("fc8", input_size=160) == (0, 0, 160, 160)


def test_conv5_box_by_hand():
    # conv5 [y, y+1) -> conv5 in [y-1, y+2) -> conv4 in [y-2, y+3) -> conv3 in [y-3, y+4)
    # -> pool2 (3/2) in [2y-6, 2y+9) -> conv2 (5/2) in [4y-12, 4y+21) -> pool1 in [8y-24, 8y+43)
    # -> conv1 (7/2, pad 1) in [16y-49, 16y+90)
    net = zf()
    for y, x in ((3, 4), (6, 6), (8, 2)):
        t, l, b, r = net.receptive_field("conv5", y, x)
        assert (t, l, b, r) == (max(16 * y - 49, 0), max(16 * x - 49, 0), min(16 * y + 90, 224), min(16 * x + 90, 224))


def test_bad_positions_and_layers_are_refused():
    net = zf()
    with pytest.raises(ValueError, match=r"position: expected \(y, x\) with y in 0\.\.12 and x in 0\.\.12, got \(13, 0\)"):
        net.receptive_field("conv5", 13, 0)
    with pytest.raises(ValueError, match="y: expected an integer position in conv5, got None"):
        net.receptive_field("conv5")
    with pytest.raises(KeyError, match="unknown layer: expected one of"):
        net.receptive_field("conv9", 0, 0)


def _support(p: torch.Tensor) -> tuple[int, int, int, int] | None:
    nz = p.abs().sum(0).nonzero()
    if len(nz) == 0:
        return None
    return int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3", "conv5", "pool2"])
def test_point_projection_is_inside_its_box_and_the_box_is_tight(layer):
    net = zf(positive=True, seed=4)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))  # positive: every unit active
    rec = net.forward(x)
    act = net.activation(rec, layer)
    C, H, W = act.shape[1:]
    g = torch.Generator().manual_seed(6)
    pos = [(int(torch.randint(H, (1,), generator=g)), int(torch.randint(W, (1,), generator=g))) for _ in range(60)]
    pos += [(0, 0), (H - 1, W - 1), (0, W - 1), (H - 1, 0)]  # clipped boxes
    items = [(layer, k % C, p) for k, p in enumerate(pos)]
    for method in ("deconv", "backprop"):
        ps = net.project_many(rec, items, method=method)
        edges = [0, 0, 0, 0]
        all_four = 0
        for (_, _, (y, xx)), p in zip(items, ps):
            t, l, b, r = net.receptive_field(layer, y, xx)
            s = _support(p)
            assert s is not None, (layer, y, xx)
            assert t <= s[0] and l <= s[1] and s[2] <= b and s[3] <= r, (layer, (y, xx), (t, l, b, r), s)
            hits = [s[0] == t, s[1] == l, s[2] == b, s[3] == r]
            edges = [e + h for e, h in zip(edges, hits)]
            all_four += all(hits)
        # every edge is reached (by some seeds: which pixels a seed reaches depends on the switches)
        assert min(edges) > 0, (layer, method, edges)
        if layer == "conv1":  # no max pool below: every seed fills its box exactly
            assert all_four == len(items)


def test_receptive_field_of_vgg_and_alexnet_geometry():
    from deconvlab.nets.torchvision_nets import alexnet, vgg16

    with torch.device("meta"):
        a = alexnet(num_classes=10)
        v = vgg16(num_classes=10)
    na = Net(a, ModelMeta(arch="alexnet"), device="meta")
    # AlexNet conv1: 11x11, stride 4, pad 2: y -> [4y - 2, 4y + 9)
    assert na.receptive_field("conv1", 0, 0) == (0, 0, 9, 9)
    assert na.receptive_field("conv1", 10, 20) == (38, 78, 49, 89)
    assert [d["shape"][-1] for d in na.layer_info()][:5] == [55, 27, 13, 13, 13]
    nv = Net(v, ModelMeta(arch="vgg16"), device="meta")
    # VGG-16: conv1 3x3 pad 1; conv13 (conv5_3) sees 196 px, the last pool 212 px
    assert nv.receptive_field("conv1", 0, 0) == (0, 0, 2, 2)
    assert nv.receptive_field_size("conv13") == (196, 196)
    assert nv.receptive_field_size("pool13") == (212, 212)  # VGG pools are named after their conv
    assert nv.receptive_field("conv13", 7, 7) == (22, 22, 218, 218)  # [16y - 90, 16y + 106)
    assert nv.receptive_field("conv13", 0, 13) == (0, 118, 106, 224)
    assert nv.layers == [f"conv{i}" for i in range(1, 14)] + ["fc6", "fc7", "fc8"]


def test_a_layer_without_geometry_is_named():
    module = nn.Sequential()
    module.add_module("conv1", nn.Conv2d(3, 4, 3))
    module.add_module("relu1", nn.ReLU())
    module.add_module("odd", nn.Upsample(scale_factor=2))
    module.add_module("conv2", nn.Conv2d(4, 4, 3))
    net = Net(module, ModelMeta(arch="custom", input_size=16))
    assert net.receptive_field("conv1", 0, 0) == (0, 0, 3, 3)
    with pytest.raises(TypeError, match="no geometry for a Upsample"):
        net.receptive_field("conv2", 0, 0)
