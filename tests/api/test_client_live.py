"""``deconvlab.client.Client`` against a live ``deconvlab serve`` (uvicorn) on 127.0.0.1."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from deconvlab.client import ApiError, Client
from deconvlab.analyses.occlusion import occlusion
from deconvlab.index import build_index, default_index_path
from conftest import live_server
from test_api_top import MODEL, make_dataset


@pytest.fixture(scope="module")
def server(small_models_dir, small_net, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    data = make_dataset(tmp / "data")
    env = {**os.environ, "DECONVLAB_MODELS": str(small_models_dir), "DECONVLAB_DATA": str(data),
           "DECONVLAB_DATA_DIR": str(tmp / "state"), "DECONVLAB_CACHE": str(tmp / "cache"),
           "DECONVLAB_DEVICE": "cpu", "DECONVLAB_INDEX_SPLIT": "val", "OMP_NUM_THREADS": "1"}
    old = os.environ.get("DECONVLAB_CACHE")
    os.environ["DECONVLAB_CACHE"] = env["DECONVLAB_CACHE"]
    try:
        build_index(small_net, data, "val", out=default_index_path(MODEL, data, "val"), k=3, batch_size=8,
                    workers=0, progress=False)
    finally:
        if old is None:
            os.environ.pop("DECONVLAB_CACHE")
        else:
            os.environ["DECONVLAB_CACHE"] = old
    with live_server(env, tmp, timeout=120) as url:
        client = Client(url, timeout=60)
        try:
            yield client, data
        finally:
            client.close()


def test_live_round_trip(server, sample_image, small_net, small_record, tmp_path):
    c, data = server
    assert c.ready() == {"ready": True, "models": {MODEL: True}, "index": {MODEL: "ready"}}
    assert c.models()["default"] == MODEL
    path = tmp_path / "sample.png"
    sample_image.save(path)
    img = c.upload(path)
    assert img["width"] == 256 and c.upload(path.read_bytes())["image_id"] == img["image_id"]
    iid = img["image_id"]
    assert c.image(iid) == img
    assert Image.open(io.BytesIO(c.input_png(iid))).size == (224, 224)
    preds = c.predictions(iid, k=2)["predictions"]
    assert preds[0]["class_index"] == int(small_record.probabilities()[0].argmax())
    assert len(c.layer(iid, "conv1")["units"]) == 24
    u = c.unit(iid, "conv5", 4)
    arr, box = c.projection(iid, "conv5", 4, format="npy", with_box=True)
    np.testing.assert_allclose(arr, small_net.project(small_record, "conv5", 4).numpy(), rtol=1e-5, atol=1e-7)
    assert list(box) == u["box"]
    assert c.projection(iid, "conv5", 4, method="guided", position=(1, 1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(c.map_png(iid, "conv5", 4, size=40))).size == (40, 40)
    occ = c.occlusion(iid, size=112, stride=56, layer="conv3")
    want = occlusion(small_net, small_net.preprocess(sample_image), 112, 56, "conv3")
    np.testing.assert_allclose(occ["probability"], want.probability, atol=1e-6)
    assert c.occlusion_png(occ["occlusion_id"], "top_class")[:4] == b"\x89PNG"
    assert c.get(occ["urls"]["activation"])[:4] == b"\x89PNG"
    assert c.filters_png()[:4] == b"\x89PNG"
    top = c.top("conv4", 9)
    assert len(top["entries"]) == 3
    e = top["entries"][0]
    assert c.get(e["patch_url"]) == c.top_patch_png("conv4", 9, 0)
    assert c.top_projection_png("conv4", 9, 0)[:4] == b"\x89PNG"
    assert c.dataset_image(e["image_index"]) == (data / e["image_id"]).read_bytes()
    assert len(c.samples(n=3)["samples"]) == 3


def test_live_errors_carry_the_servers_detail(server, sample_image):
    c, _ = server
    with pytest.raises(ApiError) as e:
        c.predictions("0123456789abcdef01234567")
    assert e.value.status == 404 and e.value.detail == (
        "unknown image: '0123456789abcdef01234567' (upload it with POST /api/images)")
    with pytest.raises(ApiError) as e:
        c.upload(b"GIF89a\x10\x00\x10\x00" + b"\x00" * 7, filename="x.gif")
    assert e.value.status == 422 and e.value.detail.startswith("not an image")
    with pytest.raises(ApiError) as e:
        c.upload(b"")
    assert e.value.status == 422 and "0 bytes" in str(e.value)
    iid = c.upload(_png(sample_image))["image_id"]
    with pytest.raises(ApiError) as e:
        c.occlusion(iid, size=4, stride=1)
    assert e.value.status == 422 and "the budget is 4096" in e.value.detail
    with pytest.raises(ApiError) as e:
        c.top("conv4", 9, k=5)
    assert e.value.status == 422 and e.value.detail.startswith("k: expected 1..3")
    assert c.health() == {"status": "ok"}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
