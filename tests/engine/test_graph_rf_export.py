"""Receptive fields through a ``torch.export`` program's ATen ops (``aten.conv2d.default``,
``aten.relu.default``, ``aten.max_pool2d.default``, ...): each box equals the one the same
``nn.Module``, traced by fx, gives at the same layer and position. Before the ATen table, a unit of an
exported net had no box (``UnsupportedOpError`` at its ReLU), so the unit and point-seed projection
routes of a served ``.pt2`` answered 500 (found by the one-channel browser test, issue 13)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Gray(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 5, stride=2, padding=2)
        self.fc = nn.Linear(6 * 3 * 3, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)) + 0.5 * x[:, :1].mean() , 2, stride=2)
        return self.fc(x.flatten(1))


def test_exported_program_boxes_equal_the_module_boxes(tmp_path):
    torch.manual_seed(0)
    module = Gray().eval()
    ep = torch.export.export(module, (torch.randn(2, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
    torch.export.save(ep, str(tmp_path / "g.pt2"))
    program = Net.load(str(tmp_path / "g.pt2"), device="cpu")
    plain = Net.from_module(module, input_size=28, mean=(0.5,), std=(0.5,))
    spatial = lambda net: [d for d in net.layer_info() if len(d["shape"]) == 3]  # noqa: E731
    ours, theirs = spatial(program), spatial(plain)
    assert [d["type"].split(".")[0] for d in ours if d["type"].startswith(("conv", "relu", "max_pool"))][:4] == \
        ["conv2d", "relu", "max_pool2d", "conv2d"]
    # the layers that both sides name alike, in order: conv, relu, pool, conv, relu (the rest differ in kind)
    pairs = [("conv2d_default", "conv1"), ("relu_default", "relu"), ("max_pool2d_default", "max_pool2d"),
             ("conv2d_default_1", "conv2"), ("relu_default_1", "relu_1")]
    have_p, have_m = {d["name"] for d in ours}, {d["name"] for d in theirs}
    assert all(a in have_p and b in have_m for a, b in pairs), (sorted(have_p), sorted(have_m))
    for a, b in pairs:
        shape = next(d["shape"] for d in ours if d["name"] == a)
        for y, x in [(0, 0), (shape[1] // 2, shape[2] - 1), (shape[1] - 1, 1)]:
            assert program.receptive_field(a, y, x) == plain.receptive_field(b, y, x), (a, b, y, x)
    # and the unit's box the API reads: the strongest position's receptive field
    rec = program.forward(torch.rand(1, 1, 28, 28))
    pos, box = program.seed_box(rec, "relu_default_1", 2)
    assert box == program.receptive_field("relu_default_1", *pos)
