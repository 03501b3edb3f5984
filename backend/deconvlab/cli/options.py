"""What the subcommands share: how one is described, and the options several of them take.

=====================  ========================================================================
helper                 what it gives
=====================  ========================================================================
``Command``            one subcommand: its ``--help`` line, the function that adds its options,
                       the function that runs it, and environment defaults it needs set before
                       torch loads (``main.COMMANDS`` maps each name to one)
``source_args``        ``--model``, ``--data``, ``--split``: the model and the images it reads
``data_path``          ``--data``, or the default data set (``DECONVLAB_DATA`` / Imagenette)
``dataclass_args``     one ``--flag`` per field of a dataclass (``TrainConfig``'s recipe)
``train_config``       the ``TrainConfig`` those flags describe
``plain_args``         the parsed options as a plain dict, for the numbers files
=====================  ========================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

MODEL_HELP = "registry name or checkpoint path"
DATA_HELP = "ImageFolder root (default: DECONVLAB_DATA / Imagenette)"


class Command(NamedTuple):
    """One subcommand: ``options(parser)`` adds its options, ``run(args)`` runs it (an exit status)."""

    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    env: Mapping[str, str] = MappingProxyType({})  # os.environ defaults, set before the command imports torch


def source_args(p: argparse.ArgumentParser, *, model: str | None = "zfnet-imagenette", model_help: str = MODEL_HELP,
                data: bool = True, split: str | None = "val") -> None:
    """``--model`` (default ``model``; None: no such option), ``--data`` (if ``data``) and ``--split``
    (default ``split``; None: no such option)."""
    if model is not None:
        p.add_argument("--model", default=model, help=model_help)
    if data:
        p.add_argument("--data", default="", help=DATA_HELP)
    if split is not None:
        p.add_argument("--split", default=split)


def data_path(args: argparse.Namespace) -> str:
    """The ImageFolder root ``--data`` names, else the default data set's."""
    from ..data import data_root

    return args.data or str(data_root())


def dataclass_args(p: argparse.ArgumentParser, cls, skip=()) -> None:
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


def train_config(args: argparse.Namespace, skip=()):
    """The TrainConfig that a subcommand's dataclass flags (``dataclass_args``) describe."""
    from ..training.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(skip)
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def plain_args(args: argparse.Namespace) -> dict:
    """The parsed options, for the numbers files (what reproduces them)."""
    return {k: v for k, v in vars(args).items() if k != "func"}
