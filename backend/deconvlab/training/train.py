"""Training: the paper's recipe, tuned so a ZFNet trains on two CPU cores.

From Zeiler & Fergus (2013), Sec. 3: SGD with momentum 0.9, learning rate 1e-2
annealed, dropout 0.5 before fc6 and fc7, weights N(0, 1e-2) and biases 0,
random crops and horizontal flips, and *filter renormalisation*: after every
step each conv filter whose RMS exceeds 0.1 is scaled back to RMS 0.1.

Additions for a short CPU budget (all recorded in the model card): batch norm
after each conv (folded into the conv weights when a checkpoint is exported, so
the deconvnet sees plain filters), label smoothing, a one-cycle learning-rate
schedule with Nesterov momentum, weight decay, and progressive resizing (early
epochs at a smaller resolution; the adaptive pool before fc6 is the identity at
224 px, so the final epochs and every use of the model are at the full size).

Images are decoded once into uint8 arrays; random-resized crops of a whole
batch are taken in one ``roi_align`` call. torchvision's CPU ``roi_align`` runs
on one thread (a batch of 64 at 160 px: 0.21 s on one torch thread, 0.19 s on
two), so with ``prefetch`` the next batch is cropped in a second thread while
the model trains on this one: 1.14x faster epochs on two idle cores, slower
when other work keeps both cores busy. Only that thread draws from the
run's generator, in batch order, so the numbers are the same either way
(``tests/training/test_train.py`` checks it; ``bench/bench_train.py`` times it).

The loop saves ``last.pt`` (model, optimiser, schedule, RNG) after every epoch
and resumes from it; snapshots (folded, safetensors) are written at the epochs
of Fig. 4 (1, 2, 5, 10, 20, 30, ...) and at the last.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Split, decoded, list_split
from ..net import pick_device
from ..nets import ModelMeta, ZFNetConfig, fold_batchnorm, save_checkpoint, zfnet
from ..nets.registry import IMAGENET_MEAN, IMAGENET_STD


T_ = TypeVar("T_")  # what prefetched() yields


@dataclass
class TrainConfig:
    data: str = ""  # ImageFolder root with train/ and val/
    arch: str = "zfnet"  # "zfnet" (the paper's net) or "resnet18" (torchvision's topology, nets/resnet.py)
    out: str = "runs/zfnet"  # output folder: last.pt, metrics.jsonl, snapshots/, model.safetensors
    epochs: int = 16  # total epochs
    batch_size: int = 64  # images per SGD step
    lr: float = 0.1  # peak learning rate of the one-cycle schedule (the paper: 1e-2, annealed by hand)
    momentum: float = 0.9  # the paper's momentum
    nesterov: bool = True  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 on conv and fc weights (not on biases and BN)
    warmup: float = 0.25  # fraction of steps spent rising to the peak learning rate
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    width: float = 0.5  # width multiplier (ZFNet 0.5: 48, 128, 192, 192, 128 filters; ResNet-18 0.5: 32..256)
    fc_size: int = 1024  # fc6/fc7 units (ZFNet)
    batch_norm: bool = True  # BN after every conv, folded into the conv on export (ZFNet; a ResNet keeps its BN)
    drop_layers: list[str] = field(default_factory=list)  # architecture ablation (ZFNetConfig.drop_layers)
    conv1_kernel: int = 7  # first-layer kernel (11 for Krizhevsky's)
    conv1_stride: int = 2  # first-layer stride (4 for Krizhevsky's)
    input_size: int = 224  # the model's input size (and the last epochs' training size)
    sizes: str = "128:0.5,160:0.25"  # progressive resizing: "px:fraction of epochs,...", the rest at input_size
    crop_scale: float = 0.35  # smallest area fraction of a random-resized crop
    renorm_rms: float = 0.1  # filter renormalisation threshold (the paper's 1e-1); 0 turns it off
    init_std: float = 0.01  # ZFNet: std of the initial conv filters (the paper's 1e-2; fc 1e-2, biases 0)
    snapshots: str = "1,2,5,10,20,30,40,50,60,70,80,90,100"  # epochs that keep a snapshot (and the last)
    eval_every: int = 0  # evaluate on val every N epochs (0: only at snapshots and the end)
    limit: int = 0  # train on a fixed random subset of N training images (0: all; for tests)
    val_limit: int = 0  # evaluate on a fixed subset of N val images (0: all)
    seed: int = 0  # seeds torch and numpy; the same seed gives the same run
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch CPU threads (0: torch's default)
    progress: bool = True  # show progress bars
    half_snapshots: bool = True  # store snapshots and the final model in fp16
    prefetch: bool = True  # crop the next batch in a second thread while the model trains on this one (same numbers)

    def size_at(self, epoch: int) -> int:
        """Training resolution of 0-based ``epoch`` under the progressive-resizing plan."""
        start = 0.0
        for part in filter(None, self.sizes.split(",")):
            px, frac = part.split(":")
            end = start + float(frac) * self.epochs
            if epoch < math.floor(end + 1e-9):
                return int(px)
            start = end
        return self.input_size

    def snapshot_epochs(self) -> set[int]:
        s = {int(e) for e in self.snapshots.split(",") if e.strip() and int(e) <= self.epochs}
        return s | {self.epochs}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl`` (one JSON object per epoch), in order."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]


@torch.no_grad()
def renormalise_filters(model: nn.Module, max_rms: float = 0.1) -> None:
    """Scale every conv filter whose RMS exceeds ``max_rms`` back to ``max_rms`` (Sec. 3 of the paper)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            rms = w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            w.mul_(torch.where(rms > max_rms, max_rms / rms, torch.ones_like(rms)))


def filter_rms(model: nn.Module) -> dict[str, float]:
    """Largest filter RMS per conv layer."""
    return {n: float(m.weight.pow(2).mean(dim=(1, 2, 3)).sqrt().max())
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


class Augment:
    """Batched random-resized crop + horizontal flip + normalisation, on uint8 NHWC batches."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_scale: float = 0.35,
                 device: torch.device = torch.device("cpu")):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.crop_scale = crop_scale

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def __call__(self, batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
        from torchvision.ops import roi_align

        x = batch.permute(0, 3, 1, 2).float()
        n, _, h, w = x.shape
        area = torch.empty(n).uniform_(self.crop_scale, 1.0, generator=gen) * h * w
        logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
        ratio = torch.exp(logr)
        cw = torch.sqrt(area * ratio).clamp(8, w)
        ch = torch.sqrt(area / ratio).clamp(8, h)
        x0 = torch.rand(n, generator=gen) * (w - cw)
        y0 = torch.rand(n, generator=gen) * (h - ch)
        boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1)
        out = roi_align(x, boxes.to(x.device), output_size=(size, size), spatial_scale=1.0,
                        sampling_ratio=2, aligned=True)
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
        return (out - self.mean) / self.std


ARCHS = ("zfnet", "resnet18")


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """A freshly initialised model: the paper's ZFNet (weights N(0, init_std)) or a ResNet-18
    (torchvision's initialisation, the last BN of each block at zero: He et al.'s and Goyal et al.'s trick)."""
    if cfg.arch == "resnet18":
        from ..nets.resnet import resnet18

        return resnet18(num_classes, width=cfg.width, zero_init_residual=True)
    if cfg.arch != "zfnet":
        raise ValueError(f"arch: expected one of {list(ARCHS)}, got {cfg.arch!r}")
    zc = ZFNetConfig(num_classes=num_classes, width=cfg.width, fc_size=cfg.fc_size,
                     input_size=cfg.input_size, norm="batch" if cfg.batch_norm else "lrn",
                     conv1_kernel=cfg.conv1_kernel, conv1_stride=cfg.conv1_stride,
                     drop_layers=list(cfg.drop_layers))
    model = zfnet(zc)  # weights N(0, 1e-2), biases 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, cfg.init_std)
    return model


def export_meta(cfg: TrainConfig, split: Split, name: str = "") -> ModelMeta:
    """Meta of the exported model (a folded ZFNet's config has no batch norm)."""
    if cfg.arch == "resnet18":
        return ModelMeta(arch="resnet18", config={"num_classes": len(split.class_ids), "width": cfg.width},
                         classes=split.labels, class_ids=list(split.class_ids), input_size=cfg.input_size,
                         name=name)
    zc = ZFNetConfig(num_classes=len(split.class_ids), width=cfg.width, fc_size=cfg.fc_size,
                     input_size=cfg.input_size, norm="none" if cfg.batch_norm else "lrn",
                     conv1_kernel=cfg.conv1_kernel, conv1_stride=cfg.conv1_stride,
                     drop_layers=list(cfg.drop_layers))
    return ModelMeta(arch="zfnet", config=zc.to_dict(), classes=split.labels,
                     class_ids=list(split.class_ids), input_size=cfg.input_size, name=name)


def export(model: nn.Module, cfg: TrainConfig, split: Split, path: Path, name: str = "") -> Path:
    fold = cfg.batch_norm and cfg.arch == "zfnet"
    folded = fold_batchnorm(model.cpu().eval()) if fold else model.cpu().eval()
    return save_checkpoint(path, folded, export_meta(cfg, split, name), half=cfg.half_snapshots)


@torch.no_grad()
def evaluate_arrays(model: nn.Module, images: np.ndarray, targets: np.ndarray, num_classes: int,
                    batch_size: int = 128, device: torch.device = torch.device("cpu"),
                    progress: bool = False) -> dict:
    """Top-1, per-class accuracy and confusion matrix of ``model`` on decoded images."""
    from tqdm import tqdm

    model.eval()
    aug = Augment(device=device)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in tqdm(range(0, len(images), batch_size), desc="evaluate", disable=not progress, leave=False):
        x = aug.normalise(torch.from_numpy(np.array(images[i:i + batch_size])).to(device)
                          .permute(0, 3, 1, 2))
        pred = model(x).argmax(1).cpu().numpy()
        np.add.at(conf, (targets[i:i + batch_size], pred), 1)
    per_class = conf.diagonal() / np.maximum(conf.sum(1), 1)
    return {"top1": float(conf.diagonal().sum() / max(conf.sum(), 1)),
            "per_class": per_class.tolist(), "confusion": conf.tolist(), "n": int(conf.sum())}


def sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with ``cfg``'s momentum (Nesterov or not); weight decay on conv and fc weights only, not on
    biases and batch-norm parameters (the tensors of one dimension)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, warmup: float,
              steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule over ``steps`` SGD steps: a ``warmup`` fraction rising from ``max_lr / 25`` to
    ``max_lr``, then a cosine down to ``max_lr / 25e3``.

    OneCycleLR divides by the length of each phase, ``warmup * steps - 1`` steps up and the rest down, so
    a phase of zero length is a ZeroDivisionError (a warm-up of 0.25 over 4 steps). From 4 steps on, the
    warm-up is kept to at least two steps on each side of the peak; at the lengths of real runs
    (``warmup * steps >= 2``) it is the fraction asked for, unchanged. Under 4 steps (a smoke test) there
    is no warm-up: the fraction is cut to half a step at most, and the rate falls from near its peak.
    """
    if steps < 1:
        raise ValueError(f"steps: expected at least 1 SGD step, got {steps}")
    pct = min(max(warmup, 2 / steps), 1 - 1.5 / steps) if steps >= 4 else min(warmup, 0.5 / steps)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=pct,
                                               div_factor=25, final_div_factor=1e3)


def prefetched(make: Callable[[int], T_], n: int, pool: ThreadPoolExecutor | None) -> Iterator[T_]:
    """``make(0), ..., make(n - 1)``, in order. With a ``pool``, ``make(i + 1)`` runs in its thread while
    the caller works on ``make(i)``.

    The pool must have one worker: the calls then run one at a time and in order, so a random generator
    that ``make`` draws from sees the same draws as without a pool, and training gives the same numbers.
    """
    if pool is None:
        yield from map(make, range(n))
        return
    pending = pool.submit(make, 0) if n else None
    for i in range(n):
        item = pending.result()
        pending = pool.submit(make, i + 1) if i + 1 < n else None
        yield item


def _subset(n: int, limit: int, seed: int) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the final metrics."""
    from tqdm import tqdm

    out = Path(cfg.out)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    train_split = list_split(cfg.data, "train")
    val_split = list_split(cfg.data, "val")
    if train_split.class_ids != val_split.class_ids:
        raise ValueError(f"train and val classes differ: {train_split.class_ids} vs {val_split.class_ids}")
    nc = len(train_split.class_ids)
    tr_idx = _subset(len(train_split), cfg.limit, cfg.seed)
    va_idx = _subset(len(val_split), cfg.val_limit, 1234)
    tr_images = decoded(train_split, cfg.input_size, progress=cfg.progress)
    va_images = decoded(val_split, cfg.input_size, progress=cfg.progress)
    tr_targets = np.asarray(train_split.targets)[tr_idx]
    va_targets = np.asarray(val_split.targets)[va_idx]
    va_arr = va_images[va_idx] if cfg.val_limit else va_images

    model = build_model(cfg, nc).to(device).to(memory_format=torch.channels_last)  # ~30% faster on CPU too
    opt = sgd(model, cfg)
    steps_per_epoch = len(tr_idx) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"expected at least batch_size={cfg.batch_size} training images (one SGD step an "
                         f"epoch), got {len(tr_idx)}: use more images or a smaller batch_size")
    sched = one_cycle(opt, cfg.lr, cfg.warmup, steps_per_epoch * cfg.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch = 0
    ckpt = out / "last.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        saved = state["config"]
        for k in ("arch", "epochs", "batch_size", "width", "fc_size", "batch_norm", "lr", "sizes", "seed"):
            if saved.get(k, "zfnet" if k == "arch" else None) != getattr(cfg, k):
                raise ValueError(f"{ckpt} was written with {k}={saved.get(k)!r}, this run has "
                                 f"{getattr(cfg, k)!r}: use another --out or delete it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
        # drop log lines of epochs the checkpoint does not hold (killed between log and save)
        mpath = out / "metrics.jsonl"
        if mpath.is_file():
            kept = [ln for ln in mpath.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["epoch"] <= start_epoch]
            mpath.write_text("".join(ln + "\n" for ln in kept))
    (out / "snapshots").mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves nothing
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    aug = Augment(crop_scale=cfg.crop_scale, device=device)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    log = open(out / "metrics.jsonl", "a")
    snaps = cfg.snapshot_epochs()
    result: dict = {}
    t_start = time.time()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment") if cfg.prefetch else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            size = cfg.size_at(epoch)
            perm = torch.randperm(len(tr_idx), generator=gen).numpy()
            seen = correct = 0
            loss_sum = 0.0
            t0 = time.time()

            def batch(step: int, size: int = size, perm: np.ndarray = perm) -> tuple[torch.Tensor, torch.Tensor]:
                sel = np.sort(tr_idx[perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]])
                xb = torch.from_numpy(np.array(tr_images[sel])).to(device)
                yb = torch.from_numpy(tr_targets[np.searchsorted(tr_idx, sel)]).to(device)
                return aug(xb, size, gen).contiguous(memory_format=torch.channels_last), yb

            bar = tqdm(prefetched(batch, steps_per_epoch, pool), total=steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{cfg.epochs} @{size}px", disable=not cfg.progress, unit="step")
            for x, yb in bar:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = model(x)
                    loss = crit(logits.float(), yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if cfg.renorm_rms > 0:
                    renormalise_filters(model, cfg.renorm_rms)
                n = len(yb)
                seen += n
                loss_sum += float(loss.detach()) * n
                correct += int((logits.detach().argmax(1) == yb).sum())
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.time() - t0):.0f}")
            bar.close()
            e = epoch + 1
            rec = {"epoch": e, "size": size, "train_loss": loss_sum / max(seen, 1),
                   "train_acc": correct / max(seen, 1), "lr": sched.get_last_lr()[0],
                   "epoch_s": time.time() - t0, "img_s": seen / max(time.time() - t0, 1e-9)}
            if e in snaps or (cfg.eval_every and e % cfg.eval_every == 0):
                ev = evaluate_arrays(model, va_arr, va_targets, nc, device=device)
                rec["val_top1"] = ev["top1"]
                result = {"val": ev}
            if e in snaps:
                export(model, cfg, train_split, out / "snapshots" / f"epoch-{e:03d}.safetensors",
                       name=f"epoch-{e}")
                model.to(device)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "generator": gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "epoch": e, "config": asdict(cfg)}, tmp)
            os.replace(tmp, ckpt)
            if cfg.progress:
                msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
                tqdm.write(msg)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    log.close()
    path = export(model, cfg, train_split, out / "model.safetensors")
    result.update({"checkpoint": str(path), "wall_s": time.time() - t_start})
    return result
