"""Every route of the REST API (api/README.md): success, 404 and 422, checked against the library."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from deconvlab.api import Settings, create_app
from deconvlab.data import resize_crop, to_rgb
from deconvlab.analyses.occlusion import occlusion


def png_of(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(small_models_dir, tmp_path_factory):
    settings = Settings(models=str(small_models_dir), data_dir=str(tmp_path_factory.mktemp("state")),
                        data="", device="cpu", frontend_dir=str(tmp_path_factory.mktemp("no-frontend")))
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client, sample_image):
    r = client.post("/api/images", files={"file": ("sample.png", png_of(sample_image), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["image_id"]


def state_of(client):
    return client.app.state.deconvlab


# ------------------------------------------------------------------ system

def test_health_ready_models(client, small_net):
    from deconvlab.engine import sparse_step

    assert sparse_step.ENABLED, "the start-up compile of the sparse step failed: the server fell back to dense"
    assert client.get("/api/health").json() == {"status": "ok"}
    assert client.get("/api/ready").json() == {"ready": True, "models": {"zfnet-imagenette": True},
                                               "index": {"zfnet-imagenette": "no data set"}}
    m = client.get("/api/models").json()
    assert m["default"] == "zfnet-imagenette"
    (info,) = m["models"]
    assert info["id"] == "zfnet-imagenette" and info["arch"] == "zfnet" and info["input_size"] == 224
    assert info["classes"] == small_net.meta.classes
    assert info["layers"] == [{**d, "shape": list(d["shape"])} for d in small_net.layer_info()]
    assert [d["name"] for d in info["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def test_docs_work_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assert "https://" not in r.text and "http://" not in r.text  # no CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-static/{asset}" in r.text
        a = client.get(f"/docs-static/{asset}")
        assert a.status_code == 200 and len(a.content) > 10_000
    spec = client.get("/openapi.json").json()
    assert "/api/images/{image_id}/occlusion" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/api/images"]["post"]["requestBody"]["content"]


def test_no_frontend_no_root(client):
    assert client.get("/").status_code == 404


def test_frontend_served_at_root(small_models_dir, tmp_path):
    front = tmp_path / "front"
    front.mkdir()
    (front / "index.html").write_text("<!doctype html><title>deconvlab</title>")
    s = Settings(models=str(small_models_dir), data_dir=str(tmp_path / "state"), frontend_dir=str(front))
    with TestClient(create_app(s)) as c:
        r = c.get("/")
        assert r.status_code == 200 and "<title>deconvlab</title>" in r.text
        assert c.get("/api/health").json() == {"status": "ok"}


# ------------------------------------------------------------------ images

def test_upload_is_content_addressed(client, sample_image, image_id):
    data = png_of(sample_image)
    r = client.post("/api/images", files={"file": ("again.png", data, "image/png")})
    assert r.status_code == 201 and r.json() == {"image_id": image_id, "width": 256, "height": 200}
    assert client.get(f"/api/images/{image_id}").json() == r.json()
    other = client.post("/api/images", files={"file": ("b.png", png_of(sample_image.rotate(90)), "image/png")})
    assert other.json()["image_id"] != image_id


def test_unknown_image_and_model_are_404_naming_them(client, image_id):
    r = client.get("/api/images/0123456789abcdef01234567/predictions")
    assert r.status_code == 404 and "0123456789abcdef01234567" in r.json()["detail"]
    r = client.get("/api/images/../../etc/passwd")
    assert r.status_code == 404
    r = client.get(f"/api/images/{image_id}/predictions", params={"model": "vgg99"})
    assert r.status_code == 404 and r.json()["detail"] == "unknown model: 'vgg99' (expected one of zfnet-imagenette)"


def test_input_png_is_the_models_view(client, image_id, sample_image):
    r = client.get(f"/api/images/{image_id}/input.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    want = np.asarray(resize_crop(to_rgb(sample_image), 224))
    np.testing.assert_array_equal(got, want)


def test_predictions_equal_the_library(client, image_id, small_record, small_net):
    r = client.get(f"/api/images/{image_id}/predictions", params={"k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["image_id"] == image_id and body["model"] == "zfnet-imagenette"
    p = small_record.probabilities()[0]
    v, i = p.topk(3)
    assert [e["class_index"] for e in body["predictions"]] == i.tolist()
    np.testing.assert_allclose([e["probability"] for e in body["predictions"]], v.tolist(), rtol=1e-5)
    assert [e["label"] for e in body["predictions"]] == [small_net.meta.classes[c] for c in i.tolist()]
    for k, msg in [(0, "k: expected 1..10, got 0"), (11, "k: expected 1..10, got 11")]:
        r = client.get(f"/api/images/{image_id}/predictions", params={"k": k})
        assert r.status_code == 422 and r.json()["detail"] == msg
    r = client.get(f"/api/images/{image_id}/predictions", params={"k": "many"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and r.json()["detail"].startswith("k:")


def test_layer_summary(client, image_id, small_record):
    body = client.get(f"/api/images/{image_id}/layers/conv2").json()
    a = small_record.activations["conv2"][0]
    assert body["kind"] == "conv" and body["shape"] == list(a.shape) and len(body["units"]) == a.shape[0]
    for u in (0, 5, a.shape[0] - 1):
        e = body["units"][u]
        assert e["unit"] == u
        assert e["max"] == pytest.approx(float(a[u].max()), rel=1e-6)
        assert e["mean"] == pytest.approx(float(a[u].mean()), rel=1e-5, abs=1e-7)
        y, x = e["argmax"]
        assert float(a[u, y, x]) == pytest.approx(float(a[u].max()), rel=1e-6)
    fc = client.get(f"/api/images/{image_id}/layers/fc7").json()
    assert fc["kind"] == "fc" and fc["shape"] == [128] and all(e["argmax"] is None for e in fc["units"])
    r = client.get(f"/api/images/{image_id}/layers/conv9")
    assert r.status_code == 404 and r.json()["detail"].startswith("unknown layer: 'conv9'")


def test_unit_detail_box_is_the_receptive_field(client, image_id, small_net, small_record):
    body = client.get(f"/api/images/{image_id}/layers/conv4/units/7").json()
    a = small_record.activations["conv4"][0, 7]
    y, x = divmod(int(a.flatten().argmax()), a.shape[1])
    assert body["position"] == [y, x] and body["max"] == pytest.approx(float(a.max()), rel=1e-6)
    assert body["box"] == list(small_net.receptive_field("conv4", y, x))
    assert body["map_url"].endswith("/layers/conv4/units/7/map.png?model=zfnet-imagenette")
    assert client.get(body["projection_url"]).status_code == 200
    fc = client.get(f"/api/images/{image_id}/layers/fc6/units/2").json()
    assert fc["position"] is None and fc["box"] == [0, 0, 224, 224]
    r = client.get(f"/api/images/{image_id}/layers/conv4/units/96")
    assert r.status_code == 422 and r.json()["detail"] == "unit: expected 0..95 for layer conv4, got 96"
    assert client.get(f"/api/images/{image_id}/layers/conv4/units/-1").status_code == 422
    assert client.get(f"/api/images/{image_id}/layers/pool9/units/1").status_code == 404


def test_feature_map_png(client, image_id):
    r = client.get(f"/api/images/{image_id}/layers/conv5/units/3/map.png", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (64, 64) and im.mode == "RGB"
    assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 2  # a map, not a flat square
    assert Image.open(io.BytesIO(client.get(f"/api/images/{image_id}/layers/conv5/units/3/map.png").content)).size \
        == (112, 112)
    r = client.get(f"/api/images/{image_id}/layers/conv5/units/3/map.png", params={"size": 4})
    assert r.status_code == 422 and r.json()["detail"] == "size: expected 8..1024 pixels, got 4"
    assert client.get(f"/api/images/{image_id}/layers/conv5/units/999/map.png").status_code == 422


@pytest.mark.parametrize("method,seed", [("deconv", "point"), ("guided", "map"), ("backprop", "point")])
def test_projection_npy_equals_the_library(client, image_id, small_net, small_record, method, seed):
    url = f"/api/images/{image_id}/layers/conv3/units/11/projection"
    r = client.get(url, params={"method": method, "seed": seed, "format": "npy"})
    assert r.status_code == 200
    got = np.load(io.BytesIO(r.content), allow_pickle=False)
    want = small_net.project(small_record, "conv3", 11, method=method, seed=seed).numpy()
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    assert np.abs(got).max() > 0
    if seed == "point":
        a = small_record.activations["conv3"][0, 11]
        y, x = divmod(int(a.flatten().argmax()), a.shape[1])
        assert r.headers["X-Receptive-Field"] == ",".join(map(str, small_net.receptive_field("conv3", y, x)))
    else:
        assert "X-Receptive-Field" not in r.headers


def test_projection_png_and_position(client, image_id, small_net, small_record):
    url = f"/api/images/{image_id}/layers/conv3/units/11/projection"
    r = client.get(url, params={"y": 2, "x": 9})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["X-Receptive-Field"] == ",".join(map(str, small_net.receptive_field("conv3", 2, 9)))
    im = np.asarray(Image.open(io.BytesIO(r.content)))
    assert im.shape == (224, 224, 3) and im.dtype == np.uint8
    t, l, b, rr = small_net.receptive_field("conv3", 2, 9)
    outside = np.ones((224, 224), bool)
    outside[t:b, l:rr] = False
    assert len(np.unique(im[outside].reshape(-1, 3), axis=0)) == 1  # one grey outside the receptive field
    npy = np.load(io.BytesIO(client.get(url, params={"y": 2, "x": 9, "format": "npy"}).content))
    want = small_net.project(small_record, "conv3", 11, position=(2, 9)).numpy()
    np.testing.assert_allclose(npy, want, rtol=1e-5, atol=1e-7)
    for params, status, needle in [
            ({"y": 2}, 422, "position: expected both y and x, or neither, got y=2, x=None"),
            ({"y": 2, "x": 13}, 422, "position: expected y in 0..12 and x in 0..12 for layer conv3, got (2, 13)"),
            ({"y": 2, "x": 3, "seed": "map"}, 422, "position"),
            ({"method": "lrp"}, 422, "method:"),
            ({"format": "jpeg"}, 422, "format:")]:
        r = client.get(url, params=params)
        assert r.status_code == status and needle in r.json()["detail"], (params, r.text)
    fc = client.get(f"/api/images/{image_id}/layers/fc6/units/2/projection", params={"format": "npy"})
    assert fc.status_code == 200 and fc.headers["X-Receptive-Field"] == "0,0,224,224"


# ------------------------------------------------------------------ occlusion

def test_occlusion_equals_the_library(client, image_id, small_net, sample_image):
    body = {"size": 56, "stride": 42, "layer": "conv5", "class_index": None}
    r = client.post(f"/api/images/{image_id}/occlusion", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    want = occlusion(small_net, small_net.preprocess(sample_image), 56, 42, "conv5")
    assert got["grid"] == [5, 5] and got["feature_map"] == want.feature_map
    assert got["class_index"] == want.class_index
    assert got["class_label"] == small_net.meta.classes[want.class_index]
    np.testing.assert_allclose(got["activation"], want.activation, rtol=1e-5)
    np.testing.assert_allclose(got["probability"], want.probability, atol=1e-6)
    assert got["top_class"] == want.top_class.tolist()
    assert set(got["top_class_labels"]) == {str(c) for c in np.unique(want.top_class)}
    for kind, url in got["urls"].items():
        p = client.get(url)
        assert p.status_code == 200 and p.headers["content-type"] == "image/png", kind
        assert Image.open(io.BytesIO(p.content)).size[0] >= 4
    again = client.post(f"/api/images/{image_id}/occlusion", json=body).json()  # answered from the stored result
    assert again == got
    chosen = client.post(f"/api/images/{image_id}/occlusion", json={**body, "class_index": 3}).json()
    assert chosen["class_index"] == 3 and chosen["occlusion_id"] != got["occlusion_id"]


def test_occlusion_errors(client, image_id):
    url = f"/api/images/{image_id}/occlusion"
    for body, status, detail in [
            ({"size": 8, "stride": 1, "layer": "conv5"}, 422,
             "occlusion with size 8 and stride 1 needs 47090 forward passes; the budget is 4096 "
             "(use a larger stride or square)"),
            ({"size": 0, "stride": 8, "layer": "conv5"}, 422, None),
            ({"size": 32, "stride": 300, "layer": "conv5"}, 422, None),
            ({"size": 32, "stride": 8, "layer": "conv5", "class_index": 10}, 422, "class_index: expected 0..9, got 10"),
            ({"size": 32, "stride": 8, "layer": "conv7"}, 404, None),
            ({"size": "big", "stride": 8, "layer": "conv5"}, 422, None)]:
        r = client.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert isinstance(r.json()["detail"], str)
        if detail:
            assert r.json()["detail"] == detail
    assert client.post("/api/images/ffffffffffffffffffffffff/occlusion", json={}).status_code == 404
    assert client.get("/api/occlusions/0000000000000000ffff/activation.png").status_code == 404
    oid = client.post(url, json={"size": 112, "stride": 112, "layer": "conv1"}).json()["occlusion_id"]
    r = client.get(f"/api/occlusions/{oid}/saliency.png")
    assert r.status_code == 404 and "saliency" in r.json()["detail"]


# ------------------------------------------------------------------ filters

def test_filters_png(client, small_net):
    r = client.get("/api/layers/conv1/filters.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).mode == "RGB"
    r = client.get("/api/layers/conv2/filters.png")
    assert r.status_code == 422 and "conv2" in r.json()["detail"]
    assert client.get("/api/layers/conv9/filters.png").status_code == 404


# ------------------------------------------------------------------ the runner

def test_full_queue_answers_429_with_retry_after(small_models_dir, tmp_path, sample_image):
    s = Settings(models=str(small_models_dir), data_dir=str(tmp_path), queue_size=1, retry_after_s=3)
    with TestClient(create_app(s)) as c:
        iid = c.post("/api/images", files={"file": ("a.png", png_of(sample_image), "image/png")}).json()["image_id"]
        release = threading.Event()
        busy = state_of(c).runner.submit(release.wait, 30)  # holds the only slot
        try:
            r = c.get(f"/api/images/{iid}/predictions")
            assert r.status_code == 429 and r.headers["Retry-After"] == "3"
            assert "queue full" in r.json()["detail"]
            assert c.get("/api/health").status_code == 200  # liveness does not queue
        finally:
            release.set()
            busy.result(timeout=30)
        assert c.get(f"/api/images/{iid}/predictions").status_code == 200


def test_records_are_cached_per_model_and_image(client, image_id):
    cache = state_of(client).runner.cache
    client.get(f"/api/images/{image_id}/layers/conv1")
    hits = cache.hits
    client.get(f"/api/images/{image_id}/layers/conv2")
    client.get(f"/api/images/{image_id}/predictions")
    assert cache.hits >= hits + 2
    assert ("record", "zfnet-imagenette", image_id) in cache._items
    assert 0 < cache.bytes <= cache.max_bytes


def test_inference_runs_in_inference_mode_on_one_thread(client):
    runner = state_of(client).runner
    names = {runner.call(lambda: threading.current_thread().name) for _ in range(4)}
    assert len(names) == 1 and runner.call(torch.is_inference_mode_enabled)


def test_record_cache_is_bounded_by_bytes_lru_first():
    from deconvlab.api.runner import RecordCache, nbytes

    c = RecordCache(max_bytes=3 * 400)
    calls = []

    def make(k):
        calls.append(k)
        return {"act": torch.zeros(100), "png": b""}  # 400 bytes

    for k in "abc":
        c.get_or_compute(k, lambda k=k: make(k))
    c.get_or_compute("a", lambda: make("a"))  # a hit: a becomes the most recent
    c.get_or_compute("d", lambda: make("d"))  # evicts b, the least recent
    assert calls == ["a", "b", "c", "d"] and c.bytes == 1200 and len(c) == 3
    c.get_or_compute("b", lambda: make("b"))
    assert calls[-1] == "b" and c.hits == 1
    assert nbytes({"x": torch.zeros(2, 3), "y": [np.zeros(4, np.float64)], "z": b"12345"}) == 24 + 32 + 5
    big = RecordCache(max_bytes=100)
    big.get_or_compute("x", lambda: torch.zeros(1000))  # larger than the bound: computed, not kept
    assert len(big) == 0 and big.bytes == 0


def test_binds_loopback_by_default(monkeypatch):
    for key in ("DECONVLAB_HOST", "DECONVLAB_PORT", "DECONVLAB_DEVICE"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert (s.host, s.port, s.device) == ("127.0.0.1", 8000, "auto")
    monkeypatch.setenv("DECONVLAB_MAX_UPLOAD_BYTES", "1234")
    assert Settings().max_upload_bytes == 1234
    with pytest.raises(ValueError):
        Settings(device="tpu")


def test_a_sparse_step_that_fails_to_compile_leaves_the_server_on_the_dense_rules(small_models_dir, tmp_path,
                                                                                 sample_image, monkeypatch, caplog):
    from deconvlab.engine import sparse_step

    def broken():
        raise RuntimeError("no LLVM for this CPU")

    monkeypatch.setattr(sparse_step, "warm_up", broken)
    monkeypatch.setattr(sparse_step, "ENABLED", True)
    settings = Settings(models=str(small_models_dir), data_dir=str(tmp_path / "state"), data="", device="cpu",
                        frontend_dir=str(tmp_path / "no-frontend"))
    with caplog.at_level("ERROR", logger="deconvlab.api"), TestClient(create_app(settings)) as c:
        assert sparse_step.ENABLED is False
        assert "the sparse deconvnet step failed to compile (RuntimeError: no LLVM for this CPU)" in caplog.text
        r = c.post("/api/images", files={"file": ("sample.png", png_of(sample_image), "image/png")})
        image = r.json()["image_id"]
        r = c.get(f"/api/images/{image}/layers/conv5/units/3/projection")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
