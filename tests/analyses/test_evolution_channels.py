"""Feature evolution (Fig. 4) of a one-channel graph net: the images reach the snapshots as
``Net.preprocess`` makes them (luminance, the model's one mean/std), the scan agrees with a
brute-force pass through ``net.forward``, and each snapshot's projection has one channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvlab.analyses.evolution import Evolution, image_loader, normalise, projection_crop
from deconvlab.data import list_split
from deconvlab.net import Net
from deconvlab.nets import ModelMeta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, N = 24, 9
MEAN, STD = (0.45,), (0.2,)


class Gray(nn.Module):
    """A residual one-channel CNN (not a flat Sequential: the graph engine)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))

    def forward(self, x):
        y = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.relu(y + self.conv2(y)))


def snapshot(seed: int) -> Net:
    torch.manual_seed(seed)
    meta = ModelMeta(arch="custom", config={"in_channels": 1}, classes=["a", "b"], input_size=SIZE,
                     name="gray", mean=MEAN, std=STD)
    return Net(Gray().eval(), meta)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(1)
    for i in range(N):
        p = root / "val" / f"c{i % 2}" / f"{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)).resize((30, 26)).save(p)
    return list_split(root, "val")


def test_one_channel_images_are_read_as_preprocess_reads_them(split):
    net = snapshot(0)
    x = image_loader(split, SIZE, MEAN, STD)(np.arange(N))
    assert x.shape == (N, 1, SIZE, SIZE)
    for i in (0, N // 2, N - 1):
        with Image.open(split.path(i)) as im:
            ref = net.preprocess(im)[0]
        assert torch.allclose(x[i], ref, atol=1e-6), i


def test_normalise_refuses_a_mean_of_the_wrong_length():
    images = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    assert normalise(images, (0.5, 0.5, 0.5), (1, 1, 1)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="expected one value per input channel"):
        normalise(images, (0.5, 0.5), (1, 1))
    with pytest.raises(ValueError, match="expected one value per input channel"):
        normalise(images, (0.5,), (1, 1, 1))


def test_two_one_channel_snapshots_scan_like_a_brute_force_and_project(split):
    nets = [(1, snapshot(0)), (3, snapshot(1))]
    ev = Evolution(nets, np.arange(N), image_loader(split, SIZE, MEAN, STD), batch_size=4).scan()
    x = ev.load(ev.image_indices)
    layer = "relu_1"  # the residual block's rectified output (an index layer)
    for epoch, net in nets:
        a = net.activation(net.forward(x), layer)
        per_image = a.flatten(2).amax(2)
        best = per_image.argmax(0)
        for u in (0, 5):
            value, row, pos = ev.scans[epoch].strongest(layer, u)
            assert row == int(best[u]) and pos == divmod(int(a[row, u].flatten().argmax()), a.shape[-1])
            assert value == pytest.approx(float(per_image[row, u]), rel=1e-5, abs=1e-6)
        p = ev.projection(layer, 5, epoch)
        assert p.shape == (1, SIZE, SIZE) and np.abs(p).max() > 0
        step = ev.unit(layer, 5)[[e for e, _ in nets].index(epoch)]
        assert projection_crop(p, step.box, size=32).size[0] == 32
