"""Invariance (Fig. 5): exact transforms and a translation-equivariant toy net whose curves are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvlab.analyses.invariance import invariance, transform
from deconvlab.net import Net
from deconvlab.nets import ModelMeta

S = 32


def toy_net() -> Net:
    """conv1: a 1x1 filter reading channel 0 (translation-equivariant); fc7: the spatial mean of conv1
    (translation-invariant while the pattern stays inside); fc8: fixed logits from fc7."""
    conv1 = nn.Conv2d(3, 1, 1)
    fc7 = nn.Linear(1, 2)
    fc8 = nn.Linear(2, 3)
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0, 0] = 1.0
        conv1.bias.zero_()
        fc7.weight.copy_(torch.tensor([[1.0], [2.0]]))
        fc7.bias.zero_()
        fc8.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 1.0], [-5.0, 0.0]]))
        fc8.bias.zero_()
    module = nn.Sequential()
    for name, m in (("conv1", conv1), ("relu1", nn.ReLU()), ("avgpool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()), ("fc7", fc7), ("relu7", nn.ReLU()), ("fc8", fc8)):
        module.add_module(name, m)
    return Net(module, ModelMeta(arch="toy", input_size=S, name="toy"), device="cpu")


def blob(top: int, left: int, size: int = 6, n: int = 1) -> torch.Tensor:
    x = torch.zeros(n, 3, S, S)
    x[:, 0, top:top + size, left:left + size] = 1.0
    return x


def test_integer_translation_is_an_exact_shift_with_grey_fill():
    x = torch.randn(2, 3, S, S)
    y = transform(x, "translation", 5)
    assert torch.equal(y[..., 5:, :], x[..., :-5, :]) and torch.equal(y[..., :5, :], torch.zeros(2, 3, 5, S))
    y = transform(x, "translation", -3)
    assert torch.equal(y[..., :-3, :], x[..., 3:, :]) and float(y[..., -3:, :].abs().sum()) == 0
    assert torch.equal(transform(x, "rotation", 0), x) and torch.equal(transform(x, "scale", 1.0), x)
    # a fractional shift interpolates between the two neighbouring integer shifts
    half = transform(x, "translation", 2.5)
    mid = 0.5 * (transform(x, "translation", 2) + transform(x, "translation", 3))
    assert torch.allclose(half[..., 4:-4, 4:-4], mid[..., 4:-4, 4:-4], atol=1e-5)


def test_rotation_turns_counter_clockwise_on_screen():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 30, 16] = 1.0  # below the centre (16, 16)
    y = transform(x, "rotation", 90)
    # counter-clockwise as displayed (y down): 6 o'clock goes to 3 o'clock
    assert tuple(int(v) for v in divmod(int(y.flatten().argmax()), 33)) == (16, 30)
    assert float(y.max()) == pytest.approx(1.0, abs=1e-4)
    full = transform(x, "rotation", 360)
    assert torch.allclose(full, x, atol=1e-4)


def test_scale_enlarges_about_the_centre():
    x = torch.zeros(1, 1, S, S)
    x[0, 0, 12:20, 12:20] = 1.0  # an 8 px square around the centre
    y = transform(x, "scale", 2.0)
    assert float(y.sum()) == pytest.approx(4 * 64, rel=0.05)  # twice the side, four times the area
    assert float(y[0, 0, 16, 16]) == pytest.approx(1.0) and float(y[0, 0, 2, 2]) == 0.0


def test_toy_net_translation_curves_are_known():
    net = toy_net()
    x = torch.cat([blob(10, 5), blob(14, 20, size=4)])  # a 6x6 and a 4x4 bright square
    res = invariance(net, x, targets=[0, 2], kind="translation", amounts=[-8, -2, 0, 3, 9],
                     layers=["conv1", "fc7"])
    c1, f7 = res.distance["conv1"], res.distance["fc7"]
    # conv1 is equivariant: shifting an s x s square by d rows changes 2*min(|d|, s)*s pixels by 1
    for n, s in enumerate((6, 4)):
        want = [np.sqrt(2 * min(abs(d), s) * s) for d in (-8, -2, 0, 3, 9)]
        assert c1[n] == pytest.approx(want, abs=1e-5)
    # fc7 (a spatial mean) is invariant while the square stays inside the image
    assert f7 == pytest.approx(np.zeros((2, 5)), abs=1e-6)
    # so the logits and the true-class probability do not move either
    p0 = torch.softmax(net.forward(x, switches=False).logits, 1)
    assert res.probability[0] == pytest.approx([float(p0[0, 0])] * 5, abs=1e-6)
    assert res.probability[1] == pytest.approx([float(p0[1, 2])] * 5, abs=1e-6)
    assert res.top_class[0].tolist() == [0] * 5


def test_toy_net_rotation_of_a_centred_square_changes_nothing_at_quarter_turns():
    net = toy_net()
    x = blob(13, 13)  # centred 6x6 square in a 32 px image: symmetric under quarter turns
    res = invariance(net, x, [0], "rotation", [0, 90, 180, 270, 45], layers=["conv1", "fc7"])
    assert res.distance["conv1"][0, :4] == pytest.approx([0, 0, 0, 0], abs=1e-3)
    assert res.distance["conv1"][0, 4] > 0.5  # an eighth turn does change the map
    assert res.distance["fc7"][0, :4] == pytest.approx([0, 0, 0, 0], abs=1e-4)


def test_small_zfnet_invariance_shapes_and_zero_at_identity(small_net, sample_image):
    x = small_net.preprocess(sample_image).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    for kind, amounts in (("translation", [0, 20]), ("scale", [1.0, 1.4]), ("rotation", [0, 30])):
        res = invariance(small_net, x, [1, 2], kind, amounts)
        assert res.layers == ["conv1", "conv5", "fc7"]
        for L in res.layers:
            assert res.distance[L].shape == (2, 2)
            assert res.distance[L][:, 0] == pytest.approx([0, 0])
            assert (res.distance[L][:, 1] > 0).all()
        assert ((res.probability >= 0) & (res.probability <= 1)).all()
        assert json.loads(json.dumps(res.to_dict()))["kind"] == kind


def test_bad_input_is_named(small_net, sample_image):
    x = small_net.preprocess(sample_image)
    with pytest.raises(ValueError, match="kind: expected one of"):
        invariance(small_net, x, [0], "shear")
    with pytest.raises(ValueError, match=r"targets: expected one class per image \(1\), got 2"):
        invariance(small_net, x, [0, 1], "rotation")
    with pytest.raises(ValueError, match=r"targets: expected class indices in 0\.\.9, got \[10\]"):
        invariance(small_net, x, [10], "rotation")
    with pytest.raises(ValueError, match="scale: expected a factor > 0"):
        transform(x, "scale", 0)
    with pytest.raises(KeyError, match="unknown layer"):
        invariance(small_net, x, [0], "scale", [1.1], layers=["fc9"])


def test_invariance_command_end_to_end(tmp_path, small_checkpoint):
    from deconvlab.cli import main
    from deconvlab.data import IMAGENETTE_LABELS

    from conftest import make_sample_image

    root = tmp_path / "data"
    ids = sorted(IMAGENETTE_LABELS)[:3]
    for k, cid in enumerate(ids):
        d = root / "val" / cid
        d.mkdir(parents=True)
        make_sample_image(240, 224, seed=k).save(d / "a.png")
    out = tmp_path / "out"
    rc = main(["invariance", "--model", str(small_checkpoint), "--data", str(root), "--classes", "3",
               "--steps", "3", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "invariance.json").read_text())
    assert [r["kind"] for r in res["results"]] == ["translation", "scale", "rotation"]
    assert res["results"][0]["amounts"] == [-60.0, 0.0, 60.0]
    assert res["results"][0]["targets"] == [0, 1, 2]  # each image's class among the model's classes
    assert len(res["results"][2]["distance"]["fc7"]) == 3
    with Image.open(out / "invariance.png") as im:
        assert im.width > 600 and np.asarray(im.convert("L")).std() > 5
    assert main(["invariance", "--model", str(small_checkpoint), "--data", str(root), "--files", "val/x.png",
                 "--out", str(out), "--no-progress"]) == 2
