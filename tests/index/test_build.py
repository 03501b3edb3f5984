"""Building the index (index/build.py): a known answer, reproducibility, shards, resume, torchrun, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deconvlab.data import load_rgb
from deconvlab.index import TopKIndex, build_index, index_status, shard_batches
from deconvlab.nets import ModelMeta, ZFNetConfig
from index_helpers import (EXPECTED, IMAGES, INPUT, SIZE, as_net, assert_same_index, handset_data,  # noqa: F401
                           handset_model, index_arrays, noise_data, preprocess_reference, small_zfnet)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)


def test_known_answer_of_a_hand_set_model(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=3, batch_size=5, workers=0,
                      progress=False)
    idx = TopKIndex.open(out, data_root=handset_data)
    assert (idx.k, idx.layers, idx.split, idx.num_images) == (3, ["conv1", "conv2", "fc8"], "val", 12)
    for (layer, unit), want in EXPECTED.items():
        got = idx.entries(layer, unit)
        assert [e["image_index"] for e in got] == [i for i, _, _ in want], (layer, unit)
        assert [e["position"] for e in got] == [p for _, _, p in want], (layer, unit)
        np.testing.assert_allclose([e["value"] for e in got], [v for _, v, _ in want], rtol=1e-5, atol=1e-7)
        assert [e["rank"] for e in got] == [0, 1, 2]
        for e in got:
            assert e["image_id"] == "val/" + IMAGES[e["image_index"]][0]
            assert e["label"] == e["image_id"].split("/")[1]
            assert idx.image_path(e["image_index"]) == handset_data / e["image_id"]
            import hashlib
            assert e["sha256"] == hashlib.sha256(idx.image_path(e["image_index"]).read_bytes()).hexdigest()[:16]
    # fc entries span the whole input
    assert idx.entries("fc8", 0)[0]["box"] == (0, 0, SIZE, SIZE)


def test_order_is_value_then_image_index_and_builds_are_reproducible(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    a = build_index(net, handset_data, "val", out=tmp_path / "a", k=4, batch_size=5, workers=0, progress=False)
    b = build_index(net, handset_data, "val", out=tmp_path / "b", k=4, batch_size=5, workers=2, progress=False)
    assert_same_index(a, b)  # bit-identical with the same batches, whatever the loader workers
    c = build_index(net, handset_data, "val", out=tmp_path / "c", k=4, batch_size=1, workers=0, progress=False)
    A, C = index_arrays(a), index_arrays(c)  # another batch shape may round differently, no more
    np.testing.assert_array_equal(A["image"], C["image"])
    np.testing.assert_allclose(A["values"], C["values"], rtol=1e-6)
    # a tie: images 0 and 6 both have red 200 (in different places); 0 ranks first
    e = TopKIndex.open(a).entries("conv1", 0)
    assert [x["image_index"] for x in e] == [2, 10, 0, 6] and e[2]["value"] == e[3]["value"]
    assert (e[2]["position"], e[3]["position"]) == ((3, 3), (3, 12))


def test_shards_cover_every_image_once_in_the_one_process_batches():
    for n, bs, world in [(30, 4, 2), (30, 4, 3), (5, 8, 2), (64, 8, 4), (1, 1, 3)]:
        one = shard_batches(n, bs)
        parts = [shard_batches(n, bs, r, world) for r in range(world)]
        assert sorted(b[0] for p in parts for b in p) == [b[0] for b in one]
        assert sorted(tuple(b) for p in parts for b in p) == [tuple(b) for b in one]
        assert sum(len(b) for b in one) == n and [i for b in one for i in b] == list(range(n))


def test_stored_values_equal_a_fresh_forward_pass(noise_data, tmp_path):
    from deconvlab.nets import layer_map
    from deconvlab.nets.registry import IMAGENET_MEAN, IMAGENET_STD

    module = small_zfnet()
    net = as_net(module, INPUT, "small", IMAGENET_MEAN, IMAGENET_STD)
    out = build_index(net, noise_data, "val", out=tmp_path / "idx", k=5, batch_size=7, workers=0, progress=False)
    idx = TopKIndex.open(out, data_root=noise_data)
    assert idx.layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    children = layer_map(module)
    rng = np.random.default_rng(2)
    checked = 0
    for layer in idx.layers:
        units = idx.layer_info(layer)["units"]
        for unit in rng.choice(units, size=min(3, units), replace=False):
            es = idx.entries(layer, int(unit))
            assert len(es) == 5 and len({e["image_index"] for e in es}) == 5
            assert all(a["value"] >= b["value"] for a, b in zip(es, es[1:]))
            e = es[int(rng.integers(0, 5))]
            x = preprocess_reference(idx.image_path(e["image_index"]), INPUT, IMAGENET_MEAN, IMAGENET_STD)
            with torch.no_grad():
                acts = {}
                for name, m in module.named_children():
                    x = m(x)
                    acts[name] = x
            a = acts[children[layer]][0, int(unit)]
            if e["position"] is None:
                assert a.dim() == 0
                fresh, peak = float(a), float(a)
            else:
                y, x_ = e["position"]
                fresh, peak = float(a[y, x_]), float(a.max())
            assert fresh == pytest.approx(e["value"], rel=1e-4, abs=1e-5)
            assert peak == pytest.approx(e["value"], rel=1e-4, abs=1e-5)  # the stored position holds the max
            # the engine's route: Net.preprocess + Net.forward
            b = net.forward(net.preprocess(load_rgb(idx.image_path(e["image_index"])))).activations[layer][0, unit]
            at = b if e["position"] is None else b[e["position"][0], e["position"][1]]
            assert float(at) == pytest.approx(e["value"], rel=1e-4, abs=1e-5)
            checked += 1
    assert checked >= 16


class Killed(Exception):
    pass


def test_a_killed_build_resumes_and_equals_the_uninterrupted_one(noise_data, tmp_path):
    net = as_net(small_zfnet(), INPUT, "small")
    whole = build_index(net, noise_data, "val", out=tmp_path / "whole", k=4, batch_size=4, workers=0,
                        progress=False)

    def kill_at_5(done):
        if done == 5:
            raise Killed()

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        build_index(net, noise_data, "val", out=out, k=4, batch_size=4, workers=0, checkpoint_every=2,
                    progress=False, on_batch=kill_at_5)
    assert not (out / "manifest.json").exists()
    ck = json.loads((out / "partial" / "rank0-of-1.json").read_text())
    assert ck["batches_done"] == 4
    with pytest.raises(FileNotFoundError, match="no top-k index"):
        TopKIndex.open(out)
    seen = []
    build_index(net, noise_data, "val", out=out, k=4, batch_size=4, workers=0, checkpoint_every=2,
                progress=False, on_batch=seen.append)
    assert seen == [5, 6, 7, 8]  # 30 images in batches of 4: the four after the checkpoint
    assert_same_index(whole, out)
    assert not (out / "partial").exists()
    # a checkpoint made with other settings is not used
    with pytest.raises(Killed):
        build_index(net, noise_data, "val", out=out, k=4, batch_size=4, workers=0, checkpoint_every=2,
                    progress=False, on_batch=kill_at_5)
    seen = []
    build_index(net, noise_data, "val", out=out, k=3, batch_size=4, workers=0, progress=False,
                on_batch=seen.append)
    assert seen[0] == 1 and TopKIndex.open(out).k == 3


def test_bad_input_gets_clear_errors(handset_data, tmp_path):
    net = as_net(handset_model(), SIZE, "handset")
    with pytest.raises(ValueError, match="k: expected a positive number of entries per unit, got 0"):
        build_index(net, handset_data, "val", out=tmp_path / "x", k=0, workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="no 'test' folder"):
        build_index(net, handset_data, "test", out=tmp_path / "x", workers=0, progress=False)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="expected a folder for the index, got the file"):
        build_index(net, handset_data, "val", out=tmp_path / "afile", workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="no top-k index at"):
        TopKIndex.open(tmp_path / "nothing")
    assert index_status(tmp_path / "nothing") == "missing"

    out = build_index(net, handset_data, "val", out=tmp_path / "idx", k=2, workers=0, progress=False)
    idx = TopKIndex.open(out)
    with pytest.raises(KeyError, match=r"unknown layer: expected one of \['conv1', 'conv2', 'fc8'\], got 'conv9'"):
        idx.entries("conv9", 0)
    with pytest.raises(ValueError, match="unit: expected an integer in 0..2 for layer conv1, got 3"):
        idx.entries("conv1", 3)
    with pytest.raises(IndexError, match="image_index: expected an integer in 0..11, got 12"):
        idx.image_path(12)
    with pytest.raises(ValueError, match="open the index with net="):
        idx.patch("conv1", 0, 0)

    # a corrupt image is named, and the folder keeps its last good index
    (handset_data / "val" / "a" / "00.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode data-set image val/a/00.png"):
        build_index(net, handset_data, "val", out=out, k=2, workers=0, progress=False)
    assert (out / "manifest.json").is_file()
    assert index_arrays(out).keys() == {"values", "image", "position", "sha", "images_index", "images_path",
                                        "images_target"}


def _cli(*args) -> list[str]:
    import sys
    return [sys.executable, "-m", "deconvlab.cli", "index", *args]


@pytest.mark.slow
def test_two_ranks_under_torchrun_equal_one_process(noise_data, tmp_path):
    import os
    import subprocess
    import sys

    from deconvlab.nets import save_checkpoint

    cfg = ZFNetConfig(num_classes=3, width=0.125, fc_size=32, norm="none", input_size=INPUT)
    ck = save_checkpoint(tmp_path / "small.safetensors", small_zfnet(),
                         ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=["a", "b", "c"], input_size=INPUT))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DECONVLAB_CACHE=str(tmp_path / "cache"))
    common = ["--model", str(ck), "--data", str(noise_data), "--split", "val", "--k", "4", "--batch-size", "7",
              "--workers", "0", "--threads", "1", "--no-progress"]
    one = subprocess.run(_cli(*common, "--out", str(tmp_path / "one")), env=env, capture_output=True, text=True,
                         timeout=120)
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "deconvlab.cli", "index",
                          *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout.strip().splitlines()[-1])
    assert (summary["world_size"], summary["num_images"], summary["k"]) == (2, 30, 4)
    assert_same_index(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two" / "partial").exists()
