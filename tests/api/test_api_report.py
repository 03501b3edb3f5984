"""``GET /api/images/{id}/layers/{layer}/units/{unit}/report.html`` (issue 16): one self-contained page.

Checked against other routes and the library, not against itself: the input and the three
projections embedded in the page equal (pixel for pixel) ``input.png`` and the projection route's
PNGs; the provenance's weights sha256 is ``model_sha256`` of the checkpoint loaded afresh, and the
image sha256 is hashlib's of the uploaded bytes. Occlusion maps appear only after
``POST .../occlusion`` stored them (the report never runs one: the store's file count is the same
before and after), the top-9 only where the server has an index, and every missing part says why.
"""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_sample_image
from deconvlab.analyses.unit_report import read_report
from deconvlab.api import Settings, create_app
from test_api_routes import png_of
from test_api_top import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "zfnet-imagenette"


@pytest.fixture(scope="module")
def world(small_models_dir, small_net, tmp_path_factory):
    """A server with a data set and the small ZFNet's top-k index (k=3), and one uploaded picture."""
    from deconvlab.index import build_index, default_index_path

    tmp = tmp_path_factory.mktemp("report")
    data = make_dataset(tmp / "data", per_class=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVLAB_CACHE", str(tmp / "cache"))
        build_index(small_net, data, "val", out=default_index_path(MODEL, data, "val"), k=3, batch_size=4,
                    workers=0, progress=False)
        settings = Settings(models=str(small_models_dir), data=str(data), index_split="val",
                            data_dir=str(tmp / "state"), device="cpu", frontend_dir=str(tmp / "no-frontend"))
        with TestClient(create_app(settings)) as c:
            body = png_of(make_sample_image(240, 200, seed=3))
            r = c.post("/api/images", files={"file": ("x.png", body, "image/png")})
            assert r.status_code == 201, r.text
            yield c, r.json()["image_id"], body


def _get(c, image_id, layer="conv3", unit=4, **params):
    r = c.get(f"/api/images/{image_id}/layers/{layer}/units/{unit}/report.html", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r


def small_net_input(checkpoint, body: bytes):
    from deconvlab.net import Net
    from deconvlab.nets import load_checkpoint

    return Net(*load_checkpoint(checkpoint)).preprocess(Image.open(io.BytesIO(body)))


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_report_embeds_what_the_other_routes_answer(world, small_checkpoint):
    from deconvlab.index import model_sha256
    from deconvlab.net import Net
    from deconvlab.nets import load_checkpoint

    c, image_id, body = world
    rec = Net(*load_checkpoint(small_checkpoint)).forward(small_net_input(small_checkpoint, body))
    act = rec.activations["conv3"][0]
    unit = int(act.amax(dim=(1, 2)).argmax())  # a unit that fires, at a place not its strongest
    y, x = divmod(int(act[unit].flatten().argsort(descending=True)[1]), act.shape[-1])
    assert act[unit, y, x] > 0
    r = _get(c, image_id, unit=unit, method="guided", y=y, x=x)
    text = r.text
    assert r.headers["content-disposition"] == f'inline; filename="zfnet-imagenette-conv3-{unit}.html"'
    # self-contained: every src is a data: URI, no URL to fetch anywhere in the page
    assert re.findall(r'src="([a-z]+):', text) and set(re.findall(r'src="([a-z]+):', text)) == {"data"}
    assert "http://" not in text and "https://" not in text and "<link" not in text
    rep = read_report(text)
    prov = rep["provenance"]
    assert prov["model"]["weights_sha256"] == model_sha256(Net(*load_checkpoint(small_checkpoint)))
    assert prov["image"]["sha256"] == hashlib.sha256(body).hexdigest() and prov["image"]["sha256"].startswith(image_id)
    assert (prov["layer"], prov["unit"], prov["method"], prov["seed"], prov["position"]) == \
        ("conv3", unit, "guided", "point", [y, x])
    assert rep["sections"] == {"input": "present", "projections": "present", "feature-map": "present",
                               "top": "present", "evolution": "absent", "occlusion": "absent", "sanity": "absent",
                               "provenance": "present"}
    want_input = c.get(f"/api/images/{image_id}/input.png").content
    np.testing.assert_array_equal(_pixels(rep["figures"]["input"]["png"]), _pixels(want_input))
    base = f"/api/images/{image_id}/layers/conv3/units/{unit}"
    for method in ("deconv", "guided", "backprop"):
        want = c.get(f"{base}/projection", params={"method": method, "y": y, "x": x})
        assert _pixels(want.content).std() > 0  # not flat grey
        np.testing.assert_array_equal(_pixels(rep["figures"][f"projection-{method}"]["png"]), _pixels(want.content))
        assert rep["figures"][f"projection-{method}"]["alt"]
    assert prov["box"] == [int(v) for v in want.headers["x-receptive-field"].split(",")]
    top = c.get(f"/api/layers/conv3/units/{unit}/top").json()["entries"]
    for e in top:
        f = rep["figures"][f"top-patch-{e['rank']}"]
        np.testing.assert_array_equal(_pixels(f["png"]), _pixels(c.get(e["patch_url"]).content))
        assert e["label"] in f["alt"]
    assert "no training snapshots for model 'zfnet-imagenette'" in rep["absent"]["evolution"]


def test_occlusion_appears_once_stored_and_is_never_computed(world):
    c, image_id, _ = world
    state = c.app.state.deconvlab
    stored = lambda: sorted(p.name for p in state.occlusions.root.glob("*"))  # noqa: E731
    before = stored()
    rep = read_report(_get(c, image_id, layer="conv5", unit=2).text)
    assert rep["sections"]["occlusion"] == "absent" and stored() == before
    assert "no occlusion maps computed for this image" in rep["absent"]["occlusion"]
    occ = c.post(f"/api/images/{image_id}/occlusion", json={"size": 96, "stride": 64, "layer": "conv5"}).json()
    after = stored()
    rep = read_report(_get(c, image_id, layer="conv5", unit=occ["feature_map"]).text)
    assert stored() == after and rep["sections"]["occlusion"] == "present"
    probability = np.asarray(occ["probability"])
    i, j = np.unravel_index(np.argmin(probability), probability.shape)
    alt = rep["figures"]["occlusion-0-probability"]["alt"]
    assert f"({i * 64}, {j * 64}) px" in alt and f"{probability.min():.3g}" in alt and occ["class_label"] in alt
    from deconvlab.render import CLASS_COLORS

    top = np.asarray(occ["top_class"])
    tiles = _pixels(rep["figures"]["occlusion-0-top_class"]["png"])
    cell = tiles.shape[0] // top.shape[0]  # each square position one cell of its class's colour
    assert tiles.shape[0] == cell * top.shape[0] and tiles.shape[1] == cell * top.shape[1]
    np.testing.assert_array_equal(tiles[cell // 2::cell, cell // 2::cell], CLASS_COLORS[top % len(CLASS_COLORS)])
    other = (occ["feature_map"] + 1) % 16
    rep = read_report(_get(c, image_id, layer="conv5", unit=other).text)  # another unit: shown, said to be another
    assert rep["sections"]["occlusion"] == "present"
    assert f"tracking conv5:{occ['feature_map']} (not conv5:{other})" in _get(c, image_id, "conv5", other).text


def test_map_seed_fc_unit_and_download(world):
    c, image_id, _ = world
    r = _get(c, image_id, layer="fc7", unit=3, seed="map", download=True)
    assert r.headers["content-disposition"] == 'attachment; filename="zfnet-imagenette-fc7-3.html"'
    rep = read_report(r.text)
    assert rep["provenance"]["seed"] == "map" and rep["provenance"]["position"] is None
    assert rep["sections"]["feature-map"] == "present" and "fc unit" in rep["figures"]["feature-map"]["alt"]


def test_errors_are_the_projection_routes(world):
    c, image_id, _ = world
    base = f"/api/images/{image_id}/layers"
    for path, params, status in [("conv9/units/0", {}, 404), ("conv3/units/999", {}, 422),
                                 ("conv3/units/1", {"y": 3}, 422), ("conv3/units/1", {"y": 99, "x": 0}, 422),
                                 ("conv3/units/1", {"method": "magic"}, 422), ("conv3/units/1", {"seed": "all"}, 422)]:
        r = c.get(f"{base}/{path}/report.html", params=params)
        want = c.get(f"{base}/{path}/projection", params=params)
        assert r.status_code == want.status_code == status, (path, params, r.text)
        assert r.json()["detail"] == want.json()["detail"] and r.json()["detail"]
    assert c.get("/api/images/ffffffffffffffffffffffff/layers/conv3/units/1/report.html").status_code == 404


def test_sanity_strip_appears_once_computed(world):
    c, image_id, _ = world
    units = c.get(f"/api/images/{image_id}/layers/conv2").json()["units"]
    unit = max(units, key=lambda u: u["max"])["unit"]  # one that fires
    rep = read_report(_get(c, image_id, layer="conv2", unit=unit, method="guided").text)
    assert rep["sections"]["sanity"] == "absent" and "/sanity runs one" in rep["absent"]["sanity"]
    got = c.get(f"/api/images/{image_id}/layers/conv2/units/{unit}/sanity", params={"method": "guided"})
    assert got.status_code == 200, got.text
    steps = got.json()["steps"]
    rep = read_report(_get(c, image_id, layer="conv2", unit=unit, method="guided").text)
    assert rep["sections"]["sanity"] == "present"
    figs = [k for k in rep["figures"] if k.startswith("sanity-")]
    assert figs == [f"sanity-{k}" for k in range(len(steps))] and len(steps) == 3  # trained, conv2, conv2+conv1
    t, l, b, r = got.json()["box"]
    for k, s in enumerate(steps):
        f = rep["figures"][f"sanity-{k}"]
        assert f"Spearman {s['spearman']:.2f}" in f["alt"] if s["spearman"] is not None else "n/a" in f["alt"]
        # the strip's cell is the step's own projection PNG, cropped to the box (and scaled to 96 px wide)
        want = Image.open(io.BytesIO(c.get(s["projection_url"]).content)).convert("RGB").crop((l, t, r, b))
        cell = Image.open(io.BytesIO(f["png"])).convert("RGB")
        assert cell.width == 96
        a = np.asarray(cell.resize(want.size, Image.BILINEAR), np.float32).ravel()
        w = np.asarray(want, np.float32).ravel()
        if w.std() == 0:  # a step whose unit no longer fires there: an all-zero projection, flat grey
            assert a.std() == 0 and a[0] == w[0], k
        else:
            assert np.corrcoef(a, w)[0, 1] > 0.8, k  # the same picture (up to the scaling there and back)
