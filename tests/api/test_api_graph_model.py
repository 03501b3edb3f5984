"""Issue 13: ``deconvlab register`` + ``deconvlab serve --model`` of a torchvision resnet18 with a local
weights file, and every route of api/README.md answering for it (a graph-engine model).

The model: ``torchvision.models.resnet18(weights=None, num_classes=10)``, seeded, its state dict in a
``.safetensors`` file, registered at 64 px through the real command (``cli.main.main``) into a tmp
``DECONVLAB_MODELS``; served by the app the real ``deconvlab serve --model`` command makes (under a
FastAPI TestClient), next to a checkpoint given as a file. The answers are checked against the library
itself (``nets.resolve`` of the same entry, wrapped in a ``Net``): the predictions, the layer list, a
unit's strongest activation and its box, the three projections. Top-k and evolution need a data set
(503 here); building a graph net's index is tested in tests/index/test_graph_index.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from PIL import Image

from deconvlab.cli.main import main
from conftest import scratch_dir
from test_api_routes import image_id, png_of  # noqa: F401 (image_id: the upload fixture, on this module's client)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64
LAYERS = ("layer3.1", "layer1.0.add")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(models folder, weights file): tiny-rn registered there by ``deconvlab register``."""
    from safetensors.torch import save_file

    with scratch_dir(tmp_path_factory, "graph-model") as tmp:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        weights = tmp / "tiny-rn.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        models = tmp / "models"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DECONVLAB_MODELS", str(models))
            assert main(["register", "tiny-rn", "--arch", "torchvision:resnet18", "--weights", str(weights),
                         "--input-size", str(SIZE)]) == 0
        yield models, weights


@pytest.fixture(scope="module")
def library_net(registered):
    from deconvlab.net import Net
    from deconvlab.nets import resolve

    module, meta = resolve("tiny-rn", registered[0])
    return Net(module, meta)


@pytest.fixture(scope="module")
def client(registered, small_checkpoint, tmp_path_factory):
    """The app ``deconvlab serve --model tiny-rn --model <a checkpoint file>`` runs (through ``cli.main``;
    uvicorn.run is replaced by a catch of the app it was handed), under a TestClient."""
    import uvicorn

    models, _ = registered
    ran = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVLAB_MODELS", str(models))
        mp.setenv("DECONVLAB_DATA", "")
        mp.setenv("DECONVLAB_FRONTEND_DIR", str(tmp_path_factory.mktemp("no-frontend")))
        mp.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
        assert main(["serve", "--model", "tiny-rn", "--model", str(small_checkpoint), "--device", "cpu",
                     "--port", "8123", "--data-dir", str(tmp_path_factory.mktemp("state"))]) == 0
        assert (ran["host"], ran["port"]) == ("127.0.0.1", 8123)
        with TestClient(ran["app"]) as c:
            yield c



def test_register_wrote_the_entry(registered, capsys, tmp_path, monkeypatch):
    models, weights = registered
    entry = json.loads((models / "registry.json").read_text())["models"]["tiny-rn"]
    assert entry == {"arch": "torchvision:resnet18", "weights": str(weights.resolve()), "input_size": SIZE}
    monkeypatch.setenv("DECONVLAB_MODELS", str(tmp_path))
    assert main(["register", "again", "--arch", "torchvision:resnet18", "--weights", str(weights),
                 "--input-size", str(SIZE)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"registry": str(tmp_path / "registry.json"), "name": "again", "entry": entry}


def test_register_classes_mean_std(registered, capsys, tmp_path, monkeypatch):
    _, weights = registered
    monkeypatch.setenv("DECONVLAB_MODELS", str(tmp_path))
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"class {i}\n" for i in range(10)))
    assert main(["register", "named", "--arch", "torchvision:resnet18", "--weights", str(weights), "--classes",
                 str(names), "--input-size", "48", "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.25"]) == 0
    entry = json.loads(capsys.readouterr().out)["entry"]
    assert entry["classes"] == "classes.txt" and entry["mean"] == [0.5, 0.4, 0.3] and entry["std"] == [0.2, 0.2, 0.25]
    from deconvlab.nets import resolve

    _, meta = resolve("named", tmp_path)
    assert meta.classes == [f"class {i}" for i in range(10)] and meta.input_size == 48
    names.write_text("a\nb\n")
    assert main(["register", "named2", "--arch", "torchvision:resnet18", "--weights", str(weights),
                 "--classes", str(names), "--input-size", "48"]) == 2
    err = capsys.readouterr().err
    assert "expected 10 names" in err and "got 2" in err, err
    assert "named2" not in json.loads((tmp_path / "registry.json").read_text())["models"]


def test_register_bad_input_exits_2(registered, capsys, tmp_path, monkeypatch):
    _, weights = registered
    monkeypatch.setenv("DECONVLAB_MODELS", str(tmp_path))
    cases = [(["--arch", "torchvision:resnet9000", "--weights", str(weights)], "resnet9000"),
             (["--arch", "torchvision:resnet34", "--weights", str(weights)], "weights"),
             (["--arch", "torchvision:resnet18", "--weights", str(weights), "--classes", str(tmp_path / "no.txt")],
              "no.txt")]
    for extra, named in cases:
        assert main(["register", "bad", *extra, "--input-size", str(SIZE)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("deconvlab register: error: ") and named in err, err
    assert not (tmp_path / "registry.json").exists()  # nothing written for a model that does not load


def test_served_models_ids(client, library_net):
    m = client.get("/api/models").json()
    ids = [d["id"] for d in m["models"]]
    assert ids == ["tiny-rn", "model"]  # the checkpoint file is served under its stem
    info = m["models"][0]
    assert info["input_size"] == SIZE and info["arch"] == "torchvision:resnet18" and len(info["classes"]) == 10
    names = [d["name"] for d in info["layers"]]
    assert names == list(library_net.layers)
    assert set(LAYERS) <= set(names)
    assert client.get("/api/ready").json()["models"] == {"tiny-rn": True, "model": True}


def test_predictions_and_input(client, image_id, library_net, sample_image):
    q = {"model": "tiny-rn"}
    r = client.get(f"/api/images/{image_id}/input.png", params=q)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (SIZE, SIZE)
    r = client.get(f"/api/images/{image_id}/predictions", params={**q, "k": 3})
    assert r.status_code == 200, r.text
    with torch.no_grad():
        want = torch.softmax(library_net.module(library_net.preprocess(sample_image)), 1)[0].topk(3)
    got = r.json()["predictions"]
    assert [p["class_index"] for p in got] == want.indices.tolist()
    np.testing.assert_allclose([p["probability"] for p in got], want.values.tolist(), rtol=1e-4)


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_unit_and_projections(client, image_id, library_net, sample_image, layer):
    q = {"model": "tiny-rn"}
    info = {d["name"]: d for d in library_net.layer_info()}[layer]
    C, H, W = info["shape"]
    r = client.get(f"/api/images/{image_id}/layers/{layer}", params=q)
    assert r.status_code == 200, r.text
    units = r.json()["units"]
    assert len(units) == C and r.json()["shape"] == [C, H, W]
    unit = max(units, key=lambda u: u["max"])["unit"]
    r = client.get(f"/api/images/{image_id}/layers/{layer}/units/{unit}", params=q)
    assert r.status_code == 200, r.text
    d = r.json()
    rec = library_net.forward(library_net.preprocess(sample_image))
    position, box = library_net.seed_box(rec, layer, unit)
    assert d["position"] == list(position) and d["box"] == list(box)
    assert d["max"] == pytest.approx(float(library_net.activation(rec, layer)[0, unit][position]), rel=1e-5)
    t, l, b, rr = box
    assert 0 <= t < b <= SIZE and 0 <= l < rr <= SIZE
    r = client.get(f"/api/images/{image_id}/layers/{layer}/units/{unit}/map.png", params={**q, "size": 32})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    for method in ("deconv", "guided", "backprop"):
        base = f"/api/images/{image_id}/layers/{layer}/units/{unit}/projection"
        png = client.get(base, params={**q, "method": method})
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (SIZE, SIZE), png.text
        assert png.headers["x-receptive-field"] == ",".join(map(str, box))
        r = client.get(base, params={**q, "method": method, "format": "npy"})
        assert r.status_code == 200, r.text
        p = np.load(io.BytesIO(r.content))
        assert p.shape == (3, SIZE, SIZE) and np.abs(p).max() > 0
        outside = np.ones((SIZE, SIZE), bool)
        outside[t:b, l:rr] = False
        assert np.abs(p[:, outside]).max(initial=0) == 0  # a point seed reaches only its receptive field
        want = library_net.project(rec, layer, unit, method=method, seed="point", position=position)
        want = want.detach().float().cpu().numpy().reshape(p.shape)
        np.testing.assert_allclose(p, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
        m = client.get(base, params={**q, "method": method, "seed": "map", "format": "npy"})
        assert m.status_code == 200 and np.abs(np.load(io.BytesIO(m.content))).max() > 0


def test_occlusion_and_filters(client, image_id, library_net):
    q = {"model": "tiny-rn"}
    r = client.post(f"/api/images/{image_id}/occlusion", params=q,
                    json={"size": 32, "stride": 16, "layer": "layer3.1"})
    assert r.status_code == 200, r.text
    d = r.json()
    gh, gw = d["grid"]
    assert gh == gw == (SIZE - 32) // 16 + 1
    assert np.array(d["probability"]).shape == (gh, gw) and np.array(d["activation"]).shape == (gh, gw)
    for kind in ("activation", "probability", "top_class"):
        png = client.get(d["urls"][kind])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text
    r = client.post(f"/api/images/{image_id}/occlusion", params=q, json={"size": 32, "stride": 32})
    assert r.status_code == 200 and r.json()["layer"] == "layer4", r.text  # no conv5: the last map over 1x1
    r = client.post(f"/api/images/{image_id}/occlusion", params=q, json={"size": 32, "stride": 32, "layer": "conv5"})
    assert r.status_code == 404 and "conv5" in r.json()["detail"]  # a layer named is never replaced
    r = client.get("/api/layers/conv1/filters.png", params=q)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size[0] > 7 * 8  # 64 filters of 7x7 in a mosaic


def test_data_set_routes_without_a_data_set_are_503(client):
    q = {"model": "tiny-rn"}
    for route in ("top", "evolution"):
        r = client.get(f"/api/layers/layer3.1/units/0/{route}", params=q)
        assert r.status_code == 503 and "data set" in r.json()["detail"], r.text


@pytest.mark.parametrize("layer", ["maxpool", "layer2.0.relu_1", "avgpool", "flatten", "fc"])
def test_other_kinds_of_layer_answer(client, image_id, library_net, sample_image, layer):
    """A pool, an fx op name, a 1x1 map, a flatten and the logits: the unit route and a projection."""
    q = {"model": "tiny-rn"}
    rec = library_net.forward(library_net.preprocess(sample_image))
    a = library_net.activation(rec, layer)[0]
    unit = int(a.flatten(1).amax(1).argmax() if a.dim() == 3 else a.argmax())  # the strongest unit
    r = client.get(f"/api/images/{image_id}/layers/{layer}/units/{unit}", params=q)
    assert r.status_code == 200, r.text
    position, box = library_net.seed_box(rec, layer, unit)
    assert r.json()["box"] == list(box) and r.json()["position"] == (None if position is None else list(position))
    r = client.get(f"/api/images/{image_id}/layers/{layer}/units/{unit}/projection",
                   params={**q, "method": "guided", "format": "npy"})
    assert r.status_code == 200, r.text
    p = np.load(io.BytesIO(r.content))
    want = library_net.project(rec, layer, unit, method="guided", seed="point", position=position)
    np.testing.assert_allclose(p, want.detach().float().numpy().reshape(p.shape), rtol=1e-4,
                               atol=1e-6 * float(want.abs().max()))
    assert np.abs(p).max() > 0


def test_the_model_list_says_which_engine_and_whether_torch_fx_traced_it(client):
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert models["tiny-rn"]["engine"] == "graph" and models["tiny-rn"]["untraceable"] is None
    assert models["model"]["engine"] == "sequential"
    kinds = {d["name"]: d["kind"] for d in models["tiny-rn"]["layers"]}
    assert kinds["layer1.0.add"] == "op" and kinds["fc"] == "fc"
