"""The activation scan: each unit's maximum over positions, per image, and where it is (Sec. 2.1, Fig. 2).

The top-k index ranks a unit's images by "the strongest activation" of its
feature map, i.e. the *maximum over positions* (fc units have one position);
the feature-evolution analysis (Fig. 4, :mod:`deconvlab.analyses.evolution`)
asks the same question of every training snapshot. Both stream batches
through this module.

:func:`layer_outputs` is the one scan loop. ``model`` is a flat
``nn.Sequential`` (or a ``Net`` on the sequential engine): it runs the children
itself (no switches are recorded, unlike ``Net.forward``), hands out the
activation of each paper layer asked for, and stops after the last one. Or it
is a ``Net`` on the graph engine (a ResNet, a user's module): then the
streaming interpreter of :mod:`.scan_graph` runs the model's fx graph node by
node, hands out each wanted node's value as soon as it is computed and drops
every value no later node reads, so a batch never holds more than the live
values of the graph (``Net.forward`` keeps every node's value: GBs for a batch
of 64 at 224 px). Models fx cannot trace go through forward hooks instead.
:mod:`.scan_graph` also says which layers of a graph net are indexed, and why.
Two reductions sit on the loop:

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

Graph nets: the maps are dropped as the scan goes, so :func:`scan_values` takes
the argmax while each map is live, for the pairs not below ``floor`` (the
tracker's k-th value per unit), and :func:`argmax_positions` reads it back.

Errors: a model with no ``conv*``/``fc*`` children, or a layer whose activation
is neither (C, H, W) nor (C,), is a ``ValueError`` saying what was expected; a
graph net with no layer to index likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..nets import layer_map
from . import scan_graph

__all__ = ["LayerInfo", "index_layers", "layer_outputs", "scan_values", "argmax_positions", "scan"]


@dataclass
class LayerInfo:
    name: str  # paper name, e.g. "conv3"; a graph net's layer name (``layer3.1``)
    child: str  # the Sequential child whose output is read (e.g. "relu3"); a graph net's fx node
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


class PositionTable(list):
    """:func:`scan_values`' second value for a graph net: ``[positions]``, one [B, U, 2] int32
    tensor (the argmax of the pairs that can enter a top-k, -1 elsewhere), in place of the maps a
    Sequential's scan keeps."""


def _sequential(model) -> torch.nn.Sequential | None:
    """The flat Sequential the sequential loop runs: ``model`` itself, or a sequential-engine Net's."""
    if isinstance(model, torch.nn.Sequential):
        return model
    if getattr(model, "engine", None) == "sequential":
        return model.module
    return None


def _graph_net(model):
    if getattr(model, "engine", None) != "graph":
        raise TypeError(f"model: expected an nn.Sequential with paper names or a deconvlab Net, "
                        f"got {type(model).__name__}")
    return model


def index_layers(model, input_size: int | None = None) -> list[LayerInfo]:
    """The layers to index with their activation shapes at ``input_size`` px: every paper layer of a
    Sequential (or sequential-engine Net); for a graph-engine Net the layers
    :func:`.scan_graph.graph_index_layers` picks (``input_size``: the net's)."""
    module = _sequential(model)
    if module is None:
        return [LayerInfo(**d) for d in scan_graph.graph_index_layers(_graph_net(model), input_size)]
    input_size = int(input_size if input_size is not None else model.meta.input_size)
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


def layer_outputs(model, x: torch.Tensor, layers: list[LayerInfo]
                  ) -> Iterator[tuple[LayerInfo, torch.Tensor]]:
    """The scan loop: ``x`` through ``model``, yielding ``(layer, activation)`` for each of ``layers``
    (a [B, C, H, W] or [B, C] tensor) in forward order; a Sequential stops after the last one, a
    graph net streams (:func:`.scan_graph.stream`: no value kept past its last use)."""
    module = _sequential(model)
    if module is None:
        by_node = {L.child: L for L in layers}
        for node, a in scan_graph.stream(_graph_net(model), x, set(by_node)):
            L = by_node[node]
            if a.dim() not in (2, 4):
                raise ValueError(f"layer {L.name}: expected a 2-D or 4-D activation, got {tuple(a.shape)}")
            yield L, a
        return
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


def scan_values(model, x: torch.Tensor, layers: list[LayerInfo], floor: np.ndarray | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One batch: each unit's max over positions, and the maps.

    Returns ``values`` [B, U] (float32, on the CPU) and the activation of each
    layer (kept so :func:`argmax_positions` can locate the few maxima that
    enter a top-k, instead of an argmax over every map). A graph net keeps no
    map: its second value is ``[positions]``, a [B, U, 2] table that
    :func:`argmax_positions` reads instead, filled (while each map is live) for
    the pairs whose value is not below ``floor`` [U] (the tracker's k-th value
    per unit: no other pair can enter the top-k; None: every pair) and -1
    elsewhere. (An argmax costs ~6x a max over a map; after the first batches
    few pairs pass the floor.)
    """
    if _sequential(model) is None:
        return _graph_values(model, x, layers, floor)
    values, maps = [], []
    for L, a in layer_outputs(model, x, layers):
        values.append((a.flatten(2).amax(dim=2) if a.dim() == 4 else a).float())
        maps.append(a)
    return torch.cat(values, 1).cpu(), maps


def _graph_values(net, x: torch.Tensor, layers: list[LayerInfo], floor: np.ndarray | None):
    values = []
    pos = torch.full((x.shape[0], sum(L.units for L in layers), 2), -1, dtype=torch.int32)
    for L, a in layer_outputs(net, x, layers):
        v = (a.flatten(2).amax(dim=2) if a.dim() == 4 else a).float()
        values.append(v)
        if a.dim() != 4:
            continue
        want = torch.ones_like(v, dtype=torch.bool) if floor is None else \
            ~(v < torch.as_tensor(floor[L.offset:L.offset + L.units], device=v.device))  # NaN passes
        b, u = torch.nonzero(want, as_tuple=True)
        if b.numel():
            flat = a[b, u].flatten(1).argmax(dim=1)
            w = a.shape[-1]
            pos[b.cpu(), (u + L.offset).cpu()] = torch.stack((flat // w, flat % w), 1).to(torch.int32).cpu()
    return torch.cat(values, 1).cpu(), PositionTable([pos])


def argmax_positions(maps: list[torch.Tensor], layers: list[LayerInfo], units: np.ndarray,
                     images: np.ndarray) -> np.ndarray:
    """(y, x) of the first maximum (row-major) of unit ``units[i]`` (a row of the U units) in batch
    image ``images[i]``, from :func:`scan_values`' maps; (-1, -1) for fc units. [n, 2] int32."""
    if isinstance(maps, PositionTable):  # a graph net's scan: every pair's position already
        return maps[0].numpy()[np.asarray(images), np.asarray(units)].astype(np.int32).reshape(len(units), 2)
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


def scan(model, x: torch.Tensor, layers: list[LayerInfo]
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: each unit's max over positions and where it is.

    Returns ``values`` [B, U] (float32) and ``position`` [B, U, 2] (int32), both
    on the CPU. Keeps no activation beyond the one being reduced.
    """
    values, positions = [], []
    for L, a in layer_outputs(model, x, layers):
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
