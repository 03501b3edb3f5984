"""Is this module an image classifier? One forward on a zero image says.

deconvlab needs a module that maps ``(N, C, H, W)`` images to ``(N, classes)``
logits. ``check_module`` runs it once on ``zeros(1, C, S, S)`` (in eval mode,
under ``no_grad``, putting its train/eval flags back afterwards) and reports:

| found | error |
|---|---|
| ``in_channels`` or ``input_size`` not a positive int | ``expected a positive int, got ...`` |
| the forward raises | ``expected a module that takes a (1, C, S, S) image tensor; its forward raised ...`` |
| a tuple, list, dict or named tuple (GoogLeNet/Inception training outputs, detection, segmentation) | ``expected output of shape (N, classes), got tuple of 2 (...)`` |
| a tensor that is not 2-D with N rows (a feature map, a flattened image) | ``expected output of shape (N, classes), got (1, 21, 64, 64)`` |
| integer or complex values | ``expected floating logits, got torch.int64`` |
"""

from __future__ import annotations

import torch
from torch import nn


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, dict):
        return f"dict with keys {list(out)[:6]}"
    if isinstance(out, (tuple, list)):
        parts = ", ".join(_describe(o) for o in list(out)[:4])
        return f"{type(out).__name__} of {len(out)} ({parts})"
    return type(out).__name__


def _modes(module) -> list[tuple[nn.Module, bool]]:
    try:
        return [(m, m.training) for m in module.modules()]
    except (AttributeError, TypeError):
        return []


def check_module(module, in_channels: int = 3, input_size: int = 224) -> int:
    """The number of classes ``module`` outputs for a ``(1, in_channels, input_size, input_size)`` image."""
    for label, v in (("in_channels", in_channels), ("input_size", input_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{label}: expected a positive int, got {v!r}")
    x = torch.zeros(1, in_channels, input_size, input_size)
    try:
        x = x.to(next(iter(module.parameters())).device)
    except (StopIteration, AttributeError, TypeError):
        pass
    modes = _modes(module)
    try:
        for m, _ in modes:
            m.training = False
        with torch.no_grad():
            out = module(x)
    except Exception as e:  # noqa: BLE001 (the user's forward can raise anything)
        raise ValueError(f"expected a module that takes a {tuple(x.shape)} image tensor; its forward raised "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    finally:
        for m, flag in modes:
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        hint = (" (a feature map: end the model with a pool and a linear layer)"
                if isinstance(out, torch.Tensor) and out.dim() == 4 else "")
        raise ValueError(f"expected output of shape (N, classes) for a {tuple(x.shape)} input, "
                         f"got {_describe(out)}{hint}")
    if not out.is_floating_point():
        raise ValueError(f"expected floating logits, got {out.dtype}")
    return int(out.shape[1])
