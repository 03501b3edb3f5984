"""The numbers behind the app's colour bars and Fig. 6 panel (issue 14): each map's min in the layer
summary, and each first-layer filter's norm and dead-or-not, checked against the weights and the
activations computed here from the checkpoint (safetensors + numpy, and the Net's own forward)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import load_file

from conftest import small_zfnet_module
from deconvlab.api import Settings, create_app
from deconvlab.nets import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEAD = (2, 7)  # conv1 filters zeroed (2) or scaled to 1% (7): both dead by the rule; the rest alive


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    model, meta = small_zfnet_module()
    with torch.no_grad():
        conv1 = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv1.weight[DEAD[0]] = 0
        conv1.weight[DEAD[1]] *= 0.01
    save_checkpoint(root / "zf" / "model.safetensors", model, meta)
    (root / "registry.json").write_text(json.dumps({
        "default": "zf", "models": {"zf": {"checkpoint": "zf/model.safetensors"}}}))
    return root


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    s = Settings(models=str(models), data_dir=str(tmp_path_factory.mktemp("state")), data="", device="cpu",
                 frontend_dir=str(tmp_path_factory.mktemp("no-frontend")))
    with TestClient(create_app(s)) as c:
        yield c


def test_filter_numbers_and_dead_count_against_the_weights(client, models):
    r = client.get("/api/layers/conv1/filters")
    assert r.status_code == 200, r.text
    body = r.json()
    w = next(v for k, v in load_file(str(models / "zf" / "model.safetensors")).items()
             if k.endswith("weight") and v.ndim == 4)  # the first conv's weights, as stored
    w = w.astype(np.float64).reshape(w.shape[0], -1)
    norms = np.sqrt((w ** 2).sum(1))
    rms = norms / np.sqrt(w.shape[1])
    assert [f["unit"] for f in body["filters"]] == list(range(w.shape[0]))
    np.testing.assert_allclose([f["norm"] for f in body["filters"]], norms, rtol=2e-3)  # fp16 -> fp32
    np.testing.assert_allclose([f["rms"] for f in body["filters"]], rms, rtol=2e-3)
    assert [f["unit"] for f in body["filters"] if f["dead"]] == list(DEAD)
    assert body["dead"] == len(DEAD) and "0.05 of the median" in body["rule"]
    assert body["mosaic_url"] == "/api/layers/conv1/filters.png?model=zf"
    # the same count as the library's dead-filter report (deconvlab filters)
    from deconvlab.analyses.filters import dead_filters

    assert dead_filters(client.app.state.deconvlab.slot("zf").net)["conv1"]["dead_by_weight"] == body["dead"]
    # a layer that is not over the input colours: the same 422 as filters.png
    bad, png = client.get("/api/layers/conv2/filters"), client.get("/api/layers/conv2/filters.png")
    assert bad.status_code == png.status_code == 422 and bad.json()["detail"] == png.json()["detail"]
    assert client.get("/api/layers/conv9/filters").status_code == 404


def test_layer_summary_min_is_the_min_of_each_map(client, models):
    from PIL import Image

    from conftest import make_sample_image
    from deconvlab.net import Net
    from deconvlab.nets import load_checkpoint

    buf = io.BytesIO()
    make_sample_image(200, 180, seed=3).save(buf, "PNG")
    img = client.post("/api/images", files={"file": ("a.png", buf.getvalue(), "image/png")}).json()["image_id"]
    module, meta = load_checkpoint(models / "zf" / "model.safetensors")  # a Net of its own, not the server's
    net = Net(module, meta, device="cpu")
    rec = net.forward(net.preprocess(Image.open(io.BytesIO(buf.getvalue()))))
    for layer in ("conv2", "fc6"):
        units = client.get(f"/api/images/{img}/layers/{layer}").json()["units"]
        a = rec.activations[layer][0].double().numpy().reshape(len(units), -1)
        np.testing.assert_allclose([u["min"] for u in units], a.min(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([u["max"] for u in units], a.max(1), rtol=1e-5, atol=1e-6)
        assert all(u["min"] <= u["mean"] <= u["max"] for u in units)
