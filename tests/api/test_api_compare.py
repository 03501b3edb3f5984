"""The compare and region routes (issue 16; api/README.md), checked against the library.

Served: ``zf-a`` (a small random ZFNet with two training snapshots: epoch 2 has its weights, epoch 1
another seed's), ``zf-b`` (zf-a with conv3's channels permuted and conv4's inputs to match: the same
function) with a top-k index, over a 12-image data set. The answers equal ``deconvlab.compare`` and
``deconvlab.region`` run on the same nets and images; matching zf-a with zf-b recovers the
permutation, with its snapshot at epoch 2 the identity (and the same projections).
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_sample_image
from deconvlab import compare, region
from deconvlab.api import Settings, create_app
from deconvlab.api.compare_cache import subset
from deconvlab.data import list_split
from deconvlab.net import Net
from deconvlab.nets import ModelMeta, ZFNetConfig, he_init, save_checkpoint, zfnet
from test_api_routes import png_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 96
CFG = ZFNetConfig(num_classes=2, width=0.25, fc_size=32, norm="none", input_size=SIZE)


def meta(name):
    return ModelMeta(arch="zfnet", config=CFG.to_dict(), classes=["a", "b"], class_ids=["ca", "cb"],
                     input_size=SIZE, name=name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    a = he_init(zfnet(CFG), 0).eval()
    perm = torch.randperm(a.conv3.out_channels, generator=torch.Generator().manual_seed(1))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.conv3.weight.copy_(a.conv3.weight[perm])
        b.conv3.bias.copy_(a.conv3.bias[perm])
        b.conv4.weight.copy_(a.conv4.weight[:, perm])
    models = tmp / "models"
    save_checkpoint(models / "zf-a" / "model.safetensors", a, meta("zf-a"))
    save_checkpoint(models / "zf-a" / "snapshots" / "epoch-002.safetensors", a, meta("zf-a"))
    save_checkpoint(models / "zf-a" / "snapshots" / "epoch-001.safetensors", he_init(zfnet(CFG), 5).eval(),
                    meta("zf-a"))
    save_checkpoint(models / "zf-b" / "model.safetensors", b, meta("zf-b"))
    (models / "registry.json").write_text(json.dumps({"default": "zf-a", "models": {
        "zf-a": {"checkpoint": "zf-a/model.safetensors", "snapshots": "zf-a/snapshots"},
        "zf-b": {"checkpoint": "zf-b/model.safetensors"}}}))
    data = tmp / "data"
    for i in range(12):
        d = data / "val" / ("ca" if i % 2 else "cb")
        d.mkdir(parents=True, exist_ok=True)
        make_sample_image(80, 72, seed=i).save(d / f"{i:02d}.png")
    from deconvlab.index import build_index, default_index_path

    net_b = Net(copy.deepcopy(b), meta("zf-b"))
    with pytest.MonkeyPatch.context() as mp:  # the index, and the server's lookups of it, not in the user's cache
        mp.setenv("DECONVLAB_CACHE", str(tmp / "cache"))
        build_index(net_b, data, split="val", out=default_index_path("zf-b", data, "val"), k=9, workers=0,
                    progress=False)
        yield {"models": models, "data": data, "perm": perm, "a": Net(a, meta("zf-a")), "b": net_b, "tmp": tmp}


@pytest.fixture(scope="module")
def client(setup):
    s = Settings(models=str(setup["models"]), data=str(setup["data"]), state_dir=str(setup["tmp"] / "state"),
                 device="cpu", frontend_dir=str(setup["tmp"] / "no-frontend"))
    with TestClient(create_app(s)) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client):
    r = client.post("/api/images", files={"file": ("x.png", png_of(make_sample_image(120, 100, seed=42)), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["image_id"]


@pytest.fixture(scope="module")
def images(setup):
    split = list_split(setup["data"], "val")
    return compare.DatasetImages(split, subset(split, 12, 0))


def test_targets(client):
    r = client.get("/api/compare/targets", params={"model": "zf-b"})
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["model"] == "zf-b"
    assert [(x["other"], x["epoch"], x["kind"], x["top_k"]) for x in t["targets"]] == [
        ("zf-b", None, "model", True), ("zf-a", None, "model", False), ("zf-a", 1, "snapshot", False),
        ("zf-a", 2, "snapshot", False)]
    assert t["targets"][2]["layers"][:5] == ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_matches_recover_the_permutation_and_equal_the_library(client, setup, image_id, images):
    lib = compare.match_units(setup["a"], "conv3", setup["b"], "conv3", images)
    inverse = torch.argsort(setup["perm"]).numpy()
    live = np.flatnonzero(~np.isnan(lib.correlation))
    assert len(live) > 10
    np.testing.assert_array_equal(lib.unit[live], inverse[live])
    for u in live[:3]:
        r = client.get(f"/api/images/{image_id}/layers/conv3/units/{u}/matches",
                       params={"other": "zf-b", "k": 4, "n": 12})
        assert r.status_code == 200, r.text
        m = r.json()
        assert (m["other"], m["other_layer"], m["by"], m["images"], m["constant"]) == ("zf-b", "conv3", "position",
                                                                                        12, False)
        assert m["matches"][0]["unit"] == inverse[u] and m["matches"][0]["correlation"] == pytest.approx(1, abs=1e-6)
        want = compare.top_matches(lib.matrix, int(u), 4)
        assert [x["unit"] for x in m["matches"]] == [j for j, _ in want]
        np.testing.assert_allclose([x["correlation"] for x in m["matches"]], [c for _, c in want], atol=1e-6)
        assert m["one_to_one"]["unit"] == inverse[u] and m["top_status"] == "ready"
    top = client.get(m["matches"][0]["top_url"])
    assert top.status_code == 200 and top.json()["unit"] == m["matches"][0]["unit"]
    p = client.get(m["matches"][0]["projection_url"])
    assert p.status_code == 200 and p.headers["content-type"] == "image/png"
    assert list((setup["tmp"] / "state" / "compare").glob("*.npz"))  # kept on disk


def test_a_snapshot_with_the_models_weights_is_the_identity(client, setup, image_id):
    r = client.get(f"/api/images/{image_id}/layers/conv5/units/3/matches",
                   params={"model": "zf-a", "other": "zf-a", "epoch": 2, "by": "max", "n": 12})
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["by"] == "max" and m["epoch"] == 2 and m["top_status"] == "a training snapshot has no top-k index"
    assert not m["constant"]
    assert m["matches"][0]["unit"] == 3 and m["matches"][0]["correlation"] == pytest.approx(1, abs=1e-9)
    assert all(x["top_url"] is None for x in m["matches"])
    snap = client.get(f"/api/images/{image_id}/snapshots/2/layers/conv5/units/3/projection.png?model=zf-a")
    same = client.get(f"/api/images/{image_id}/layers/conv5/units/3/projection?model=zf-a")
    assert snap.status_code == 200 and same.status_code == 200
    assert snap.headers["x-receptive-field"] == same.headers["x-receptive-field"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(snap.content))),
                                  np.asarray(Image.open(io.BytesIO(same.content))))


def test_cka_equals_the_library_and_is_one_on_the_diagonal(client, setup, images):
    r = client.get("/api/compare/cka", params={"model": "zf-a", "other": "zf-b", "n": 12})
    assert r.status_code == 200, r.text
    c = r.json()
    lib = compare.cka(setup["a"], setup["b"], images)
    assert c["layers"] == c["other_layers"] == lib.layers_a == ["conv1", "conv2", "conv3", "conv4", "conv5",
                                                                 "fc6", "fc7", "fc8"]
    np.testing.assert_allclose(np.array(c["cka"], dtype=float), lib.matrix, atol=1e-6)
    np.testing.assert_allclose(np.diag(np.array(c["cka"], dtype=float)), 1.0, atol=1e-5)  # permuted: still 1
    r = client.get("/api/compare/cka", params={"model": "zf-a", "other": "zf-a", "epoch": 1, "n": 12,
                                               "layers": "conv2,fc7", "other_layers": "conv5"})
    assert r.status_code == 200 and np.array(r.json()["cka"]).shape == (2, 1)
    png = client.get("/api/compare/cka.png", params={"model": "zf-a", "other": "zf-b", "n": 12})
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size[0] >= 8 * 8


def test_region_equals_the_library(client, setup, image_id):
    r = client.post(f"/api/images/{image_id}/layers/conv2/region?model=zf-a", json={"box": [10, 20, 40, 70], "k": 5})
    assert r.status_code == 200, r.text
    got = r.json()
    net = setup["a"]
    rec = net.forward(net.preprocess(make_sample_image(120, 100, seed=42)))
    want = region.rank_units(net, rec, "conv2", (10, 20, 40, 70), k=5).to_dict()
    assert {k: got[k] for k in want if k != "units"} == {k: want[k] for k in want if k != "units"}
    assert [(u["unit"], u["position"], u["box"]) for u in got["units"]] == \
        [(u["unit"], u["position"], u["box"]) for u in want["units"]]
    np.testing.assert_allclose([u["value"] for u in got["units"]], [u["value"] for u in want["units"]], atol=1e-5)
    first = got["units"][0]
    assert client.get(first["unit_url"]).status_code == 200
    p = client.get(first["projection_url"])
    assert p.status_code == 200 and p.headers["x-receptive-field"] == ",".join(map(str, first["box"]))
    fc = client.post(f"/api/images/{image_id}/layers/fc8/region?model=zf-a", json={"box": [0, 0, 5, 5]})
    assert fc.status_code == 200 and fc.json()["positions"] is None and len(fc.json()["units"]) == 2


@pytest.mark.parametrize("body, needle", [
    ({"box": [0, 0, 0, 5]}, "box: expected 0 <= top < bottom <= 96"), ({"box": [0, 0, 97, 5]}, "box: expected"),
    ({"box": [-1, 0, 5, 5]}, "box: expected"), ({"box": [0, 0, 5]}, "box: expected four integers"),
    ({"box": [0, 0, 5, 5.5]}, "box.3"), ({"box": [True, 0, 5, 5]}, "box.0"), ({}, "box: Field required"),
    ({"box": [0, 0, 5, 5], "k": 0}, "k: expected 1..96"), ({"box": [0, 0, 5, 5], "k": 97}, "k: expected 1..96")])
def test_region_bad_input_is_422_naming_it(client, image_id, body, needle):
    r = client.post(f"/api/images/{image_id}/layers/conv3/region", json=body)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_bad_compare_input_names_it(client, image_id):
    base = f"/api/images/{image_id}/layers/conv1/units/0/matches"
    cases = [({"other": "zf-z"}, 404, "other: unknown model: 'zf-z'"),
             ({"other": "zf-b", "epoch": 7}, 404, "unknown epoch: 7 (model 'zf-b' has training snapshots at no epoch"),
             ({"other": "zf-a", "epoch": 7}, 404, "unknown epoch: 7 (model 'zf-a' has training snapshots at [1, 2])"),
             ({"other": "zf-b", "other_layer": "layer9"}, 404, "unknown other_layer: 'layer9'"),
             ({"other": "zf-b", "other_layer": "conv5", "by": "position"}, 422,
              "by=position: expected two maps of the same height and width, got layer conv1"),
             ({"other": "zf-b", "k": 0}, 422, "k: expected 1..24"), ({"other": "zf-b", "n": 13}, 422, "n: expected 1..12"),
             ({}, 422, "other: Field required")]
    for params, status, needle in cases:
        r = client.get(base, params=params)
        assert r.status_code == status and needle in r.json()["detail"], (params, r.text)
    r = client.get("/api/compare/cka", params={"other": "zf-b", "layers": "conv1,conv9"})
    assert r.status_code == 404 and "unknown layer in layers: 'conv9'" in r.json()["detail"]
    r = client.get(f"/api/images/{image_id}/snapshots/3/layers/conv1/units/0/projection.png")
    assert r.status_code == 404 and "unknown epoch: 3" in r.json()["detail"]
