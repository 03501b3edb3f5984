"""Transfer (Table 4): class split views, a softmax on frozen features with a known answer, the command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deconvlab.data import list_split
from deconvlab.net import Net
from deconvlab.nets import ModelMeta
from deconvlab.analyses.transfer import class_split, fit_softmax, linear_probe, make_view

from test_ablation import stripes_dataset


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))


def test_class_split():
    ids = ["n5", "n1", "n3", "n2", "n4", "n0"]
    assert class_split(ids) == (["n0", "n1", "n2"], ["n3", "n4", "n5"])
    assert class_split(ids, ["n4", "n0"]) == (["n0", "n4"], ["n1", "n2", "n3", "n5"])
    with pytest.raises(ValueError, match=r"expected some of .*got unknown \['x'\]"):
        class_split(ids, ["x"])
    with pytest.raises(ValueError, match="both halves non-empty"):
        class_split(["a", "b"], ["a", "b"])


def test_make_view_links_and_samples_without_copying(tmp_path):
    root = stripes_dataset(tmp_path / "data", classes=4, per_class=6, val_per_class=2, size=16)
    full = make_view(root, tmp_path / "v1", ["c1", "c3"])
    sp = list_split(full, "train")
    assert sp.class_ids == ["c1", "c3"] and len(sp) == 12
    assert (full / "train" / "c1").is_symlink() and len(list_split(full, "val")) == 4
    few = make_view(root, tmp_path / "v2", ["c1", "c3"], per_class=2, seed=5)
    tr = list_split(few, "train")
    assert len(tr) == 4 and tr.targets == [0, 0, 1, 1]
    assert all(os.path.islink(few / f) for f in tr.files)
    again = make_view(root, tmp_path / "v3", ["c1", "c3"], per_class=2, seed=5)
    assert [Path(f).name for f in list_split(again, "train").files] == [Path(f).name for f in tr.files]
    assert len(list_split(few, "val")) == 4  # the whole val split of those classes
    with pytest.raises(ValueError, match="has 6 training images"):
        make_view(root, tmp_path / "v4", ["c1"], per_class=7)
    with pytest.raises(FileNotFoundError, match="class 'c9'"):
        make_view(root, tmp_path / "v5", ["c9"])


def test_fit_softmax_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.arange(3).repeat_interleave(20)
    x = centres[y] + 0.3 * torch.randn(60, 3, generator=g)
    head = fit_softmax(x, y, 3)
    assert bool((head(x).argmax(1) == y).all())
    xt = centres + 0.3 * torch.randn(3, 3, generator=g)
    assert head(xt).argmax(1).tolist() == [0, 1, 2]


def red_detector() -> Net:
    """fc7 = (mean red, 2 x mean red) after a ReLU: red images and blue images are separable there."""
    conv1 = nn.Conv2d(3, 1, 1)
    fc7 = nn.Linear(1, 2)
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0, 0] = 1.0
        conv1.bias.zero_()
        fc7.weight.copy_(torch.tensor([[1.0], [2.0]]))
        fc7.bias.zero_()
    module = nn.Sequential()
    for name, m in (("conv1", conv1), ("relu1", nn.ReLU()), ("avgpool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()), ("fc7", fc7), ("relu7", nn.ReLU()), ("fc8", nn.Linear(2, 7))):
        module.add_module(name, m)
    return Net(module, ModelMeta(arch="toy", input_size=16), device="cpu")


def test_linear_probe_on_frozen_features_is_exact_when_they_separate_the_classes():
    rng = np.random.default_rng(0)

    def images(n, red):
        a = rng.integers(0, 60, size=(n, 16, 16, 3)).astype(np.uint8)
        a[..., 0 if red else 2] = rng.integers(150, 255, size=(n, 16, 16))
        return a

    tr = np.concatenate([images(3, True), images(3, False)])
    va = np.concatenate([images(10, True), images(10, False)])
    res = linear_probe(red_detector(), tr, np.array([0] * 3 + [1] * 3), va, np.array([0] * 10 + [1] * 10), 2)
    assert res["top1"] == 1.0 and res["train_top1"] == 1.0 and res["n"] == 20
    with pytest.raises(KeyError, match="unknown layer"):
        linear_probe(red_detector(), tr, np.zeros(6), va, np.zeros(20), 2, layer="fc6")


def test_transfer_command_end_to_end(tmp_path):
    from deconvlab.cli import main

    data = stripes_dataset(tmp_path / "data", classes=4, per_class=10, val_per_class=3, size=64)
    out, work = tmp_path / "out", tmp_path / "work"
    rc = main(["transfer", "--data", str(data), "--work", str(work), "--out", str(out), "--shots", "1", "3",
               "--scratch-steps", "4", "--epochs", "2", "--batch-size", "5", "--width", "0.125",
               "--fc-size", "16", "--input-size", "64", "--layers", "fc7", "conv5", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "transfer.json").read_text())
    assert res["source_classes"] == ["c0", "c1"] and res["target_classes"] == ["c2", "c3"]
    assert res["class_overlap"] == [] and res["val_images"] == 6
    assert res["pretraining"]["recipe"]["epochs"] == 2 and 0 <= res["pretraining"]["val_top1"] <= 1
    assert [r["per_class"] for r in res["rows"]] == [1, 3]
    assert [r["train_images"] for r in res["rows"]] == [2, 6]
    assert res["layers"] == ["fc7", "conv5"]
    for r in res["rows"]:
        assert 0 <= r["pretrained"]["fc7"]["top1"] <= 1 and 0 <= r["scratch"]["top1"] <= 1
        assert r["pretrained"]["fc7"]["features"] == 16 and r["pretrained"]["conv5"]["features"] > 16
        assert r["scratch"]["steps"] == 4
    # the pretrained net saw only the source classes
    assert json.loads((work / "pretrain" / "config.json").read_text())["data"] == str(work / "source")
    assert sorted(p.name for p in (work / "source" / "train").iterdir()) == ["c0", "c1"]
    assert (out / "transfer.png").stat().st_size > 1000 and "| 3 |" in (out / "transfer.md").read_text()
    # a given pretrained checkpoint skips the pretraining
    rc = main(["transfer", "--data", str(data), "--work", str(work), "--out", str(out), "--shots", "2",
               "--scratch-steps", "4", "--model", str(work / "pretrain" / "model.safetensors"),
               "--width", "0.125", "--fc-size", "16", "--input-size", "64", "--no-progress"])
    assert rc == 0
    assert json.loads((out / "transfer.json").read_text())["pretraining"] is None
    assert main(["transfer", "--data", str(data), "--source-classes", "c7", "--out", str(out)]) == 2
