"""Fig. 6: first-layer filters as images, and dead filters counted by weight and by activation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconvlab.analyses.filters import dead_filters, filter_images, filters_mosaic
from deconvlab.nets import ZFNetConfig, zfnet


def small():
    torch.manual_seed(0)
    return zfnet(ZFNetConfig(num_classes=4, width=0.125, fc_size=16, norm="none")).eval()


def test_each_filter_is_contrast_normalised_on_its_own():
    m = small()
    with torch.no_grad():
        m.conv1.weight.zero_()
        m.conv1.weight[0, 0, 0, 0] = 0.5  # filter 0: one bright red pixel on black
        m.conv1.weight[1] = -0.01  # filter 1: flat
        m.conv1.weight[1, 2, 3, 4] = 0.01  # ... but for one blue pixel
    img = filter_images(m, "conv1")
    assert img.shape == (12, 7, 7, 3) and img.dtype == np.uint8
    assert img[0, 0, 0].tolist() == [255, 0, 0] and int(img[0].sum()) == 255
    assert img[1, 3, 4].tolist() == [0, 0, 255] and int(img[1].sum()) == 255  # scale-free: tiny weights fill the range


def test_filters_only_for_the_first_layer_and_known_layers():
    m = small()
    with pytest.raises(ValueError, match="expected a layer over the 3 input colours .* got 'conv2' with 12 input channels"):
        filter_images(m, "conv2")
    with pytest.raises(KeyError, match="unknown layer: expected one of .*'conv5'.*got 'conv9'"):
        filter_images(m, "conv9")


def test_mosaic_holds_every_filter():
    m = small()
    im = filters_mosaic(m, "conv1", scale=3)
    assert im.mode == "RGB"
    w, h = im.size
    assert w >= 21 * 3 and h >= 21 * 2  # 12 tiles of 21 px need at least a 3x2 grid... in any layout
    assert w * h >= 12 * 21 * 21


def test_dead_filters_by_weight_and_by_activation():
    m = small()
    with torch.no_grad():
        m.conv1.weight[3].zero_()  # dead by weight
        m.conv2.bias[5] = -1e4  # never fires
    x = torch.randn(6, 3, 224, 224)
    d = dead_filters(m, x)
    assert d["conv1"]["filters"] == 12 and d["conv1"]["dead_by_weight"] == 1
    assert d["conv1"]["fraction_by_weight"] == pytest.approx(1 / 12)
    assert d["conv2"]["dead_by_weight"] == 0 and d["conv2"]["dead_by_activation"] >= 1
    assert "dead_by_activation" not in d["fc8"]  # logits are not rectified
    assert set(d) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
