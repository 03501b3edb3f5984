"""The index on disk (index/store.py): the documented format, staleness, the default path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deconvlab.data import list_split
from deconvlab.index import StaleIndexError, TopKIndex, build_index, default_index_path, index_status, model_sha256
from index_helpers import INPUT, SIZE, as_net, handset_data, handset_model, index_arrays, noise_data, small_zfnet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)


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
