"""Occlusion (Fig. 7) on graph-engine nets: torchvision's resnet18 against occluded images run one by one
through ``net.forward``, and a paper model on the graph engine against the sequential engine's incremental
route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from conftest import small_zfnet_module
from deconvlab.analyses.occlusion import occlusion
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return Net.from_module(torchvision.models.resnet18(weights=None, num_classes=7), input_size=48)


def one_by_one(net, x, size, stride, layer, c, k):
    """Each occluded image alone through the engine's full forward record."""
    H, W = x.shape[-2:]
    act, prob, top = [], [], []
    for y0 in range(0, H - size + 1, stride):
        for x0 in range(0, W - size + 1, stride):
            xo = x.clone()
            xo[:, :, y0:y0 + size, x0:x0 + size] = 0
            rec = net.forward(xo)
            act.append(float(net.activation(rec, layer)[0, c].sum()))
            p = torch.softmax(rec.logits.float(), 1)[0]
            prob.append(float(p[k]))
            top.append(int(p.argmax()))
    return np.array(act), np.array(prob), np.array(top)


@pytest.mark.parametrize("layer", ["layer2.1", "layer3.0.relu", "fc"])
def test_resnet18_maps_equal_one_occluded_image_at_a_time(resnet, layer):
    torch.manual_seed(1)
    x = torch.randn(1, 3, 48, 48)
    r = occlusion(resnet, x, size=16, stride=8, layer=layer, batch_size=4)
    assert r.method == "full" and r.grid == (5, 5) and r.passes == 26
    rec = resnet.forward(x)
    a0 = resnet.activation(rec, layer)[0]
    assert r.feature_map == int(a0.reshape(a0.shape[0], -1).max(1).values.argmax())
    assert r.class_index == int(rec.logits[0].argmax()) == r.base_top_class
    act, prob, top = one_by_one(resnet, x, 16, 8, layer, r.feature_map, r.class_index)
    np.testing.assert_allclose(r.activation.ravel(), act, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.probability.ravel(), prob, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(r.top_class.ravel(), top)
    assert r.base_activation == pytest.approx(float(a0[r.feature_map].sum()), rel=1e-5)


def test_resnet18_default_layer_and_errors(resnet):
    x = torch.randn(1, 3, 48, 48)
    r = occlusion(resnet, x, size=24, stride=24)
    assert r.layer == "layer4"  # the last layer with a map over 1x1 (avgpool's is 1x1)
    with pytest.raises(KeyError, match="unknown layer"):
        occlusion(resnet, x, size=24, stride=24, layer="conv5")
    with pytest.raises(ValueError, match="feature_map"):
        occlusion(resnet, x, size=24, stride=24, layer="layer1.0", feature_map=64)


def test_a_paper_model_occludes_alike_on_both_engines():
    module, meta = small_zfnet_module()
    seq = Net(module, meta)
    graph = Net(small_zfnet_module()[0], meta, engine="graph")
    s = meta.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(2))
    a = occlusion(seq, x, size=16, stride=12, layer="conv3")  # the incremental route
    b = occlusion(graph, x, size=16, stride=12, layer="conv3")
    assert (a.method, b.method) == ("incremental", "full")
    assert (a.feature_map, a.class_index) == (b.feature_map, b.class_index)
    np.testing.assert_allclose(b.activation, a.activation, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.probability, a.probability, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(b.top_class, a.top_class)
