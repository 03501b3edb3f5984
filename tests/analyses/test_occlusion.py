"""Occlusion (Fig. 7): hand-set answers, and the incremental computation equals the full one."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from conftest import fast_build, small_zfnet_module
from deconvlab.nets.torchvision_nets import alexnet
from deconvlab.analyses.occlusion import occlusion, occlusion_grid, occlusion_passes


def _tiny_model() -> nn.Sequential:
    """conv1: 1x1, sums the three channels; fc8: class 0 = total / 100, class 1 = 3.0."""
    conv = nn.Conv2d(3, 1, 1)
    fc = nn.Linear(16, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        fc.weight.zero_()
        fc.weight[0].fill_(0.01)
        fc.bias.copy_(torch.tensor([0.0, 3.0]))
    return nn.Sequential(OrderedDict(conv1=conv, relu1=nn.ReLU(), flatten=nn.Flatten(), fc8=fc)).eval()


@pytest.mark.parametrize("method", ["incremental", "full"])
def test_hand_set_model_written_out(method):
    # pixel (i, j) holds i * 4 + j + 1 in each of the three channels: conv1 sees 3x that
    x = (torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) + 1).repeat(1, 3, 1, 1)
    r = occlusion(_tiny_model(), x, size=2, stride=2, layer="conv1", method=method)
    assert r.grid == (2, 2) and r.passes == 5
    assert r.feature_map == 0 and r.class_index == 0  # 4.08 > 3.0 unoccluded
    # total conv1 activation: 3 * 136 = 408 minus 3x the occluded pixels (14, 22, 46, 54)
    np.testing.assert_allclose(r.activation, [[366, 342], [270, 246]], rtol=1e-6)
    assert r.base_activation == pytest.approx(408)
    # p(class 0) = sigmoid(total / 100 - 3)
    np.testing.assert_allclose(r.probability, [[0.659260, 0.603483], [0.425557, 0.368188]], atol=1e-5)
    assert r.base_probability == pytest.approx(0.746494, abs=1e-5)
    np.testing.assert_array_equal(r.top_class, [[0, 0], [1, 1]])
    assert r.positions == [(0, 0), (0, 2), (2, 0), (2, 2)]


def test_grid_and_passes():
    assert occlusion_grid(224, 224, 32, 8) == (25, 25)
    assert occlusion_passes(224, 224, 32, 8) == 626
    assert occlusion_grid(224, 160, 30, 13) == (15, 11)
    assert occlusion_grid(224, 224, 224, 1) == (1, 1)


@pytest.fixture(scope="module")
def zf():
    model, _ = small_zfnet_module()
    torch.manual_seed(1)
    return model, torch.randn(1, 3, 224, 224)


def _same(a, b, atol=1e-4):
    assert a.grid == b.grid and a.feature_map == b.feature_map and a.class_index == b.class_index
    scale = max(1.0, float(np.abs(b.activation).max()))
    np.testing.assert_allclose(a.activation, b.activation, atol=atol * scale, rtol=0)
    np.testing.assert_allclose(a.probability, b.probability, atol=atol, rtol=0)
    # the top class may differ only where two classes tie within rounding
    assert (a.top_class != b.top_class).mean() <= 0.01


@pytest.mark.parametrize("layer,size,stride,fallback", [
    ("conv1", 48, 24, 0.6),
    ("conv2", 30, 26, 0.6),    # a stride that does not divide 224 - size
    ("conv5", 48, 24, 1.01),   # never falls back: patches through pool5 and avgpool
    ("conv5", 48, 24, 0.0),    # falls back at once: the full computation from conv1
    ("fc7", 64, 32, 0.6),
])
def test_incremental_equals_full_zfnet(zf, layer, size, stride, fallback):
    model, x = zf
    inc = occlusion(model, x, size, stride, layer, method="incremental", fallback=fallback, batch_size=50)
    ref = occlusion(model, x, size, stride, layer, method="full")
    _same(inc, ref)
    # the maps are not flat: the occluder matters, so equality means something
    assert np.ptp(ref.activation) > 1e-3 * max(1.0, np.abs(ref.activation).max())
    assert np.ptp(ref.probability) > 1e-4


@pytest.mark.parametrize("norm", ["lrn", "batch"])
def test_incremental_equals_full_norms(norm):
    model, _ = small_zfnet_module(norm=norm)
    if norm == "batch":  # give the eval-mode batch norms non-trivial statistics
        g = torch.Generator().manual_seed(3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    _same(occlusion(model, x, 56, 28, "conv4"), occlusion(model, x, 56, 28, "conv4", method="full"))


def test_incremental_equals_full_alexnet_and_rectangular_input():
    model = fast_build(alexnet, 10)  # 11x11 stride 4 pad 2, max pools without ceil mode
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    _same(occlusion(model, x, 80, 72, "conv3"), occlusion(model, x, 80, 72, "conv3", method="full"))
    zf_model, _ = small_zfnet_module()
    x = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(5))  # avgpool is no identity here
    _same(occlusion(zf_model, x, 40, 40, "conv5"), occlusion(zf_model, x, 40, 40, "conv5", method="full"))


def test_matches_the_engine_forward_on_explicitly_occluded_images(small_net, sample_image):
    """A second route: Net.forward (switches.record_forward) of the occluded image, position by position."""
    x = small_net.preprocess(sample_image)
    r = occlusion(small_net, x, 40, 46, "conv3")
    rng = np.random.default_rng(0)
    for k in rng.choice(len(r.positions), 5, replace=False):
        y0, x0 = r.positions[k]
        xo = x.clone()
        xo[:, :, y0:y0 + 40, x0:x0 + 40] = 0
        rec = small_net.forward(xo)
        i, j = divmod(int(k), r.grid[1])
        total = float(rec.activations["conv3"][0, r.feature_map].sum())
        assert r.activation[i, j] == pytest.approx(total, rel=1e-4, abs=1e-3)
        p = rec.probabilities()[0]
        assert r.probability[i, j] == pytest.approx(float(p[r.class_index]), abs=1e-5)
        assert r.top_class[i, j] == int(p.argmax())
    # the tracked map is the strongest one of the unoccluded image
    rec0 = small_net.forward(x)
    a0 = rec0.activations["conv3"][0]
    assert r.feature_map == int(a0.flatten(1).max(1).values.argmax())
    assert r.class_index == int(rec0.probabilities()[0].argmax())


def test_batch_size_does_not_change_results(zf):
    model, x = zf
    a = occlusion(model, x, 112, 56, "conv3", batch_size=1)
    b = occlusion(model, x, 112, 56, "conv3", batch_size=1000)
    _same(a, b, atol=1e-5)


def test_chosen_class_and_feature_map(zf):
    model, x = zf
    r = occlusion(model, x, 112, 56, "conv2", class_index=7, feature_map=3)
    assert r.class_index == 7 and r.feature_map == 3
    ref = occlusion(model, x, 112, 56, "conv2", class_index=7, feature_map=3, method="full")
    _same(r, ref)


def test_bad_arguments_say_what_was_expected(zf):
    model, x = zf
    with pytest.raises(KeyError, match="unknown layer.*'conv9'"):
        occlusion(model, x, 32, 8, "conv9")
    for kw, msg in [(dict(size=0), "size: expected an integer from 1 to 224"),
                    (dict(size=300), r"size: expected an integer from 1 to 224 \(the input side\), got 300"),
                    (dict(stride=0), "stride: expected"),
                    (dict(class_index=10), r"class_index: expected 0\.\.9, got 10"),
                    (dict(feature_map=999), r"feature_map: expected 0\.\.\d+ for layer conv5, got 999"),
                    (dict(method="fast"), "method: expected"),
                    (dict(size=8, stride=1, max_passes=4096),
                     "needs 47090 forward passes .*the budget is 4096")]:
        args = dict(size=32, stride=8, layer="conv5")
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            occlusion(model, x, **args)
    with pytest.raises(ValueError, match="expected one image"):
        occlusion(model, x.repeat(2, 1, 1, 1), 32, 8, "conv5")


def test_progress_is_reported(zf):
    model, x = zf
    seen = []
    occlusion(model, x, 112, 28, "conv1", batch_size=10, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (25, 25) and [d for d, _ in seen] == [10, 20, 25]
