"""The server's own files (issue 12): one evolution scan shared by every n, bounded n, on-disk caches
under a size bound (least recently used out), and the start-up sweep of what a killed server left."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import small_zfnet_module
from deconvlab.api import Settings, create_app
from deconvlab.api.disk_cache import DiskCache
from deconvlab.api.sweep import sweep
from deconvlab.nets import save_checkpoint
from test_api_top import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A model with two training snapshots (two seeds of the small ZFNet) and an 8-image data set."""
    root = tmp_path_factory.mktemp("evo")
    models = root / "models"
    for epoch, seed in ((1, 0), (2, 1)):
        model, meta = small_zfnet_module(seed)
        save_checkpoint(models / "toy" / "snapshots" / f"epoch-{epoch:03d}.safetensors", model, meta)
    save_checkpoint(models / "toy" / "model.safetensors", *small_zfnet_module(1))
    (models / "registry.json").write_text(json.dumps({"default": "toy", "models": {
        "toy": {"checkpoint": "toy/model.safetensors", "snapshots": "toy/snapshots"}}}))
    return models, make_dataset(root / "data", per_class=4)


def settings(world, state, **kw) -> Settings:
    models, data = world
    return Settings(models=str(models), data=str(data), state_dir=str(state), device="cpu",
                    frontend_dir=str(state / "none"), **kw)


def fresh(world, n: int, seed: int, layer: str, unit: int):
    """The library's answer from a scan of its own over the same draw: the first n of seed's permutation."""
    from deconvlab.analyses.evolution import Evolution, image_loader, load_snapshots, snapshot_paths
    from deconvlab.data import list_split

    models, data = world
    nets = load_snapshots(snapshot_paths("toy", models))
    split = list_split(data, "val")
    meta = nets[0][1].meta
    order = np.random.default_rng(seed).permutation(len(split))[:n]
    ev = Evolution(nets, order, image_loader(split, meta.input_size, meta.mean, meta.std), batch_size=3).scan()
    return [s.to_dict() for s in ev.unit(layer, unit)]


def test_one_scan_serves_every_n(world, tmp_path):
    url = "/api/layers/conv3/units/5/evolution"
    with TestClient(create_app(settings(world, tmp_path, evolution_max_n=6))) as c:
        runner = c.app.state.deconvlab.runner
        got, spent = {}, []
        for n in (4, 6, 4, 2):
            before = runner.passes
            r = c.get(url, params={"n": n})
            assert r.status_code == 200, r.text
            got[n] = r.json()["snapshots"]
            spent.append(runner.passes - before)
        # n=4: build, load attempt, 4 images x 2 snapshots, save; n=6 scans on: 2 more x 2; n=4 again:
        # a lookup; n=2: a prefix the scan has passed, rescanned on its own: 2 x 2
        assert spent == [1 + 1 + 8 + 1, 1 + 4 + 1, 0, 1 + 4 + 1]
        for n, snaps in got.items():
            want = fresh(world, n, 0, "conv3", 5)
            assert [(s["epoch"], s["image_index"], s["position"], s["box"]) for s in snaps] == \
                [(w["epoch"], w["image_index"], w["position"], w["box"]) for w in want]
            np.testing.assert_allclose([s["value"] for s in snaps], [w["value"] for w in want], rtol=1e-5)
        r = c.get(url, params={"n": 7})
        assert r.status_code == 422 and r.json()["detail"].startswith("n: expected 1..6")
        op = c.get("/openapi.json").json()["paths"]["/api/layers/{layer}/units/{unit}/evolution"]["get"]
        (n_param,) = [p for p in op["parameters"] if p["name"] == "n"]
        assert n_param["schema"]["anyOf"][0]["maximum"] == 6
    with TestClient(create_app(settings(world, tmp_path, evolution_max_n=6))) as again:
        runner = again.app.state.deconvlab.runner
        before = runner.passes
        assert again.get(url, params={"n": 6}).json()["snapshots"] == got[6]
        assert runner.passes - before == 2  # build and load: nothing scanned


def test_disk_caches_stay_under_their_bound_least_recently_used_first(tmp_path):
    d = DiskCache(tmp_path, max_bytes=2500)
    (tmp_path / "occlusions").mkdir()
    (tmp_path / "evolution").mkdir()
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "big.png").write_bytes(b"u" * 5000)  # not a cache: never counted or evicted
    paths = []
    for i, name in enumerate(["occlusions/a", "occlusions/b", "evolution/c"]):
        for ext, size in ((".npz", 600), (".json", 200)):
            p = tmp_path / (name + ext)
            p.write_bytes(b"x" * size)
            os.utime(p, (1000 + i, 1000 + i))
        paths.append(tmp_path / (name + ".json"))
    assert d.enforce() == 0 and d.bytes() == 2400
    d.touch(paths[0])  # a is now the most recent, b the least
    (tmp_path / "evolution" / "d.npz").write_bytes(b"y" * 700)
    d.touch(tmp_path / "evolution" / "d.npz")
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["a.json", "a.npz", "big.png", "c.json", "c.npz", "d.npz"] and d.evicted == 1
    huge = tmp_path / "evolution" / "e.npz"
    huge.write_bytes(b"z" * 4000)
    d.touch(huge)  # over the bound alone: everything else goes, it stays
    assert sorted(p.name for p in (tmp_path / "evolution").iterdir()) == ["e.npz"] and huge.exists()


def test_the_server_keeps_occlusion_results_under_the_bound(world, tmp_path, sample_image):
    buf = io.BytesIO()
    sample_image.save(buf, "PNG")
    with TestClient(create_app(settings(world, tmp_path, disk_cache_bytes=1))) as c:
        iid = c.post("/api/images", files={"file": ("a.png", buf.getvalue(), "image/png")}).json()["image_id"]
        ids = [c.post(f"/api/images/{iid}/occlusion", json={"size": 112, "stride": 112, "layer": layer}
                      ).json()["occlusion_id"] for layer in ("conv1", "conv2")]
        assert sorted(p.stem for p in (tmp_path / "occlusions").glob("*.json")) == [ids[1]]  # conv1's went
        assert c.get(f"/api/occlusions/{ids[0]}/activation.png").status_code == 404
        assert c.get(f"/api/occlusions/{ids[1]}/activation.png").status_code == 200
        assert c.get(f"/api/images/{iid}").status_code == 200  # uploads are never evicted


def test_start_up_sweeps_what_a_killed_server_left(world, tmp_path, sample_image):
    up = tmp_path / "uploads" / "ab"
    up.mkdir(parents=True)
    kept_image, kept_meta = up / ("ab" + "1" * 22 + ".png"), up / ("ab" + "1" * 22 + ".json")
    kept_image.write_bytes(b"img")
    kept_meta.write_text("{}")
    leftovers = [up / ("ab" + "2" * 22 + ".png"),  # an image whose metadata was never written
                 up / ("ab" + "3" * 22 + ".png.k2j3.tmp"),  # a temporary file never renamed
                 tmp_path / "occlusions" / ("f" * 20 + ".npz"),  # a result without its .json
                 tmp_path / "evolution" / "key-5.npz.tmp.npz"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    fresh_tmp = up / ("ab" + "4" * 22 + ".png.zz.tmp")
    fresh_tmp.write_bytes(b"being written by another server right now")
    old = time.time() - 3600
    for p in leftovers + [kept_image, kept_meta]:
        os.utime(p, (old, old))
    with TestClient(create_app(settings(world, tmp_path))) as c:
        swept = c.app.state.deconvlab.swept
        assert sorted(swept) == sorted(leftovers)
        assert not any(p.exists() for p in leftovers)
        assert kept_image.exists() and kept_meta.exists() and fresh_tmp.exists()
    assert sweep(tmp_path) == [] and sweep(tmp_path / "nowhere") == []


def test_start_up_bounds_every_folder_of_computed_results(world, tmp_path):
    """Sanity checks and compare matrices left by an earlier server count against the same
    bound as occlusions: at start-up the oldest goes first, whichever folder it is in."""
    files = {}
    for i, folder in enumerate(("sanity", "compare", "occlusions", "evolution")):
        (tmp_path / folder).mkdir()
        p = tmp_path / folder / f"r{i}.npz"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))  # sanity oldest, evolution newest
        files[folder] = p
    with TestClient(create_app(settings(world, tmp_path, disk_cache_bytes=2500))):
        pass
    left = [f for f, p in files.items() if p.exists()]
    assert "sanity" not in left and "evolution" in left, left  # the oldest went, the newest stayed
    assert len(left) == 2, left  # 4000 bytes in all against a bound of 2500: two entries had to go
