"""Feature transfer to another data set (Zeiler & Fergus 2013, Sec. 5.2 and Table 4).

Sec. 5.2 of the paper: "we keep layers 1-7 of our ImageNet-trained model
fixed and train a new softmax classifier on top (for the appropriate number
of classes) using the training images of the new dataset", and compares with
"the same architecture trained from scratch" on those images (Table 4:
Caltech-101 with 15 and 30 images per class: 83.8% / 86.5% pretrained
against 22.8% / 46.5% from scratch).

Here:

* ``linear_probe``: the features of a frozen network at ``fc7`` (after its
  ReLU), and a new softmax (multinomial logistic regression) trained on them;
* ``train_from_scratch``: the same architecture, initialised as in the paper
  and trained with the training recipe (``train.TrainConfig``: SGD with
  Nesterov momentum, one-cycle schedule, label smoothing, random crops and
  flips, batch norm folded, filter renormalisation) on the same few images
  for a fixed number of SGD steps;
* ``class_split`` and ``make_view``: the demonstration on Imagenette, whose
  10 classes are split in two: features trained on one half (``train.train``
  on a view of those classes), transferred to the other half with N images
  per class. Views are folders of symbolic links (ImageFolder layout); no
  image is copied.

Assumptions, stated once:

* The N training images per class are a seeded random sample of that class's
  train folder; the same sample is used by the probe and by the from-scratch
  net. Accuracy is top-1 on the whole val split of the target classes.
* The probe sees each training image as the centre view and its mirror image
  (the paper does not say; two views are cheap). Features are standardised
  with the training images' mean and std, and the softmax is fitted by
  L-BFGS with an L2 penalty ``weight_decay`` (fixed, not tuned on val).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import IMAGE_SUFFIXES, decoded, list_split
from ..training.train import TrainConfig
from .report import write_report


# ------------------------------------------------------------------ views

def class_split(class_ids: Sequence[str], source: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """``(source classes, target classes)``: ``source`` as given (default: the first half of the
    sorted classes), the target the rest."""
    ids = sorted(class_ids)
    if len(ids) < 2:
        raise ValueError(f"class_split: expected at least 2 classes, got {ids}")
    src = list(source) if source else ids[:len(ids) // 2]
    bad = [c for c in src if c not in ids]
    if bad:
        raise ValueError(f"source classes: expected some of {ids}, got unknown {bad}")
    tgt = [c for c in ids if c not in src]
    if not src or not tgt:
        raise ValueError(f"class_split: expected both halves non-empty, got source {src} and target {tgt}")
    return sorted(src), tgt


def make_view(root: str | Path, dest: str | Path, classes: Sequence[str], per_class: int = 0,
              seed: int = 0) -> Path:
    """An ImageFolder view of ``root`` with only ``classes``, made of symbolic links.

    ``train/<class>`` links the whole class folder, or, when ``per_class`` > 0,
    is a folder of links to ``per_class`` seeded-random images of it;
    ``val/<class>`` links the whole val folder. ``dest`` is rebuilt.
    """
    root, dest = Path(root).resolve(), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for split in ("train", "val"):
        for c in classes:
            src = root / split / c
            if not src.is_dir():
                raise FileNotFoundError(f"class {c!r}: expected a folder {src}")
            (dest / split).mkdir(parents=True, exist_ok=True)
            if split == "val" or per_class <= 0:
                os.symlink(src, dest / split / c, target_is_directory=True)
                continue
            files = sorted(f.name for f in src.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if per_class > len(files):
                raise ValueError(f"per_class: class {c!r} has {len(files)} training images, expected at most "
                                 f"that many, got {per_class}")
            rng = np.random.default_rng([seed, sorted(classes).index(c)])
            (dest / split / c).mkdir()
            for name in sorted(rng.choice(files, size=per_class, replace=False)):
                os.symlink(src / name, dest / split / c / name)
    return dest


# ------------------------------------------------------------------ frozen features + softmax

def _normalised(arr: np.ndarray, meta, device) -> torch.Tensor:
    from .evolution import normalise

    return normalise(arr, meta.mean, meta.std).to(device)


@torch.no_grad()
def features(net, images: np.ndarray, layer: str = "fc7", batch_size: int = 128, flip: bool = False,
             progress: bool = False) -> torch.Tensor:
    """``layer``'s activations (N, D) of a frozen ``Net`` for uint8 images (N, S, S, 3)."""
    from tqdm import tqdm

    if layer not in net.layers:
        raise KeyError(f"unknown layer: expected one of {net.layers}, got {layer!r}")
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=f"features {layer}", disable=not progress, leave=False):
        x = _normalised(images[i:i + batch_size], net.meta, net.device)
        if flip:
            x = x.flip(-1)
        out.append(net.forward(x, switches=False).activations[layer].flatten(1).float().cpu())
    return torch.cat(out)


def fit_softmax(feats: torch.Tensor, targets: torch.Tensor, num_classes: int, weight_decay: float = 1e-2,
                max_iter: int = 300) -> nn.Module:
    """A new softmax classifier on fixed features: standardisation, then a linear layer fitted by
    L-BFGS on the mean cross-entropy + ``weight_decay`` * ||W||^2 / 2."""
    mean = feats.mean(0)
    std = feats.std(0, unbiased=False).clamp_min(1e-6)
    z = (feats - mean) / std
    lin = nn.Linear(feats.shape[1], num_classes).double()
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    zd, t = z.double(), targets.long()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(zd), t) + 0.5 * weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    class _Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", mean.double())
            self.register_buffer("std", std.double())
            self.lin = lin

        def forward(self, f):
            return self.lin((f.double() - self.mean) / self.std)

    return _Head().eval()


def accuracy(pred: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict:
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (targets.numpy(), pred.numpy()), 1)
    per = conf.diagonal() / np.maximum(conf.sum(1), 1)
    return {"top1": float(conf.diagonal().sum() / max(conf.sum(), 1)), "per_class": per.tolist(),
            "n": int(conf.sum())}


def linear_probe(net, train_images: np.ndarray, train_targets: np.ndarray, val_images: np.ndarray,
                 val_targets: np.ndarray, num_classes: int, layer: str = "fc7", weight_decay: float = 1e-2,
                 val_features: torch.Tensor | None = None, progress: bool = False) -> dict:
    """Table 4's "pretrained" row: frozen features up to ``layer``, a new softmax on top."""
    ft = torch.cat([features(net, train_images, layer), features(net, train_images, layer, flip=True)])
    tt = torch.as_tensor(np.concatenate([train_targets, train_targets])).long()
    head = fit_softmax(ft, tt, num_classes, weight_decay)
    fv = val_features if val_features is not None else features(net, val_images, layer, progress=progress)
    with torch.no_grad():
        pred = head(fv).argmax(1)
    res = accuracy(pred, torch.as_tensor(np.asarray(val_targets)).long(), num_classes)
    with torch.no_grad():
        res["train_top1"] = float((head(ft).argmax(1) == tt).double().mean())
    return res


# ------------------------------------------------------------------ from scratch

def train_from_scratch(cfg: TrainConfig, images: np.ndarray, targets: np.ndarray, num_classes: int,
                       steps: int, val_images: np.ndarray, val_targets: np.ndarray,
                       progress: bool = False) -> dict:
    """Table 4's "non-pretrained" row: ``train``'s recipe on a handful of images for ``steps`` SGD steps
    (batches of ``min(cfg.batch_size, len(images))`` images, drawn as epochs of shuffled images)."""
    from tqdm import tqdm

    from ..nets import fold_batchnorm
    from ..training.train import (Augment, build_model, evaluate_arrays, one_cycle, pick_device,
                                  renormalise_filters, sgd)

    if steps < 4:
        raise ValueError(f"steps: expected at least 4 SGD steps (a one-cycle schedule), got {steps}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg, num_classes).to(device)
    opt = sgd(model, cfg)
    sched = one_cycle(opt, cfg.lr, cfg.warmup, steps)
    aug = Augment(crop_scale=cfg.crop_scale, device=device)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    n = len(images)
    bs = min(cfg.batch_size, n)
    order = np.empty(0, dtype=np.int64)
    t0 = time.time()
    model.train()
    bar = tqdm(range(steps), desc=f"scratch {n} images", disable=not progress, leave=False)
    for _ in bar:
        if len(order) < bs:
            order = np.concatenate([order, torch.randperm(n, generator=gen).numpy()])
        sel, order = np.sort(order[:bs]), order[bs:]
        xb = torch.from_numpy(np.array(images[sel])).to(device)
        yb = torch.from_numpy(np.asarray(targets)[sel]).long().to(device)
        loss = crit(model(aug(xb, cfg.input_size, gen)), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if cfg.renorm_rms > 0:
            renormalise_filters(model, cfg.renorm_rms)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    wall = time.time() - t0
    model = fold_batchnorm(model.cpu().eval()) if cfg.batch_norm else model.cpu().eval()
    ev = evaluate_arrays(model.to(device), val_images, np.asarray(val_targets), num_classes, device=device)
    return {"top1": ev["top1"], "per_class": ev["per_class"], "n": ev["n"], "steps": steps, "batch_size": bs,
            "wall_s": round(wall, 1)}


# ------------------------------------------------------------------ the whole table

def _matching_recipe(net, base: TrainConfig) -> TrainConfig:
    """``base`` with the architecture of ``net`` (width, fc size, dropped layers, first layer, input size),
    on the CPU and quiet: the from-scratch net of Table 4 is the pretrained net's architecture."""
    cfg = net.meta.config
    return replace(base, width=cfg.get("width", base.width), fc_size=cfg.get("fc_size", base.fc_size),
                   drop_layers=list(cfg.get("drop_layers", [])), conv1_kernel=cfg.get("conv1_kernel", 7),
                   conv1_stride=cfg.get("conv1_stride", 2), input_size=net.meta.input_size, device="cpu",
                   progress=False)


def transfer(pretrained: str | Path, target_root: str | Path, shots: Sequence[int] = (5, 15, 30),
             scratch: TrainConfig | None = None, scratch_steps: int = 300, layers: Sequence[str] = ("fc7",),
             weight_decay: float = 1e-2, seed: int = 0, work: str | Path = "runs/transfer",
             progress: bool = True) -> dict:
    """Table 4: for each N in ``shots``, the frozen ``pretrained`` net with a new softmax against the same
    architecture trained from scratch, both on N images per class of ``target_root``'s train split,
    both scored on its whole val split.

    ``layers``: the frozen layers a new softmax is put on, one probe each (the paper: fc7; lower layers
    show how far down the features stay general). ``scratch`` is the recipe for the from-scratch net
    (default: ``TrainConfig``'s); its ``width``, ``fc_size``, ``drop_layers``, first layer and
    ``input_size`` are taken from the pretrained net so the architectures match.
    """
    from tqdm import tqdm

    from ..net import Net

    layers = list(layers)
    if not layers:
        raise ValueError("layers: expected at least one layer to put a softmax on, got none")
    net = Net.load(str(pretrained), device="cpu")
    bad = [L for L in layers if L not in net.layers]
    if bad:
        raise KeyError(f"unknown layer: expected some of {net.layers}, got {bad}")
    base = _matching_recipe(net, scratch or TrainConfig())
    size = net.meta.input_size
    val = list_split(target_root, "val")
    classes = val.class_ids
    overlap = sorted(set(classes) & set(net.meta.class_ids or []))
    val_images = decoded(val, size, progress=progress)
    val_targets = np.asarray(val.targets)
    val_feats = {L: features(net, val_images, L, progress=progress) for L in layers}
    rows = []
    work = Path(work)
    for n in tqdm(list(shots), desc="transfer", unit="N", disable=not progress):
        if n < 1:
            raise ValueError(f"shots: expected positive numbers of images per class, got {n}")
        view = make_view(target_root, work / f"target-{n}", classes, per_class=n, seed=seed)
        tr = list_split(view, "train")
        tr_images = decoded(tr, size, progress=False, indices=np.arange(len(tr)))
        tr_targets = np.asarray(tr.targets)
        probes = {}
        for L in layers:
            t0 = time.time()
            probes[L] = linear_probe(net, tr_images, tr_targets, val_images, val_targets, len(classes), L,
                                     weight_decay, val_features=val_feats[L])
            probes[L]["features"] = int(val_feats[L].shape[1])
            probes[L]["wall_s"] = round(time.time() - t0, 1)
        scr = train_from_scratch(replace(base, seed=seed), tr_images, tr_targets, len(classes), scratch_steps,
                                 val_images, val_targets, progress=progress)
        rows.append({"per_class": n, "train_images": len(tr), "pretrained": probes, "scratch": scr})
    return {"pretrained_model": str(pretrained), "pretrained_classes": list(net.meta.class_ids or []),
            "target_classes": list(classes), "class_overlap": overlap, "layers": layers,
            "weight_decay": weight_decay, "val_images": int(len(val)), "seed": seed,
            "scratch_recipe": {k: v for k, v in asdict(base).items() if k not in ("data", "out", "progress")},
            "scratch_steps": scratch_steps, "rows": rows}


def table_markdown(table: dict) -> str:
    """Table 4 as Markdown: a column per frozen layer, then the from-scratch net."""
    layers = table["layers"]
    lines = ["| images per class | " + " | ".join(f"pretrained, frozen up to {L} + new softmax" for L in layers)
             + " | from scratch |", "|---:|" + "---:|" * (len(layers) + 1)]
    for r in table["rows"]:
        cells = [f"{100 * r['pretrained'][L]['top1']:.1f}%" for L in layers]
        lines.append(f"| {r['per_class']} | " + " | ".join(cells) + f" | {100 * r['scratch']['top1']:.1f}% |")
    return "\n".join(lines) + "\n"


def transfer_figure(table: dict, path: str | Path | None = None):
    """Top-1 on the target val split against images per class: each frozen layer + softmax, and from scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["per_class"] for r in table["rows"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for L in table["layers"]:
        ax.plot(ns, [100 * r["pretrained"][L]["top1"] for r in table["rows"]], "o-",
                label=f"pretrained, frozen up to {L} + softmax")
    ax.plot(ns, [100 * r["scratch"]["top1"] for r in table["rows"]], "s--", color="black", label="same net from scratch")
    ax.axhline(100 / max(len(table["target_classes"]), 1), color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("training images per class")
    ax.set_ylabel("val top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(ns)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def write_transfer(table: dict, out: str | Path, meta: dict | None = None) -> dict:
    """Write ``transfer.json``, ``transfer.md`` (Table 4) and ``transfer.png`` into ``out``."""
    numbers = {**(meta or {}), **table}
    write_report(out, "transfer", transfer_figure(table), numbers, table_markdown(table), dpi=100)
    return numbers

