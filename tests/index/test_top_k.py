"""The top-k index (issue 4): scan, merge, store, resume, staleness, serving.

Small synthetic PNG data sets in tmp dirs and hand-set or small random models;
no test depends on training or on Imagenette.
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

from deconvlab.data import list_split, load_rgb, resize_crop
from deconvlab.nets import ModelMeta, ZFNetConfig, zfnet
from deconvlab.index import (StaleIndexError, TopK, TopKIndex, argmax_positions, build_index, default_index_path,
                             index_layers, index_status, model_sha256, scan, scan_values, shard_batches)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)

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


def test_known_answer_of_a_hand_set_model(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=3, batch_size=5, workers=0,
                      progress=False)
    idx = TopKIndex.open(out, data_root=handset_data)
    assert (idx.k, idx.layers, idx.split, idx.num_images) == (3, ["conv1", "conv2", "fc8"], "val", 12)
    for (layer, unit), want in EXPECTED.items():
        got = idx.entries(layer, unit)
        assert [e["image_index"] for e in got] == [i for i, _, _ in want], (layer, unit)
        assert [e["position"] for e in got] == [p for _, _, p in want], (layer, unit)
        np.testing.assert_allclose([e["value"] for e in got], [v for _, v, _ in want], rtol=1e-5, atol=1e-7)
        assert [e["rank"] for e in got] == [0, 1, 2]
        for e in got:
            assert e["image_id"] == "val/" + IMAGES[e["image_index"]][0]
            assert e["label"] == e["image_id"].split("/")[1]
            assert idx.image_path(e["image_index"]) == handset_data / e["image_id"]
            import hashlib
            assert e["sha256"] == hashlib.sha256(idx.image_path(e["image_index"]).read_bytes()).hexdigest()[:16]
    # fc entries span the whole input
    assert idx.entries("fc8", 0)[0]["box"] == (0, 0, SIZE, SIZE)


def test_order_is_value_then_image_index_and_builds_are_reproducible(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    a = build_index(net, handset_data, "val", out=tmp_path / "a", k=4, batch_size=5, workers=0, progress=False)
    b = build_index(net, handset_data, "val", out=tmp_path / "b", k=4, batch_size=5, workers=2, progress=False)
    assert_same_index(a, b)  # bit-identical with the same batches, whatever the loader workers
    c = build_index(net, handset_data, "val", out=tmp_path / "c", k=4, batch_size=1, workers=0, progress=False)
    A, C = index_arrays(a), index_arrays(c)  # another batch shape may round differently, no more
    np.testing.assert_array_equal(A["image"], C["image"])
    np.testing.assert_allclose(A["values"], C["values"], rtol=1e-6)
    # a tie: images 0 and 6 both have red 200 (in different places); 0 ranks first
    e = TopKIndex.open(a).entries("conv1", 0)
    assert [x["image_index"] for x in e] == [2, 10, 0, 6] and e[2]["value"] == e[3]["value"]
    assert (e[2]["position"], e[3]["position"]) == ((3, 3), (3, 12))


def test_shards_cover_every_image_once_in_the_one_process_batches():
    for n, bs, world in [(30, 4, 2), (30, 4, 3), (5, 8, 2), (64, 8, 4), (1, 1, 3)]:
        one = shard_batches(n, bs)
        parts = [shard_batches(n, bs, r, world) for r in range(world)]
        assert sorted(b[0] for p in parts for b in p) == [b[0] for b in one]
        assert sorted(tuple(b) for p in parts for b in p) == [tuple(b) for b in one]
        assert sum(len(b) for b in one) == n and [i for b in one for i in b] == list(range(n))


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


# ------------------------------------------------------------ the tracker

def test_tracker_merge_equals_one_pass_and_keeps_distinct_images():
    rng = np.random.default_rng(0)
    units, k, n = 7, 5, 60
    vals = rng.integers(-3, 3, size=(n, units)).astype(np.float32)  # many ties, negatives
    vals[rng.random((n, units)) < 0.1] = -0.0  # equal to 0.0
    vals[3, 2], vals[4, 2], vals[5, 2] = np.nan, -np.inf, np.inf  # NaN ranks as -inf
    pos = rng.integers(0, 9, size=(n, units, 2)).astype(np.int32)
    sha = rng.integers(0, 2**63, size=n, dtype=np.int64).view(np.uint64)
    whole = TopK(units, k)
    for s in range(0, n, 8):
        whole.update(vals[s:s + 8], np.arange(s, min(s + 8, n)), pos[s:s + 8], sha[s:s + 8])
    parts = []
    for r in range(3):  # three "ranks", interleaved shards, fed in one batch each
        t = TopK(units, k)
        ids = np.arange(r, n, 3)
        t.update(vals[ids], ids, pos[ids], sha[ids])
        parts.append(t)
    merged = TopK.merge(parts)
    lazy, asked = TopK(units, k), []  # positions asked for only where an entry is kept
    for s in range(0, n, 8):
        ids = np.arange(s, min(s + 8, n))

        def where(u, b, ids=ids):
            asked.append(len(u))
            return pos[ids[b], u]
        lazy.update(vals[ids], ids, where, sha[ids])
        assert asked[-1] <= units * k
    assert sum(asked) < n * units
    for role in ("values", "image", "position", "sha"):
        np.testing.assert_array_equal(getattr(whole, role), getattr(merged, role), err_msg=role)
        np.testing.assert_array_equal(getattr(whole, role), getattr(lazy, role), err_msg=role)
    # the reference: sort each unit's column by (value desc, index asc) in plain Python
    for u in range(units):
        ref = sorted(range(n), key=lambda i: (-np.nan_to_num(vals[i, u], nan=-np.inf), i))[:k]
        assert whole.image[u].tolist() == ref
        assert len(set(ref)) == k
        np.testing.assert_array_equal(whole.position[u], pos[ref, u])
        np.testing.assert_array_equal(whole.sha[u], sha[ref])


def test_tracker_with_fewer_images_than_k_leaves_empty_slots():
    t = TopK(2, 4)
    t.update(np.array([[1.0, 2.0], [3.0, 0.5]], np.float32), np.array([5, 9]),
             np.zeros((2, 2, 2), np.int32), np.array([1, 2], np.uint64))
    assert t.image.tolist() == [[9, 5, -1, -1], [5, 9, -1, -1]]
    assert np.isneginf(t.values[:, 2:]).all()
    nan = TopK(1, 4)  # NaN ranks as -inf, ties broken by image index, both above an empty slot
    nan.update(np.array([[np.nan], [-np.inf], [1.0]], np.float32), np.array([7, 3, 9]),
               np.zeros((3, 1, 2), np.int32), np.zeros(3, np.uint64))
    assert nan.image.tolist() == [[9, 3, 7, -1]]
    with pytest.raises(ValueError, match="expected activations of 2 units, got 3"):
        t.update(np.zeros((1, 3), np.float32), np.array([1]), np.zeros((1, 3, 2), np.int32), np.zeros(1, np.uint64))
    with pytest.raises(ValueError, match="k: expected a positive"):
        TopK(2, 0)


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


def test_stored_values_equal_a_fresh_forward_pass(noise_data, tmp_path):
    from deconvlab.nets import layer_map
    from deconvlab.nets.registry import IMAGENET_MEAN, IMAGENET_STD

    module = small_zfnet()
    net = as_net(module, INPUT, "small", IMAGENET_MEAN, IMAGENET_STD)
    out = build_index(net, noise_data, "val", out=tmp_path / "idx", k=5, batch_size=7, workers=0, progress=False)
    idx = TopKIndex.open(out, data_root=noise_data)
    assert idx.layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    children = layer_map(module)
    rng = np.random.default_rng(2)
    checked = 0
    for layer in idx.layers:
        units = idx.layer_info(layer)["units"]
        for unit in rng.choice(units, size=min(3, units), replace=False):
            es = idx.entries(layer, int(unit))
            assert len(es) == 5 and len({e["image_index"] for e in es}) == 5
            assert all(a["value"] >= b["value"] for a, b in zip(es, es[1:]))
            e = es[int(rng.integers(0, 5))]
            x = preprocess_reference(idx.image_path(e["image_index"]), INPUT, IMAGENET_MEAN, IMAGENET_STD)
            with torch.no_grad():
                acts = {}
                for name, m in module.named_children():
                    x = m(x)
                    acts[name] = x
            a = acts[children[layer]][0, int(unit)]
            if e["position"] is None:
                assert a.dim() == 0
                fresh, peak = float(a), float(a)
            else:
                y, x_ = e["position"]
                fresh, peak = float(a[y, x_]), float(a.max())
            assert fresh == pytest.approx(e["value"], rel=1e-4, abs=1e-5)
            assert peak == pytest.approx(e["value"], rel=1e-4, abs=1e-5)  # the stored position holds the max
            # the engine's route: Net.preprocess + Net.forward
            b = net.forward(net.preprocess(load_rgb(idx.image_path(e["image_index"])))).activations[layer][0, unit]
            at = b if e["position"] is None else b[e["position"][0], e["position"][1]]
            assert float(at) == pytest.approx(e["value"], rel=1e-4, abs=1e-5)
            checked += 1
    assert checked >= 16


def test_scan_matches_the_plain_forward_and_its_maxima():
    module = small_zfnet()
    layers = index_layers(module, INPUT)
    assert [(L.name, L.kind) for L in layers][:2] == [("conv1", "conv"), ("conv2", "conv")]
    x = torch.randn(4, 3, INPUT, INPUT)
    with torch.no_grad():
        v, pos = scan(module, x, layers)
        acts, h = {}, x
        for name, m in module.named_children():
            h = m(h)
            acts[name] = h
    assert v.shape == (4, sum(L.units for L in layers)) and pos.shape == v.shape + (2,)
    with torch.no_grad():
        v2, maps = scan_values(module, x, layers)
    torch.testing.assert_close(v2, v, rtol=0, atol=0)
    b, u = np.meshgrid(np.arange(4), np.arange(v.shape[1]), indexing="ij")
    np.testing.assert_array_equal(argmax_positions(maps, layers, u.ravel(), b.ravel()).reshape(pos.shape),
                                  pos.numpy())
    for L in layers:
        a = acts[L.child]
        got = v[:, L.offset:L.offset + L.units]
        if L.kind == "conv":
            torch.testing.assert_close(got, a.flatten(2).amax(2), rtol=0, atol=0)
            p = pos[:, L.offset:L.offset + L.units]
            at = a[torch.arange(4)[:, None], torch.arange(L.units)[None], p[..., 0].long(), p[..., 1].long()]
            torch.testing.assert_close(at, got, rtol=0, atol=0)
        else:
            torch.testing.assert_close(got, a, rtol=0, atol=0)
            assert (pos[:, L.offset:L.offset + L.units] == -1).all()


# ------------------------------------------------------------ resume, staleness, bad input

class Killed(Exception):
    pass


def test_a_killed_build_resumes_and_equals_the_uninterrupted_one(noise_data, tmp_path):
    net = as_net(small_zfnet(), INPUT, "small")
    whole = build_index(net, noise_data, "val", out=tmp_path / "whole", k=4, batch_size=4, workers=0,
                        progress=False)

    def kill_at_5(done):
        if done == 5:
            raise Killed()

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        build_index(net, noise_data, "val", out=out, k=4, batch_size=4, workers=0, checkpoint_every=2,
                    progress=False, on_batch=kill_at_5)
    assert not (out / "manifest.json").exists()
    ck = json.loads((out / "partial" / "rank0-of-1.json").read_text())
    assert ck["batches_done"] == 4
    with pytest.raises(FileNotFoundError, match="no top-k index"):
        TopKIndex.open(out)
    seen = []
    build_index(net, noise_data, "val", out=out, k=4, batch_size=4, workers=0, checkpoint_every=2,
                progress=False, on_batch=seen.append)
    assert seen == [5, 6, 7, 8]  # 30 images in batches of 4: the four after the checkpoint
    assert_same_index(whole, out)
    assert not (out / "partial").exists()
    # a checkpoint made with other settings is not used
    with pytest.raises(Killed):
        build_index(net, noise_data, "val", out=out, k=4, batch_size=4, workers=0, checkpoint_every=2,
                    progress=False, on_batch=kill_at_5)
    seen = []
    build_index(net, noise_data, "val", out=out, k=3, batch_size=4, workers=0, progress=False,
                on_batch=seen.append)
    assert seen[0] == 1 and TopKIndex.open(out).k == 3


def test_a_stale_index_is_refused_and_says_why(noise_data, tmp_path):
    module = small_zfnet()
    net = as_net(module, INPUT, "small")
    out = build_index(net, noise_data, "val", out=tmp_path / "idx", k=2, batch_size=16, workers=0,
                      progress=False)
    assert index_status(out, net, noise_data) == "ready"
    TopKIndex.open(out, net=net, data_root=noise_data)

    other = as_net(small_zfnet(seed=1), INPUT, "small")
    with pytest.raises(StaleIndexError, match="the model's weights changed .*sha256 " + model_sha256(module)[:12]):
        TopKIndex.open(out, net=other, data_root=noise_data)
    assert index_status(out, other, noise_data).startswith("stale: the model's weights changed")

    Image.new("RGB", (64, 64), (9, 9, 9)).save(noise_data / "val" / "c0" / "extra.png")
    with pytest.raises(StaleIndexError, match=r"the data-set listing changed .*30 images .* now 31 images"):
        TopKIndex.open(out, net=net, data_root=noise_data)
    with pytest.raises(StaleIndexError, match="weights changed .*; the data-set listing changed"):
        TopKIndex.open(out, net=other, data_root=noise_data)


def test_bad_input_gets_clear_errors(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    with pytest.raises(ValueError, match="k: expected a positive number of entries per unit, got 0"):
        build_index(net, handset_data, "val", out=tmp_path / "x", k=0, workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="no 'test' folder"):
        build_index(net, handset_data, "test", out=tmp_path / "x", workers=0, progress=False)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="expected a folder for the index, got the file"):
        build_index(net, handset_data, "val", out=tmp_path / "afile", workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="no top-k index at"):
        TopKIndex.open(tmp_path / "nothing")
    assert index_status(tmp_path / "nothing") == "missing"

    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=2, workers=0, progress=False)
    idx = TopKIndex.open(out)
    with pytest.raises(KeyError, match=r"unknown layer: expected one of \['conv1', 'conv2', 'fc8'\], got 'conv9'"):
        idx.entries("conv9", 0)
    with pytest.raises(ValueError, match="unit: expected an integer in 0..2 for layer conv1, got 3"):
        idx.entries("conv1", 3)
    with pytest.raises(IndexError, match="image_index: expected an integer in 0..11, got 12"):
        idx.image_path(12)
    with pytest.raises(ValueError, match="open the index with net="):
        idx.patch("conv1", 0, 0)

    # a corrupt image is named, and the folder keeps its last good index
    (handset_data / "val" / "a" / "00.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode data-set image val/a/00.png"):
        build_index(net, handset_data, "val", out=out, k=2, workers=0, progress=False)
    assert (out / "manifest.json").is_file()
    assert index_arrays(out).keys() == {"values", "image", "position", "sha", "images_index", "images_path",
                                        "images_target"}


def test_format_is_documented_npy_and_json(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=3, workers=0, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["format"], m["version"]) == ("deconvlab-top-k", 1)
    assert [(L["name"], L["kind"], L["units"], L["offset"]) for L in m["layers"]] == \
        [("conv1", "conv", 3, 0), ("conv2", "conv", 2, 3), ("fc8", "fc", 2, 5)]
    assert m["data"]["listing_sha256"] == list_split(handset_data, "val").listing_hash()
    a = index_arrays(out)
    assert (a["values"].dtype, a["values"].shape) == (np.float32, (7, 3))
    assert (a["position"].dtype, a["position"].shape) == (np.int32, (7, 3, 2))
    assert a["image"].dtype == np.int64 and a["sha"].dtype == np.uint64
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json"] + list(m["arrays"].values()))
    # a rebuild replaces the arrays of the old build
    build_index(net, handset_data, "val", out=out, k=3, workers=0, progress=False)
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["build_id"] != m["build_id"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json"] + list(m2["arrays"].values()))


def test_default_index_path_is_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))
    p = default_index_path("zfnet-imagenette", tmp_path / "data", "val")
    assert p.parent == tmp_path / "cache" / "index" and p.name.startswith("zfnet-imagenette-val-")
    assert p != default_index_path("zfnet-imagenette", tmp_path / "other", "val")


# ------------------------------------------------------------ patches and projections

def test_patches_are_receptive_field_crops_and_projections_match_net_project(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=3, workers=0, progress=False)
    idx = TopKIndex.open(out, net=net, data_root=handset_data)
    # conv1 is 3x3 with padding 1: the unit at (3, 12) sees rows 2..4, columns 11..13 -- the red blob
    e = idx.entries("conv1", 0)
    assert [x["box"] for x in e] == [(2, 11, 5, 14), (2, 2, 5, 5), (2, 2, 5, 5)]
    assert [x["box"] for x in idx.entries("conv2", 1)] == [(11, 11, 14, 14)] * 3  # 1x1 on top: the same box
    p = idx.patch("conv1", 0, 0)
    assert p.mode == "RGB" and p.size == (3, 3)
    assert (np.asarray(p) == np.array([255, 0, 0], np.uint8)).all()  # image 2's red blob at full strength
    assert np.asarray(idx.patch("conv1", 0, 1))[..., 0].tolist() == [[250] * 3] * 3
    whole = idx.patch("fc8", 1, 0)  # fc units see the whole input
    assert whole.size == (SIZE, SIZE)
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(load_rgb(idx.image_path(11))))

    calls = []
    real = net.project_many
    net.project_many = lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw)
    units = [("conv1", 0), ("conv2", 0), ("fc8", 1)]
    got = {(layer, unit, x["rank"]): idx.projection(layer, unit, x["rank"])
           for layer, unit in units for x in idx.entries(layer, unit)}
    assert calls == [3, 3, 3]  # one batch per unit: all k entries at once, then cached
    net.project_many = real
    for layer, unit in units:
        for x in idx.entries(layer, unit):
            q = got[layer, unit, x["rank"]]
            t, l, b, r = x["box"]
            assert q.dtype == np.float32 and q.shape == (3, b - t, r - l)
            # the independent route: one image, Net.project at the stored position, cropped to the box
            rec = net.forward(net.preprocess(load_rgb(idx.image_path(x["image_index"]))))
            ref = net.project(rec, layer, unit, position=x["position"]).numpy()
            np.testing.assert_allclose(q, ref[:, t:b, l:r], rtol=1e-5, atol=1e-6)
            assert np.abs(ref).sum() == pytest.approx(np.abs(q).sum(), rel=1e-5)  # nothing outside the box
            assert np.abs(q).max() > 0
    net.project_many = lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw)
    assert len(idx.projections("conv1", 0)) == 3 and calls == [3, 3, 3]
    # the whole atlas, two units per batch, equals the per-unit route
    atlas = list(idx.iter_projections(units_per_batch=2))
    assert [(layer, u) for layer, u, _ in atlas] == [("conv1", 0), ("conv1", 1), ("conv1", 2), ("conv2", 0),
                                                      ("conv2", 1), ("fc8", 0), ("fc8", 1)]
    assert calls[3:] == [6, 3, 6, 6]
    for layer, u, ps in atlas:
        for rank, q in enumerate(ps):
            np.testing.assert_allclose(q, idx.projection(layer, u, rank), rtol=1e-5, atol=1e-6)


def test_the_unit_cache_is_bounded(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=3, workers=0, progress=False)
    idx = TopKIndex.open(out, net=net, data_root=handset_data, cache_bytes=3000)
    for unit in range(3):
        idx.projection("conv1", unit, 0)
        idx.patch("fc8", unit % 2, 0)
        assert idx.cache.bytes <= 3000 or len(idx.cache) == 1
    assert len(idx.cache) < 6
    with pytest.raises(ValueError, match="rank: expected an integer in 0..2, got 3"):
        idx.patch("conv1", 0, 3)
    with pytest.raises(ValueError, match="unit: expected an integer in 0..1 for layer fc8, got -1"):
        idx.projection("fc8", -1, 0)


# ------------------------------------------------------------ torchrun, two ranks

def _cli(*args) -> list[str]:
    import sys
    return [sys.executable, "-m", "deconvlab.cli", "index", *args]


def test_two_ranks_under_torchrun_equal_one_process(noise_data, tmp_path):
    import os
    import subprocess
    import sys

    from deconvlab.nets import save_checkpoint

    cfg = ZFNetConfig(num_classes=3, width=0.125, fc_size=32, norm="none", input_size=INPUT)
    ck = save_checkpoint(tmp_path / "small.safetensors", small_zfnet(),
                         ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=["a", "b", "c"], input_size=INPUT))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DECONVLAB_CACHE=str(tmp_path / "cache"))
    common = ["--model", str(ck), "--data", str(noise_data), "--split", "val", "--k", "4", "--batch-size", "7",
              "--workers", "0", "--threads", "1", "--no-progress"]
    one = subprocess.run(_cli(*common, "--out", str(tmp_path / "one")), env=env, capture_output=True, text=True,
                         timeout=120)
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "deconvlab.cli", "index",
                          *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout.strip().splitlines()[-1])
    assert (summary["world_size"], summary["num_images"], summary["k"]) == (2, 30, 4)
    assert_same_index(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two" / "partial").exists()


def test_open_or_build_builds_once_then_opens_and_rebuilds_when_stale(handset_data, tmp_path, monkeypatch):
    from deconvlab.index import serve

    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))
    net = as_net(handset_model(), SIZE, "handset")
    builds = []
    real = serve.build_index
    monkeypatch.setattr(serve, "build_index", lambda *a, **kw: builds.append(1) or real(*a, **kw))
    idx = serve.open_or_build(net, handset_data, "val", k=3, workers=0, progress=False)
    assert idx.path == default_index_path("handset", handset_data, "val") and builds == [1]
    assert [e["image_index"] for e in idx.entries("conv1", 0)] == [2, 10, 0]
    serve.open_or_build(net, handset_data, "val", k=3, workers=0, progress=False)
    assert builds == [1]  # fresh: opened, not rebuilt
    with torch.no_grad():
        net.module.conv1.weight[0] *= -1  # the red detector now prefers green and blue
    with pytest.raises(StaleIndexError, match="weights changed"):
        serve.open_or_build(net, handset_data, "val", k=3, rebuild_stale=False)
    idx = serve.open_or_build(net, handset_data, "val", k=3, workers=0, progress=False)
    assert builds == [1, 1] and [e["image_index"] for e in idx.entries("conv1", 0)][:1] == [4]


# ------------------------------------------------------------ smoke: the trained model on real images

def test_smoke_trained_model_on_a_few_imagenette_images(tmp_path):
    """fc8 units are class scores: each one's top image is, nearly always, of its class."""
    import os

    from deconvlab.nets import read_registry

    data = Path(os.environ.get("DECONVLAB_DATA", "/work/shared/data/imagenette"))
    if "zfnet-imagenette" not in read_registry()["models"] or not (data / "val").is_dir():
        pytest.skip("needs the trained zfnet-imagenette and Imagenette (DECONVLAB_DATA)")
    import deconvlab

    net = deconvlab.load("zfnet-imagenette", device="cpu")
    root = tmp_path / "few"
    for c in sorted((data / "val").iterdir()):
        for f in sorted(c.iterdir())[:3]:  # three images per class, linked, not copied
            (root / "val" / c.name).mkdir(parents=True, exist_ok=True)
            (root / "val" / c.name / f.name).symlink_to(f)
    out = build_index(net, root, "val", out=tmp_path / "idx", k=3, batch_size=16, workers=0, progress=False)
    idx = TopKIndex.open(out, net=net, data_root=root)
    hits = sum(idx.entries("fc8", u)[0]["label"] == net.meta.classes[u] for u in range(10))
    assert hits >= 9, hits
    e = idx.entries("conv5", 7)[0]
    t, l, b, r = e["box"]
    assert idx.patch("conv5", 7, 0).size == (r - l, b - t)
    assert idx.projection("conv5", 7, 0).shape == (3, b - t, r - l)
