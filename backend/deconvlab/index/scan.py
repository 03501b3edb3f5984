"""The activation scan: each unit's maximum over positions, per image, and where it is (Sec. 2.1, Fig. 2).

The top-k index ranks a unit's images by "the strongest activation" of its
feature map, i.e. the *maximum over positions* (fc units have one position);
the feature-evolution analysis (Fig. 4, :mod:`deconvlab.analyses.evolution`)
asks the same question of every training snapshot. Both stream batches
through this module.

:func:`layer_outputs` is the one scan loop: it runs the children of an
``nn.Sequential`` itself (no switches are recorded, unlike ``Net.forward``),
hands out the activation of each paper layer asked for, and stops after the
last one. Two reductions sit on it:

=====================  ====================================================  ========================
function               returns                                               used by
=====================  ====================================================  ========================
:func:`scan_values`    ``values`` [B, U] and every layer's activation; the    ``build_index``: only the
                       positions are found later, by                         few (unit, image) pairs
                       :func:`argmax_positions`, for the pairs that need     that enter a top-k need a
                       them                                                  position
:func:`scan`           ``values`` [B, U] and ``position`` [B, U, 2] for       the evolution analysis
                       every pair; keeps no activation beyond the one         (each unit's best image
                       being reduced                                          over all batches)
=====================  ====================================================  ========================

The U units of all layers stand side by side in layer order (:class:`LayerInfo`
``offset``). A position is (y, x) of the *first* maximum in row-major order;
-1 for fc units. Both assume ``module`` is in eval mode and ``x`` normalised as
the model expects.

Errors: a model with no ``conv*``/``fc*`` children, or a layer whose activation
is neither (C, H, W) nor (C,), is a ``ValueError`` saying what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..nets import layer_map

__all__ = ["LayerInfo", "index_layers", "layer_outputs", "scan_values", "argmax_positions", "scan"]


@dataclass
class LayerInfo:
    name: str  # paper name, e.g. "conv3"
    child: str  # the Sequential child whose output is read (e.g. "relu3")
    kind: str  # "conv" or "fc"
    units: int  # channels
    shape: tuple  # (C, H, W) or (C,)
    offset: int  # first row of this layer in the entry arrays


def _activation_shapes(module: torch.nn.Sequential, children: set[str], input_size: int) -> dict[str, tuple]:
    """The activation shape (without the batch) of each of ``children`` for one zero image."""
    p = next(module.parameters(), None)
    x = torch.zeros(1, 3, input_size, input_size, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    shapes = {}
    was_training = module.training
    try:
        module.eval()
        with torch.inference_mode():
            for name, m in module.named_children():
                x = m(x)
                if name in children:
                    shapes[name] = tuple(x.shape[1:])
                    if len(shapes) == len(children):
                        break
    finally:
        module.train(was_training)
    return shapes


def index_layers(module: torch.nn.Sequential, input_size: int) -> list[LayerInfo]:
    """Every paper layer of ``module`` with its activation shape at ``input_size`` px."""
    children_of = layer_map(module)
    if not children_of:
        raise ValueError("the model has no conv*/fc* children to index (expected a named nn.Sequential)")
    shapes = _activation_shapes(module, set(children_of.values()), input_size)
    out, offset = [], 0
    for layer, child in children_of.items():
        s = shapes[child]
        if len(s) not in (1, 3):
            raise ValueError(f"layer {layer}: expected an activation of shape (C, H, W) or (C,), got {s}")
        out.append(LayerInfo(layer, child, "conv" if len(s) == 3 else "fc", int(s[0]), s, offset))
        offset += int(s[0])
    return out


def layer_outputs(module: torch.nn.Sequential, x: torch.Tensor, layers: list[LayerInfo]
                  ) -> Iterator[tuple[LayerInfo, torch.Tensor]]:
    """The scan loop: ``x`` through ``module``'s children, yielding ``(layer, activation)`` for each of
    ``layers`` (a [B, C, H, W] or [B, C] tensor), and stopping after the last one."""
    by_child = {L.child: L for L in layers}
    last = layers[-1].child
    for name, m in module.named_children():
        x = m(x)
        L = by_child.get(name)
        if L is not None:
            if x.dim() not in (2, 4):
                raise ValueError(f"layer {L.name}: expected a 2-D or 4-D activation, got {tuple(x.shape)}")
            yield L, x
        if name == last:
            return


def scan_values(module: torch.nn.Sequential, x: torch.Tensor, layers: list[LayerInfo]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One batch: each unit's max over positions, and the maps.

    Returns ``values`` [B, U] (float32, on the CPU) and the activation of each
    layer (kept so :func:`argmax_positions` can locate the few maxima that
    enter a top-k, instead of an argmax over every map).
    """
    values, maps = [], []
    for L, a in layer_outputs(module, x, layers):
        values.append((a.flatten(2).amax(dim=2) if a.dim() == 4 else a).float())
        maps.append(a)
    return torch.cat(values, 1).cpu(), maps


def argmax_positions(maps: list[torch.Tensor], layers: list[LayerInfo], units: np.ndarray,
                     images: np.ndarray) -> np.ndarray:
    """(y, x) of the first maximum (row-major) of unit ``units[i]`` (a row of the U units) in batch
    image ``images[i]``, from :func:`scan_values`' maps; (-1, -1) for fc units. [n, 2] int32."""
    out = np.full((len(units), 2), -1, dtype=np.int32)
    for L, a in zip(layers, maps):
        sel = np.flatnonzero((units >= L.offset) & (units < L.offset + L.units))
        if L.kind != "conv" or sel.size == 0:
            continue
        u, b, w = units[sel] - L.offset, np.asarray(images)[sel], a.shape[-1]
        if a.device.type == "cpu":  # numpy: a few small gathers, no thread-pool start-up per call
            flat = a.numpy()[b, u].reshape(len(sel), -1).argmax(axis=1)
        else:
            flat = a[torch.from_numpy(b).to(a.device), torch.from_numpy(u).to(a.device)].flatten(1).argmax(1)
            flat = flat.cpu().numpy()
        out[sel, 0], out[sel, 1] = flat // w, flat % w
    return out


def scan(module: torch.nn.Sequential, x: torch.Tensor, layers: list[LayerInfo]
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: each unit's max over positions and where it is.

    Returns ``values`` [B, U] (float32) and ``position`` [B, U, 2] (int32), both
    on the CPU. Keeps no activation beyond the one being reduced.
    """
    values, positions = [], []
    for L, a in layer_outputs(module, x, layers):
        if a.dim() == 4:
            b, c, h, w = a.shape
            v, i = a.reshape(b, c, h * w).max(dim=2)
            pos = torch.stack((i // w, i % w), dim=2).to(torch.int32)
        else:
            v = a
            pos = torch.full((a.shape[0], a.shape[1], 2), -1, dtype=torch.int32, device=a.device)
        values.append(v.float())
        positions.append(pos)
    return torch.cat(values, 1).cpu(), torch.cat(positions, 1).cpu()
