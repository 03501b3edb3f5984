"""``analyses.unit_report`` (issue 16): one unit's page, checked against the library's own routes.

Each embedded picture is compared with what the ``Net`` (or the index, the evolution scan, the
occlusion run, the sanity check) gives when asked directly: the projections with
``render.projection_rgb(net.project(...))``, the feature map with ``render.colormap``, the top-9
patches with ``TopKIndex.patch``, each evolution cell's value with a brute-force maximum over the
images through that snapshot. The hashes are those of a model loaded afresh from its checkpoint
and of the file's bytes. A paper net (sequential engine) and torchvision's resnet18 (graph engine)
both give every part; a name with ``</script>`` in it cannot break out of the page.
"""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_sample_image, small_zfnet_module
from deconvlab import render
from deconvlab.analyses.unit_report import UnitReport, build_report, read_report, show
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _firing(act: torch.Tensor) -> tuple[int, tuple[int, int]]:
    """The unit with the strongest activation and a position where it fires that is not its maximum."""
    unit = int(act.amax(dim=(1, 2)).argmax())
    flat = act[unit].flatten()
    second = int(torch.argsort(flat, descending=True)[1])
    assert flat[second] > 0
    return unit, divmod(second, act.shape[-1])


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("unit-report") / "picture.png"
    make_sample_image(240, 200, seed=5).save(path)
    return path


def test_parts_equal_the_nets_own_answers(small_net, small_checkpoint, image_file):
    from deconvlab.index import model_sha256
    from deconvlab.nets import load_checkpoint

    rec = small_net.forward(small_net.preprocess(Image.open(image_file)))
    unit, (py, px) = _firing(rec.activations["conv4"][0])
    r = build_report(small_net, image_file, "conv4", unit, method="backprop", position=(py, px))
    rep = read_report(r.to_html())
    assert rep["provenance"] == r.provenance
    p = r.provenance
    assert p["model"]["weights_sha256"] == model_sha256(Net(*load_checkpoint(small_checkpoint)))
    assert p["image"]["sha256"] == hashlib.sha256(image_file.read_bytes()).hexdigest()
    assert (p["layer"], p["unit"], p["method"], p["seed"], p["position"]) == ("conv4", unit, "backprop", "point",
                                                                             [py, px])
    assert p["box"] == list(small_net.receptive_field("conv4", py, px))
    for method in ("deconv", "guided", "backprop"):
        want = render.projection_rgb(small_net.project(rec, "conv4", unit, method=method, position=(py, px)))
        assert want.std() > 0  # not a flat grey: the seed fires
        np.testing.assert_array_equal(_pixels(rep["figures"][f"projection-{method}"]["png"]), want)
    fmap = rec.activations["conv4"][0, unit]
    np.testing.assert_array_equal(_pixels(rep["figures"]["feature-map"]["png"]),
                                  render.upscale(render.colormap(fmap), 224))
    y, x = divmod(int(fmap.argmax()), fmap.shape[1])
    assert f"at row {y}, column {x}" in rep["figures"]["feature-map"]["alt"]
    assert rep["sections"] == {"input": "present", "projections": "present", "feature-map": "present",
                               "top": "absent", "evolution": "absent", "occlusion": "absent", "sanity": "absent",
                               "provenance": "present"}
    assert p["sections"]["occlusion"] == "absent: no occlusion maps computed for this image"
    assert "no training snapshots" in rep["absent"]["evolution"] and "top-k index" in rep["absent"]["top"]


def test_graph_net_every_method(image_file):
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    net = Net.from_module(module, input_size=64, classes=["a", "b", "c"], name="tiny-rn")
    for layer in ("layer1.0.add",):  # an fx op (a residual sum); a module path: the browser test
        r = build_report(net, Image.open(image_file), layer, 3, method="guided")
        rec = net.forward(net.preprocess(Image.open(image_file)))
        pos = r.provenance["position"]
        assert r.provenance["model"]["engine"] == "graph" and pos is not None
        for method in ("deconv", "guided", "backprop"):
            want = render.projection_rgb(net.project(rec, layer, 3, method=method, position=tuple(pos)))
            assert want.std() > 0, method
            np.testing.assert_array_equal(np.asarray(r[f"projection-{method}"].image), want)
        assert r.provenance["image"]["sha256_of"].startswith("the decoded pixels")


@pytest.fixture(scope="module")
def tiny_index(small_net, tmp_path_factory):
    from deconvlab.index import TopKIndex, build_index

    root = tmp_path_factory.mktemp("report-data")
    for c, wnid in enumerate(["n01440764", "n02102040"]):
        (root / "val" / wnid).mkdir(parents=True)
        for i in range(2):
            make_sample_image(96 + 8 * i, 88, seed=10 * c + i).save(root / "val" / wnid / f"{i}.png")
    out = build_index(small_net, root, "val", out=root / "index", k=3, batch_size=4, workers=0, progress=False)
    return TopKIndex.open(out, net=small_net, data_root=root), root


def _evolution(root):
    """Two 'snapshots' (differently seeded nets) over the 4 data-set images."""
    from deconvlab.analyses.evolution import Evolution, image_loader
    from deconvlab.data import list_split

    nets = [(e, Net(*small_zfnet_module(seed=e))) for e in (1, 2)]
    split = list_split(root, "val")
    meta = nets[0][1].meta
    return Evolution(nets, np.arange(len(split)), image_loader(split, 224, meta.mean, meta.std)).scan(), split


def test_optional_sections_from_their_own_analyses(small_net, tiny_index, image_file):
    from deconvlab.analyses.occlusion import occlusion
    from deconvlab.analyses.sanity import randomization

    idx, root = tiny_index
    ev, split = _evolution(root)
    x = small_net.preprocess(Image.open(image_file))
    occ = occlusion(small_net, x, 112, 56, "conv2")
    san = randomization(small_net, x, "conv2", occ.feature_map, "deconv")
    r = build_report(small_net, image_file, "conv2", occ.feature_map, index=idx, evolution=ev, occlusion=occ,
                     sanity=san)
    assert all(s.absent is None for s in r.sections), r
    for e in idx.entries("conv2", occ.feature_map):
        np.testing.assert_array_equal(np.asarray(r[f"top-patch-{e['rank']}"].image),
                                      np.asarray(idx.patch("conv2", occ.feature_map, e["rank"])))
        assert e["label"] in r[f"top-projection-{e['rank']}"].alt
    for epoch, net in ev.nets:  # each cell's value: the brute-force max over the images at that snapshot
        xs = torch.cat([net.preprocess(Image.open(split.path(i))) for i in range(len(split))])
        best = float(net.forward(xs).activations["conv2"][:, occ.feature_map].amax())
        assert f"strongest activation {best:.4g}" in r[f"evolution-{epoch}"].alt and best > 0
    i, j = np.unravel_index(np.argmin(occ.probability), occ.probability.shape)
    assert f"({i * 56}, {j * 56}) px" in r["occlusion-0-probability"].alt
    assert [f.key for f in r.section("sanity").figures] == [f"sanity-{k}" for k in range(len(san.steps))]
    for k, st in enumerate(san.steps):
        rho = "n/a" if st.spearman is None else f"{st.spearman:.2f}"  # None: the unit no longer fires there
        assert f"Spearman {rho}" in r[f"sanity-{k}"].alt and f"step {k}:" in r[f"sanity-{k}"].alt


def test_html_self_contained_accessible_and_escaped(small_net, image_file, tmp_path):
    net = Net(*small_zfnet_module())
    net.meta.name = 'evil</script><img src="http://example.invalid/x.png">'
    r = build_report(net, image_file, "fc6", 7, seed="map")
    text = r.to_html()
    assert "http://" not in text.replace("http://example.invalid", "") and "<img src=\"http" not in text
    assert set(re.findall(r'<img src="([a-z]+):', text)) == {"data"}
    assert text.count("<h1>") == 1 and text.count("<h2 ") == len(r.sections) + 1  # + provenance
    assert all(f["alt"] for f in read_report(text)["figures"].values())
    assert "default-src 'none'" in text and '<html lang="en">' in text and "<script>" not in text
    assert read_report(text)["provenance"]["model"]["name"] == net.meta.name  # intact, and inert
    assert r.provenance["position"] is None and r.provenance["box"] is None  # a map seed
    frag = r._repr_html_()
    assert frag.startswith('<div class="dl-report"') and "<html" not in frag
    sheet = Image.open(io.BytesIO(r._repr_png_()))
    assert sheet.width > 5 * 224 and sheet.height > 224
    assert Image.open(io.BytesIO(r["projection-guided"]._repr_png_())).size == (224, 224)
    out = r.save(tmp_path / "sub" / "unit.html")
    assert out.read_text(encoding="utf-8") == text  # the date is the build's: the same page every time


def test_errors_and_show(models_env, image_file):
    r = show("zfnet-imagenette", image_file, "conv5", 1)
    assert isinstance(r, UnitReport) and r.provenance["model"]["name"]
    net = Net(*small_zfnet_module())
    with pytest.raises(KeyError, match="unknown layer"):
        build_report(net, image_file, "conv9", 0)
    with pytest.raises(ValueError, match="method: expected one of"):
        build_report(net, image_file, "conv5", 0, method="magic")
    with pytest.raises(ValueError, match=r"unit: expected 0\.\.\d+ for layer conv5, got 999"):
        build_report(net, image_file, "conv5", 999)
    with pytest.raises(TypeError, match="image: expected a path, bytes or a PIL image"):
        build_report(net, 42, "conv5", 0)


def test_cli_report(models_env, tiny_index, image_file, small_net, tmp_path, capsys):
    import json

    from deconvlab.cli.main import main
    from deconvlab.index import model_sha256

    idx, root = tiny_index
    rec = small_net.forward(small_net.preprocess(Image.open(image_file)))
    unit, _ = _firing(rec.activations["conv2"][0])
    out = tmp_path / "unit.html"
    argv = ["report", "--model", "zfnet-imagenette", "--image", str(image_file), "--layer", "conv2", "--unit",
            str(unit), "--out", str(out), "--data", str(root), "--index", str(idx.path), "--occlusion",
            "--occlusion-size", "112", "--occlusion-stride", "112", "--sanity", "--device", "cpu"]
    assert main(argv) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rep = read_report(out.read_text(encoding="utf-8"))
    assert said["out"] == str(out) and said["bytes"] == out.stat().st_size
    assert said["sections"] == rep["provenance"]["sections"]
    assert said["weights_sha256"] == model_sha256(small_net)
    assert said["image_sha256"] == hashlib.sha256(image_file.read_bytes()).hexdigest()
    states = {k: v.split(":")[0] for k, v in said["sections"].items()}
    assert states == {"input": "present", "projections": "present", "feature-map": "present", "top": "present",
                      "evolution": "absent", "occlusion": "present", "sanity": "present"}
    assert "--evolution-n" in rep["absent"]["evolution"]
    text = out.read_text(encoding="utf-8")
    assert f"tracking conv2:{unit}" in text and f"(not conv2:{unit})" not in text  # the unit's own map
    assert main(argv[:-2] + ["--y", "3"]) == 2 and "expected both --y and --x" in capsys.readouterr().err
