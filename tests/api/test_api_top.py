"""The top-k and data-set routes over a tiny synthetic ImageFolder and its index."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_sample_image
from deconvlab.api import Settings, create_app
from deconvlab.index import TopKIndex, build_index, default_index_path

MODEL = "zfnet-imagenette"


def make_dataset(root: Path, per_class: int = 4) -> Path:
    """``root/val/<class>/*.png``: two classes of small synthetic pictures of different sizes."""
    for c, cls in enumerate(["n01440764", "n02102040"]):
        d = root / "val" / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            make_sample_image(96 + 8 * i, 80 + 4 * c, seed=10 * c + i).save(d / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def world(small_models_dir, small_net, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("top")
    data = make_dataset(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVLAB_CACHE", str(tmp / "cache"))
        out = default_index_path(MODEL, data, "val")
        build_index(small_net, data, "val", out=out, k=3, batch_size=4, workers=0, progress=False)
        settings = Settings(models=str(small_models_dir), data=str(data), index_split="val",
                            data_dir=str(tmp / "state"), device="cpu")
        with TestClient(create_app(settings)) as c:
            yield c, TopKIndex.open(out, net=small_net, data_root=data), data, settings


def test_ready_reports_the_index(world):
    c, *_ = world
    assert c.get("/api/ready").json()["index"] == {MODEL: "ready"}


def test_top_entries_equal_the_index(world, small_net):
    c, idx, data, _ = world
    r = c.get("/api/layers/conv2/units/5/top", params={"k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["layer"] == "conv2" and body["unit"] == 5
    want = idx.entries("conv2", 5)
    assert len(body["entries"]) == 3
    for got, e in zip(body["entries"], want):
        assert got["rank"] == e["rank"] and got["image_index"] == e["image_index"]
        assert got["image_id"] == e["image_id"] and got["label"] == e["label"]
        assert got["value"] == pytest.approx(e["value"]) and got["position"] == list(e["position"])
        assert got["box"] == list(small_net.receptive_field("conv2", *e["position"]))
        assert got["image_url"] == f"/api/dataset/images/{e['image_index']}"
    # values descend, and each is a fresh forward pass's maximum of that image
    values = [e["value"] for e in body["entries"]]
    assert values == sorted(values, reverse=True)
    e0 = body["entries"][0]
    im = Image.open(io.BytesIO(c.get(e0["image_url"]).content))
    rec = small_net.forward(small_net.preprocess(im))
    assert float(rec.activations["conv2"][0, 5].max()) == pytest.approx(e0["value"], rel=1e-4)
    assert c.get("/api/layers/conv2/units/5/top").json()["entries"] == body["entries"]  # k defaults to 9, capped at the index's k


def test_top_patch_and_projection_pngs(world):
    c, idx, _, _ = world
    entries = c.get("/api/layers/conv3/units/2/top").json()["entries"]
    for e in entries:
        t, l, b, r = e["box"]
        p = c.get(e["patch_url"])
        assert p.status_code == 200 and p.headers["content-type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(p.content)))
        np.testing.assert_array_equal(got, np.asarray(idx.patch("conv3", 2, e["rank"])))
        assert got.shape == (b - t, r - l, 3)
        q = c.get(e["projection_url"])
        assert q.status_code == 200 and Image.open(io.BytesIO(q.content)).size == (r - l, b - t)
    fc = c.get("/api/layers/fc8/units/1/top").json()["entries"]
    assert fc[0]["position"] is None and fc[0]["box"] == [0, 0, 224, 224]


def test_top_errors(world):
    c, *_ = world
    for url, status, needle in [
            ("/api/layers/conv2/units/5/top?k=4", 422, "k: expected 1..3 (the index keeps 3 per unit), got 4"),
            ("/api/layers/conv2/units/5/top?k=0", 422, "k: expected 1..3"),
            ("/api/layers/conv2/units/64/top", 422, "unit: expected 0..63 for layer conv2, got 64"),
            ("/api/layers/conv8/units/5/top", 404, "unknown layer: 'conv8'"),
            ("/api/layers/conv2/units/5/top?model=alexnet", 404, "unknown model: 'alexnet'"),
            ("/api/layers/conv2/units/5/top/3/patch.png", 422, "rank: expected an integer in 0..2, got 3"),
            ("/api/layers/conv2/units/5/top/9/projection.png", 422, "rank:"),
            ("/api/dataset/images/8", 404, "unknown data-set image: 8 (expected 0..7)"),
            ("/api/dataset/images/-1", 404, "unknown data-set image"),
            ("/api/dataset/images/..%2F..%2Fetc%2Fpasswd", 404, "Not Found"),
            ("/api/dataset/images/abc", 422, "image_index:"),
            ("/api/dataset/samples?n=0", 422, "n: expected 1..200, got 0")]:
        r = c.get(url)
        assert r.status_code == status and needle in r.json()["detail"], (url, r.text)


def test_dataset_images_and_samples(world):
    c, idx, data, _ = world
    r = c.get("/api/dataset/images/5")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == idx.image_path(5).read_bytes()
    s = c.get("/api/dataset/samples", params={"n": 5, "seed": 3}).json()["samples"]
    assert len(s) == 5 and len({e["image_index"] for e in s}) == 5
    assert s == c.get("/api/dataset/samples", params={"n": 5, "seed": 3}).json()["samples"]
    for e in s:
        assert e["label"] == ("tench" if e["image_index"] < 4 else "English springer")
        assert e["url"] == f"/api/dataset/images/{e['image_index']}"
    assert len(c.get("/api/dataset/samples", params={"n": 50}).json()["samples"]) == 8  # all there are


def test_missing_and_stale_index_are_503_saying_why(small_models_dir, small_net, tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", per_class=2)
    s = Settings(models=str(small_models_dir), data=str(data), data_dir=str(tmp_path / "state"))
    with TestClient(create_app(s)) as c:
        assert c.get("/api/ready").json()["index"] == {MODEL: "missing"}
        r = c.get("/api/layers/conv1/units/0/top")
        assert r.status_code == 503 and r.json()["detail"] == (
            f"top-k index for model '{MODEL}' is missing: build it with `deconvlab index --model {MODEL}`")
        assert c.get("/api/dataset/images/0").status_code == 200  # the data set itself still serves
    build_index(small_net, data, "val", out=default_index_path(MODEL, data, "val"), k=2, batch_size=4,
                workers=0, progress=False)
    make_sample_image(64, 64, seed=99).save(data / "val" / "n01440764" / "new.png")  # the listing changes
    with TestClient(create_app(s)) as c:
        status = c.get("/api/ready").json()["index"][MODEL]
        assert status.startswith("stale: ") and "listing changed" in status
        r = c.get("/api/layers/conv1/units/0/top")
        assert r.status_code == 503 and "stale" in r.json()["detail"] and "listing changed" in r.json()["detail"]


def test_no_data_set(small_models_dir, tmp_path):
    s = Settings(models=str(small_models_dir), data="", data_dir=str(tmp_path / "state"))
    with TestClient(create_app(s)) as c:
        r = c.get("/api/dataset/samples")
        assert r.status_code == 503 and "DECONVLAB_DATA" in r.json()["detail"]
        r = c.get("/api/layers/conv1/units/0/top")
        assert r.status_code == 503 and "no data set" in r.json()["detail"]


def test_missing_index_is_built_in_the_background_when_asked(small_models_dir, small_net, tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", per_class=2)
    s = Settings(models=str(small_models_dir), data=str(data), data_dir=str(tmp_path / "state"), build_index=True)
    with TestClient(create_app(s)) as c:
        deadline = time.monotonic() + 60
        while (status := c.get("/api/ready").json()["index"][MODEL]) != "ready":
            assert status in ("queued", "building") and time.monotonic() < deadline, status
            assert c.get("/api/health").status_code == 200  # the server answers meanwhile
            time.sleep(0.05)
        r = c.get("/api/layers/conv1/units/0/top")
        assert r.status_code == 200 and len(r.json()["entries"]) == 4
    idx = TopKIndex.open(default_index_path(MODEL, data, "val"), net=small_net, data_root=data)
    assert r.json()["entries"][0]["image_index"] == idx.entries("conv1", 0)[0]["image_index"]
