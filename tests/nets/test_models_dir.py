"""Where models and the browser app are found: ``models_dir``, ``read_registry``'s layering, ``_resources``.

The two layouts are made in temp folders: a wheel (``_resources.SHIPPED``
holds ``models/`` and ``frontend/``, no checkout) and a checkout (no shipped
copy, ``checkout_root()`` has ``models/`` and ``frontend/``). The wheel itself
is built and served in ``tests/test_wheel.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deconvlab import _resources
from deconvlab.nets import load_checkpoint, models_dir, read_registry, resolve
from deconvlab.nets.registry import SHIPPED_MARK, user_models_dir
from deconvlab.training.modelcard import register


def _models_folder(root: Path, checkpoint: Path, name: str = "zfnet-imagenette") -> Path:
    (root / name).mkdir(parents=True)
    shutil.copy2(checkpoint, root / name / "model.safetensors")
    (root / name / "MODEL_CARD.md").write_text(f"# {name}\n")
    (root / "registry.json").write_text(json.dumps({"default": name, "models": {name: {
        "checkpoint": f"{name}/model.safetensors", "card": f"{name}/MODEL_CARD.md", "weights": "torchvision"}}}))
    return root


@pytest.fixture
def layout(tmp_path, monkeypatch, small_checkpoint):
    """``make("wheel" | "checkout")``: the package's files laid out one way; the user folder empty."""
    monkeypatch.delenv("DECONVLAB_MODELS", raising=False)
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))

    def make(kind: str) -> Path:
        base = tmp_path / kind
        _models_folder(base / "models", small_checkpoint)
        (base / "frontend" / "tests").mkdir(parents=True)
        (base / "frontend" / "index.html").write_text("<!doctype html>")
        monkeypatch.setattr(_resources, "SHIPPED", base if kind == "wheel" else tmp_path / "no-shipped")
        monkeypatch.setattr(_resources, "checkout_root", lambda: base if kind == "checkout" else None)
        return base

    return make


def test_wheel_reads_the_shipped_models_through_the_user_folder(layout, small_checkpoint):
    base = layout("wheel")
    assert models_dir() == user_models_dir() and not user_models_dir().exists()  # nothing is written into the package
    reg = read_registry()
    entry = reg["models"]["zfnet-imagenette"]
    assert reg["default"] == "zfnet-imagenette" and entry[SHIPPED_MARK]
    assert Path(entry["checkpoint"]) == base / "models" / "zfnet-imagenette" / "model.safetensors"
    assert entry["weights"] == "torchvision"  # not a file: left as it is
    model, meta = resolve("zfnet-imagenette")
    direct, _ = load_checkpoint(small_checkpoint)
    assert meta.name == "zfnet-imagenette"
    for a, b in zip(model.state_dict().values(), direct.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert _resources.frontend_dir() == base / "frontend"
    assert _resources.shipped_models_dir() == base / "models"


def test_published_models_go_to_the_user_folder_on_top_of_the_shipped_ones(layout, small_checkpoint):
    base = layout("wheel")
    shipped_before = (base / "models" / "registry.json").read_bytes()
    mine = _models_folder(user_models_dir(), small_checkpoint, "mine")
    (mine / "registry.json").unlink()
    register("mine", {"checkpoint": "mine/model.safetensors"})  # what publish does, root left to models_dir()
    assert (base / "models" / "registry.json").read_bytes() == shipped_before
    reg = read_registry()
    assert sorted(reg["models"]) == ["mine", "zfnet-imagenette"] and reg["default"] == "mine"
    assert resolve("mine")[1].name == "mine" and resolve("zfnet-imagenette")[1].name == "zfnet-imagenette"
    register("zfnet-imagenette", {"checkpoint": "mine/model.safetensors"})  # same name: the user's wins
    assert read_registry()["models"]["zfnet-imagenette"] == {"checkpoint": "mine/model.safetensors"}


def test_a_saved_layered_registry_does_not_pin_the_old_package(layout, tmp_path, monkeypatch):
    layout("wheel")
    user = user_models_dir()
    user.mkdir(parents=True)
    (user / "registry.json").write_text(json.dumps(read_registry()))  # a read-modify-write saved it all
    moved = tmp_path / "upgraded"
    shutil.copytree(tmp_path / "wheel", moved)  # the package reinstalled elsewhere
    monkeypatch.setattr(_resources, "SHIPPED", moved)
    entry = read_registry()["models"]["zfnet-imagenette"]
    assert Path(entry["checkpoint"]).is_relative_to(moved)


def test_checkout_publishes_into_its_models_until_a_user_folder_exists(layout, small_checkpoint):
    base = layout("checkout")
    assert models_dir() == base / "models"  # `make train` publishes the committed default model here
    assert SHIPPED_MARK not in read_registry()["models"]["zfnet-imagenette"]  # the checkout's folder is read alone
    user = _models_folder(user_models_dir(), small_checkpoint, "mine")
    (user / "registry.json").write_text(json.dumps({"models": {"mine": {"checkpoint": "mine/model.safetensors"}}}))
    assert models_dir() == user
    reg = read_registry()
    assert sorted(reg["models"]) == ["mine", "zfnet-imagenette"] and reg["default"] == "zfnet-imagenette"
    assert _resources.frontend_dir() == base / "frontend"


def test_deconvlab_models_is_read_alone(layout, small_models_dir, monkeypatch):
    layout("wheel")
    monkeypatch.setenv("DECONVLAB_MODELS", str(small_models_dir))
    assert models_dir() == small_models_dir
    assert read_registry() == json.loads((small_models_dir / "registry.json").read_text())


def test_no_app_and_no_models_anywhere(layout, monkeypatch, tmp_path):
    layout("wheel")
    monkeypatch.setattr(_resources, "SHIPPED", tmp_path / "none")
    assert _resources.frontend_dir() is None and _resources.shipped_models_dir() is None
    assert models_dir() == user_models_dir() and read_registry()["models"] == {}


@pytest.mark.parametrize("rel, ok", [("index.html", True), ("js/views/unit.js", True), ("css/app.css", True),
                                     ("tests/api.test.mjs", False), ("README.md", False), (".git/x", False),
                                     ("js/.hidden", False), ("", False)])
def test_app_files(rel, ok):
    assert _resources.is_app_file(rel) is ok


def test_the_checkout_is_recognised_by_its_layout():
    root = _resources.checkout_root()
    assert root is not None and (root / "backend" / "deconvlab" / "_resources.py").is_file()
