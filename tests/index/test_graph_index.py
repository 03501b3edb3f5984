"""The top-k index of graph-engine nets (issue 13): torchvision's resnet18 against a brute-force scan,
the layer rule, the streaming scan (values dropped after their last reader), the hook fallback of an
untraceable model, and a paper model on both engines.

resnet18 with weights=None (seeded), 64 px inputs, torchvision's widths; 240 synthetic images.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from deconvlab.index import TopKIndex, build_index, index_layers, model_sha256, scan, shard_batches
from deconvlab.index.scan_graph import OUTPUT, stream
from deconvlab.net import Net
from deconvlab.nets import ModelMeta
from index_helpers import INPUT, preprocess_reference, small_zfnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)

N_IMAGES, BATCH, K = 240, 48, 5


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return Net.from_module(torchvision.models.resnet18(weights=None, num_classes=10), input_size=INPUT,
                           name="resnet18-test")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """240 smooth random images of three sizes in four classes (an ImageFolder)."""
    root = tmp_path_factory.mktemp("graph-index")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        h, w = [(64, 64), (72, 64), (60, 90)][i % 3]
        a = (rng.random((h // 6 + 1, w // 6 + 1, 3)) * 255).astype(np.uint8)
        p = root / "val" / f"c{i % 4}" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).resize((w, h), Image.BILINEAR).save(p)
    return root


def brute_force(net: Net, root: Path, layers, files: list[str]):
    """Every image through ``net.forward`` (the engine's full record), each unit's max and its first
    argmax (row-major), then the top-K per unit by (value desc, image index asc)."""
    values, positions = [], []
    for batch in shard_batches(len(files), BATCH):
        x = torch.cat([preprocess_reference(root / files[i], INPUT, net.meta.mean, net.meta.std) for i in batch])
        rec = net.forward(x)
        v, p = [], []
        for L in layers:
            a = net.activation(rec, L.name)
            if a.dim() == 4:
                flat = a.flatten(2)
                v.append(flat.amax(2))
                i = flat.argmax(2)
                p.append(torch.stack((i // a.shape[-1], i % a.shape[-1]), 2))
            else:
                v.append(a)
                p.append(torch.full(a.shape + (2,), -1))
        values.append(torch.cat(v, 1))
        positions.append(torch.cat(p, 1))
    values, positions = torch.cat(values).numpy(), torch.cat(positions).numpy()  # [N, U], [N, U, 2]
    n = values.shape[0]
    top = np.stack([np.lexsort((np.arange(n), -values[:, u]))[:K] for u in range(values.shape[1])])
    return top, np.take_along_axis(values.T, top, 1), positions.transpose(1, 0, 2)[np.arange(len(top))[:, None], top]


def test_resnet18_index_matches_a_brute_force_scan(resnet, images, tmp_path):
    out = build_index(resnet, images, "val", out=tmp_path / "idx", k=K, batch_size=BATCH, workers=0,
                      progress=False)
    idx = TopKIndex.open(out, net=resnet, data_root=images)
    layers = index_layers(resnet)
    assert idx.layers == [L.name for L in layers] and idx.num_images == N_IMAGES
    files = [idx.image_id(i) for i in range(N_IMAGES)]
    top, vals, pos = brute_force(resnet, images, layers, files)
    got = {role: np.load(out / f) for role, f in idx.manifest["arrays"].items()}
    np.testing.assert_array_equal(got["image"], top)
    np.testing.assert_allclose(got["values"], vals, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["position"], pos)
    # entries, patches: the receptive field of the stored position, an alias names the same rows
    e = idx.entries("layer2.1", 3)[0]
    assert e["box"] == resnet.receptive_field("layer2.1", *e["position"])
    assert idx.entries("layer2.1.relu_1", 3) == idx.entries("layer2.1", 3)
    assert idx.patch("layer2.1", 3, 0).size == (e["box"][3] - e["box"][1], e["box"][2] - e["box"][0])
    assert idx.manifest["model"]["sha256"] == model_sha256(resnet.module) == model_sha256(resnet)


def test_the_layer_rule_on_resnet18(resnet):
    layers = index_layers(resnet)
    names = [L.name for L in layers]
    blocks = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert names[:2] == ["relu", "maxpool"] and names[-2:] == ["flatten", "fc"]
    assert set(blocks + [b + ".relu" for b in blocks]) <= set(names) and len(names) == 20
    for gone in ("conv1", "bn1", "layer1.0.bn2", "layer1.0.add", "layer2.0.downsample.1", "avgpool"):
        resnet.check_layer(gone)  # a layer of the net, left to the op that reads it
        assert gone not in names
    nodes = [L.child for L in layers]
    assert len(set(nodes)) == len(nodes)  # one name per node
    assert sum(L.units for L in layers) == layers[-1].offset + 10


def test_the_stream_drops_values_after_their_last_reader(resnet):
    layers = index_layers(resnet)
    x = torch.randn(2, 3, INPUT, INPUT)
    refs = {}
    with torch.inference_mode():
        for node, a in stream(resnet, x, {L.child for L in layers} | {OUTPUT}):
            refs[node] = weakref.ref(a)
            del a
            if node == "layer3_0_relu_1":
                gc.collect()
                dead = [n for n, r in refs.items() if r() is None]
        rec = resnet.forward(x)
    # layer1.* and layer2.0 are read by nothing after layer3.0: freed (kept, with the engine's forward)
    assert {"relu", "maxpool", "layer1_0_relu_1", "layer2_0_relu"} <= set(dead)
    assert "layer3_0_relu_1" not in dead and "layer2_1_relu_1" in dead
    with torch.inference_mode():
        v, _ = scan(resnet, x, layers)
        last = dict(stream(resnet, x, {OUTPUT}))[OUTPUT]
    torch.testing.assert_close(last, rec.logits, rtol=0, atol=0)
    L = layers[-1]
    torch.testing.assert_close(v[:, L.offset:], rec.logits, rtol=0, atol=0)


class Branchy(nn.Module):
    """fx cannot trace this (``if`` on a value): module-path layers through forward hooks."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        if h.mean() > 0:
            h = h * 1.0
        return self.fc(self.pool(self.block(h)).flatten(1))


def test_an_untraceable_model_scans_through_hooks():
    torch.manual_seed(1)
    net = Net.from_module(Branchy().eval(), input_size=20)
    assert net.untraceable
    layers = index_layers(net)
    assert "bn" not in [L.name for L in layers] and {"conv1", "block", "fc"} <= {L.name for L in layers}
    x = torch.randn(3, 3, 20, 20)
    with torch.inference_mode():
        v, pos = scan(net, x, layers)
        rec = net.forward(x)
    for L in layers:
        a = net.activation(rec, L.name)
        want = a.flatten(2).amax(2) if a.dim() == 4 else a
        torch.testing.assert_close(v[:, L.offset:L.offset + L.units], want, rtol=0, atol=0)


def test_a_paper_model_indexes_alike_on_both_engines():
    module = small_zfnet()
    meta = ModelMeta(arch="test", input_size=INPUT, name="z")
    seq, graph = Net(module, meta), Net(small_zfnet(), meta, engine="graph")
    a, b = index_layers(seq), index_layers(graph)
    assert [(L.name, L.units, L.shape) for L in a] == [(L.name, L.units, tuple(L.shape)) for L in b]
    x = torch.randn(3, 3, INPUT, INPUT)
    with torch.inference_mode():
        va, pa = scan(seq, x, a)
        vb, pb = scan(graph, x, b)
    torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pa.numpy(), pb.numpy())


class WithExtra(nn.Module):
    """A bfloat16 weight and non-tensor extra state in the state dict."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
        self.tag = "v1"

    def get_extra_state(self):
        return {"tag": self.tag}

    def set_extra_state(self, state):
        self.tag = state["tag"]


def test_model_sha256_of_any_module():
    m = WithExtra()
    a = model_sha256(m)
    assert a == model_sha256(WithExtra()) and len(a) == 64
    m.tag = "v2"
    b = model_sha256(m)
    with torch.no_grad():
        m.w[1] = 2
    assert len({a, b, model_sha256(m)}) == 3
    with pytest.raises(TypeError, match="expected an nn.Module or a Net, got int"):
        model_sha256(3)


class Gray(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)
        self.f = nn.Linear(4, 2)

    def forward(self, x):
        return self.f(torch.relu(self.c(x)).amax((2, 3)))


def test_a_one_channel_model_indexes_what_net_preprocess_gives(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(12):
        p = tmp_path / "data" / "val" / f"c{i % 2}" / f"{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(p)
    torch.manual_seed(4)
    net = Net.from_module(Gray(), input_size=16, mean=(0.4,), std=(0.2,))
    out = build_index(net, tmp_path / "data", "val", out=tmp_path / "idx", k=3, batch_size=5, workers=0,
                      progress=False)
    idx = TopKIndex.open(out, net=net, data_root=tmp_path / "data")
    assert idx.layers == ["relu", "amax", "f"]  # the conv is read only by its ReLU
    x = torch.cat([net.preprocess(Image.open(idx.image_path(i))) for i in range(12)])
    a = net.activation(net.forward(x), "relu").flatten(2).amax(2)  # (12, 4)
    for u in range(4):
        want = np.lexsort((np.arange(12), -a[:, u].numpy()))[:3]
        assert [e["image_index"] for e in idx.entries("relu", u)] == want.tolist()
        np.testing.assert_allclose([e["value"] for e in idx.entries("relu", u)], a[want, u].numpy(), rtol=1e-5)
