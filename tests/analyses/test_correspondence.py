"""Correspondence (Table 1, Fig. 8): Hamming sums, Delta on hand-set cases, box files, the command."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvlab.analyses.correspondence import (box_to_view, check_box, correspondence, occlude, pairwise_hamming_sum,
                                      random_boxes, read_box_file)
from deconvlab.net import Net
from deconvlab.nets import ModelMeta

REPO = Path(__file__).resolve().parents[2]
BOX_FILE = REPO / "models" / "analyses" / "correspondence_boxes.json"


def brute_hamming(signs: np.ndarray) -> int:
    return sum(int((signs[i] != signs[j]).sum()) for i, j in itertools.combinations(range(len(signs)), 2))


def test_pairwise_hamming_sum_on_hand_written_signs():
    s = np.array([[1, 0, -1, 1],
                  [1, 1, -1, 1],
                  [-1, 0, -1, 0]], dtype=np.int8)
    # pairs (0,1): 1 differing sign; (0,2): 2; (1,2): 3
    assert pairwise_hamming_sum(s) == 6
    assert pairwise_hamming_sum(s[:1]) == 0  # one image: no pairs
    assert pairwise_hamming_sum(np.ones((4, 7), np.int8)) == 0
    # two opposite rows differ everywhere
    assert pairwise_hamming_sum(np.array([[1, -1, 1], [-1, 1, -1]])) == 3


def test_pairwise_hamming_sum_matches_brute_force():
    rng = np.random.default_rng(0)
    s = rng.integers(-1, 2, size=(6, 50)).astype(np.int8)
    assert pairwise_hamming_sum(s) == brute_hamming(s)
    with pytest.raises(ValueError, match="expected a 2-D array"):
        pairwise_hamming_sum(np.zeros(5))


def pixel_net() -> Net:
    """conv1 copies input channel 0 (1x1 filter, then ReLU); fc8 sums it: features are the pixels."""
    conv1 = nn.Conv2d(3, 1, 1)
    fc8 = nn.Linear(16 * 16, 2)
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0, 0] = 1.0
        conv1.bias.zero_()
        fc8.weight.fill_(1.0)
        fc8.bias.zero_()
    module = nn.Sequential()
    for name, m in (("conv1", conv1), ("relu1", nn.ReLU()), ("flatten", nn.Flatten()), ("fc8", fc8)):
        module.add_module(name, m)
    return Net(module, ModelMeta(arch="toy", input_size=16, name="pixel"), device="cpu")


def test_delta_on_hand_set_images():
    net = pixel_net()
    x = torch.zeros(3, 3, 16, 16)
    x[0, 0, 2:6, 2:6] = 1.0  # images 0 and 1: a bright part under the box
    x[1, 0, 2:6, 2:6] = 2.0
    x[1, 0, 10:, 10:] = 5.0  # ...and something else elsewhere, which the box does not touch
    x[2, 0, 2:6, 2:6] = -1.0  # image 2: a dark part, which the ReLU zeroes: masking it changes nothing
    boxes = [(2, 2, 6, 6)] * 3
    res = correspondence(net, x, {"part": boxes}, layers=["conv1"], random_trials=0)
    d = res["parts"]["part"]["conv1"]
    # sign(eps): +1 on the 16 box pixels for images 0 and 1, 0 everywhere for image 2
    assert d["delta"] == 0 + 16 + 16
    assert d["pairs"] == 3 and d["features"] == 256
    assert d["delta_normalised"] == pytest.approx(32 / (3 * 256))
    assert d["changed"] == pytest.approx(32 / (3 * 256))  # 16 changed features in two of three images
    # pair-features where either image changed: 16 in each of the three pairs; 32 of those 48 disagree
    assert d["delta_among_changed"] == pytest.approx(32 / 48)
    assert res["parts"]["part"]["random"] == {}


def test_identical_images_give_delta_zero_and_random_boxes_do_not(small_net, sample_image):
    x = small_net.preprocess(sample_image).repeat(4, 1, 1, 1)
    boxes = [(80, 90, 120, 130)] * 4
    small = [(10, 20, 30, 30)] * 4
    res = correspondence(small_net, x, {"same": boxes, "small": small}, layers=["conv5", "fc7"],
                         random_trials=3, seed=1)
    for L in ("conv5", "fc7"):
        assert res["parts"]["same"][L]["delta"] == 0 and res["parts"]["small"][L]["delta"] == 0
        rnd = res["parts"]["same"]["random"][L]
        assert rnd["delta_mean"] > 0  # different positions per image: different changes
        assert len(rnd["trials"]) == 3
    # random boxes keep each part's size
    for part, hw in (("same", (40, 40)), ("small", (20, 10))):
        for t in res["parts"][part]["random"]["conv5"]["trials"]:
            for t_, l, b, r in t["boxes"]:
                assert (b - t_, r - l) == hw and 0 <= t_ and b <= 224 and 0 <= l and r <= 224


def test_occlude_and_random_boxes():
    x = torch.ones(2, 3, 10, 12)
    y = occlude(x, [(1, 2, 4, 6), (0, 0, 10, 12)])
    assert float(y[0].sum()) == 3 * (120 - 12) and float(y[1].sum()) == 0 and float(x.sum()) == 720
    rng = np.random.default_rng(0)
    for t, l, b, r in random_boxes([(3, 4)] * 50, (10, 12), rng):
        assert b - t == 3 and r - l == 4 and t >= 0 and l >= 0 and b <= 10 and r <= 12


def test_bad_boxes_are_named(small_net, sample_image):
    with pytest.raises(ValueError, match=r"expected 0 <= top < bottom <= 224"):
        check_box([10, 10, 300, 20], (224, 224))
    with pytest.raises(ValueError, match=r"expected \[top, left, bottom, right\]"):
        check_box([1, 2, 3], (224, 224))
    x = small_net.preprocess(sample_image).repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match="expected one box per image"):
        correspondence(small_net, x, {"nose": [(0, 0, 5, 5)]})
    with pytest.raises(ValueError, match="at least 2 images"):
        correspondence(small_net, x[:1], {"nose": [(0, 0, 5, 5)]})
    with pytest.raises(KeyError, match="unknown layer"):
        correspondence(small_net, x, {"nose": [(0, 0, 5, 5)] * 2}, layers=["conv9"])


def test_box_to_view_follows_resize_and_centre_crop():
    # 448 x 300 (W x H) -> shorter side 224: 334 x 224, crop 55 px off the left
    assert box_to_view((0, 0, 300, 448), (448, 300), 224) == (0, 0, 224, 224)
    t, l, b, r = box_to_view((30, 150, 90, 210), (448, 300), 224)
    s = 224 / 300
    assert (t, b) == (round(30 * s), round(90 * s))
    assert (l, r) == (round(150 * 334 / 448) - 55, round(210 * 334 / 448) - 55)


def test_shipped_box_file_is_valid():
    spec = read_box_file(BOX_FILE)
    assert spec["class_id"] == "n02102040" and len(spec["images"]) >= 5
    assert set(spec["parts"]) == {"left_eye", "right_eye", "nose"}
    for im in spec["images"]:
        assert im["file"].startswith("val/n02102040/")
        for p in spec["parts"]:
            check_box(im["boxes"][p], (224, 224))  # Imagenette's copy here is 224 x 224
        # the dog's right eye is on the viewer's left, and the nose below both eyes
        assert im["boxes"]["right_eye"][1] < im["boxes"]["left_eye"][1]
        assert im["boxes"]["nose"][0] > max(im["boxes"]["right_eye"][0], im["boxes"]["left_eye"][0])
    data = os.environ.get("DECONVLAB_DATA")
    if data and Path(data, "val", "n02102040").is_dir():
        for im in spec["images"]:
            with Image.open(Path(data) / im["file"]) as f:
                assert f.size == (224, 224)


def test_read_box_file_rejects_missing_parts(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"parts": ["nose"], "images": [{"file": "a.png", "boxes": {"nose": [0, 0, 2, 2]}},
                                                           {"file": "b.png", "boxes": {}}]}))
    with pytest.raises(ValueError, match=r"missing \['nose'\]"):
        read_box_file(p)
    p.write_text("not json")
    with pytest.raises(ValueError, match="expected a readable JSON file"):
        read_box_file(p)


def test_correspondence_command_end_to_end(tmp_path, small_checkpoint):
    from deconvlab.cli import main

    from conftest import make_sample_image

    root = tmp_path / "data"
    d = root / "val" / "dog"
    d.mkdir(parents=True)
    images = []
    for i in range(3):
        make_sample_image(300, 250, seed=i).save(d / f"{i}.png")
        images.append({"file": f"val/dog/{i}.png", "boxes": {"nose": [100, 120, 140, 170], "eye": [40, 40, 70, 80]}})
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"coordinates": "image", "parts": ["nose", "eye"], "images": images}))
    out = tmp_path / "out"
    rc = main(["correspondence", "--model", str(small_checkpoint), "--data", str(root), "--boxes", str(boxes),
               "--out", str(out), "--random-trials", "2", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "correspondence.json").read_text())
    assert set(res["parts"]) == {"nose", "eye"} and res["images"] == 3
    # the boxes were mapped from the 300 x 250 image into the 224 px view
    assert res["parts"]["nose"]["boxes"][0] == list(box_to_view((100, 120, 140, 170), (300, 250), 224))
    assert res["parts"]["eye"]["random"]["conv5"]["trials"][0]["delta"] >= 0
    assert len(res["parts"]["nose"]["random"]["fc7"]["trials"]) == 2
    with Image.open(out / "correspondence.png") as im:
        assert im.width >= 3 * 112 and np.asarray(im).std() > 10
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"file": "../../etc/passwd", "boxes": {"x": [0, 0, 1, 1]}},
                                          {"file": "val/dog/0.png", "boxes": {"x": [0, 0, 1, 1]}}]}))
    assert main(["correspondence", "--model", str(small_checkpoint), "--data", str(root), "--boxes", str(bad),
                 "--out", str(out), "--no-progress"]) == 2
