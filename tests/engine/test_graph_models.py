"""The graph engine on nets with smooth activations, gates and LayerNorm.

efficientnet_b0 (SiLU, sigmoid-gated squeeze-excitation, stochastic depth),
convnext_tiny (GELU, LayerNorm, channels-last permutes, layer scale) and
mobilenet_v3_small (Hardswish, ReLU, hard-sigmoid gates), ``weights=None``,
seeded, 48-64 px:

* ``backprop`` equals ``torch.autograd.grad`` of the seeded activation on the
  caller's module (nothing patched);
* ``deconv`` and ``guided`` follow the table of ``graph_rules`` (smooth
  rectifiers as ReLUs, gates as fixed scalings, LayerNorm by its gradient): they
  equal the hook route (``graph_hooks``), a second implementation of the same
  table by a different mechanism (autograd under a ``TorchFunctionMode`` that
  rewrites ops by name, versus the fx reverse walk), and on a gated net they
  differ from the gradient;
* every block output projects under every method without raising; seeding
  inside a gate's branch under ``deconv`` raises ``UnsupportedOp`` naming the sigmoid.
"""

from __future__ import annotations

import pytest
import torch

from deconvlab.engine.graph import GraphEngine, seed_batch
from deconvlab.engine.graph_hooks import HookRoute
from deconvlab.engine.graph_rules import UnsupportedOp
from test_graph_engine import assert_close, build, image, reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {
    "efficientnet_b0": (64, ["features.2.1", "features.4.0.block.2", "features.5.2.block.0.2", "features.6.0"]),
    "convnext_tiny": (32, ["features.1.1", "features.3.2.block.4", "features.5.3", "features.6.1"]),
    "mobilenet_v3_small": (48, ["features.1", "features.4.block.2", "features.6.block.0.2", "features.10"]),
}


@pytest.fixture(scope="module")
def traced():
    cache = {}

    def get(name):
        if name not in cache:
            size = MODELS[name][0]
            model = build(name)
            eng = GraphEngine(model, (3, size, size))
            cache[name] = model, eng, image(size=size)
        return cache[name]
    return get


def _strongest(rec, layer):
    a = rec.activations[layer][0]
    return int(a.flatten(1).amax(1).argmax())


@pytest.mark.parametrize("name", list(MODELS))
def test_backprop_is_the_gradient_and_deconv_follows_the_table(name, traced):
    layers = MODELS[name][1]
    model, eng, x = traced(name)
    assert eng.untraceable is None
    rec = eng.forward(x)
    items = [(layer, _strongest(rec, layer), None, 0) for layer in layers]
    bp = eng.project_many(rec, items, method="backprop")
    for k, (layer, unit, _, _) in enumerate(items):
        ref, out = reference(model, x, layer, unit, None, "backprop")
        assert torch.allclose(rec.activations[layer][0], out, rtol=1e-5, atol=1e-5)
        assert_close(bp[k], ref, f"{name} backprop {layer}")

    hooks = HookRoute(eng.root, layers)
    hrec = hooks.forward(x)
    n = torch.zeros(1, dtype=torch.long)
    differs = 0
    for method in ("deconv", "guided"):
        got = eng.project_many(rec, items, method=method)
        for k, (layer, unit, _, _) in enumerate(items):
            g = seed_batch(hrec.activations[layer], n, torch.tensor([unit]), [None], "point")
            other = hooks.project(hrec, layer, n, g, method)[0]
            assert_close(got[k], other, f"{name} {method} {layer}")
            differs += not torch.allclose(got[k], bp[k], rtol=1e-3)
    assert differs, f"{name}: deconv/guided equal backprop everywhere (the rules were not exercised)"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_block_projects_and_gates_refuse_inside(name, traced):
    _, eng, x = traced(name)
    rec = eng.forward(x)
    blocks = [d["name"] for d in eng.layer_info() if d["parent"] == "features"]
    assert len(blocks) >= 8
    for method in ("deconv", "guided", "backprop"):
        out = eng.project_many(rec, [(b, _strongest(rec, b), None, 0) for b in blocks], method=method)
        assert bool(torch.isfinite(out).all()) and float(out.abs().amax((1, 2, 3)).min()) > 0
    gate = next((layer for layer in eng.layers if layer.endswith("scale_activation")), None)
    if gate is None:
        return  # convnext has no gates
    assert gate in eng.unsupported("deconv")
    with pytest.raises(UnsupportedOp, match=r"(Sigmoid|Hardsigmoid) module at '.*scale_activation'"):
        eng.project_many(rec, [(gate, 0, None, 0)], method="deconv")
    assert bool(torch.isfinite(eng.project_many(rec, [(gate, 0, None, 0)], method="backprop")).all())
