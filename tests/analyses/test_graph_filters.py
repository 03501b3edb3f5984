"""Fig. 6 on any model: the first conv layer's filters of torchvision's resnet18 and of a user's module,
and dead filters per conv layer (by weight, and by activation against ``net.forward``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from deconvlab.analyses.filters import dead_filters, filter_images, first_conv
from deconvlab.index import index_layers
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def normalised(w: torch.Tensor) -> np.ndarray:
    """Per-filter min-max to 0..255, written with numpy."""
    a = w.detach().numpy().astype(np.float64)
    lo = a.min(axis=(1, 2, 3), keepdims=True)
    hi = a.max(axis=(1, 2, 3), keepdims=True)
    return np.floor((a - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    with torch.no_grad():
        m.conv1.weight[3] = 0.0  # dead by weight
        m.layer1[0].bn1.bias[7] = -1e3  # layer1.0.relu unit 7 never fires
    return Net.from_module(m, input_size=40)


def test_resnet18_first_layer_filters(resnet):
    img = filter_images(resnet)
    assert first_conv(resnet)[0] == "conv1" and img.shape == (64, 7, 7, 3)
    w = resnet.module.conv1.weight
    keep = [i for i in range(64) if i != 3]
    np.testing.assert_array_equal(img[keep], normalised(w[keep]))
    with pytest.raises(ValueError, match="64 input channels"):
        filter_images(resnet, "layer1.0.conv1")


class Mine(nn.Module):
    def __init__(self, channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def test_a_user_module_first_conv_is_its_first_nn_conv2d():
    torch.manual_seed(2)
    m = Mine()
    net = Net.from_module(m, input_size=16)
    assert first_conv(net)[0] == "features.0"
    np.testing.assert_array_equal(filter_images(net, "conv1"), normalised(m.features[0].weight))
    np.testing.assert_array_equal(filter_images(net, "features.0"), filter_images(m))
    with pytest.raises(KeyError, match="unknown layer: expected one of \\['features.0', 'features.2'\\]"):
        filter_images(net, "conv9")
    gray = Net.from_module(Mine(channels=1), input_size=16)
    tiles = filter_images(gray)
    assert tiles.shape == (4, 3, 3, 3) and (tiles[..., 0] == tiles[..., 2]).all()


def test_resnet18_dead_filters_by_weight_and_by_activation(resnet):
    torch.manual_seed(3)
    x = torch.randn(12, 3, 40, 40)
    out = dead_filters(resnet, x)
    convs = [p for p, m in resnet.module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(convs) <= set(out) and out["conv1"]["dead_by_weight"] == 1 and out["conv1"]["filters"] == 64
    rec = resnet.forward(x)
    layers = [L.name for L in index_layers(resnet)][:-1]  # the logits are not rectified
    assert {k for k, v in out.items() if "dead_by_activation" in v} == set(layers)
    for layer in layers:
        a = resnet.activation(rec, layer)
        never = int(((a.flatten(2).amax(2) if a.dim() == 4 else a) <= 0).all(0).sum())
        assert out[layer]["dead_by_activation"] == never, layer
    assert out["layer1.0.relu"]["dead_by_activation"] >= 1
    assert "fc" in out and "dead_by_activation" not in out["fc"]
