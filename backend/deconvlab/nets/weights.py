"""State dicts from files, read without unpickling, and loaded with errors that name the keys.

A weights file is data, not a program: deconvlab reads it as data only.

| file | how it is read | refused |
|---|---|---|
| ``.safetensors`` | ``safetensors.torch.load_file`` (a JSON header and raw bytes) | never (the format cannot hold code) |
| anything else (``.pth``, ``.pt``, ``.bin``, ``.ckpt``) | ``torch.load(weights_only=True)``: tensors, containers and numbers only | a pickled Python object (``torch.save(model)``, an optimizer with custom classes): the unpickler would import and call it |

What the file holds is then unwrapped (``read_state_dict``):

| file holds | taken |
|---|---|
| ``{name: tensor}`` | as it is |
| ``{"state_dict": {...}}``, ``{"model": {...}}``, ``{"model_state_dict": {...}}`` (training checkpoints) | the inner dict |
| every key starting with ``module.`` (``nn.DataParallel``/DDP) | the keys without it |

``load_into(model, state)`` compares the two key sets and shapes before
loading, so that a file made for another architecture fails with one message
that lists the missing, unexpected and mis-shaped keys ("expected (10, 512),
got (1000, 512)") instead of PyTorch's first mismatch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
SHOWN = 8  # keys listed per kind of mismatch


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights file -> ``{name: tensor}`` on the CPU (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        from .program import archive_kind

        if archive_kind(path) in ("torchscript", "pt2"):
            raise ValueError(f"{path} is a {archive_kind(path)} program, not a state dict: open it with "
                             f"nets.load_program(path) or resolve(path) (TorchScript: with trust=True)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"refused {path}: it holds pickled Python objects, not only tensors (e.g. a whole module "
                f"saved with torch.save(model)); unpickling them could run any code, so it is read with "
                f"torch.load(weights_only=True), which refuses them. Save model.state_dict() instead, or "
                f"export the model (torch.export.save to .pt2). The unpickler said: {str(e).splitlines()[0]}"
            ) from None
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state dict ({{name: tensor}}, maybe under one of "
                         f"{list(WRAPPER_KEYS)}), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: expected a state dict of tensors, got non-tensor values under {bad[:SHOWN]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """'' when ``state`` fits ``model`` key for key and shape for shape, else what differs."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} expected {tuple(want[k].shape)}, got {tuple(state[k].shape)}"
              for k in want if k in state and tuple(want[k].shape) != tuple(state[k].shape)]
    parts = []
    for label, items in (("missing keys (the model has them, the file does not)", missing),
                         ("unexpected keys (the file has them, the model does not)", unexpected),
                         ("mis-shaped", shapes)):
        if items:
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN])}{more}")
    return "; ".join(parts)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str = "the model") -> nn.Module:
    """Load ``state`` into ``model`` (floating tensors cast to the model's dtype), all keys or an error."""
    problem = mismatch(model, state)
    if problem:
        raise ValueError(f"the weights do not fit {what}: {problem}")
    want = model.state_dict()
    cast = {k: v.to(want[k].dtype) if v.is_floating_point() and want[k].is_floating_point() else v
            for k, v in state.items()}
    model.load_state_dict(cast)
    return model
