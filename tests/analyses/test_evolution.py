"""Feature evolution (Fig. 4): hand-set snapshots whose strongest images are known, the command, the route."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconvlab.analyses.evolution import (Evolution, build_evolution, load_snapshots, parse_units, snapshot_paths,
                                 subset_indices)
from deconvlab.nets import ModelMeta, ZFNetConfig, save_checkpoint, zfnet
from deconvlab.nets.registry import IMAGENET_MEAN, IMAGENET_STD

SIZE = 64
COLOURS = {"0grey": (128, 128, 128), "1red": (255, 0, 0), "2green": (0, 255, 0)}


def toy_snapshot(channel: int, seed: int = 0):
    """A tiny ZFNet whose only conv1 filter averages one colour channel over its 7x7 window."""
    cfg = ZFNetConfig(num_classes=2, width=1 / 96, fc_size=8, norm="none", input_size=SIZE)
    torch.manual_seed(seed)
    model = zfnet(cfg).eval()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0, channel] = 1.0 / 49
        model.conv1.bias.zero_()
    meta = ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=["a", "b"], class_ids=["a", "b"],
                     input_size=SIZE, name="toy")
    return model, meta


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A run folder with snapshots at epochs 1 (conv1 reads red) and 2 (conv1 reads green)."""
    run = tmp_path_factory.mktemp("run")
    for epoch, channel in ((1, 0), (2, 1)):
        save_checkpoint(run / "snapshots" / f"epoch-{epoch:03d}.safetensors", *toy_snapshot(channel))
    return run


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    d = root / "val" / "a"
    d.mkdir(parents=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (SIZE, SIZE), rgb).save(d / f"{name}.png")
    return root


def normalised(rgb, channel):
    return (rgb[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def test_snapshot_paths_from_a_run_a_folder_and_the_registry(toy_run, tmp_path, monkeypatch):
    want = [(1, toy_run / "snapshots" / "epoch-001.safetensors"), (2, toy_run / "snapshots" / "epoch-002.safetensors")]
    assert snapshot_paths(toy_run) == want
    assert snapshot_paths(toy_run / "snapshots") == want
    models = tmp_path / "models"
    (models / "toy").mkdir(parents=True)
    (models / "toy" / "snapshots").symlink_to(toy_run / "snapshots")
    (models / "registry.json").write_text(json.dumps({"default": "toy", "models": {
        "toy": {"checkpoint": "toy/model.safetensors", "snapshots": "toy/snapshots"},
        "bare": {"checkpoint": "bare/model.safetensors"}}}))
    monkeypatch.setenv("DECONVLAB_MODELS", str(models))
    assert [e for e, _ in snapshot_paths("toy")] == [1, 2]
    with pytest.raises(FileNotFoundError, match="has no training snapshots"):
        snapshot_paths("bare")
    with pytest.raises(KeyError, match="unknown model"):
        snapshot_paths("nope")
    with pytest.raises(FileNotFoundError, match="no training snapshots in"):
        snapshot_paths(tmp_path)


def test_strongest_activation_and_projection_per_snapshot_are_known(toy_run, toy_data):
    ev = build_evolution(toy_run, toy_data, "val", n=0, batch_size=2).scan()  # two batches: 2 + 1 images
    assert ev.scanned and ev.batches() == []
    steps = ev.unit("conv1", 0)
    assert [s.epoch for s in steps] == [1, 2]
    # epoch 1 reads red: the red image (index 1) wins with the normalised red value
    assert steps[0].image_index == 1
    assert steps[0].value == pytest.approx(normalised(COLOURS["1red"], 0), rel=1e-5)
    # epoch 2 reads green: the green image (index 2) wins
    assert steps[1].image_index == 2
    assert steps[1].value == pytest.approx(normalised(COLOURS["2green"], 1), rel=1e-5)
    # the first position whose 7x7 window misses the zero padding, and its receptive field
    assert steps[0].position == (1, 1) and steps[0].box == (1, 1, 8, 8)
    for st, channel in zip(steps, (0, 1)):
        p = ev.projection("conv1", 0, st.epoch)
        assert p.shape == (3, SIZE, SIZE)
        # deconvnet of one conv1 unit: its (transposed) filter placed on its receptive field
        want = np.zeros((3, SIZE, SIZE), np.float32)
        want[channel, 1:8, 1:8] = st.value / 49
        np.testing.assert_allclose(p, want, atol=1e-6)
    # fc units have no position and see the whole image
    fc = ev.unit("fc8", 1)
    assert fc[0].position is None and fc[0].box == (0, 0, SIZE, SIZE)


def test_snapshot_scan_keeps_the_first_strongest_image_across_batches():
    from deconvlab.analyses.evolution import SnapshotScan
    from deconvlab.index import LayerInfo

    sc = SnapshotScan.empty(1, [LayerInfo("conv1", "relu1", "conv", 2, (2, 4, 4), 0)])
    values = np.array([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0]], np.float32)
    pos = np.arange(12, dtype=np.int32).reshape(3, 2, 2)
    sc.update(values[:2], pos[:2], 0)
    sc.update(values[2:], pos[2:], 2)
    # unit 0: rows 1 and 2 tie at 3 -> row 1; unit 1: rows 0 and 1 tie at 5 -> row 0
    assert sc.value.tolist() == [3.0, 5.0] and sc.row.tolist() == [1, 0] and sc.scanned == 3
    assert sc.strongest("conv1", 0) == (3.0, 1, (4, 5)) and sc.strongest("conv1", 1) == (5.0, 0, (2, 3))


def test_a_saved_scan_is_reused_only_for_the_same_images(toy_run, toy_data, tmp_path):
    ev = build_evolution(toy_run, toy_data, "val", n=0).scan()
    path = ev.save(tmp_path / "scan.npz")
    again = build_evolution(toy_run, toy_data, "val", n=0)
    assert again.key == ev.key and again.load_scans(path) and again.scanned
    assert [s.to_dict() for s in again.unit("conv1", 0)] == [s.to_dict() for s in ev.unit("conv1", 0)]
    other = build_evolution(toy_run, toy_data, "val", n=2, seed=1)
    assert other.key != ev.key and not other.load_scans(path) and not other.scanned
    assert not other.load_scans(tmp_path / "missing.npz")


def test_evolution_checks_its_input(toy_run, toy_data):
    ev = build_evolution(toy_run, toy_data, "val", n=2, seed=3)
    assert len(ev.image_indices) == 2 and not ev.scanned
    with pytest.raises(ValueError, match="not been scanned yet"):
        ev.unit("conv1", 0)
    ev.scan()
    with pytest.raises(ValueError, match=r"unit: expected 0\.\.0 for layer conv1, got 5"):
        ev.unit("conv1", 5)
    with pytest.raises(KeyError, match="unknown layer"):
        ev.unit("conv9", 0)
    with pytest.raises(KeyError, match=r"unknown epoch: expected one of \[1, 2\], got 7"):
        ev.projection("conv1", 0, 7)
    with pytest.raises(ValueError, match="expected LAYER:UNIT"):
        parse_units(["conv1"])
    assert parse_units(["conv5:12", "fc7:0"]) == [("conv5", 12), ("fc7", 0)]
    nets = load_snapshots(snapshot_paths(toy_run))
    with pytest.raises(ValueError, match="at least one image"):
        Evolution(nets, [], ev.load)
    with pytest.raises(ValueError, match="one snapshot per epoch"):
        Evolution(nets + nets[:1], [0], ev.load)
    assert subset_indices(10, 0).tolist() == list(range(10))
    assert subset_indices(1000, 5, seed=1).tolist() == subset_indices(1000, 5, seed=1).tolist()
    with pytest.raises(ValueError, match="expected 0 \\(all\\) or a positive number"):
        subset_indices(10, -1)


def test_evolution_command_end_to_end(toy_run, toy_data, tmp_path):
    from deconvlab.cli import main

    out = tmp_path / "out"
    rc = main(["evolution", "--model", str(toy_run), "--data", str(toy_data), "--n", "0",
               "--units", "conv1:0", "conv5:1", "fc8:0", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "evolution.json").read_text())
    assert res["epochs"] == [1, 2] and res["subset_size"] == 3
    first = res["units"][0]
    assert (first["layer"], first["unit"]) == ("conv1", 0)
    assert [s["image_index"] for s in first["snapshots"]] == [1, 2]
    with Image.open(out / "evolution.png") as im:
        a = np.asarray(im.convert("RGB"))
    assert im.height >= 3 * 96 and a.std() > 10
    # default units: the strongest per conv layer
    rc = main(["evolution", "--model", str(toy_run), "--data", str(toy_data), "--n", "0", "--per-layer", "1",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "evolution.json").read_text())
    assert [u["layer"] for u in res["units"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert main(["evolution", "--model", str(toy_run), "--data", str(toy_data), "--units", "conv1:9",
                 "--out", str(out), "--no-progress"]) == 2


# ------------------------------------------------------------------ the route

@pytest.fixture(scope="module")
def toy_models(toy_run, tmp_path_factory) -> Path:
    """A models folder: "toy" with the two snapshots, "bare" without any."""
    import shutil

    models = tmp_path_factory.mktemp("models")
    (models / "toy").mkdir()
    shutil.copytree(toy_run / "snapshots", models / "toy" / "snapshots")
    shutil.copy(toy_run / "snapshots" / "epoch-002.safetensors", models / "toy" / "model.safetensors")
    (models / "registry.json").write_text(json.dumps({"default": "toy", "models": {
        "toy": {"checkpoint": "toy/model.safetensors", "snapshots": "toy/snapshots"},
        "bare": {"checkpoint": "toy/model.safetensors"}}}))
    return models


def api_client(models: Path, data: str, state: Path):
    from fastapi.testclient import TestClient

    from deconvlab.api.app import create_app
    from deconvlab.api.config import Settings

    s = Settings(models=str(models), data=data, data_dir=str(state), device="cpu", frontend_dir=str(state / "none"))
    return TestClient(create_app(s))


def test_evolution_route_and_projection_pngs(toy_models, toy_data, tmp_path):
    import io

    with api_client(toy_models, str(toy_data), tmp_path) as c:
        r = c.get("/api/layers/conv1/units/0/evolution", params={"model": "toy", "n": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model"], body["layer"], body["unit"], body["images"]) == ("toy", "conv1", 0, 3)
        snaps = body["snapshots"]
        assert [s["epoch"] for s in snaps] == [1, 2] and [s["image_index"] for s in snaps] == [1, 2]
        assert snaps[0]["value"] == pytest.approx(normalised(COLOURS["1red"], 0), rel=1e-5)
        assert snaps[0]["box"] == [1, 1, 8, 8] and snaps[0]["label"] == "a"
        # the image index addresses the data-set route
        assert c.get(f"/api/dataset/images/{snaps[1]['image_index']}").status_code == 200
        for s, channel in zip(snaps, (0, 1)):
            p = c.get(s["projection_url"])
            assert p.status_code == 200 and p.headers["content-type"] == "image/png"
            a = np.asarray(Image.open(io.BytesIO(p.content)).convert("RGB")).astype(int)
            assert a.shape == (7, 7, 3)  # cropped to the 7x7 receptive field
            # the filter read one colour: that channel is bright, the others mid grey (zero)
            assert (a[..., channel] == 255).all() and (a[..., [c_ for c_ in range(3) if c_ != channel]] == 128).all()
        # default n (all 3 images here: fewer than 500) and the scan is reused
        assert c.get("/api/layers/fc8/units/1/evolution?model=toy").json()["images"] == 3
        assert c.get("/api/layers/conv1/units/0/evolution?model=toy").json()["snapshots"] == snaps
        bad = {
            "/api/layers/conv1/units/3/evolution?model=toy": (422, "unit: expected 0..0"),
            "/api/layers/conv9/units/0/evolution?model=toy": (404, "unknown layer"),
            "/api/layers/conv1/units/0/evolution?model=toy&n=9": (422, "n: expected 1..3"),
            "/api/layers/conv1/units/0/evolution?model=bare": (404, "no training snapshots for model 'bare'"),
            "/api/layers/conv1/units/0/evolution?model=nope": (404, "unknown model"),
            "/api/layers/conv1/units/0/evolution/7.png?model=toy": (404, "unknown epoch: expected one of [1, 2]"),
        }
        for url, (code, words) in bad.items():
            r = c.get(url)
            assert r.status_code == code and words in r.json()["detail"], (url, r.text)
    saved = list((tmp_path / "evolution").glob("*.npz"))
    assert len(saved) == 1  # one scan (toy, n=3, seed 0), kept for the next server
    written = saved[0].stat().st_mtime_ns
    with api_client(toy_models, str(toy_data), tmp_path) as c:
        assert c.get("/api/layers/conv1/units/0/evolution?model=toy").json()["snapshots"] == snaps
    assert saved[0].stat().st_mtime_ns == written  # loaded, not scanned and written again
    with api_client(toy_models, "", tmp_path) as c:
        r = c.get("/api/layers/conv1/units/0/evolution?model=toy")
        assert r.status_code == 503 and "no data set" in r.json()["detail"]
