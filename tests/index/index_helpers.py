"""Shared by the top-k index tests (tests/index/test_*.py): a hand-set model with a known answer,
a small random ZFNet, their data sets (the fixtures ``handset_data`` and ``noise_data``), and helpers
that read and compare built indexes.

Small synthetic PNG data sets in tmp dirs; no test depends on training or on Imagenette (but the smoke
test of test_serve.py, which skips without them).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvlab.data import load_rgb, resize_crop
from deconvlab.nets import ModelMeta, ZFNetConfig, zfnet

# ------------------------------------------------------------ a hand-set model with a known answer
#
# conv1 (3x3, pad 1): unit c = mean over the 3x3 window of (channel c - the two other channels),
#   i.e. a red, a green and a blue blob detector. On a uniform 3x3 blob of value v (0..255) on
#   black, its maximum is v/255, exactly at the blob's centre.
# conv2 (1x1): unit 0 = relu1[red] + relu1[green], unit 1 = relu1[blue].
# fc8 on the spatial mean of relu2: unit 0 = mean(conv2 unit 0), unit 1 = mean(unit 1) - mean(unit 0).
#   Blobs never share a 3x3 window, so mean(red map) = 9 * r / (255 * 16 * 16), and so on.

SIZE = 16
RED_AT = {"tl": (3, 3), "tr": (3, 12)}
GREEN_AT, BLUE_AT = (12, 3), (12, 12)

# file, red (value, where), green value, blue value. Listing order = index (class a, then b).
IMAGES = [
    ("a/00.png", 200, "tl", 0, 50),     # 0
    ("a/01.png", 120, "tr", 90, 0),     # 1
    ("a/02.png", 255, "tr", 10, 100),   # 2
    ("a/03.png", 120, "tl", 200, 0),    # 3  red ties with 1
    ("a/04.png", 0, "tl", 254, 255),    # 4
    ("a/05.png", 60, "tl", 60, 30),     # 5
    ("b/00.png", 200, "tr", 0, 10),     # 6  red ties with 0: index 0 ranks first
    ("b/01.png", 30, "tl", 150, 220),   # 7
    ("b/02.png", 0, "tl", 0, 0),        # 8  black
    ("b/03.png", 90, "tr", 100, 80),    # 9
    ("b/04.png", 250, "tl", 5, 0),      # 10
    ("b/05.png", 10, "tl", 40, 240),    # 11
]

# The answer, k = 3: (image index, expected value, position) per unit, in rank order.
MEAN = 9 / (255 * SIZE * SIZE)
EXPECTED = {
    ("conv1", 0): [(2, 255 / 255, (3, 12)), (10, 250 / 255, (3, 3)), (0, 200 / 255, (3, 3))],
    ("conv1", 1): [(4, 254 / 255, GREEN_AT), (3, 200 / 255, GREEN_AT), (7, 150 / 255, GREEN_AT)],
    ("conv1", 2): [(4, 255 / 255, BLUE_AT), (11, 240 / 255, BLUE_AT), (7, 220 / 255, BLUE_AT)],
    ("conv2", 0): [(2, 255 / 255, (3, 12)), (4, 254 / 255, GREEN_AT), (10, 250 / 255, (3, 3))],
    ("conv2", 1): [(4, 255 / 255, BLUE_AT), (11, 240 / 255, BLUE_AT), (7, 220 / 255, BLUE_AT)],
    ("fc8", 0): [(3, 320 * MEAN, None), (2, 265 * MEAN, None), (10, 255 * MEAN, None)],
    ("fc8", 1): [(11, 190 * MEAN, None), (7, 40 * MEAN, None), (4, 1 * MEAN, None)],
}


def handset_model() -> nn.Sequential:
    conv1 = nn.Conv2d(3, 3, 3, padding=1)
    w = torch.full((3, 3, 3, 3), -1.0 / 9)
    for c in range(3):
        w[c, c] = 1.0 / 9
    conv2 = nn.Conv2d(3, 2, 1)
    fc8 = nn.Linear(2, 2)
    with torch.no_grad():
        conv1.weight.copy_(w)
        conv1.bias.zero_()
        conv2.weight.copy_(torch.tensor([[1.0, 1, 0], [0, 0, 1]]).view(2, 3, 1, 1))
        conv2.bias.zero_()
        fc8.weight.copy_(torch.tensor([[1.0, 0], [-1, 1]]))
        fc8.bias.zero_()
    return nn.Sequential(OrderedDict(conv1=conv1, relu1=nn.ReLU(), conv2=conv2, relu2=nn.ReLU(),
                                     avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc8=fc8)).eval()


def as_net(module: nn.Sequential, input_size: int, name: str, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    from deconvlab.net import Net

    return Net(module, ModelMeta(arch="test", input_size=input_size, mean=mean, std=std, name=name), device="cpu")


def blob(a: np.ndarray, centre, channel: int, v: int) -> None:
    y, x = centre
    a[y - 1:y + 2, x - 1:x + 2, channel] = v


@pytest.fixture
def handset_data(tmp_path) -> Path:
    root = tmp_path / "blobs"
    for f, r, where, g, b in IMAGES:
        a = np.zeros((SIZE, SIZE, 3), np.uint8)
        blob(a, RED_AT[where], 0, r)
        blob(a, GREEN_AT, 1, g)
        blob(a, BLUE_AT, 2, b)
        p = root / "val" / f
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(p)
    return root


# ------------------------------------------------------------ a small ZFNet on random images

INPUT = 64


def small_zfnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = zfnet(ZFNetConfig(num_classes=3, width=0.125, fc_size=32, norm="none", input_size=INPUT))
    with torch.no_grad():  # larger than the paper's N(0, 1e-2) so deep layers are not all zero
        for p in m.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.normal_(0, 0.05)
    return m.eval()


@pytest.fixture
def noise_data(tmp_path) -> Path:
    """30 images of three sizes and modes (RGB, L, RGBA) in three classes."""
    root = tmp_path / "noise"
    rng = np.random.default_rng(1)
    for i in range(30):
        h, w = [(64, 64), (80, 64), (50, 90)][i % 3]
        a = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255).astype(np.uint8)
        im = Image.fromarray(a).resize((w, h), Image.BILINEAR)
        if i % 5 == 3:
            im = im.convert("L")
        if i % 7 == 4:
            im = im.convert("RGBA")
        p = root / "val" / f"c{i % 3}" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
    return root


def preprocess_reference(path: Path, size: int, mean, std) -> torch.Tensor:
    """The model's input, written independently of the scan's workers."""
    a = np.asarray(resize_crop(load_rgb(path), size), dtype=np.float32) / 255.0
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None]


# ------------------------------------------------------------ reading built indexes

def index_arrays(path) -> dict:
    m = json.loads((Path(path) / "manifest.json").read_text())
    return {role: np.load(Path(path) / f, allow_pickle=False) for role, f in m["arrays"].items()}


def assert_same_index(a, b) -> None:
    A, B = index_arrays(a), index_arrays(b)
    assert A.keys() == B.keys()
    for role in A:
        np.testing.assert_array_equal(A[role], B[role], err_msg=role)
    ma, mb = (json.loads((Path(p) / "manifest.json").read_text()) for p in (a, b))
    for key in ("k", "model", "data", "layers"):
        assert ma[key] == mb[key], key
