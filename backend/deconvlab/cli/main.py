"""The ``deconvlab`` command: small subcommands over library functions.

Each subcommand is a function ``add_<name>(subparsers)`` that registers its
parser and sets ``func``; ``COMMANDS`` lists them in the order ``--help`` shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _dataclass_args(p: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--flag`` per dataclass field, with the field's comment-free default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, list):
            p.add_argument(flag, dest=f.name, nargs="*", default=default)
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=default)


def _train_config(a, skip=()):
    """The TrainConfig that a subcommand's dataclass flags (``_dataclass_args``) describe."""
    from ..training.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(skip)
    return TrainConfig(**{k: v for k, v in vars(a).items() if k in fields})


# ------------------------------------------------------------------ train

def add_train(sub) -> None:
    from ..training.train import TrainConfig

    p = sub.add_parser("train", help="train a ZFNet on an ImageFolder data set (the paper's recipe)")
    _dataclass_args(p, TrainConfig)
    p.set_defaults(func=_train)


def _train(a) -> int:
    from ..data import data_root
    from ..training.train import train

    cfg = _train_config(a)
    if not cfg.data:
        cfg.data = str(data_root())
    res = train(cfg)
    print(json.dumps({"checkpoint": res["checkpoint"], "wall_s": round(res["wall_s"], 1),
                      "val_top1": res.get("val", {}).get("top1")}))
    return 0


# --------------------------------------------------------------- evaluate

def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1, per-class accuracy and confusion matrix of a model")
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--data", default="", help="ImageFolder root (default: DECONVLAB_DATA / Imagenette)")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=0, help="a fixed random subset of N images (0: all)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON only")
    p.set_defaults(func=_evaluate)


def _evaluate(a) -> int:
    from ..training.evaluate import evaluate_model, format_report

    res = evaluate_model(a.model, data=a.data or None, split=a.split, limit=a.limit)
    print(json.dumps(res) if a.as_json else format_report(res))
    return 0


# ---------------------------------------------------------------- publish

def add_publish(sub) -> None:
    p = sub.add_parser("publish", help="copy a training run into models/ with a model card and a registry entry")
    p.add_argument("--run", required=True, help="the training run's --out folder")
    p.add_argument("--name", required=True, help="registry name, e.g. zfnet-imagenette")
    p.add_argument("--data", default="", help="ImageFolder root for the val evaluation (default: the run's)")
    p.add_argument("--default", action="store_true", help="make it the registry's default model")
    p.add_argument("--command", default="", help="the command that reproduces the run (for the card)")
    p.set_defaults(func=_publish)


def _publish(a) -> int:
    from ..training.modelcard import publish

    card = publish(a.run, a.name, data=a.data or None, command=a.command, default=a.default)
    print(json.dumps({"name": card["name"], "val_top1": card["val_top1"], "sha256": card["sha256"]}, indent=2))
    return 0


# ---------------------------------------------------------------- filters

def add_filters(sub) -> None:
    p = sub.add_parser("filters", help="first-layer filter mosaic (Fig. 6) and dead filters per layer")
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--layer", default="conv1")
    p.add_argument("--out", default="filters.png", help="PNG file for the mosaic")
    p.add_argument("--scale", type=int, default=4, help="enlarge each filter this many times")
    p.add_argument("--images", type=int, default=0,
                   help="also count units that never fire on N val images (0: weights only)")
    p.add_argument("--data", default="", help="ImageFolder root (default: DECONVLAB_DATA / Imagenette)")
    p.set_defaults(func=_filters)


def _filters(a) -> int:
    import torch

    from .. import load
    from ..data import data_root, decoded, list_split
    from ..analyses.filters import dead_filters, filters_mosaic
    from ..training.train import _subset

    net = load(a.model, device="cpu")
    filters_mosaic(net, a.layer, scale=a.scale).save(a.out)
    batch = None
    if a.images:
        sp = list_split(a.data or data_root(), "val")
        arr = decoded(sp, net.meta.input_size, indices=_subset(len(sp), a.images, 1234))
        mean = torch.tensor(net.meta.mean).view(1, 3, 1, 1)
        std = torch.tensor(net.meta.std).view(1, 3, 1, 1)
        batch = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255 - mean) / std
    print(json.dumps({"mosaic": a.out, "layers": dead_filters(net, batch)}, indent=2))
    return 0


COMMANDS = [add_train, add_evaluate, add_publish, add_filters]


# ------------------------------------------------------------------ index

def add_index(sub) -> None:
    p = sub.add_parser("index", help="the top-k data-set images of every unit (Fig. 2); runs under torchrun too")
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--data", default="", help="ImageFolder root (default: DECONVLAB_DATA / Imagenette)")
    p.add_argument("--split", default="val")
    p.add_argument("--k", type=int, default=9, help="images kept per unit")
    p.add_argument("--out", default="", help="index folder (default: under the cache dir, see default_index_path)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: up to 2)")
    p.add_argument("--checkpoint-every", type=int, default=20, help="batches between checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=_index)


def _index(a) -> int:
    import os

    import torch

    from .. import load
    from ..data import data_root
    from ..index import TopKIndex, build_index

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = a.device
    if "LOCAL_RANK" in os.environ and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"  # one GPU per rank
    net = load(a.model, device=device)
    root = a.data or str(data_root())
    out = build_index(net, root, split=a.split, out=a.out or None, k=a.k, batch_size=a.batch_size,
                      workers=None if a.workers < 0 else a.workers, checkpoint_every=a.checkpoint_every,
                      progress=a.progress)
    if int(os.environ.get("RANK", "0")) == 0:
        m = TopKIndex.read_manifest(out)
        print(json.dumps({"index": str(out), "k": m["k"], "layers": [L["name"] for L in m["layers"]],
                          "num_images": m["data"]["num_images"], "world_size": m["build"]["world_size"],
                          "images_per_s": m["build"]["images_per_s"], "wall_s": m["build"]["wall_s"]}))
    return 0


COMMANDS.append(add_index)


# ------------------------------------------------ the paper's analyses (Figs. 4-6, 8; Tables 1, 3, 4)

def _analysis_args(p, out: str = "runs/analyses") -> None:
    p.add_argument("--data", default="", help="ImageFolder root (default: DECONVLAB_DATA / Imagenette)")
    p.add_argument("--out", default=out, help="folder for the figure (PNG) and the numbers (JSON)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def add_evolution(sub) -> None:
    p = sub.add_parser("evolution", help="feature evolution over the training snapshots (Fig. 4)")
    p.add_argument("--model", default="zfnet-imagenette", help="registry name, run folder or snapshots folder")
    p.add_argument("--units", nargs="*", default=[], help="LAYER:UNIT ... (default: --per-layer random units per conv layer, as in Fig. 4)")
    p.add_argument("--per-layer", type=int, default=2, help="units per conv layer when --units is not given")
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=500, help="images of the split to search (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and of the default units")
    p.add_argument("--batch-size", type=int, default=64)
    _analysis_args(p)
    p.set_defaults(func=_evolution)


def _evolution(a) -> int:
    from ..data import data_root
    from ..analyses.evolution import build_evolution, default_units, parse_units, write_evolution

    units = parse_units(a.units)
    root = a.data or str(data_root())
    ev = build_evolution(a.model, root, a.split, a.n, a.seed, batch_size=a.batch_size).scan(progress=a.progress)
    units = units or default_units(ev, a.per_layer, seed=a.seed)
    res = write_evolution(ev, units, a.out, {"model": str(a.model), "data": root, "split": a.split, "seed": a.seed},
                          progress=a.progress)
    print(json.dumps({"figure": str(Path(a.out) / "evolution.png"), "epochs": res["epochs"],
                      "units": [f"{u['layer']}:{u['unit']}" for u in res["units"]]}))
    return 0


def add_invariance(sub) -> None:
    from ..analyses.invariance import DEFAULT_LAYERS, KINDS

    p = sub.add_parser("invariance", help="distances and class probability under translation, scale, rotation (Fig. 5)")
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--split", default="val")
    p.add_argument("--files", nargs="*", default=[], help="images as paths relative to the data root "
                   "(default: --classes images, one per class)")
    p.add_argument("--classes", type=int, default=5, help="classes to take one image from (default 5)")
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--layers", nargs="*", default=list(DEFAULT_LAYERS))
    p.add_argument("--steps", type=int, default=0, help="amounts per transformation (0: the ranges of Fig. 5)")
    p.add_argument("--seed", type=int, default=0)
    _analysis_args(p)
    p.set_defaults(func=_invariance)


def _invariance(a) -> int:
    import numpy as np
    import torch

    from .. import load
    from ..data import data_root, decoded, list_split
    from ..analyses.evolution import normalise
    from ..analyses.invariance import DEFAULT_AMOUNTS, invariance, pick_images, write_invariance

    net = load(a.model, device="cpu")
    root = a.data or str(data_root())
    sp = list_split(root, a.split)
    if a.files:
        where = {f: i for i, f in enumerate(sp.files)}
        missing = [f for f in a.files if f not in where]
        if missing:
            raise ValueError(f"--files: expected paths relative to {root} such as {sp.files[0]!r}, got {missing}")
        idx = [where[f] for f in a.files]
    else:
        idx = pick_images(sp, 1, a.classes, a.seed)
    ids = list(net.meta.class_ids) or list(sp.class_ids)
    targets = []
    for i in idx:
        cid = sp.class_ids[sp.targets[i]]
        if cid not in ids:
            raise ValueError(f"{sp.files[i]}: its class {cid!r} is not one of the model's classes {ids}")
        targets.append(ids.index(cid))
    x = normalise(decoded(sp, net.meta.input_size, progress=False, indices=np.asarray(idx)), net.meta.mean,
                  net.meta.std)
    results = []
    for kind in a.kinds:
        amounts = DEFAULT_AMOUNTS[kind]
        if a.steps:
            amounts = np.linspace(amounts[0], amounts[-1], a.steps).round(3).tolist()
        results.append(invariance(net, x, targets, kind, amounts, a.layers, progress=a.progress))
    labels = net.meta.classes or ids
    names = [f"{labels[t]} ({Path(sp.files[i]).name})" for i, t in zip(idx, targets)]
    with torch.no_grad():
        write_invariance(results, names, a.out, x, net.meta.mean, net.meta.std,
                         {"model": str(a.model), "files": [sp.files[i] for i in idx], "split": a.split})
    print(json.dumps({"figure": str(Path(a.out) / "invariance.png"), "images": len(idx), "kinds": a.kinds}))
    return 0


def add_correspondence(sub) -> None:
    from ..analyses.correspondence import DEFAULT_LAYERS

    p = sub.add_parser("correspondence", help="object-part correspondence: Delta per part vs random boxes (Table 1, Fig. 8)")
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--boxes", default=str(Path(__file__).resolve().parents[2] / "models" / "analyses"
                                          / "correspondence_boxes.json"),
                   help="JSON box file (see correspondence.read_box_file)")
    p.add_argument("--layers", nargs="*", default=list(DEFAULT_LAYERS))
    p.add_argument("--random-trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    _analysis_args(p)
    p.set_defaults(func=_correspondence)


def _correspondence(a) -> int:
    from .. import load
    from ..analyses.correspondence import correspondence, load_box_images, read_box_file, write_correspondence
    from ..data import data_root

    net = load(a.model, device="cpu")
    spec = read_box_file(a.boxes)
    root = a.data or str(data_root())
    x, parts, views = load_box_images(spec, root, net.meta.input_size, net.meta.mean, net.meta.std)
    res = correspondence(net, x, parts, a.layers, a.random_trials, a.seed, progress=a.progress)
    write_correspondence(res, views, parts, a.out, {"model": str(a.model), "boxes": str(a.boxes),
                                                    "files": [im["file"] for im in spec["images"]]})
    rnd = {p: res["parts"][p]["random"] for p in parts}
    print(json.dumps({"figure": str(Path(a.out) / "correspondence.png"),
                      "delta_normalised": {p: {L: round(res["parts"][p][L]["delta_normalised"], 4) for L in a.layers}
                                           for p in parts},
                      "random_same_size": {p: {L: round(r[L]["delta_normalised_mean"], 4) for L in r}
                                           for p, r in rnd.items()}}))
    return 0


def _plain_args(a) -> dict:
    """The parsed options, for the numbers files (what reproduces them)."""
    return {k: v for k, v in vars(a).items() if k != "func"}


# recipe defaults of the short CPU budgets for ablation and transfer (all at one resolution)
_SHORT_RECIPE = dict(epochs=3, input_size=128, sizes="", snapshots="", half_snapshots=False)


def add_ablation(sub) -> None:
    from ..analyses.ablation import DEFAULT_VARIANTS, VARIANTS
    from ..training.train import TrainConfig

    p = sub.add_parser("ablation", help="train architecture variants with one recipe, table of val error (Table 3, Fig. 6)")
    p.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    p.add_argument("--work", default="runs/ablation", help="folder of the variants' training runs")
    _dataclass_args(p, TrainConfig, skip=("out", "drop_layers", "conv1_kernel", "conv1_stride", "progress"))
    p.add_argument("--out", default="runs/analyses", help="folder for the table (JSON, Markdown) and the figure")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=_ablation, **_SHORT_RECIPE)


def _ablation(a) -> int:
    import time

    from ..analyses.ablation import ablation, write_ablation
    from ..data import data_root

    base = _train_config(a, skip=("out",))
    base.data = base.data or str(data_root())
    t0 = time.time()
    table = ablation(base, a.variants, a.work, progress=a.progress)
    write_ablation(table, a.out, {"args": _plain_args(a), "wall_s": round(time.time() - t0, 1)})
    print(json.dumps({"table": str(Path(a.out) / "ablation.md"),
                      "val_error": {r["variant"]: r["val_error"] for r in table["rows"]}}))
    return 0


def add_transfer(sub) -> None:
    from ..training.train import TrainConfig

    p = sub.add_parser("transfer", help="frozen features + new softmax vs training from scratch, N images per class (Table 4)")
    p.add_argument("--model", default="", help="pretrained checkpoint; default: train one on --source-classes first")
    p.add_argument("--source-classes", nargs="*", default=[],
                   help="class folders the features are trained on (default: the first half); the rest are the target")
    p.add_argument("--shots", nargs="*", type=int, default=[5, 15, 30], help="training images per target class")
    p.add_argument("--scratch-steps", type=int, default=300, help="SGD steps of each from-scratch run")
    p.add_argument("--layers", nargs="*", default=["fc7"],
                   help="frozen layers to put a new softmax on, one probe each (the paper: fc7)")
    p.add_argument("--weight-decay-softmax", type=float, default=1e-2, help="L2 penalty of the new softmax")
    p.add_argument("--work", default="runs/transfer", help="folder of the views and the pretraining run")
    _dataclass_args(p, TrainConfig, skip=("out", "progress"))
    p.add_argument("--out", default="runs/analyses", help="folder for the table (JSON, Markdown) and the figure")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=_transfer, **_SHORT_RECIPE)


def _transfer(a) -> int:
    import time

    from ..data import data_root, list_split
    from ..training.train import train
    from ..analyses.transfer import class_split, make_view, transfer, write_transfer

    base = _train_config(a, skip=("out",))
    root = a.data or str(data_root())
    work = Path(a.work)
    src, tgt = class_split(list_split(root, "train").class_ids, a.source_classes or None)
    t0 = time.time()
    pretrain = None
    model = a.model
    if not model:
        view = make_view(root, work / "source", src)
        cfg = dataclasses.replace(base, data=str(view), out=str(work / "pretrain"), progress=a.progress)
        model = train(cfg)["checkpoint"]  # a finished run in --work is reused, not trained again
        log = [json.loads(ln) for ln in (work / "pretrain" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        pretrain = {"classes": src, "val_top1": [r for r in log if "val_top1" in r][-1]["val_top1"],
                    "wall_s": round(sum(r["epoch_s"] for r in log), 1),
                    "recipe": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "out", "progress")}}
    target = make_view(root, work / "target", tgt)
    table = transfer(model, target, a.shots, base, a.scratch_steps, a.layers, a.weight_decay_softmax, base.seed,
                     work, progress=a.progress)
    write_transfer(table, a.out, {"args": _plain_args(a), "pretraining": pretrain,
                                  "source_classes": src, "wall_s": round(time.time() - t0, 1)})
    print(json.dumps({"table": str(Path(a.out) / "transfer.md"),
                      "top1": {r["per_class"]: {**{L: round(r["pretrained"][L]["top1"], 4) for L in a.layers},
                                                "scratch": round(r["scratch"]["top1"], 4)} for r in table["rows"]}}))
    return 0


COMMANDS += [add_evolution, add_invariance, add_correspondence, add_ablation, add_transfer]


# ------------------------------------------------------------------ serve

def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="the REST API and the browser app (FastAPI under uvicorn)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1, DECONVLAB_HOST)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000, DECONVLAB_PORT)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto, DECONVLAB_DEVICE)")
    p.add_argument("--models", default=None, help="comma-separated registry names to serve (default: all)")
    p.add_argument("--data", default=None, help="ImageFolder root for the top-k index (DECONVLAB_DATA)")
    p.add_argument("--data-dir", default=None, help="uploads and results (DECONVLAB_DATA_DIR)")
    p.add_argument("--build-index", action="store_true", default=None,
                   help="build a missing or stale top-k index in the background (DECONVLAB_BUILD_INDEX)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_serve)


def _serve(a) -> int:
    import uvicorn

    from ..api import Settings, create_app

    given = {"host": a.host, "port": a.port, "device": a.device, "serve_models": a.models, "data": a.data,
             "data_dir": a.data_dir, "build_index": a.build_index}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=a.log_level)
    return 0


COMMANDS.append(add_serve)

def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        # A server shares its cores with its clients: OpenMP threads that spin while idle
        # slowed a cold request 3x on a busy 2-core machine. Must be set before torch loads.
        import os

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="deconvlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    a = parser.parse_args(argv)
    try:
        return a.func(a) or 0
    except (FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"deconvlab {a.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
