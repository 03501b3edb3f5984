"""deconvlab.region (issue 16): the units of a layer ranked by their strongest activation inside a box.

The ranking is checked against a brute force on a small hand-set net whose receptive fields are
written out by hand (conv 3x3 pad 1 -> max pool 2 -> conv 3x3 stride 2), and, on a paper net (the
sequential engine), against a brute force that asks ``net.receptive_field`` of every position (the
library asks only one row and one column of them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deconvlab import region
from deconvlab.net import Net
from deconvlab.nets import ModelMeta, ZFNetConfig, he_init, zfnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 32


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(torch.flatten(self.gap(x), 1))


def hand_field(layer: str, y: int, x: int) -> tuple[int, int, int, int]:
    """Receptive fields by hand: conv1 [y-1, y+2); pool [2y-1, 2y+3); conv2 [4y-1, 4y+7); clipped."""
    lo, hi = {"relu1": (-1, 2), "pool": (-1, 3), "relu2": (-1, 7)}[layer]
    step = {"relu1": 1, "pool": 2, "relu2": 4}[layer]
    clip = lambda v: max(0, min(S, v))  # noqa: E731
    return clip(step * y + lo), clip(step * x + lo), clip(step * y + hi), clip(step * x + hi)


def brute(act: np.ndarray, field, box, k: int):
    """Every position's overlap, the positions of the largest, each unit's max there, ranked."""
    t, l, b, r = box
    C, H, W = act.shape
    over = np.zeros((H, W), int)
    for y in range(H):
        for x in range(W):
            ft, fl, fb, fr = field(y, x)
            over[y, x] = max(0, min(b, fb) - max(t, ft)) * max(0, min(r, fr) - max(l, fl))
    keep = [(y, x) for y in range(H) for x in range(W) if over[y, x] == over.max()]
    best = []
    for u in range(C):
        vals = [act[u, y, x] for y, x in keep]
        i = int(np.argmax(vals))
        best.append((-vals[i], u, keep[i]))
    ranked = sorted(best)[:k]
    return keep, int(over.max()), [(u, -v, p) for v, u, p in ranked]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = Net.from_module(Tiny().eval(), input_size=S)
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(1))
    return net, net.forward(x)


def test_hand_fields_are_the_nets(tiny):
    net, _ = tiny
    for layer, H in (("relu1", 32), ("pool", 16), ("relu2", 7)):
        for y, x in ((0, 0), (H // 2, 1), (H - 1, H - 1)):
            assert tuple(net.receptive_field(layer, y, x)) == hand_field(layer, y, x), (layer, y, x)


@pytest.mark.parametrize("layer", ["relu1", "pool", "relu2"])
@pytest.mark.parametrize("box", [(5, 7, 9, 20), (0, 0, 32, 32), (30, 29, 32, 32), (12, 12, 13, 13)])
def test_ranking_equals_brute_force(tiny, layer, box):
    net, rec = tiny
    act = net.activation(rec, layer)[0].numpy()
    keep, overlap, want = brute(act, lambda y, x: hand_field(layer, y, x), box, k=3)
    got = region.rank_units(net, rec, layer, box, k=3)
    assert got.positions == keep and got.overlap == overlap and got.box == box
    assert [(u.unit, u.position) for u in got.units] == [(u, p) for u, _, p in want]
    np.testing.assert_allclose([u.value for u in got.units], [v for _, v, _ in want], rtol=0, atol=0)
    assert all(u.box == hand_field(layer, *u.position) for u in got.units)
    assert got.to_dict()["rule"] == region.RULE


def test_fc_layer_ranks_its_values(tiny):
    net, rec = tiny
    got = region.rank_units(net, rec, "fc", (0, 0, 4, 4), k=3)
    v = net.activation(rec, "fc")[0].numpy()
    assert got.positions is None and [u.unit for u in got.units] == list(np.argsort(-v, kind="stable"))
    # the whole net sees rows and columns 0..30: conv2's 7 positions leave the pool's last row unread
    assert all(u.position is None and u.box == (0, 0, S - 1, S - 1) for u in got.units)


def _paper_net():
    cfg = ZFNetConfig(num_classes=4, width=0.125, fc_size=16, norm="none", input_size=96)
    meta = ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=list("abcd"), input_size=96, name="zf")
    net = Net(he_init(zfnet(cfg), 0).eval(), meta)
    return net, net.forward(torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2)))


def _graph_resnet():
    import torchvision

    torch.manual_seed(0)
    net = Net.from_module(torchvision.models.resnet18(weights=None, num_classes=5).eval(), input_size=64)
    return net, net.forward(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("build, cases, k", [
    (_paper_net, (("conv1", (10, 40, 30, 41)), ("conv3", (50, 3, 90, 60)), ("conv5", (0, 0, 8, 8))), 10),
    (_graph_resnet, (("layer1.0", (3, 30, 20, 44)), ("layer3.1", (40, 40, 64, 64)),
                     ("layer2.0.add", (0, 0, 9, 60))), 6),
], ids=["paper-net", "graph-resnet"])
def test_rank_units_against_every_positions_field(build, cases, k):
    net, rec = build()
    for layer, box in cases:
        act = net.activation(rec, layer)[0].numpy()
        keep, overlap, want = brute(act, lambda y, x: net.receptive_field(layer, y, x), box, k=k)
        got = region.rank_units(net, rec, layer, box, k=k)
        assert (got.positions, got.overlap) == (keep, overlap), layer
        assert [(u.unit, u.position) for u in got.units] == [(u, p) for u, _, p in want], layer


@pytest.mark.parametrize("box, why", [
    ((0, 0, 0, 5), "non-empty"), ((5, 5, 4, 9), "non-empty"), ((0, 0, 33, 5), "inside the 32x32"),
    ((-1, 0, 5, 5), "inside"), ((0, 0, 5), "four integers"), ((0.5, 0, 5, 5), "four integers"),
    ((True, 0, 5, 5), "four integers"), ("0,0,5,5", "four integers")])
def test_bad_boxes_name_the_box(tiny, box, why):
    net, rec = tiny
    with pytest.raises(ValueError, match=f"box: expected.*{why}" if why != "non-empty" else "non-empty box"):
        region.rank_units(net, rec, "relu2", box)


def test_bad_k_and_layer(tiny):
    net, rec = tiny
    for k in (0, 7, True, 2.0):
        with pytest.raises(ValueError, match=r"k: expected 1..6 \(the units of layer relu2\)"):
            region.rank_units(net, rec, "relu2", (0, 0, 5, 5), k=k)
    with pytest.raises(KeyError, match="unknown layer"):
        region.rank_units(net, rec, "conv9", (0, 0, 5, 5))


def test_region_command(tmp_path, capsys):
    import json

    from conftest import make_sample_image
    from deconvlab.cli.main import main
    from deconvlab.nets import save_checkpoint

    cfg = ZFNetConfig(num_classes=4, width=0.125, fc_size=16, norm="none", input_size=96)
    meta = ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=list("abcd"), input_size=96, name="zf")
    module = he_init(zfnet(cfg), 0).eval()
    ckpt = save_checkpoint(tmp_path / "m" / "model.safetensors", module, meta)
    make_sample_image(120, 100, seed=3).save(tmp_path / "x.png")
    argv = ["region", "--model", str(ckpt), "--image", str(tmp_path / "x.png"), "--layer", "conv3", "--box",
            "20", "10", "60", "50", "--k", "4", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    got = json.loads((tmp_path / "out" / "region.json").read_text())
    net = Net(module, meta)
    from PIL import Image

    rec = net.forward(net.preprocess(Image.open(tmp_path / "x.png")))
    want = region.rank_units(net, rec, "conv3", (20, 10, 60, 50), k=4).to_dict()
    assert [u["unit"] for u in got["units"]] == [u["unit"] for u in want["units"]] and got["box"] == [20, 10, 60, 50]
    assert (tmp_path / "out" / "region.png").stat().st_size > 500
    assert main(argv[:7] + ["--box", "0", "0", "0", "5", "--out", str(tmp_path / "bad")]) == 2
    assert "box: expected 0 <= top < bottom <= 96" in capsys.readouterr().err
