"""Net.preprocess: any PIL mode and size -> a finite 1x3xSxS tensor, with the expected values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deconvlab.nets import ModelMeta
from deconvlab.nets.registry import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    yield "RGB", rgb
    yield "L", rgb.convert("L")
    yield "LA", rgb.convert("LA")
    yield "RGBA", rgb.convert("RGBA")
    yield "P", rgb.convert("P")
    p = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    p.info["transparency"] = 0  # palette entry 0 is transparent
    yield "P+transparency", p
    yield "CMYK", rgb.convert("CMYK")
    yield "I;16", Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16))
    yield "I", Image.fromarray(rng.integers(-5, 10 ** 6, (40, 30), dtype=np.int32))
    yield "F", Image.fromarray(rng.normal(0, 1, (40, 30)).astype(np.float32))
    yield "1", rgb.convert("1")
    yield "YCbCr", rgb.convert("YCbCr")
    yield "1x1", Image.new("RGB", (1, 1), (10, 200, 30))
    yield "4000x3", Image.fromarray(rng.integers(0, 256, (3, 4000, 3), dtype=np.uint8))
    yield "3x4000", Image.fromarray(rng.integers(0, 256, (4000, 3, 3), dtype=np.uint8))


@pytest.mark.parametrize("name,image", list(_images()), ids=[n for n, _ in _images()])
def test_any_mode_and_size_gives_a_finite_input(small_net, name, image):
    assert image.mode == name.split("+")[0] or "x" in name
    x = small_net.preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    rec = small_net.forward(x)
    assert torch.isfinite(rec.logits).all()


def _expected(rgb01):
    return [(v - m) / s for v, m, s in zip(rgb01, IMAGENET_MEAN, IMAGENET_STD)]


def test_values_are_normalised_as_the_meta_says(small_net):
    x = small_net.preprocess(Image.new("RGB", (300, 200), (255, 0, 51)))
    for c, want in enumerate(_expected((1.0, 0.0, 0.2))):
        assert torch.allclose(x[0, c], torch.full((224, 224), want), atol=1e-6)
    # a transparent image is composited on white; a 16-bit image is scaled from 0..65535
    x = small_net.preprocess(Image.new("RGBA", (10, 10), (0, 0, 0, 0)))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(_expected((1.0, 1.0, 1.0))), atol=1e-6)
    x = small_net.preprocess(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)))
    assert torch.allclose(x[0, :, 5, 5], torch.tensor(_expected((1.0, 1.0, 1.0))), atol=1e-6)


def test_resize_then_centre_crop(small_net):
    # a 448x224 image: left half black, right half white -> after resizing to 448x224 (no change)
    # the centre crop keeps columns 112..335: half black, half white
    a = np.zeros((224, 448, 3), dtype=np.uint8)
    a[:, 224:] = 255
    x = small_net.preprocess(Image.fromarray(a))
    black, white = _expected((0, 0, 0))[0], _expected((1, 1, 1))[0]
    assert torch.allclose(x[0, 0, :, :112], torch.full((224, 112), black), atol=1e-6)
    assert torch.allclose(x[0, 0, :, 112:], torch.full((224, 112), white), atol=1e-6)


def test_other_input_sizes_and_means_follow_the_meta():
    from conftest import small_zfnet_module
    from deconvlab.net import Net

    module, meta = small_zfnet_module()
    meta = ModelMeta(**{**meta.__dict__, "input_size": 160, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    net = Net(module, meta)
    x = net.preprocess(Image.new("RGB", (20, 20), (255, 255, 255)))
    assert x.shape == (1, 3, 160, 160) and torch.allclose(x, torch.ones_like(x))


def test_bad_inputs_get_clear_errors(small_net):
    with pytest.raises(TypeError, match="image: expected a PIL.Image.Image, got ndarray"):
        small_net.preprocess(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"x: expected a float tensor of shape \(N, 3, H, W\), got \(3, 224, 224\)"):
        small_net.forward(torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match=r"got \(1, 1, 224, 224\)"):
        small_net.forward(torch.zeros(1, 1, 224, 224))
    with pytest.raises(ValueError, match="torch.uint8"):
        small_net.forward(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
