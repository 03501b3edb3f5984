"""The sanity-check routes (api/routes/sanity.py, issue 15) against the library, and their 4xx answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deconvlab import render
from deconvlab.analyses import sanity
from deconvlab.api import Settings, create_app
from deconvlab.api.sanity_store import cached_sanity
from conftest import scratch_dir
from test_api_routes import client, image_id, png_of  # noqa: F401 (the served small models and one upload)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = "zfnet-imagenette"


def url(image_id: str, layer: str, unit: int) -> str:
    return f"/api/images/{image_id}/layers/{layer}/units/{unit}/sanity"


def served_weights(client) -> dict:
    net = client.app.state.deconvlab.models[MODEL].net
    return {k: v.detach().clone() for k, v in net.module.state_dict().items()}


@pytest.mark.parametrize("mode", ["cascading", "independent"])
@pytest.mark.parametrize("method", ["deconv", "guided", "backprop"])
def test_every_method_and_mode_answers(client, image_id, method, mode):
    r = client.get(url(image_id, "conv2", 4), params={"method": method, "mode": mode, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["layer"], body["unit"], body["method"], body["mode"], body["seed"]) == ("conv2", 4, method, mode, 1)
    want = [[], ["conv2"], ["conv2", "conv1"]] if mode == "cascading" else [[], ["conv2"], ["conv1"]]
    assert [s["randomized"] for s in body["steps"]] == want
    assert [s["step"] for s in body["steps"]] == [0, 1, 2]
    assert body["steps"][0]["spearman"] == pytest.approx(1.0, abs=1e-12) and body["steps"][0]["ssim"] == 1.0
    assert body["edge_spearman"] == body["steps"][0]["edge_spearman"]
    assert all(f"method={method}&mode={mode}&seed=1" in s["projection_url"] for s in body["steps"])


def test_numbers_and_projections_equal_the_library(client, image_id, small_net, sample_image):
    before = served_weights(client)
    r = client.get(url(image_id, "conv5", 3), params={"method": "guided"})
    assert r.status_code == 200, r.text
    body = r.json()
    x = small_net.preprocess(sample_image)
    lib = sanity.randomization(small_net, x, "conv5", 3, "guided", mode="cascading", seed=0)
    assert body["position"] == list(lib.position) and body["box"] == list(lib.box)
    assert len(body["steps"]) == len(lib.steps) == 6
    for got, want in zip(body["steps"], lib.steps):
        assert got["randomized"] == want.randomized
        for key in ("spearman", "ssim", "edge_spearman", "seed_value"):
            w = getattr(want, key)
            assert (got[key] is None) == (w is None) and (w is None or got[key] == pytest.approx(w, rel=1e-6)), key
        raw = client.get(got["projection_url"] + "&format=npy")
        assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
        p = np.load(io.BytesIO(raw.content), allow_pickle=False)
        assert p.dtype == np.float32 and p.shape == (3, 224, 224)
        np.testing.assert_allclose(p, want.projection, rtol=1e-5, atol=1e-7)
        png = client.get(got["projection_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), render.projection_rgb(p))
    after = served_weights(client)
    assert after.keys() == before.keys() and all(torch_equal(after[k], before[k]) for k in before)


def torch_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all()) and \
        a.numpy().tobytes() == b.numpy().tobytes()


def test_a_result_is_stored_and_looked_up_without_computing(client, image_id):
    state = client.app.state.deconvlab
    assert cached_sanity(state, MODEL, image_id, "conv1", 2, "backprop", "independent", 5) is None
    first = client.get(url(image_id, "conv1", 2), params={"method": "backprop", "mode": "independent", "seed": 5})
    assert first.status_code == 200
    done = state.runner.done
    again = client.get(url(image_id, "conv1", 2), params={"method": "backprop", "mode": "independent", "seed": 5})
    assert again.json() == first.json() and state.runner.done == done  # from the files, nothing ran
    assert cached_sanity(state, MODEL, image_id, "conv1", 2, "backprop", "independent", 5) == first.json()
    assert cached_sanity(state, MODEL, image_id, "conv1", 2, "backprop", "independent", 6) is None
    assert (state.settings.state_path() / "sanity").is_dir() and "sanity" in state.disk.folders


@pytest.mark.parametrize("params, detail", [
    ({"method": "gradcam"}, "method: Input should be 'deconv', 'guided' or 'backprop', got 'gradcam'"),
    ({"mode": "random"}, "mode: Input should be 'cascading' or 'independent', got 'random'"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0, got '-1'"),
    ({"seed": 2 ** 31}, "seed: Input should be less than or equal to 2147483647, got '2147483648'"),
    ({"seed": "one"}, "seed: Input should be a valid integer, unable to parse string as an integer, got 'one'"),
])
def test_bad_method_mode_or_seed_is_422_with_the_detail(client, image_id, params, detail):
    for path in (url(image_id, "conv2", 0), url(image_id, "conv2", 0) + "/0/projection"):
        r = client.get(path, params=params)
        assert r.status_code == 422 and r.json() == {"detail": detail}


def test_unit_layer_and_step_out_of_range(client, image_id):
    r = client.get(url(image_id, "conv2", 999))
    assert r.status_code == 422 and r.json()["detail"] == "unit: expected 0..63 for layer conv2, got 999"
    r = client.get(url(image_id, "conv9", 0))
    assert r.status_code == 404 and r.json()["detail"].startswith("unknown layer: 'conv9'")
    r = client.get(url(image_id, "conv1", 2) + "/2/projection", params={"method": "deconv"})
    assert r.status_code == 404 and r.json()["detail"] == "unknown step: 2 (this check has steps 0..1)"
    r = client.get(url(image_id, "conv1", 2) + "/-1/projection")
    assert r.status_code == 422 and r.json()["detail"].startswith("step: Input should be greater than or equal to 0")


@pytest.fixture(scope="module")
def graph_world(tmp_path_factory, sample_image):
    """A torchvision resnet18 (random, seeded) registered at 64 px and served alone; its uploaded image."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from deconvlab.cli.main import main

    with scratch_dir(tmp_path_factory, "graph-sanity") as tmp:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "rn.safetensors"))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DECONVLAB_MODELS", str(tmp / "models"))
            assert main(["register", "tiny-rn", "--arch", "torchvision:resnet18", "--weights",
                         str(tmp / "rn.safetensors"), "--input-size", "64"]) == 0
        settings = Settings(models=str(tmp / "models"), data_dir=str(tmp / "state"), data="", device="cpu",
                            frontend_dir=str(tmp / "no-frontend"))
        with TestClient(create_app(settings)) as c:
            r = c.post("/api/images", files={"file": ("sample.png", png_of(sample_image), "image/png")})
            yield c, r.json()["image_id"], tmp / "models"


def test_a_graph_net_answers_as_the_library_does(graph_world, sample_image):
    from deconvlab.net import Net
    from deconvlab.nets import resolve

    c, iid, models = graph_world
    net = c.app.state.deconvlab.models["tiny-rn"].net
    before = {k: v.detach().clone() for k, v in net.module.state_dict().items()}
    r = c.get(url(iid, "layer1.0", 5), params={"method": "guided", "model": "tiny-rn"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["randomized"] for s in body["steps"]] == [
        [], ["layer1.0.conv2", "layer1.0.bn2"], ["layer1.0.conv2", "layer1.0.bn2", "layer1.0.conv1", "layer1.0.bn1"],
        ["layer1.0.conv2", "layer1.0.bn2", "layer1.0.conv1", "layer1.0.bn1", "conv1", "bn1"]]
    lib_net = Net(*resolve("tiny-rn", models))
    lib = sanity.randomization(lib_net, lib_net.preprocess(sample_image), "layer1.0", 5, "guided")
    for got, want in zip(body["steps"], lib.steps):
        assert got["seed_value"] == pytest.approx(want.seed_value, rel=1e-5, abs=1e-7)
        p = np.load(io.BytesIO(c.get(got["projection_url"] + "&format=npy").content), allow_pickle=False)
        np.testing.assert_allclose(p, want.projection, rtol=1e-4, atol=1e-6)
    after = net.module.state_dict()
    assert all(torch_equal(after[k], before[k]) for k in before)
