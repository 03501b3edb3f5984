"""The shipped default model: loads without unpickling and is as accurate as its card says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deconvlab.data import file_digest
from deconvlab.nets import load_checkpoint, models_dir, read_registry, resolve

ROOT = models_dir()
DATA = os.environ.get("DECONVLAB_DATA", "")


def test_registry_names_the_default_model_and_its_files_match_the_card():
    reg = read_registry()
    assert reg["default"] == "zfnet-imagenette"
    entry = reg["models"]["zfnet-imagenette"]
    card = json.loads((ROOT / "zfnet-imagenette" / "card.json").read_text())
    for rel, sha in card["sha256"].items():
        assert file_digest(ROOT / "zfnet-imagenette" / rel) == sha, rel
    assert (ROOT / entry["checkpoint"]).stat().st_size < 20 * 2**20


def test_checkpoint_is_safetensors_not_a_pickle():
    path = ROOT / "zfnet-imagenette" / "model.safetensors"
    head = path.read_bytes()[:16]
    assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # neither pickle nor torch zip
    model, meta = load_checkpoint(path)
    assert meta.arch == "zfnet" and meta.input_size == 224 and len(meta.classes) == 10
    assert meta.config["norm"] == "none"  # batch norm folded


@pytest.mark.skipif(not Path(DATA, "val").is_dir(), reason="DECONVLAB_DATA (Imagenette) is not on this machine")
def test_default_model_reaches_78_percent_on_a_fixed_val_subset():
    from deconvlab.training.evaluate import evaluate_model

    res = evaluate_model("zfnet-imagenette", data=DATA, split="val", limit=500, device="cpu", progress=False)
    assert res["n"] == 500
    assert res["top1"] >= 0.78, res["top1"]


def test_snapshots_load_for_feature_evolution():
    snaps = sorted((ROOT / "zfnet-imagenette" / "snapshots").glob("epoch-*.safetensors"))
    assert [p.name for p in snaps][:2] == ["epoch-001.safetensors", "epoch-002.safetensors"]
    _, meta = resolve("zfnet-imagenette")
    for p in snaps:
        _, m = load_checkpoint(p)
        assert m.config == meta.config


def test_the_resnet_is_registered_beside_the_default_and_its_files_match_its_card():
    reg = read_registry()
    assert reg["default"] == "zfnet-imagenette" and "resnet18-imagenette" in reg["models"]
    card = json.loads((ROOT / "resnet18-imagenette" / "card.json").read_text())
    for rel, sha in card["sha256"].items():
        assert file_digest(ROOT / "resnet18-imagenette" / rel) == sha, rel
    model, meta = resolve("resnet18-imagenette")
    assert meta.arch == "resnet18" and meta.input_size == card["served_input_size"] and len(meta.classes) == 10
    assert type(model).__name__ == "ResNet"  # torchvision's own module, run by the graph engine


@pytest.mark.slow
@pytest.mark.skipif(not Path(DATA, "val").is_dir(), reason="DECONVLAB_DATA (Imagenette) is not on this machine")
def test_the_resnet_reaches_86_percent_on_a_fixed_val_subset():
    from deconvlab.training.evaluate import evaluate_model

    res = evaluate_model("resnet18-imagenette", data=DATA, split="val", limit=500, device="cpu", progress=False)
    assert res["n"] == 500
    assert res["top1"] >= 0.86, res["top1"]
