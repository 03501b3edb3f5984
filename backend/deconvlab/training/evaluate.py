"""Accuracy of a model on one split of an ImageFolder data set."""

from __future__ import annotations

import numpy as np

from ..data import data_root, decoded, list_split
from ..nets import resolve
from .train import _subset, evaluate_arrays, pick_device


def evaluate_model(model: str, data: str | None = None, split: str = "val", limit: int = 0,
                   device: str = "auto", progress: bool = True) -> dict:
    """Top-1, per-class accuracy and confusion matrix; ``limit`` picks a fixed random subset."""
    net, meta = resolve(model)
    sp = list_split(data or data_root(), split)
    if meta.class_ids and list(meta.class_ids) != sp.class_ids:
        raise ValueError(f"the model's classes {meta.class_ids} differ from the data set's {sp.class_ids}")
    dev = pick_device(device)
    idx = _subset(len(sp), limit, 1234)
    images = decoded(sp, meta.input_size, progress=progress, indices=idx if limit else None)
    targets = np.asarray(sp.targets)[idx]
    res = evaluate_arrays(net.to(dev), images, targets, len(sp.class_ids), device=dev, progress=progress)
    res.update({"model": meta.name, "split": split, "classes": sp.labels})
    return res


def format_report(res: dict) -> str:
    lines = [f"model {res['model']}  split {res['split']}  images {res['n']}",
             f"top-1 accuracy: {res['top1'] * 100:.2f}%", "", "per-class accuracy:"]
    for label, acc in zip(res["classes"], res["per_class"]):
        lines.append(f"  {label:<20s} {acc * 100:6.2f}%")
    lines += ["", "confusion matrix (rows: true, columns: predicted):"]
    w = max(5, max(len(str(v)) for row in res["confusion"] for v in row) + 1)
    lines.append(" " * 22 + "".join(f"{i:>{w}d}" for i in range(len(res["classes"]))))
    for i, (label, row) in enumerate(zip(res["classes"], res["confusion"])):
        lines.append(f"  {i:>2d} {label[:16]:<17s}" + "".join(f"{v:>{w}d}" for v in row))
    return "\n".join(lines)
