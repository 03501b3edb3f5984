"""The user's own models: registry entries, ``register`` (validate, then write) and opening them.

An entry of ``registry.json`` for a model deconvlab did not train:

```json
"my-resnet": {"arch": "torchvision:resnet50", "weights": "my-resnet.safetensors",
              "classes": ["cat", "dog"] or "classes.txt", "input_size": 224,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
"my-mnist":  {"arch": "export", "weights": "mnist.pt2", "input_size": 28, "mean": [0.1307], "std": [0.3081]}
```

| ``arch`` | ``weights`` | built by |
|---|---|---|
| ``torchvision:<name>`` | a file, ``torchvision``/``DEFAULT``/an enum name, or none (random; ``"num_classes"`` then says how many) | ``torchvision_any.load_torchvision_model`` |
| ``export`` / ``torchscript`` | the program file (``.pt2`` audited; TorchScript needs ``"trust": true``) | ``program.load_program`` |

Relative paths are relative to the models folder. ``classes`` is a list or a
file (a JSON list, else one name a line); the input has ``len(mean)`` channels
(one mean and one std: a grayscale model). Missing fields take the weights'
defaults (torchvision's transforms and categories), else 224 px, ImageNet's
mean/std (for one channel their averages, 0.449 and 0.226) and numbered classes.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .._util import atomic_json
from .checks import check_module
from .program import PT2_SUFFIXES, TORCHSCRIPT_SUFFIXES, archive_kind, example_input_shape, load_program
from .torchvision_any import IMAGENET_MEAN, IMAGENET_STD, WEIGHT_FILE_SUFFIXES, load_torchvision_model, numbered

PROGRAM_ARCHS = ("export", "torchscript")
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)


def is_user_arch(arch: str) -> bool:
    return arch.startswith("torchvision:") or arch in PROGRAM_ARCHS


def is_file_ref(w) -> bool:
    """Does ``weights`` name a file (rather than torchvision weights such as ``IMAGENET1K_V1``)?"""
    return isinstance(w, Path) or Path(str(w)).expanduser().is_file() or \
        Path(str(w)).suffix in WEIGHT_FILE_SUFFIXES + PT2_SUFFIXES + TORCHSCRIPT_SUFFIXES


def program_arch(path: str | Path) -> str | None:
    """``"export"`` for a ``.pt2`` archive, ``"torchscript"`` for a TorchScript zip, else None."""
    p = Path(path)
    kind = archive_kind(p) if p.is_file() else None
    return {"pt2": "export", "torchscript": "torchscript"}.get(kind)


def _path(p: str | Path, root: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else root / p


def read_classes(classes, root: Path) -> list[str]:
    if classes is None or isinstance(classes, list):
        return [str(c) for c in classes or []]
    text = _path(classes, root).read_text()
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list):
        raise ValueError(f"classes file {classes}: expected a JSON list or one name a line, got {type(names).__name__}")
    return [str(c) for c in names]


def _norm(mean, std, defaults: dict) -> tuple[tuple, tuple]:
    if mean is None and std is None:
        return tuple(defaults.get("mean", IMAGENET_MEAN)), tuple(defaults.get("std", IMAGENET_STD))
    mean = tuple(float(v) for v in (mean if mean is not None else IMAGENET_MEAN))
    std = tuple(float(v) for v in (std if std is not None else (GRAY_STD if len(mean) == 1 else IMAGENET_STD)))
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(f"mean/std: expected 1 (grayscale) or 3 (RGB) values each, got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"std: expected positive values, got {list(std)}")
    return mean, std


def open_entry(entry: dict, root: Path, name: str = "", trust: bool = False) -> tuple[nn.Module, dict]:
    """A user entry -> (module in eval mode, the fields of its ModelMeta: arch, config, classes, ...)."""
    arch, weights = entry["arch"], entry.get("weights")
    if arch.startswith("torchvision:"):
        tv = arch.split(":", 1)[1]
        src = weights
        if src is not None and is_file_ref(src):
            src = _path(src, root)
        module, d = load_torchvision_model(tv, src, entry.get("num_classes"))
        config = {"num_classes": len(d["classes"]), "weights": d["weights"]}
        channels = 3
    elif arch in PROGRAM_ARCHS:
        if not weights:
            raise ValueError(f"{name or arch}: a {arch} entry needs weights= (the program file)")
        module = load_program(_path(weights, root), trust=trust or bool(entry.get("trust")))
        shape = example_input_shape(module) or ()
        if shape and shape[0] not in (1, -1):
            raise ValueError(f"{weights}: exported for a batch of exactly {shape[0]} images; expected a dynamic "
                             f"batch (dynamic_shapes=({{0: torch.export.Dim('batch')}},)) or a batch of 1")
        d = {"input_size": shape[2] if len(shape) == 4 and shape[2] > 0 else 224}
        channels = shape[1] if len(shape) == 4 and shape[1] > 0 else 3
        if channels == 1:
            d.update(mean=GRAY_MEAN, std=GRAY_STD)
        config = {"path": str(_path(weights, root)), "batch": "dynamic" if shape and shape[0] == -1 else 1}
    else:
        raise ValueError(f"arch: expected 'torchvision:<name>', 'export' or 'torchscript', got {arch!r}")
    mean, std = _norm(entry.get("mean"), entry.get("std"), d)
    if "mean" in entry and arch in PROGRAM_ARCHS:
        channels = len(mean)
    size = int(entry.get("input_size") or d.get("input_size", 224))
    classes = read_classes(entry.get("classes"), root) or d.get("classes") or []
    if arch.startswith("torchvision:") and len(classes) != config["num_classes"]:
        raise ValueError(f"classes: expected {config['num_classes']} names (the model's outputs), got {len(classes)}")
    if not classes:
        classes = numbered(check_module(module, channels, size))
    config["in_channels"] = len(mean)
    return module.eval() if arch != "export" else module, {
        "arch": arch, "config": config, "classes": classes, "input_size": size, "mean": mean, "std": std,
        "name": name}


def _stored(path, root: Path) -> str:
    """A file as an entry names it: relative to the models folder when inside it, else absolute."""
    p = Path(path).expanduser().resolve()
    return str(p.relative_to(root.resolve())) if p.is_relative_to(root.resolve()) else str(p)


def _entry(arch, weights, classes, input_size, mean, std, root: Path, trust: bool) -> dict:
    entry: dict = {"arch": arch}
    if weights is not None:
        w = str(weights)
        entry["weights"] = _stored(w, root) if is_file_ref(w) else w
    if classes is not None:
        entry["classes"] = classes if isinstance(classes, list) else _stored(classes, root)
    if input_size is not None:
        entry["input_size"] = int(input_size)
    if mean is not None or std is not None:
        m, s = _norm(mean, std, {})
        entry["mean"], entry["std"] = list(m), list(s)
    if trust:
        entry["trust"] = True
    return entry


def register(name: str, arch: str, weights: str | Path | None = None, classes: list[str] | str | Path | None = None,
             input_size: int | None = None, mean=None, std=None, models_dir: str | Path | None = None,
             trust: bool = False) -> Path:
    """Validate a user model and write its entry into ``<models_dir>/registry.json`` (atomically, keeping the
    others). Validation builds it, loads the weights and checks a zero image of ``input_size`` gives
    ``(1, classes)``, with as many classes as are named. ``input_size=None``: the weights' own (torchvision's
    transforms, the export's input shape), else 224. Returns the registry file's path."""
    from .registry import models_dir as default_models_dir, read_registry

    if not name or "/" in name or name != name.strip():
        raise ValueError(f"name: expected a non-empty name without '/' or surrounding spaces, got {name!r}")
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    entry = _entry(arch, weights, classes, input_size, mean, std, root, trust)
    module, fields = open_entry(entry, root, name)
    channels = len(fields["mean"])
    n = check_module(module, channels, fields["input_size"])
    if len(fields["classes"]) != n:
        raise ValueError(f"classes: expected {n} names (the model's outputs), got {len(fields['classes'])}")
    root.mkdir(parents=True, exist_ok=True)
    reg = read_registry(root)
    reg.setdefault("models", {})[name] = entry
    path = root / "registry.json"
    return atomic_json(path, reg, indent=2)
