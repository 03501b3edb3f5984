"""Training: the recipe learns, renormalises filters, folds batch norm, and survives a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvlab.nets import ZFNetConfig, fold_batchnorm, load_checkpoint, zfnet
from deconvlab.training.train import (TrainConfig, filter_rms, one_cycle, prefetched, read_metrics,
                                      renormalise_filters, train)

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


def make_dataset(root: Path, per_class: int = 60, val_per_class: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Three classes told apart by colour and stripe direction, with noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, colour in enumerate(COLOURS):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(120, 30, (size, size, 3))
                yy, xx = np.mgrid[0:size, 0:size]
                stripes = ((xx if c == 0 else yy if c == 1 else xx + yy) // 6) % 2 == 0
                img[stripes] = np.array(colour) + rng.normal(0, 15, 3)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=6, batch_size=20, lr=0.1, width=0.25, fc_size=64,
                input_size=64, sizes="48:0.5", snapshots="1,2", progress=False, threads=1, seed=3,
                half_snapshots=False)
    base.update(kw)
    return TrainConfig(**base)


def test_renormalise_filters_caps_rms_at_threshold():
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0].fill_(0.5)  # RMS 0.5: scaled down to 0.1
        conv.weight[1].fill_(0.05)  # RMS 0.05: untouched
        conv.weight[2, 0].fill_(0.3)  # RMS 0.3 / sqrt(2): scaled down
    renormalise_filters(nn.Sequential(conv), 0.1)
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert rms.tolist() == pytest.approx([0.1, 0.05, 0.1], abs=1e-6)
    assert float(conv.weight.detach()[1, 0, 0, 0]) == pytest.approx(0.05)  # direction and small filters kept


def test_fold_batchnorm_computes_the_same_function():
    torch.manual_seed(0)
    m = zfnet(ZFNetConfig(num_classes=5, width=0.125, fc_size=32, norm="batch"))
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    m.eval()
    folded = fold_batchnorm(m).eval()
    assert not any(isinstance(x, nn.BatchNorm2d) for x in folded.modules())
    assert "bn1" not in dict(folded.named_children())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), m(x), rtol=1e-4, atol=1e-5)


def test_tiny_training_run_learns_and_keeps_filters_renormalised(tiny_data, tmp_path):
    out = tmp_path / "run"
    # start with every filter at RMS ~0.3, so the cap has work to do from the first step
    res = train(tiny_config(tiny_data, out, init_std=0.3))
    log = read_metrics(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r["size"] for r in log] == [48, 48, 48, 64, 64, 64]  # progressive resizing, then the model's size
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.3
    assert res["val"]["top1"] > 0.6  # three easy classes: chance is 0.33
    # after the last step no conv filter of the trained (unfolded) network exceeds RMS 0.1
    state = torch.load(out / "last.pt", weights_only=True)["model"]
    for name, w in state.items():
        if name.endswith(".weight") and w.ndim == 4:
            assert float(w.pow(2).mean(dim=(1, 2, 3)).sqrt().max()) <= 0.1 + 1e-6, name
    # exported model and snapshots: folded (no batch norm), loadable without pickle, same classes
    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta.arch == "zfnet" and meta.config["norm"] == "none" and meta.classes == ["c0", "c1", "c2"]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [
        "epoch-001.safetensors", "epoch-002.safetensors", "epoch-006.safetensors"]
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 3)


def test_training_without_renormalisation_lets_filters_grow(tiny_data, tmp_path):
    """The check above can fail: with the cap off, some filter does exceed RMS 0.1."""
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1, renorm_rms=0.0, init_std=0.3, sizes="", snapshots=""))
    state = torch.load(out / "last.pt", weights_only=True)["model"]
    worst = max(float(w.pow(2).mean(dim=(1, 2, 3)).sqrt().max())
                for n, w in state.items() if n.endswith(".weight") and w.ndim == 4)
    assert worst > 0.1


def test_kill_and_resume_continues_at_the_right_epoch_with_the_same_state(tiny_data, tmp_path):
    cfg_args = ["--data", str(tiny_data), "--epochs", "4", "--batch-size", "30", "--lr", "0.05",
                "--width", "0.25", "--fc-size", "64", "--input-size", "64", "--sizes", "48:0.5",
                "--snapshots", "", "--no-progress", "--threads", "1", "--seed", "5", "--no-half-snapshots"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "deconvlab.cli", "train"]
    ref = tmp_path / "ref"
    subprocess.run(cmd + ["--out", str(ref)] + cfg_args, check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(run)] + cfg_args, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = run / "last.pt"
    while time.time() < deadline:
        if ckpt.is_file() and torch.load(ckpt, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert 2 <= killed_at < 4, "the run finished before it could be killed"

    done = subprocess.run(cmd + ["--out", str(run)] + cfg_args, check=True, env=env, capture_output=True)
    assert json.loads(done.stdout.decode().strip().splitlines()[-1])["checkpoint"].endswith("model.safetensors")
    log = read_metrics(run)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]  # no epoch repeated or skipped
    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    # the optimiser's momentum buffers match too: the resumed run had the same optimiser state
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sb["momentum_buffer"], sa["momentum_buffer"], rtol=1e-5, atol=1e-6)


def test_prefetching_the_next_batch_in_a_thread_changes_no_number(tiny_data, tmp_path):
    """``prefetch`` crops batch i+1 in a second thread while the model trains on batch i. The
    crops draw from the run's generator; the run with prefetch must end with the same weights,
    momentum and generator state as the run without, so the thread reorders no draw."""
    runs = {}
    for prefetch in (False, True):
        out = tmp_path / f"prefetch-{prefetch}"
        train(tiny_config(tiny_data, out, epochs=2, sizes="48:0.5", snapshots="", prefetch=prefetch))
        runs[prefetch] = torch.load(out / "last.pt", weights_only=True)
    a, b = runs[False], runs[True]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(a["generator"], b["generator"])
    assert [r["train_loss"] for r in read_metrics(tmp_path / "prefetch-False")] == \
        [r["train_loss"] for r in read_metrics(tmp_path / "prefetch-True")]


def test_resume_refuses_a_different_recipe(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=1, sizes="", snapshots=""))
    with pytest.raises(ValueError, match="was written with epochs=1, this run has 2: use another --out"):
        train(tiny_config(tiny_data, out, epochs=2, sizes="", snapshots=""))


def _rates(sched: torch.optim.lr_scheduler.OneCycleLR, steps: int) -> list[float]:
    """The learning rate of each of the ``steps`` SGD steps, as the training loop uses them."""
    rates = [sched.get_last_lr()[0]]
    for _ in range(steps - 1):
        sched.optimizer.step()  # no gradients: changes nothing, keeps torch's step order
        sched.step()
        rates.append(sched.get_last_lr()[0])
    return rates


def _optimiser() -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


def test_one_cycle_is_torchs_schedule_at_real_lengths_and_defined_at_every_short_one():
    # the case it exists for: torch's own schedule divides by a warm-up phase of zero length
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(_optimiser(), max_lr=0.1, total_steps=4, pct_start=0.25)
    for warmup in (0.0, 0.1, 0.25, 0.5, 1.0):
        for steps in range(1, 4):  # a smoke test's few steps: defined, no warm-up, falling to the floor
            rates = _rates(one_cycle(_optimiser(), 0.1, warmup, steps), steps)
            assert all(0 < r <= 0.1 + 1e-12 for r in rates) and rates == sorted(rates, reverse=True)
            assert rates[-1] == pytest.approx(0.1 / 25e3), (warmup, steps, rates)
        for steps in range(4, 41):
            rates = _rates(one_cycle(_optimiser(), 0.1, warmup, steps), steps)
            assert all(0 < r <= 0.1 + 1e-12 for r in rates), (warmup, steps, rates)
            assert rates[0] == pytest.approx(0.1 / 25) and rates[-1] == pytest.approx(0.1 / 25e3)
            peak = rates.index(max(rates))
            assert 1 <= peak <= steps - 2 and max(rates) > 0.05, (warmup, steps, rates)  # it rises, then falls
            if 2 <= warmup * steps <= steps - 1.5:  # every real run: exactly torch's schedule, unchanged
                ref = torch.optim.lr_scheduler.OneCycleLR(_optimiser(), max_lr=0.1, total_steps=steps,
                                                          pct_start=warmup, div_factor=25, final_div_factor=1e3)
                assert rates == _rates(ref, steps)
    with pytest.raises(ValueError, match="expected at least 1 SGD step, got 0"):
        one_cycle(_optimiser(), 0.1, 0.25, 0)


def test_train_refuses_fewer_images_than_one_batch(tiny_data, tmp_path):
    # batch 20: 19 images are no step at all (it trained nothing before, and said nothing); 20 are one
    with pytest.raises(ValueError, match=r"expected at least batch_size=20 training images .*got 19"):
        train(tiny_config(tiny_data, tmp_path / "a", epochs=2, limit=19, sizes="", snapshots=""))
    assert not (tmp_path / "a").exists()  # refused before anything was written, not even snapshots/
    res = train(tiny_config(tiny_data, tmp_path / "b", epochs=4, limit=20, sizes="", snapshots=""))
    # 4 epochs of one step: the 0.25 warm-up is one step, where OneCycleLR alone divides by zero
    assert [m["epoch"] for m in read_metrics(tmp_path / "b")] == [1, 2, 3, 4] and Path(res["checkpoint"]).is_file()


def test_prefetched_yields_every_item_in_order_and_makes_the_next_one_meanwhile():
    made: list[int] = []
    started = {i: threading.Event() for i in range(5)}

    def make(i: int) -> int:
        started[i].set()
        made.append(i)
        return i * i

    assert list(prefetched(make, 5, None)) == [0, 1, 4, 9, 16] and made == [0, 1, 2, 3, 4]
    assert list(prefetched(make, 0, None)) == []
    made.clear()
    for e in started.values():
        e.clear()
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert list(prefetched(make, 0, pool)) == []
        out = []
        for item in prefetched(make, 5, pool):
            i = len(out)
            if i + 1 < 5:  # make(i + 1) runs in the pool while this item is in use: wait for it here
                assert started[i + 1].wait(10), f"make({i + 1}) did not start while item {i} was in use"
            else:
                time.sleep(0.05)
                assert made == [0, 1, 2, 3, 4]  # and nothing past the end
            out.append(item)
    assert out == [0, 1, 4, 9, 16] and made == [0, 1, 2, 3, 4]


def test_size_schedule_and_snapshot_epochs():
    cfg = TrainConfig(epochs=16, sizes="128:0.5,160:0.25", input_size=224, snapshots="1,2,5,10,20")
    assert [cfg.size_at(e) for e in range(16)] == [128] * 8 + [160] * 4 + [224] * 4
    assert cfg.snapshot_epochs() == {1, 2, 5, 10, 16}


def test_publish_registers_the_run_with_a_card(tiny_data, tmp_path, monkeypatch):
    from deconvlab.data import file_digest
    from deconvlab.training.modelcard import publish
    from deconvlab.nets import read_registry, resolve

    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, epochs=2, sizes="", snapshots="1"))
    models = tmp_path / "models"
    monkeypatch.setenv("DECONVLAB_MODELS", str(models))
    card = publish(out, "tiny", command="deconvlab train ...", default=True, progress=False)
    reg = read_registry()
    assert reg["default"] == "tiny" and reg["models"]["tiny"]["checkpoint"] == "tiny/model.safetensors"
    model, meta = resolve("tiny")
    assert meta.name == "tiny" and meta.classes == ["c0", "c1", "c2"]
    assert card["sha256"]["model.safetensors"] == file_digest(models / "tiny" / "model.safetensors")
    assert set(card["sha256"]) == {"model.safetensors", "snapshots/epoch-001.safetensors",
                                   "snapshots/epoch-002.safetensors"}
    assert card["val_images"] == 36 and 0 <= card["val_top1"] <= 1
    text = (models / "tiny" / "MODEL_CARD.md").read_text()
    assert f"Val top-1: {card['val_top1'] * 100:.2f}%" in text and "deconvlab train ..." in text


def test_publishing_again_replaces_the_snapshots_of_the_model_published_before(tiny_data, tmp_path, monkeypatch):
    """A second, longer run published under the same name keeps none of the first run's snapshots:
    its last epoch (here 2) would otherwise stay beside the new one and in the card's checksums."""
    from deconvlab.training.modelcard import publish

    monkeypatch.setenv("DECONVLAB_MODELS", str(tmp_path / "models"))
    train(tiny_config(tiny_data, tmp_path / "a", epochs=2, sizes="", snapshots="1"))
    publish(tmp_path / "a", "tiny", progress=False)
    text = (tmp_path / "models" / "tiny" / "MODEL_CARD.md").read_text()
    assert "| val top-1 | epoch time (s) |" in text and "subset" not in text
    # the second run evaluates its epochs on 10 val images (--val-limit); the card says so
    train(tiny_config(tiny_data, tmp_path / "b", epochs=3, sizes="", snapshots="1", val_limit=10))
    card = publish(tmp_path / "b", "tiny", progress=False)
    text = (tmp_path / "models" / "tiny" / "MODEL_CARD.md").read_text()
    assert "| val top-1 (subset) |" in text and "on a fixed random 10 of the val images" in text
    assert all(round(e["val_top1"] * 10, 9).is_integer() for e in card["epochs"] if "val_top1" in e)
    assert card["val_images"] == 36  # the card's own figure is on all of them
    on_disk = sorted(p.name for p in (tmp_path / "models" / "tiny" / "snapshots").iterdir())
    assert on_disk == ["epoch-001.safetensors", "epoch-003.safetensors"]
    assert set(card["sha256"]) == {"model.safetensors", "snapshots/epoch-001.safetensors",
                                   "snapshots/epoch-003.safetensors"}


@pytest.mark.parametrize("half", [True, False])
def test_publish_at_another_input_size_keeps_the_runs_precision_and_weights(tiny_data, tmp_path, monkeypatch, half):
    """``publish --input-size`` re-saves the checkpoint with a new ``input_size``; it used to ask the loaded
    model (always float32) whether to store fp16, so an fp16 run was published as fp32, twice the size."""
    from safetensors import safe_open

    from deconvlab.nets import load_checkpoint
    from deconvlab.training.modelcard import publish

    monkeypatch.setenv("DECONVLAB_MODELS", str(tmp_path / "models"))
    train(tiny_config(tiny_data, tmp_path / "run", epochs=1, sizes="", snapshots="", half_snapshots=half))
    publish(tmp_path / "run", "tiny", progress=False, input_size=72)

    def dtypes(path: Path) -> set[str]:
        with safe_open(str(path), framework="pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys() if "num_batches" not in k}

    run, shipped = tmp_path / "run" / "model.safetensors", tmp_path / "models" / "tiny" / "model.safetensors"
    assert dtypes(shipped) == dtypes(run) == {"F16" if half else "F32"}
    (a, meta_a), (b, meta_b) = load_checkpoint(run), load_checkpoint(shipped)
    assert (meta_a.input_size, meta_b.input_size) == (64, 72)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_resnet18_arch_trains_and_exports_a_checkpoint_that_loads_back(tiny_data, tmp_path):
    """``--arch resnet18``: torchvision's topology at half width trains, keeps its batch norm
    (not folded), and its exported checkpoint rebuilds to the same function."""
    from deconvlab.nets import load_checkpoint
    from deconvlab.nets.resnet import resnet18
    from deconvlab.training.train import build_model

    cfg = TrainConfig(arch="resnet18", width=0.5)
    model = build_model(cfg, 10)
    assert [m.out_channels for m in (model.conv1, model.layer2[0].conv1, model.layer4[1].conv2)] == [32, 64, 256]
    full = resnet18(10, width=1.0)
    import torchvision

    want = {k: v.shape for k, v in torchvision.models.resnet18(num_classes=10).state_dict().items()}
    assert {k: v.shape for k, v in full.state_dict().items()} == want
    cfg = tiny_config(tiny_data, tmp_path / "run", arch="resnet18", epochs=1, sizes="", renorm_rms=0,
                      snapshots="1")
    res = train(cfg)
    m, meta = load_checkpoint(res["checkpoint"])
    assert meta.arch == "resnet18" and meta.config == {"num_classes": 3, "width": 0.25}
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    x = torch.randn(2, 3, 64, 64)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    trained = build_model(cfg, 3)
    trained.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(m.eval()(x), trained.eval()(x), atol=1e-5)
