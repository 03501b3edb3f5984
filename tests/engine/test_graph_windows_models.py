"""The windowed backward pass equals the whole-map walk on torchvision's other CNNs.

densenet121 (channel cats of ever-growing windows, avg-pool transitions),
googlenet (inception branches of 1x1, 3x3 and ceil-mode max pools, cat),
mobilenet_v2 (depthwise convs, ReLU6, residual adds), vgg16_bn (a chain of
convs and max pools, then an adaptive pool and the classifier: whole maps),
``weights=None``, seeded, 64 px; each layer's strongest unit and a border seed,
all three methods (``window=True`` against ``window=False``; see
``test_graph_windows``).
"""

from __future__ import annotations

import pytest

from deconvlab.engine.graph import GraphEngine
from test_graph_engine import build, image, items_for
from test_graph_windows import METHODS, assert_same, both_routes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {
    "densenet121": ({}, ["features.denseblock1.denselayer3", "features.transition2.pool",
                         "features.denseblock2.denselayer5.conv2"]),
    "googlenet": (dict(aux_logits=False, init_weights=True), ["maxpool2", "inception3b", "inception4a.branch4.1"]),
    "mobilenet_v2": ({}, ["features.3", "features.7.conv.0.2", "features.11"]),
    "vgg16_bn": ({}, ["features.12", "features.26", "classifier.1"]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_windows_equal_whole_maps(name):
    kwargs, layers = MODELS[name]
    eng = GraphEngine(build(name, **kwargs), (3, 64, 64))
    assert eng.untraceable is None
    rec = eng.forward(image())
    items = items_for(rec, layers)
    fewer = False
    for method in METHODS:
        win, whole, v_win, v_whole = both_routes(eng, rec, items, method)
        for k, it in enumerate(items):
            assert_same(win[k], whole[k], f"{name} {method} {it}")
        fewer |= v_win.elements < v_whole.elements
    assert fewer, f"{name}: the windows never touched less than the whole maps"
