"""Serving the index (index/serve.py): patches, projections against Net.project, the cache, open_or_build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deconvlab.data import load_rgb
from deconvlab.index import StaleIndexError, TopKIndex, build_index, default_index_path
from index_helpers import SIZE, as_net, handset_data, handset_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)


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


@pytest.mark.slow
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
