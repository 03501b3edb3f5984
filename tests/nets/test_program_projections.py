"""A ``torch.export`` program (``.pt2``) projects as the module it was exported from.

The program's graph is made of ATen ops (``aten.conv2d``, ``aten.relu``,
``aten.max_pool2d``, ...), not of modules, so this checks the graph engine's ATen
rules against its module rules: the same network, two different graphs, one answer,
for all three methods, seeded at the logits (the signal crosses every op) and at
the last max pool.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.conv2(y) + y)
        y = self.pool(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_an_exported_program_projects_as_its_module(tmp_path):
    torch.manual_seed(0)
    model = Residual().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    ep = torch.export.export(model, (torch.randn(2, 3, 24, 24),), dynamic_shapes=({0: torch.export.Dim("b")},))
    path = tmp_path / "residual.pt2"
    torch.export.save(ep, str(path))
    program = Net.load(str(path), device="cpu")
    module = Net.from_module(model, input_size=24)
    assert program.engine == module.engine == "graph"
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    rp, rm = program.forward(x), module.forward(x)
    assert torch.allclose(rp.logits, rm.logits, atol=1e-5)
    pool = next(layer for layer in program.layers if "max_pool2d" in layer)
    assert torch.allclose(program.activation(rp, pool), module.activation(rm, "pool"), atol=1e-6)
    for method in ("deconv", "guided", "backprop"):
        for unit in range(5):
            a = program.project(rp, program.layers[-1], unit, method=method)
            b = module.project(rm, "fc", unit, method=method)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max())), (method, unit)
        a = program.project(rp, pool, 2, method=method)
        b = module.project(rm, "pool", 2, method=method)
        assert float(b.abs().max()) > 0 and torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max())), method
    # deconv and guided differ from the gradient here, so equal maps are not an accident of the gradient
    assert not torch.allclose(module.project(rm, "fc", 0, method="deconv"), module.project(rm, "fc", 0, method="backprop"))
