"""Named architectures, named models and checkpoints.

Two registries, both plain data:

* ``ARCHS``: architecture name -> builder ``(meta) -> nn.Sequential`` with the
  paper's layer names (``zfnet``, ``alexnet``, ``vgg16``).
* ``models/registry.json``: model name -> where its weights are. The default
  model is ``zfnet-imagenette``, the ZFNet we train on Imagenette.

A checkpoint is a safetensors file whose metadata holds one JSON string under
``"deconvlab"`` (architecture, its config, class labels, input size,
normalisation); loading never unpickles anything. ``.pt``/``.pth`` state dicts
are read with ``torch.load(weights_only=True)`` and need ``meta`` given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .torchvision_nets import alexnet, load_torchvision_weights, vgg16
from .zfnet import ZFNetConfig, zfnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "zfnet-imagenette"


@dataclass
class ModelMeta:
    arch: str  # a key of ARCHS
    config: dict = field(default_factory=dict)  # builder arguments (ZFNetConfig fields for zfnet)
    classes: list[str] = field(default_factory=list)  # class label per fc8 unit
    class_ids: list[str] = field(default_factory=list)  # e.g. WordNet ids, same order as classes
    input_size: int = 224  # side of the square model input
    mean: tuple = IMAGENET_MEAN  # per-channel mean used by preprocess (RGB, 0..1)
    std: tuple = IMAGENET_STD  # per-channel std used by preprocess
    name: str = ""  # registry name or checkpoint stem

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> "ModelMeta":
        d = json.loads(s)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


ARCHS: dict[str, Callable[[ModelMeta], nn.Sequential]] = {}


def register_arch(name: str):
    def deco(fn):
        ARCHS[name] = fn
        return fn
    return deco


@register_arch("zfnet")
def _build_zfnet(meta: ModelMeta) -> nn.Sequential:
    cfg = ZFNetConfig.from_dict(meta.config)
    if meta.classes and cfg.num_classes != len(meta.classes):
        raise ValueError(f"config.num_classes is {cfg.num_classes} but {len(meta.classes)} classes are named")
    return zfnet(cfg)


@register_arch("alexnet")
def _build_alexnet(meta: ModelMeta) -> nn.Sequential:
    return alexnet(num_classes=meta.config.get("num_classes", 1000))


@register_arch("vgg16")
def _build_vgg16(meta: ModelMeta) -> nn.Sequential:
    return vgg16(num_classes=meta.config.get("num_classes", 1000))


@register_arch("resnet18")
def _build_resnet18(meta: ModelMeta) -> nn.Module:
    from .resnet import resnet18

    return resnet18(num_classes=meta.config.get("num_classes", 1000), width=meta.config.get("width", 1.0))


def build(meta: ModelMeta) -> nn.Module:
    if meta.arch.startswith("torchvision:"):  # any torchvision classifier, random weights (torchvision_any.py)
        from .torchvision_any import load_torchvision

        return load_torchvision(meta.arch.split(":", 1)[1], num_classes=meta.config.get("num_classes"))
    if meta.arch not in ARCHS:
        raise KeyError(f"unknown architecture: expected one of {sorted(ARCHS)}, got {meta.arch!r}")
    return ARCHS[meta.arch](meta)


def user_models_dir() -> Path:
    """``<cache dir>/models`` (``$DECONVLAB_CACHE`` or ``~/.cache/deconvlab``): the user's own models."""
    from ..data import cache_dir

    return cache_dir() / "models"


def models_dir() -> Path:
    """The models folder: the one ``read_registry``, ``resolve`` read and ``publish``, ``register`` write.

    ===  ============================================  =====================================================
    #    when                                          folder
    ===  ============================================  =====================================================
    1    ``$DECONVLAB_MODELS`` is set                  that folder, alone
    2    the user folder holds ``registry.json``       ``user_models_dir()``, its entries read on top of the
                                                       shipped models (``read_registry``)
    3    an editable install (a checkout)              the checkout's ``models/`` (``make train`` publishes
                                                       the committed default model there)
    4    otherwise (installed from a wheel)            ``user_models_dir()`` all the same: until something is
                                                       published it reads as the shipped models alone
    ===  ============================================  =====================================================

    The wheel's own folder (``_resources.shipped_models_dir()``) is never
    handed out, so nothing is ever written into the installed package.
    """
    from .._resources import checkout_root

    env = os.environ.get("DECONVLAB_MODELS")
    if env:
        return Path(env)
    user = user_models_dir()
    if (user / "registry.json").is_file():
        return user
    root = checkout_root()
    if root is not None and (root / "models" / "registry.json").is_file():
        return root / "models"
    return user


SHIPPED_MARK = "shipped"  # key marking an entry read_registry layered in from the shipped models
_PATH_KEYS = ("checkpoint", "snapshots", "card", "weights", "classes")  # entry values that may name files


def _shipped_entries() -> tuple[dict, str]:
    """The shipped registry's entries (file names made absolute, marked ``SHIPPED_MARK``) and its default."""
    from .._resources import shipped_models_dir

    base = shipped_models_dir()
    if base is None:
        return {}, DEFAULT_MODEL
    reg = json.loads((base / "registry.json").read_text())
    out = {}
    for name, entry in reg["models"].items():
        entry = dict(entry)
        for k in _PATH_KEYS:  # only values that name a shipped file: "torchvision" or a class list stay
            v = entry.get(k)
            if isinstance(v, str) and not Path(v).is_absolute() and (base / v).exists():
                entry[k] = str(base / v)
        out[name] = {**entry, SHIPPED_MARK: True}
    return out, reg.get("default", DEFAULT_MODEL)


def read_registry(root: Path | None = None) -> dict:
    """``<root>/registry.json`` (default ``models_dir()``) as ``{"default", "models": {name: entry}}``.

    The user folder (``user_models_dir()``) is read layered: the shipped
    models first, its own entries on top (same name: the user's wins), its
    ``default`` when it names a model, else the shipped default. Entries marked
    ``SHIPPED_MARK`` in the user's file (a read-modify-write of this answer
    saved them) are dropped and re-read from the package, so they never go
    stale. Any other folder is read alone.
    """
    root = root or models_dir()
    path = root / "registry.json"
    reg = json.loads(path.read_text()) if path.is_file() else {"default": DEFAULT_MODEL, "models": {}}
    if Path(root).resolve() != user_models_dir().resolve():
        return reg
    models, default = _shipped_entries()
    models.update({n: e for n, e in reg.get("models", {}).items() if not e.get(SHIPPED_MARK)})
    own = reg.get("default") if path.is_file() else None
    return {**reg, "default": own if own in models else default, "models": models}


def model_names(root: Path | None = None) -> list[str]:
    return sorted(read_registry(root)["models"])


def save_checkpoint(path: str | Path, model: nn.Module, meta: ModelMeta, half: bool = False) -> Path:
    """Write ``model``'s weights and ``meta`` to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={"deconvlab": meta.to_json()})
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, meta: ModelMeta | None = None) -> tuple[nn.Sequential, ModelMeta]:
    """Build the model a checkpoint describes and load its weights (as float32)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if meta is None:
            if "deconvlab" not in md:
                raise ValueError(f"{path}: no 'deconvlab' metadata; pass meta= to say what it holds")
            meta = ModelMeta.from_json(md["deconvlab"])
    else:
        if meta is None:
            raise ValueError(f"{path}: a .pt/.pth state dict needs meta= (architecture and classes)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not meta.name:
        meta.name = path.stem
    model = build(meta)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval(), meta


def resolve(name_or_path: str, root: Path | None = None, weights: str | Path | None = None,
            trust: bool = False) -> tuple[nn.Module, ModelMeta]:
    """A registry name, a checkpoint path, ``"torchvision:<arch>"`` (with ``weights=``: a file,
    ``"torchvision"``/an enum name, or None for random) or a ``.pt2``/TorchScript file -> (model in eval
    mode, meta). Entries whose arch is ``torchvision:<arch>``/``export``/``torchscript`` and program files
    are opened by ``user_models.open_entry``; ``trust=True`` lets TorchScript load (see ``program.py``)."""
    from .user_models import is_user_arch, open_entry, program_arch

    if weights is not None and not str(name_or_path).startswith("torchvision:"):
        raise ValueError(f"weights= is for 'torchvision:<arch>' names, got {name_or_path!r}")
    p = Path(name_or_path)
    if str(name_or_path).startswith("torchvision:"):
        module, fields = open_entry({"arch": str(name_or_path), "weights": weights}, Path.cwd(), str(name_or_path))
        return module, ModelMeta(**fields)
    kind = program_arch(p) if p.suffix not in (".safetensors",) else None
    if kind:
        module, fields = open_entry({"arch": kind, "weights": str(p)}, Path.cwd(), p.stem, trust)
        return module, ModelMeta(**fields)
    if p.suffix in (".safetensors", ".pt", ".pth") and p.is_file():
        return load_checkpoint(p)
    root = root or models_dir()
    reg = read_registry(root)
    entry = reg["models"].get(name_or_path)
    if entry is None:
        raise KeyError(f"unknown model: expected a checkpoint path, 'torchvision:<arch>', a .pt2/TorchScript "
                       f"file or one of {sorted(reg['models'])}, got {name_or_path!r}")
    if is_user_arch(entry.get("arch", "")):
        module, fields = open_entry(entry, root, name_or_path, trust)
        return module, ModelMeta(**fields)
    if "checkpoint" in entry:
        model, meta = load_checkpoint(root / entry["checkpoint"])
        meta.name = name_or_path
        return model, meta
    meta = ModelMeta(arch=entry["arch"], config=entry.get("config", {}),
                     classes=entry.get("classes", []), name=name_or_path)
    model = build(meta)
    weights = entry.get("weights")
    if weights:  # "torchvision" (cache or download) or a local path
        src = None if weights == "torchvision" else root / weights
        load_torchvision_weights(meta.arch, model, src)
    return model.eval(), meta


def layer_map(model: nn.Sequential) -> "dict[str, str]":
    """Paper layer name -> name of the child whose output is that layer's activation.

    ``convN`` and ``fcN`` (but the last fc) are read after their ReLU (the
    rectified feature maps of the paper); the last fc layer is read as it is
    (the logits, before the softmax). Ordered from the input up.
    """
    names = [n for n, _ in model.named_children()]
    children = dict(model.named_children())
    out: dict[str, str] = {}
    for i, n in enumerate(names):
        if not (n.startswith("conv") or n.startswith("fc")):
            continue
        target = n
        for m in names[i + 1:]:
            if isinstance(children[m], (nn.Conv2d, nn.Linear)):
                break
            if isinstance(children[m], nn.ReLU):
                target = m
                break
        out[n] = target
    return out
