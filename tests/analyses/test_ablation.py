"""Architecture ablation (Table 3, Fig. 6): variant configs, and the command on a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deconvlab.analyses.ablation import VARIANTS, count_parameters, table_markdown, variant_config
from deconvlab.nets import load_checkpoint
from deconvlab.training.train import TrainConfig


def stripes_dataset(root: Path, classes: int = 3, per_class: int = 8, val_per_class: int = 3, size: int = 96,
                    seed: int = 0) -> Path:
    """Classes told apart by colour and stripe direction."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (220, 200, 40)]
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(120, 30, (size, size, 3))
                stripes = ((xx if c % 2 == 0 else yy) // 6) % 2 == 0
                img[stripes] = np.array(colours[c]) + rng.normal(0, 15, 3)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))


def test_variant_configs_change_only_the_architecture():
    base = TrainConfig(width=0.5, fc_size=1024, epochs=3, seed=7)
    k = variant_config(base, "krizhevsky-conv1", "o")
    assert (k.conv1_kernel, k.conv1_stride, k.width, k.fc_size) == (11, 4, 0.5, 1024)
    assert variant_config(base, "no-fc6-fc7", "o").drop_layers == ["fc6", "fc7"]
    assert variant_config(base, "no-conv3-conv4", "o").drop_layers == ["conv3", "conv4"]
    wide = variant_config(base, "wide", "o")
    assert (wide.width, wide.fc_size) == (0.75, 2048)
    narrow = variant_config(base, "narrow", "o")
    assert (narrow.width, narrow.fc_size) == (0.25, 512)
    for name in VARIANTS:  # the recipe and budget stay the same
        c = variant_config(base, name, f"runs/{name}")
        assert (c.epochs, c.seed, c.lr, c.batch_size, c.out) == (3, 7, base.lr, base.batch_size, f"runs/{name}")
    assert count_parameters(variant_config(base, "no-fc6-fc7", "o"), 10) < count_parameters(base, 10)
    with pytest.raises(KeyError, match="unknown variant"):
        variant_config(base, "resnet", "o")


def test_table_markdown():
    md = table_markdown({"rows": [{"variant": "zfnet", "description": "d", "val_error": 0.25, "train_error": 0.2,
                                   "parameters": 2_500_000, "train_wall_s": 12.3}]})
    assert "| zfnet | d | 25.0% | 20.0% | 2.50 M | 12 |" in md


def test_ablation_command_end_to_end(tmp_path):
    from deconvlab.cli import main

    data = stripes_dataset(tmp_path / "data")
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["ablation", "--data", str(data), "--work", str(work), "--out", str(out),
            "--variants", "zfnet", "krizhevsky-conv1", "no-conv3-conv4-fc6-fc7",
            "--epochs", "1", "--batch-size", "12", "--width", "0.125", "--fc-size", "16", "--input-size", "96",
            "--no-progress"]
    assert main(args) == 0
    table = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == ["zfnet", "krizhevsky-conv1", "no-conv3-conv4-fc6-fc7"]
    assert table["recipe"]["epochs"] == 1 and table["recipe"]["input_size"] == 96
    for r in rows.values():
        assert 0.0 <= r["val_error"] <= 1.0 and Path(r["checkpoint"]).is_file()
    # each variant really has its architecture
    m, _ = load_checkpoint(rows["krizhevsky-conv1"]["checkpoint"])
    assert m.conv1.kernel_size == (11, 11) and m.conv1.stride == (4, 4)
    m, _ = load_checkpoint(rows["no-conv3-conv4-fc6-fc7"]["checkpoint"])
    names = [n for n, _ in m.named_children()]
    assert "conv3" not in names and "fc6" not in names and "fc8" in names
    assert "| krizhevsky-conv1 |" in (out / "ablation.md").read_text()
    with Image.open(out / "ablation_filters.png") as im:
        assert im.width > 100 and np.asarray(im.convert("L")).std() > 10
    # a second call finds the finished runs and trains nothing again
    mtime = (work / "zfnet" / "last.pt").stat().st_mtime
    assert main(args[:8] + ["zfnet"] + args[11:]) == 0
    assert (work / "zfnet" / "last.pt").stat().st_mtime == mtime
    with pytest.raises(SystemExit):
        main(["ablation", "--data", str(data), "--variants", "vgg", "--out", str(out)])
