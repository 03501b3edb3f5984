"""Any torchvision classification model by name, with its weights, classes and input defaults.

``load_torchvision("resnet50", weights=...)`` builds the architecture as
torchvision ships it (torchvision's own module, not a copy: in-place and reused
ReLUs, functional ReLUs, ``transform_input`` and all) and loads its weights:

| ``weights`` | where they come from | classes | input size, mean, std |
|---|---|---|---|
| ``None`` | random (torchvision's init; seed torch first for a fixed one) | numbered, ``num_classes`` (1000) | the arch's DEFAULT weights' transforms |
| a file (``.safetensors``, ``.pth``/``.pt`` with ``weights_only``) | ``weights.read_state_dict`` | numbered, as many as the file's classifier rows | as above |
| ``"torchvision"``, ``"DEFAULT"`` or a Weights enum name (``"IMAGENET1K_V1"``) | torchvision's file in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``) if it is there, else torchvision's download | the Weights meta's ``categories`` | that enum's transforms |

torchvision's builders read their files with ``torch.load(weights_only=False)``;
here that call runs under ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (PyTorch's own
switch, read at each ``torch.load``), so a file planted in the cache is read as
data too. The builders' per-model steps (DenseNet's old key names, GoogLeNet's
and Inception's ``transform_input`` and auxiliary heads) stay torchvision's.

``num_classes`` is read from the file's classifier when not given: the
parameters whose first dimension is the class count in the default model
(``fc.weight``, ``classifier.1.weight``, SqueezeNet's ``classifier.1`` conv).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from .weights import load_into, read_state_dict

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
TORCHVISION_ALIASES = ("torchvision", "DEFAULT")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classification_models() -> list[str]:
    """The names ``load_torchvision`` takes: torchvision's classification models."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _check_arch(arch: str) -> None:
    names = classification_models()
    if arch not in names:
        raise ValueError(f"unknown torchvision classification model: expected one of {names}, got {arch!r}")


def weights_enum(arch: str, weights: str):
    """``"torchvision"``/``"DEFAULT"``/an enum name -> torchvision's Weights member for ``arch``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if weights in TORCHVISION_ALIASES:
        return enum.DEFAULT
    name = weights.removeprefix(enum.__name__ + ".")
    if name not in enum.__members__:
        raise ValueError(f"weights for {arch}: expected a file, one of {list(TORCHVISION_ALIASES)} or one of "
                         f"{[n for n in enum.__members__ if n not in TORCHVISION_ALIASES]}, got {weights!r}")
    return enum[name]


def is_weights_file(weights: str | Path) -> bool:
    return isinstance(weights, Path) or Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).is_file()


def cached_file(member) -> Path:
    """Where torchvision's file for a Weights member lives in torch.hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)


@contextlib.contextmanager
def _force_weights_only():
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _classifier_keys(arch: str) -> list[str]:
    """State-dict keys whose first dimension is the class count (found on the meta device, no init cost)."""
    from torchvision.models import get_model

    probe = 1009  # a class count no other layer of a torchvision model has
    with torch.device("meta"):
        m = get_model(arch, weights=None, num_classes=probe,
                      **({"init_weights": False} if arch in ("googlenet", "inception_v3") else {}))
    return [k for k, v in m.state_dict().items() if v.dim() >= 1 and v.shape[0] == probe]


def infer_num_classes(arch: str, state: dict[str, torch.Tensor]) -> int:
    keys = [k for k in _classifier_keys(arch) if k in state]
    if not keys:
        raise ValueError(f"the weights do not look like {arch}'s: none of its classifier keys "
                         f"{_classifier_keys(arch)} is in the file (its first keys: {list(state)[:5]})")
    return int(state[keys[-1]].shape[0])


def _build(arch: str, num_classes: int, state: dict | None = None) -> nn.Module:
    from torchvision.models import get_model

    kwargs: dict = {"num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):  # their auxiliary heads: as the file has them
        kwargs["init_weights"] = state is None
        if state is not None:
            kwargs["aux_logits"] = any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
    return get_model(arch, weights=None, **kwargs)


def load_torchvision_model(arch: str, weights: str | Path | None = None,
                           num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """``(module in eval mode, defaults)``; defaults: classes, input_size, mean, std, weights (how to say
    them again: a file path or ``"<Enum>.<member>"``)."""
    _check_arch(arch)
    if weights is None:
        n = num_classes or 1000
        return _build(arch, n).eval(), {**transform_defaults(arch), "classes": numbered(n), "weights": None}
    if is_weights_file(weights):
        state = read_state_dict(weights)
        n = num_classes or infer_num_classes(arch, state)
        model = load_into(_build(arch, n, state), state, what=f"torchvision {arch} with {n} classes")
        return model.eval(), {**transform_defaults(arch), "classes": numbered(n), "weights": str(weights)}
    member = weights_enum(arch, str(weights))
    cats = list(member.meta.get("categories") or [])
    if num_classes is not None and cats and num_classes != len(cats):
        raise ValueError(f"num_classes: {member} has {len(cats)} classes, got num_classes={num_classes}")
    from torchvision.models import get_model

    try:
        with _force_weights_only():
            model = get_model(arch, weights=member)
    except OSError as e:  # URLError is an OSError: no network and no cached file
        raise FileNotFoundError(f"{member}: not in torchvision's cache ({cached_file(member)}) and the "
                                f"download failed ({e}); put the file there or pass a weights file") from e
    except pickle.UnpicklingError as e:
        raise ValueError(f"refused {cached_file(member)}: it holds pickled Python objects, not only tensors, "
                         f"and is read with torch.load(weights_only=True); delete it to download it again "
                         f"({str(e).splitlines()[0]})") from None
    return model.eval(), {**transform_defaults(arch, member), "classes": cats or numbered(num_classes or 1000),
                          "weights": f"{type(member).__name__}.{member.name}"}


def load_torchvision(arch: str, weights: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """torchvision's ``arch`` in eval mode with ``weights`` (see the module docstring's table)."""
    return load_torchvision_model(arch, weights, num_classes)[0]


def transform_defaults(arch: str, member=None) -> dict:
    """input_size, mean, std of ``member``'s (else the arch's DEFAULT weights') eval transforms."""
    from torchvision.models import get_model_weights

    try:
        member = member or get_model_weights(arch).DEFAULT
        t = member.transforms()
        return {"input_size": int(t.crop_size[0]), "mean": tuple(t.mean), "std": tuple(t.std)}
    except (AttributeError, KeyError, ValueError, TypeError):
        return {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def numbered(n: int) -> list[str]:
    return [str(i) for i in range(n)]
