"""Architecture ablation (Zeiler & Fergus 2013, Sec. 5.1, Table 3, and Sec. 4.1/Fig. 6).

Table 3 of the paper: "ImageNet 2012 classification error rates with various
architectural changes to the model": removing the fully connected layers 6
and 7, removing the middle conv layers 3 and 4, removing both, and changing
the size of the middle conv layers and of the fc layers. Sec. 4.1 and Fig. 6
compare Krizhevsky's first layer (11x11 filters, stride 4) with ZFNet's (7x7,
stride 2): the larger stride gives aliasing and "dead" filters.

``ablation(base, variants, out)`` trains every variant with the same recipe
and budget (``train.TrainConfig``: the same epochs, images, resolution, seed
and schedule; only the architecture differs), then writes one table of val
error and the first-layer filter mosaics side by side.

Assumptions, stated once:

* Variants are changes to ``base`` (``VARIANTS``): ``drop_layers`` removes
  conv3/conv4/fc6/fc7; ``width_factor`` and ``fc_factor`` multiply the base
  config's conv width multiplier and fc size; ``conv1_kernel`` /
  ``conv1_stride`` set the first layer.
* The val error is 1 - top-1 on the val split (or the fixed subset that
  ``val_limit`` picks) at the end of training; the train error is the last
  epoch's running error on augmented batches with dropout on (as the
  training bar shows it), not a clean pass over the training set.
* A variant whose run folder already holds a finished run with the same
  config is not trained again (``train`` resumes from ``last.pt``); delete
  the folder to start over.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping, Sequence

from ..training.train import TrainConfig, read_metrics
from .report import write_report

# name -> (what it changes, overrides). The paper's Table 3 rows, at our scale.
VARIANTS: dict[str, tuple[str, dict]] = {
    "zfnet": ("ZFNet as in Fig. 3 (7x7 stride-2 first layer)", {}),
    "krizhevsky-conv1": ("Krizhevsky's first layer: 11x11 filters, stride 4", {"conv1_kernel": 11, "conv1_stride": 4}),
    "no-fc6-fc7": ("removed layers 6, 7 (fc6, fc7)", {"drop_layers": ["fc6", "fc7"]}),
    "no-fc7": ("removed layer 7 (fc7)", {"drop_layers": ["fc7"]}),
    "no-conv3-conv4": ("removed layers 3, 4 (conv3, conv4)", {"drop_layers": ["conv3", "conv4"]}),
    "no-conv3-conv4-fc6-fc7": ("removed layers 3, 4, 6, 7", {"drop_layers": ["conv3", "conv4", "fc6", "fc7"]}),
    "narrow": ("every layer narrower: conv maps x0.5, fc units x0.5", {"width_factor": 0.5, "fc_factor": 0.5}),
    "wide": ("every layer wider: conv maps x1.5, fc units x2", {"width_factor": 1.5, "fc_factor": 2.0}),
    "fc-half": ("adjust layers 6, 7: half the units", {"fc_factor": 0.5}),
    "fc-double": ("adjust layers 6, 7: twice the units", {"fc_factor": 2.0}),
}
DEFAULT_VARIANTS = ["zfnet", "krizhevsky-conv1", "no-fc6-fc7", "no-conv3-conv4", "no-conv3-conv4-fc6-fc7",
                    "narrow", "wide"]
FIRST_LAYER_VARIANTS = ("zfnet", "krizhevsky-conv1")


def variant_config(base: TrainConfig, name: str, out: str | Path) -> TrainConfig:
    """``base`` changed as variant ``name`` says, writing into ``out``."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant: expected one of {sorted(VARIANTS)}, got {name!r}")
    over = dict(VARIANTS[name][1])
    wf, ff = over.pop("width_factor", 1.0), over.pop("fc_factor", 1.0)
    over["width"] = base.width * wf
    over["fc_size"] = max(1, int(round(base.fc_size * ff)))
    return replace(base, out=str(out), **over)


def _last_metrics(out: Path, log: list[dict]) -> tuple[dict, dict]:
    if not log:
        raise ValueError(f"{out}: the run wrote no epochs")
    with_val = [r for r in log if "val_top1" in r]
    return log[-1], (with_val[-1] if with_val else {})


def count_parameters(cfg: TrainConfig, num_classes: int) -> int:
    from ..training.train import build_model

    return int(sum(p.numel() for p in build_model(cfg, num_classes).parameters()))


def ablation(base: TrainConfig, variants: Sequence[str] = DEFAULT_VARIANTS, out: str | Path = "runs/ablation",
             progress: bool = True) -> dict:
    """Train every variant under ``out/<variant>`` with ``base``'s recipe and budget; the table as a dict."""
    from tqdm import tqdm

    from ..data import list_split
    from ..training.train import train

    out = Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KeyError(f"unknown variant: expected some of {sorted(VARIANTS)}, got {unknown}")
    if len(set(variants)) != len(variants) or not variants:
        raise ValueError(f"variants: expected distinct variant names, got {list(variants)}")
    nc = len(list_split(base.data, "train").class_ids)
    rows = []
    for name in tqdm(list(variants), desc="ablation", unit="variant", disable=not progress):
        cfg = variant_config(base, name, out / name)
        t0 = time.time()
        train(cfg)
        log = read_metrics(out / name)
        last, val = _last_metrics(out / name, log)
        rows.append({
            "variant": name, "description": VARIANTS[name][0],
            "val_top1": val.get("val_top1"), "val_error": None if "val_top1" not in val else 1 - val["val_top1"],
            "train_error": 1 - last["train_acc"], "parameters": count_parameters(cfg, nc),
            "train_wall_s": round(sum(r["epoch_s"] for r in log), 1), "this_call_s": round(time.time() - t0, 1),
            "config": {k: getattr(cfg, k) for k in ("width", "fc_size", "drop_layers", "conv1_kernel",
                                                    "conv1_stride")},
            "checkpoint": str(out / name / "model.safetensors"),
        })
    recipe = {k: v for k, v in asdict(base).items() if k not in ("out", "progress", "drop_layers",
                                                                  "conv1_kernel", "conv1_stride")}
    return {"recipe": recipe, "rows": rows}


# ------------------------------------------------------------------ figure and numbers

def table_markdown(table: dict) -> str:
    """Table 3 as Markdown."""
    lines = ["| variant | what changes | val error | train error | parameters | train time (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in table["rows"]:
        ve = "n/a" if r["val_error"] is None else f"{100 * r['val_error']:.1f}%"
        lines.append(f"| {r['variant']} | {r['description']} | {ve} | {100 * r['train_error']:.1f}% | "
                     f"{r['parameters'] / 1e6:.2f} M | {r['train_wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def first_layer_figure(checkpoints: Mapping[str, str | Path], scale: int = 4):
    """Fig. 6: the first-layer filters of each variant side by side, with the dead-filter count."""
    from PIL import Image, ImageDraw

    from .filters import dead_filters, filters_mosaic
    from ..nets import load_checkpoint

    tiles = []
    for name, path in checkpoints.items():
        module, _ = load_checkpoint(path)
        conv1 = dict(module.named_children())["conv1"]
        k, s = conv1.kernel_size[0], conv1.stride[0]
        mos = filters_mosaic(module, "conv1", scale=max(1, round(scale * 7 / k)), columns=8)
        dead = dead_filters(module)["conv1"]
        tiles.append((f"{name}: {k}x{k} stride {s}, dead {dead['dead_by_weight']}/{dead['filters']}", mos))
    W = sum(t[1].width for t in tiles) + 16 * (len(tiles) + 1)
    H = max(t[1].height for t in tiles) + 30
    sheet = Image.new("RGB", (max(W, 400), H), "white")
    draw = ImageDraw.Draw(sheet)
    x = 16
    for title, mos in tiles:
        draw.text((x, 6), title, fill="black")
        sheet.paste(mos.convert("RGB"), (x, 24))
        x += mos.width + 16
    return sheet


def write_ablation(table: dict, out: str | Path, meta: dict | None = None) -> dict:
    """Write ``ablation.json``, ``ablation.md`` (Table 3) and ``ablation_filters.png`` (Fig. 6) into ``out``."""
    numbers = {**(meta or {}), **table}
    first = {r["variant"]: r["checkpoint"] for r in table["rows"]
             if r["variant"] in FIRST_LAYER_VARIANTS and Path(r["checkpoint"]).is_file()}
    write_report(out, "ablation", first_layer_figure(first) if first else None, numbers, table_markdown(table),
                 figure_name="ablation_filters")
    return numbers

