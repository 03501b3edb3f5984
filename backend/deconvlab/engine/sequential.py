"""The sequential engine: the paper's deconvnet on a flat ``nn.Sequential``, fast.

Zeiler & Fergus (2013) attach "a deconvnet ... to each of its layers" of a
chain of conv, ReLU, max-pool and fc layers. Where a model *is* such a chain
(ZFNet, AlexNet, VGG-16 as ``deconvlab.nets`` builds them), this engine walks it
child by child (``deconvnet.backward``) with windows that follow a point seed's
receptive field, and below each max pool the compiled sparse step
(``sparse_step``). Any other model goes to the graph engine (``graph``); both
have the same interface, and ``Net`` hands a model to one of them:

=====================  ====================================================
method                 what it does
=====================  ====================================================
``forward``            the record: activations, switches, ReLU outputs
``activation``         one layer's (or pool's) tensor in a record
``project_many``       K projections, batched per layer
``receptive_field``    input box of one position (``receptive_field.py``)
``layer_info``         each layer's kind, type, channels and shape
=====================  ====================================================

Layers carry the paper's names (``conv1`` .. ``conv5``, ``fc6`` .. ``fc8``; VGG-16:
``conv1`` .. ``conv13``), read where ``nets.layer_map`` says (after the ReLU; the
last fc as it is); max-pool children (``pool1``, ...) can be projected from too.

Assumptions (checked): a flat ``nn.Sequential`` whose conv/fc children are named
``conv*``/``fc*``. A BatchNorm2d right after a conv is folded into it
(``nets.fold_batchnorm``: the same function, plain filters), and every ReLU is
made non-in-place -- on the module given, which ``Net`` builds for itself.
"""

from __future__ import annotations

from collections import OrderedDict
import torch
from torch import nn

from . import deconvnet
from .receptive_field import box_size, input_box, spatial_sizes
from .items import strongest
from .switches import Record, record_forward


def _has_conv_bn(module: nn.Sequential) -> bool:
    kids = list(module.children())
    return any(isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) for a, b in zip(kids, kids[1:]))


def is_sequential(module: nn.Module) -> bool:
    """True for the models this engine takes: a flat ``nn.Sequential`` with paper-named layers."""
    from ..nets import layer_map

    return isinstance(module, nn.Sequential) and bool(layer_map(module))


class SequentialEngine:
    """Forward records and projections of a flat ``nn.Sequential`` (see the module docstring)."""

    max_batch = 64  # items per batched backward pass in project_many

    def __init__(self, module: nn.Sequential):
        from ..nets import fold_batchnorm, layer_map

        if not isinstance(module, nn.Sequential):
            raise TypeError(f"module: expected a flat nn.Sequential, got {type(module).__name__}")
        if _has_conv_bn(module):
            module = fold_batchnorm(module)
        for m in module.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.module = module
        self.children: list[tuple[str, nn.Module]] = list(module.named_children())
        self._child_index = {name: i for i, (name, _) in enumerate(self.children)}
        self._map = layer_map(module)
        self.layers: list[str] = list(self._map)
        self.pools: list[str] = [n for n, m in self.children if isinstance(m, nn.MaxPool2d)]
        first = next((m for _, m in self.children if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        self.in_channels = first.in_channels if isinstance(first, nn.Conv2d) else 3

    # ------------------------------------------------------------ layers

    def child(self, layer: str) -> str:
        """The name of the child whose output is ``layer`` (a paper layer or a pool)."""
        if layer in self._map:
            return self._map[layer]
        if layer in self.pools:
            return layer
        raise KeyError(f"unknown layer: expected one of {self.layers + self.pools}, got {layer!r}")

    def layer(self, layer: str) -> nn.Module:
        return self.children[self._child_index[self.child(layer)]][1]

    def layer_info(self, input_size: tuple[int, int]) -> list[dict]:
        sizes = spatial_sizes(self.children, input_size)
        info = []
        for layer, child in self._map.items():
            i = self._child_index[child]
            channels = self._out_channels(i)
            hw = sizes[i + 1]
            shape = (channels,) if hw is None else (channels, hw[0], hw[1])
            typ = type(self.children[self._child_index[layer]][1]).__name__ if layer in self._child_index else None
            info.append({"name": layer, "kind": "fc" if hw is None else "conv", "type": typ,
                         "channels": channels, "shape": shape, "parent": None})
        return info

    def _out_channels(self, i: int) -> int:
        for _, m in reversed(self.children[:i + 1]):
            if isinstance(m, nn.Conv2d):
                return m.out_channels
            if isinstance(m, nn.Linear):
                return m.out_features
        return self.in_channels

    # ------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, switches: bool = True, upto: str | None = None) -> Record:
        module = self.module
        if upto is not None:
            last = self._child_index[self.child(upto)]
            module = nn.Sequential(OrderedDict(self.children[:last + 1]))
        return record_forward(module, self._map, x, switches=switches)

    def activation(self, rec: Record, layer: str) -> torch.Tensor:
        """``layer``'s tensor in ``rec`` (N, C, H, W) or (N, C); a pool's output for a pool."""
        return self._output(rec, self.child(layer))

    def _output(self, rec: Record, child: str) -> torch.Tensor:
        for layer, c in self._map.items():
            if c == child:
                if layer not in rec.activations:
                    raise ValueError(f"rec: expected a record that reaches {layer}, got one that stops at "
                                     f"{list(rec.activations)[-1] if rec.activations else 'the input'}")
                return rec.activations[layer]
        if child not in rec.outputs:
            raise ValueError(f"rec: expected a record that reaches {child}, got one that does not")
        return rec.outputs[child]

    # ------------------------------------------------------------ projections

    def project_many(self, rec: Record, items: list[tuple], method: str, seed: str) -> torch.Tensor:
        """``items``: checked ``(layer, unit, position_or_None, index)`` tuples (``Net`` checks them)."""
        if not isinstance(rec, Record):
            raise TypeError(f"rec: expected a Record from Net.forward, got {type(rec).__name__}")
        if not rec.has_switches:
            raise ValueError("rec: expected a record with max-pool switches, got one made with switches=False")
        groups: dict[str, list[int]] = {}
        for k, it in enumerate(items):
            groups.setdefault(self.child(it[0]), []).append(k)
        out = rec.input.new_zeros((len(items),) + tuple(rec.input.shape[1:]))
        for child, ks in groups.items():
            i = self._child_index[child]
            per_item = deconvnet.peak_elements(self.children, i, rec, seed)
            step = max(1, min(self.max_batch, deconvnet.CHUNK_ELEMENTS // per_item))
            for j in range(0, len(ks), step):
                part = ks[j:j + step]
                if part[-1] - part[0] == len(part) - 1:  # consecutive items: written in place
                    self._project_group(rec, child, [items[k] for k in part], seed, method,
                                        out[part[0]:part[-1] + 1])
                else:
                    res = self._project_group(rec, child, [items[k] for k in part], seed, method)
                    out[torch.tensor(part, device=out.device)] = res
        return out

    def _project_group(self, rec: Record, child: str, items: list[tuple], seed: str, method: str,
                       out: torch.Tensor | None = None) -> torch.Tensor:
        act = self._output(rec, child)
        dev = act.device
        n = torch.tensor([it[3] for it in items], dtype=torch.long, device=dev)
        units = torch.tensor([it[1] for it in items], dtype=torch.long, device=dev)
        ys = xs = None
        if act.dim() == 4 and seed == "point":
            ys, xs = strongest(act, n, units)
            given = [k for k, it in enumerate(items) if it[2] is not None]
            if given:
                g = torch.tensor(given, dtype=torch.long, device=dev)
                ys[g] = torch.tensor([items[k][2][0] for k in given], dtype=torch.long, device=dev)
                xs[g] = torch.tensor([items[k][2][1] for k in given], dtype=torch.long, device=dev)
        sig = deconvnet.seed_signal(act, n, units, ys, xs, seed)
        return deconvnet.backward(self.children, self._child_index[child], sig, rec, method, out)

    # ------------------------------------------------------------ geometry

    def spatial(self, layer: str, size: tuple[int, int]) -> bool:
        i = self._child_index[self.child(layer)]
        return spatial_sizes(self.children[:i + 1], size)[i + 1] is not None

    def receptive_field(self, layer: str, y: int | None, x: int | None, size: tuple[int, int],
                        clip: bool = True) -> tuple[int, int, int, int]:
        return input_box(self.children, self._child_index[self.child(layer)], y, x, size, clip=clip)

    def receptive_field_size(self, layer: str, size: tuple[int, int]) -> tuple[int, int]:
        return box_size(self.children, self._child_index[self.child(layer)], size)
