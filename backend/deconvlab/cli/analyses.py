"""The paper's analyses as subcommands: each writes its figure and numbers (``analyses.report``).

===================  ======================================================  =======================
subcommand           Zeiler & Fergus 2013                                    library
===================  ======================================================  =======================
``filters``          Fig. 6: first-layer filters, dead filters per layer     ``analyses.filters``
``evolution``        Fig. 4: the strongest activation over training epochs   ``analyses.evolution``
``invariance``       Fig. 5: distances and P(class) under transformations    ``analyses.invariance``
``correspondence``   Table 1, Fig. 8: object-part correspondence             ``analyses.correspondence``
``ablation``         Table 3, Fig. 6: architecture variants, one recipe      ``analyses.ablation``
``transfer``         Table 4: frozen features + new softmax, few images      ``analyses.transfer``
===================  ======================================================  =======================

``ablation`` and ``transfer`` train networks; their recipe defaults are the
short CPU budget of ``SHORT_RECIPE`` (every other ``TrainConfig`` flag as for
``deconvlab train``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .options import Command, data_path, dataclass_args, plain_args, source_args, train_config

# recipe defaults of the short CPU budgets for ablation and transfer (all at one resolution)
SHORT_RECIPE = dict(epochs=3, input_size=128, sizes="", snapshots="", half_snapshots=False)


def _output_args(p, what: str = "the figure (PNG) and the numbers (JSON)") -> None:
    p.add_argument("--out", default="runs/analyses", help=f"folder for {what}")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


# ---------------------------------------------------------------- filters (Fig. 6)

def _filters_options(p) -> None:
    source_args(p, split=None)
    p.add_argument("--layer", default="conv1")
    p.add_argument("--out", default="filters.png", help="PNG file for the mosaic")
    p.add_argument("--scale", type=int, default=4, help="enlarge each filter this many times")
    p.add_argument("--images", type=int, default=0,
                   help="also count units that never fire on N val images (0: weights only)")


def _filters(args) -> int:
    import torch

    from .. import load
    from ..analyses.filters import dead_filters, filters_mosaic
    from ..data import decoded, list_split
    from ..training.train import _subset

    net = load(args.model, device="cpu")
    filters_mosaic(net, args.layer, scale=args.scale).save(args.out)
    batch = None
    if args.images:
        sp = list_split(data_path(args), "val")
        arr = decoded(sp, net.meta.input_size, indices=_subset(len(sp), args.images, 1234))
        mean = torch.tensor(net.meta.mean).view(1, 3, 1, 1)
        std = torch.tensor(net.meta.std).view(1, 3, 1, 1)
        batch = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255 - mean) / std
    print(json.dumps({"mosaic": args.out, "layers": dead_filters(net, batch)}, indent=2))
    return 0


# ---------------------------------------------------------------- evolution (Fig. 4)

def _evolution_options(p) -> None:
    source_args(p, model_help="registry name, run folder or snapshots folder")
    p.add_argument("--units", nargs="*", default=[],
                   help="LAYER:UNIT ... (default: --per-layer random units per conv layer, as in Fig. 4)")
    p.add_argument("--per-layer", type=int, default=2, help="units per conv layer when --units is not given")
    p.add_argument("--n", type=int, default=500, help="images of the split to search (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and of the default units")
    p.add_argument("--batch-size", type=int, default=64)
    _output_args(p)


def _evolution(args) -> int:
    from ..analyses.evolution import build_evolution, default_units, parse_units, write_evolution

    units = parse_units(args.units)
    root = data_path(args)
    ev = build_evolution(args.model, root, args.split, args.n, args.seed, batch_size=args.batch_size)
    ev = ev.scan(progress=args.progress)
    units = units or default_units(ev, args.per_layer, seed=args.seed)
    meta = {"model": str(args.model), "data": root, "split": args.split, "seed": args.seed}
    res = write_evolution(ev, units, args.out, meta, progress=args.progress)
    print(json.dumps({"figure": str(Path(args.out) / "evolution.png"), "epochs": res["epochs"],
                      "units": [f"{u['layer']}:{u['unit']}" for u in res["units"]]}))
    return 0


# ---------------------------------------------------------------- invariance (Fig. 5)

def _invariance_options(p) -> None:
    from ..analyses.invariance import DEFAULT_LAYERS, KINDS

    source_args(p)
    p.add_argument("--files", nargs="*", default=[], help="images as paths relative to the data root "
                   "(default: --classes images, one per class)")
    p.add_argument("--classes", type=int, default=5, help="classes to take one image from (default 5)")
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--layers", nargs="*", default=list(DEFAULT_LAYERS))
    p.add_argument("--steps", type=int, default=0, help="amounts per transformation (0: the ranges of Fig. 5)")
    p.add_argument("--seed", type=int, default=0)
    _output_args(p)


def _invariance_images(args, sp, root: str, class_ids: list) -> tuple[list[int], list[int]]:
    """The split's indices of the images to transform (``--files``, else one per class) and their targets
    as indices into ``class_ids`` (the model's classes)."""
    from ..analyses.invariance import pick_images

    if args.files:
        where = {f: i for i, f in enumerate(sp.files)}
        missing = [f for f in args.files if f not in where]
        if missing:
            raise ValueError(f"--files: expected paths relative to {root} such as {sp.files[0]!r}, got {missing}")
        idx = [where[f] for f in args.files]
    else:
        idx = pick_images(sp, 1, args.classes, args.seed)
    targets = []
    for i in idx:
        cid = sp.class_ids[sp.targets[i]]
        if cid not in class_ids:
            raise ValueError(f"{sp.files[i]}: its class {cid!r} is not one of the model's classes {class_ids}")
        targets.append(class_ids.index(cid))
    return idx, targets


def _invariance(args) -> int:
    import numpy as np
    import torch

    from .. import load
    from ..analyses.evolution import normalise
    from ..analyses.invariance import DEFAULT_AMOUNTS, invariance, write_invariance
    from ..data import decoded, list_split

    net = load(args.model, device="cpu")
    root = data_path(args)
    sp = list_split(root, args.split)
    ids = list(net.meta.class_ids) or list(sp.class_ids)
    idx, targets = _invariance_images(args, sp, root, ids)
    x = normalise(decoded(sp, net.meta.input_size, progress=False, indices=np.asarray(idx)), net.meta.mean,
                  net.meta.std)
    results = []
    for kind in args.kinds:
        amounts = DEFAULT_AMOUNTS[kind]
        if args.steps:
            amounts = np.linspace(amounts[0], amounts[-1], args.steps).round(3).tolist()
        results.append(invariance(net, x, targets, kind, amounts, args.layers, progress=args.progress))
    labels = net.meta.classes or ids
    names = [f"{labels[t]} ({Path(sp.files[i]).name})" for i, t in zip(idx, targets)]
    with torch.no_grad():
        write_invariance(results, names, args.out, x, net.meta.mean, net.meta.std,
                         {"model": str(args.model), "files": [sp.files[i] for i in idx], "split": args.split})
    print(json.dumps({"figure": str(Path(args.out) / "invariance.png"), "images": len(idx), "kinds": args.kinds}))
    return 0


# ---------------------------------------------------------------- correspondence (Table 1, Fig. 8)

def _correspondence_options(p) -> None:
    from ..analyses.correspondence import DEFAULT_LAYERS, default_box_file

    source_args(p, split=None)
    p.add_argument("--boxes", default=str(default_box_file()), help="JSON box file (see correspondence.read_box_file)")
    p.add_argument("--layers", nargs="*", default=list(DEFAULT_LAYERS))
    p.add_argument("--random-trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    _output_args(p)


def _correspondence(args) -> int:
    from .. import load
    from ..analyses.correspondence import correspondence, load_box_images, read_box_file, write_correspondence

    net = load(args.model, device="cpu")
    spec = read_box_file(args.boxes)
    x, parts, views = load_box_images(spec, data_path(args), net.meta.input_size, net.meta.mean, net.meta.std)
    res = correspondence(net, x, parts, args.layers, args.random_trials, args.seed, progress=args.progress)
    write_correspondence(res, views, parts, args.out, {"model": str(args.model), "boxes": str(args.boxes),
                                                       "files": [im["file"] for im in spec["images"]]})
    rnd = {p: res["parts"][p]["random"] for p in parts}
    print(json.dumps({"figure": str(Path(args.out) / "correspondence.png"),
                      "delta_normalised": {p: {L: round(res["parts"][p][L]["delta_normalised"], 4)
                                               for L in args.layers} for p in parts},
                      "random_same_size": {p: {L: round(r[L]["delta_normalised_mean"], 4) for L in r}
                                           for p, r in rnd.items()}}))
    return 0


# ---------------------------------------------------------------- ablation (Table 3, Fig. 6)

def _ablation_options(p) -> None:
    from ..analyses.ablation import DEFAULT_VARIANTS, VARIANTS
    from ..training.train import TrainConfig

    p.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    p.add_argument("--work", default="runs/ablation", help="folder of the variants' training runs")
    dataclass_args(p, TrainConfig, skip=("out", "drop_layers", "conv1_kernel", "conv1_stride", "progress"))
    _output_args(p, "the table (JSON, Markdown) and the figure")
    p.set_defaults(**SHORT_RECIPE)


def _ablation(args) -> int:
    import time

    from ..analyses.ablation import ablation, write_ablation

    base = train_config(args, skip=("out",))
    base.data = data_path(args)
    t0 = time.time()
    table = ablation(base, args.variants, args.work, progress=args.progress)
    write_ablation(table, args.out, {"args": plain_args(args), "wall_s": round(time.time() - t0, 1)})
    print(json.dumps({"table": str(Path(args.out) / "ablation.md"),
                      "val_error": {r["variant"]: r["val_error"] for r in table["rows"]}}))
    return 0


# ---------------------------------------------------------------- transfer (Table 4)

def _transfer_options(p) -> None:
    from ..training.train import TrainConfig

    source_args(p, model="", model_help="pretrained checkpoint; default: train one on --source-classes first",
                data=False, split=None)  # --data is TrainConfig's
    p.add_argument("--source-classes", nargs="*", default=[],
                   help="class folders the features are trained on (default: the first half); the rest are the target")
    p.add_argument("--shots", nargs="*", type=int, default=[5, 15, 30], help="training images per target class")
    p.add_argument("--scratch-steps", type=int, default=300, help="SGD steps of each from-scratch run")
    p.add_argument("--layers", nargs="*", default=["fc7"],
                   help="frozen layers to put a new softmax on, one probe each (the paper: fc7)")
    p.add_argument("--weight-decay-softmax", type=float, default=1e-2, help="L2 penalty of the new softmax")
    p.add_argument("--work", default="runs/transfer", help="folder of the views and the pretraining run")
    dataclass_args(p, TrainConfig, skip=("out", "progress"))
    _output_args(p, "the table (JSON, Markdown) and the figure")
    p.set_defaults(**SHORT_RECIPE)


def _pretrain(args, base, root: str, work: Path, classes: list[str]) -> tuple[str, dict]:
    """Train the source model on ``classes`` (a finished run in ``work`` is reused, not trained again):
    its checkpoint and what the numbers file says of it."""
    from ..analyses.transfer import make_view
    from ..training.train import read_metrics, train

    view = make_view(root, work / "source", classes)
    cfg = dataclasses.replace(base, data=str(view), out=str(work / "pretrain"), progress=args.progress)
    model = train(cfg)["checkpoint"]
    log = read_metrics(work / "pretrain")
    return model, {"classes": classes, "val_top1": [r for r in log if "val_top1" in r][-1]["val_top1"],
                   "wall_s": round(sum(r["epoch_s"] for r in log), 1),
                   "recipe": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "out", "progress")}}


def _transfer(args) -> int:
    import time

    from ..analyses.transfer import class_split, make_view, transfer, write_transfer
    from ..data import list_split

    base = train_config(args, skip=("out",))
    root = data_path(args)
    work = Path(args.work)
    src, tgt = class_split(list_split(root, "train").class_ids, args.source_classes or None)
    t0 = time.time()
    model, pretrain = (args.model, None) if args.model else _pretrain(args, base, root, work, src)
    target = make_view(root, work / "target", tgt)
    table = transfer(model, target, args.shots, base, args.scratch_steps, args.layers, args.weight_decay_softmax,
                     base.seed, work, progress=args.progress)
    write_transfer(table, args.out, {"args": plain_args(args), "pretraining": pretrain,
                                     "source_classes": src, "wall_s": round(time.time() - t0, 1)})
    print(json.dumps({"table": str(Path(args.out) / "transfer.md"),
                      "top1": {r["per_class"]: {**{L: round(r["pretrained"][L]["top1"], 4) for L in args.layers},
                                                "scratch": round(r["scratch"]["top1"], 4)} for r in table["rows"]}}))
    return 0


FILTERS = Command("first-layer filter mosaic (Fig. 6) and dead filters per layer", _filters_options, _filters)
EVOLUTION = Command("feature evolution over the training snapshots (Fig. 4)", _evolution_options, _evolution)
INVARIANCE = Command("distances and class probability under translation, scale, rotation (Fig. 5)",
                     _invariance_options, _invariance)
CORRESPONDENCE = Command("object-part correspondence: Delta per part vs random boxes (Table 1, Fig. 8)",
                         _correspondence_options, _correspondence)
ABLATION = Command("train architecture variants with one recipe, table of val error (Table 3, Fig. 6)",
                   _ablation_options, _ablation)
TRANSFER = Command("frozen features + new softmax vs training from scratch, N images per class (Table 4)",
                   _transfer_options, _transfer)
