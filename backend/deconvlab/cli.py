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


# ------------------------------------------------------------------ train

def add_train(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser("train", help="train a ZFNet on an ImageFolder data set (the paper's recipe)")
    _dataclass_args(p, TrainConfig)
    p.set_defaults(func=_train)


def _train(a) -> int:
    from .data import data_root
    from .train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k in fields})
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
    from .evaluate import evaluate_model, format_report

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
    from .modelcard import publish

    card = publish(a.run, a.name, data=a.data or None, command=a.command, default=a.default)
    print(json.dumps({"name": card["name"], "val_top1": card["val_top1"], "sha256": card["sha256"]}, indent=2))
    return 0


COMMANDS = [add_train, add_evaluate, add_publish]


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

    from . import load
    from .data import data_root
    from .top_k import TopKIndex, build_index

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    net = load(a.model, device=a.device)
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


def main(argv: list[str] | None = None) -> int:
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
