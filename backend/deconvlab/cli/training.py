"""``deconvlab train``, ``evaluate``, ``publish``: the model the visualisations look into.

=============  ======================================================  ==============================
subcommand     what it does                                            library function
=============  ======================================================  ==============================
``train``      train a ZFNet with the paper's recipe (Sec. 3)          ``training.train.train``
``evaluate``   top-1, per-class accuracy, confusion matrix             ``training.evaluate``
``publish``    a run -> ``models/`` with a model card and registry     ``training.modelcard.publish``
=============  ======================================================  ==============================
"""

from __future__ import annotations

import json

from .options import Command, data_path, dataclass_args, source_args, train_config


def _train_options(p) -> None:
    from ..training.train import TrainConfig

    dataclass_args(p, TrainConfig)


def _train(args) -> int:
    from ..training.train import train

    cfg = train_config(args)
    cfg.data = data_path(args)
    res = train(cfg)
    print(json.dumps({"checkpoint": res["checkpoint"], "wall_s": round(res["wall_s"], 1),
                      "val_top1": res.get("val", {}).get("top1")}))
    return 0


def _evaluate_options(p) -> None:
    source_args(p)
    p.add_argument("--limit", type=int, default=0, help="a fixed random subset of N images (0: all)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON only")


def _evaluate(args) -> int:
    from ..training.evaluate import evaluate_model, format_report

    res = evaluate_model(args.model, data=args.data or None, split=args.split, limit=args.limit)
    print(json.dumps(res) if args.as_json else format_report(res))
    return 0


def _publish_options(p) -> None:
    p.add_argument("--run", required=True, help="the training run's --out folder")
    p.add_argument("--name", required=True, help="registry name, e.g. zfnet-imagenette")
    p.add_argument("--data", default="", help="ImageFolder root for the val evaluation (default: the run's)")
    p.add_argument("--default", action="store_true", help="make it the registry's default model")
    p.add_argument("--command", default="", help="the command that reproduces the run (for the card)")
    p.add_argument("--input-size", type=int, default=0,
                   help="serve and evaluate the model at this size (default: the run's input size)")


def _publish(args) -> int:
    from ..training.modelcard import publish

    card = publish(args.run, args.name, data=args.data or None, command=args.command, default=args.default,
                   input_size=args.input_size or None)
    print(json.dumps({"name": card["name"], "val_top1": card["val_top1"], "sha256": card["sha256"]}, indent=2))
    return 0


TRAIN = Command("train a ZFNet or a ResNet-18 on an ImageFolder data set (the paper's recipe)", _train_options, _train)
EVALUATE = Command("top-1, per-class accuracy and confusion matrix of a model", _evaluate_options, _evaluate)
PUBLISH = Command("copy a training run into models/ with a model card and a registry entry", _publish_options,
                  _publish)
