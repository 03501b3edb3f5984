"""``Net``: the public Python API over one model.

    import deconvlab
    net = deconvlab.load("zfnet-imagenette")          # registry name or checkpoint path
    rec = net.forward(net.preprocess(image))          # logits, activations, max-pool switches
    p = net.project(rec, layer="conv5", unit=12)      # 3 x S x S, input space (Zeiler & Fergus, Sec. 2.1)
    ps = net.project_many(rec, [("conv5", 12, None), ("conv3", 7, (4, 9))])
    net.receptive_field("conv5", 6, 6)                # (top, left, bottom, right), bottom/right exclusive

Layers carry the paper's names (``conv1`` .. ``conv5``, ``fc6`` .. ``fc8``; VGG-16:
``conv1`` .. ``conv13``); a layer's activation is read where ``nets.layer_map``
says (after its ReLU; the last fc layer as it is). Max-pool children
(``pool1``, ...) can be projected from too.

Errors: an unknown layer raises ``KeyError("unknown layer: expected one of
[...], got 'x'")``; a unit, position, batch index, method or seed out of range
raises ``ValueError("unit: expected 0..N-1, got 300")`` and the like.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .engine import deconvnet
from .data import resize_crop, to_rgb
from .nets import ModelMeta, fold_batchnorm, layer_map, resolve
from .engine.receptive_field import box_size, input_box, spatial_sizes
from .engine.switches import Record, record_forward


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; ``"cuda"`` without CUDA is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device")
    return dev


def _has_conv_bn(module: nn.Sequential) -> bool:
    kids = list(module.children())
    return any(isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) for a, b in zip(kids, kids[1:]))


class Net:
    """A model with the paper's layer names, ready for forward passes and projections.

    ``module`` must be a flat ``nn.Sequential`` (as ``deconvlab.nets`` builds
    them). It is put in eval mode on ``device``; every ReLU is made
    non-in-place, and a BatchNorm2d right after a conv is folded into that conv
    (``nets.fold_batchnorm``: the same function, plain filters for the deconvnet).
    """

    max_batch = 64  # items per batched backward pass in project_many

    def __init__(self, module: nn.Sequential, meta: ModelMeta, device: str | torch.device = "cpu"):
        if not isinstance(module, nn.Sequential):
            raise TypeError(f"module: expected a flat nn.Sequential, got {type(module).__name__}")
        if _has_conv_bn(module):
            module = fold_batchnorm(module)
        for m in module.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.device = pick_device(device)
        self.module = module.to(self.device).eval()
        self.meta = meta
        self._children = list(self.module.named_children())
        self._child_index = {name: i for i, (name, _) in enumerate(self._children)}
        self._map = layer_map(self.module)
        self.layers: list[str] = list(self._map)
        self.pools: list[str] = [n for n, m in self._children if isinstance(m, nn.MaxPool2d)]
        first = next((m for _, m in self._children if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        self.in_channels = first.in_channels if isinstance(first, nn.Conv2d) else 3
        self._info: list[dict] | None = None

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, name_or_path: str = "zfnet-imagenette", device: str | torch.device = "auto") -> "Net":
        """A registry name or a checkpoint path (see ``nets.resolve``) -> ``Net``."""
        module, meta = resolve(str(name_or_path))
        return cls(module, meta, device=device)

    def __repr__(self) -> str:
        return f"Net({self.meta.name or self.meta.arch!r}, layers={self.layers}, device={str(self.device)!r})"

    # ------------------------------------------------------------ layers

    def _child(self, layer: str) -> str:
        if layer in self._map:
            return self._map[layer]
        if layer in self.pools:
            return layer
        raise KeyError(f"unknown layer: expected one of {self.layers + self.pools}, got {layer!r}")

    def layer(self, layer: str) -> nn.Module:
        """The ``nn.Module`` whose output is ``layer``'s activation (conv5 -> its ReLU; fc8 -> itself)."""
        return self._children[self._child_index[self._child(layer)]][1]

    def layer_info(self) -> list[dict]:
        """``[{"name", "kind": "conv"|"fc", "channels", "shape"}]`` at ``meta.input_size``."""
        if self._info is None:
            s = self.meta.input_size
            sizes = spatial_sizes(self._children, (s, s))
            info = []
            for layer, child in self._map.items():
                i = self._child_index[child]
                channels = self._out_channels(i)
                hw = sizes[i + 1]
                shape = (channels,) if hw is None else (channels, hw[0], hw[1])
                info.append({"name": layer, "kind": "fc" if hw is None else "conv", "channels": channels,
                             "shape": shape})
            self._info = info
        return [dict(d) for d in self._info]

    def _out_channels(self, i: int) -> int:
        for _, m in reversed(self._children[:i + 1]):
            if isinstance(m, nn.Conv2d):
                return m.out_channels
            if isinstance(m, nn.Linear):
                return m.out_features
        return self.in_channels

    # ------------------------------------------------------------ input

    def preprocess(self, image) -> torch.Tensor:
        """A PIL image (any mode, any size) -> (1, 3, S, S) float tensor on ``device``.

        RGB conversion (``data.to_rgb``: alpha composited on white, 16-bit scaled),
        shorter side resized to S = ``meta.input_size``, centre crop, per-channel
        normalisation with ``meta.mean`` / ``meta.std``.
        """
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image: expected at least 1x1 pixels, got {image.width}x{image.height}")
        im = resize_crop(to_rgb(image), self.meta.input_size)
        a = np.asarray(im, dtype=np.float32) / 255.0
        x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)
        mean = torch.tensor(self.meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous().to(self.device)

    def forward(self, x: torch.Tensor, switches: bool = True, upto: str | None = None) -> Record:
        """Run the model on ``x`` (N, C, H, W) without autograd and record everything a
        projection needs (``switches.Record``): logits, every layer's activation,
        max-pool switches, ReLU outputs.

        ``switches=False`` skips the switches (faster; such a record cannot be
        projected). ``upto="conv3"`` stops after that layer (or pool): enough to
        project from it or below; the record's ``logits`` are then that output.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels \
                or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a float tensor of shape (N, {self.in_channels}, H, W), got {got}")
        module = self.module
        if upto is not None:
            last = self._child_index[self._child(upto)]
            module = nn.Sequential(OrderedDict(self._children[:last + 1]))
        dtype = next(self.module.parameters()).dtype
        return record_forward(module, self._map, x.to(self.device, dtype), switches=switches)

    # ------------------------------------------------------------ projections

    def project(self, rec: Record, layer: str, unit: int, method: str = "deconv", seed: str = "point",
                position: tuple[int, int] | None = None, index: int = 0) -> torch.Tensor:
        """Project one unit of ``layer`` to input space: a (C_in, H, W) tensor.

        ``method``: ``"deconv"`` (Zeiler & Fergus), ``"guided"`` or ``"backprop"``
        (they differ only in the ReLU rule; see ``deconvnet``). ``seed``:
        ``"point"`` (``position``, default the unit's strongest activation) or
        ``"map"`` (the whole feature map). ``index``: the image in a batched record.
        """
        item = (layer, unit, position, index)
        return self.project_many(rec, [item], method=method, seed=seed)[0]

    def project_many(self, rec: Record, items: Iterable[Sequence], method: str = "deconv",
                     seed: str = "point") -> torch.Tensor:
        """Project K units at once: (K, C_in, H, W) in the order of ``items``.

        Each item is ``(layer, unit, position_or_None)`` or ``(layer, unit,
        position_or_None, index)``; items of the same layer run as one batched
        pass (at most ``max_batch`` items at a time, fewer where each item's
        windows are large: see ``deconvnet.peak_elements``).
        """
        if method not in deconvnet.METHODS:
            raise ValueError(f"method: expected one of {list(deconvnet.METHODS)}, got {method!r}")
        if seed not in deconvnet.SEEDS:
            raise ValueError(f"seed: expected one of {list(deconvnet.SEEDS)}, got {seed!r}")
        if not isinstance(rec, Record):
            raise TypeError(f"rec: expected a Record from Net.forward, got {type(rec).__name__}")
        if not rec.has_switches:
            raise ValueError("rec: expected a record with max-pool switches, got one made with switches=False")
        items = [self._check_item(rec, it, seed) for it in items]
        if not items:
            raise ValueError("items: expected at least one (layer, unit, position) item, got none")
        groups: dict[str, list[int]] = {}
        for k, it in enumerate(items):
            groups.setdefault(it[0], []).append(k)
        out = rec.input.new_zeros((len(items),) + tuple(rec.input.shape[1:]))
        for child, ks in groups.items():
            i = self._child_index[child]
            per_item = deconvnet.peak_elements(self._children, i, rec, seed)
            step = max(1, min(self.max_batch, deconvnet.CHUNK_ELEMENTS // per_item))
            for i in range(0, len(ks), step):
                part = ks[i:i + step]
                if part[-1] - part[0] == len(part) - 1:  # consecutive items: written in place
                    self._project_group(rec, child, [items[k] for k in part], method, seed,
                                        out[part[0]:part[-1] + 1])
                else:
                    res = self._project_group(rec, child, [items[k] for k in part], method, seed)
                    out[torch.tensor(part, device=out.device)] = res
        return out

    def _check_item(self, rec: Record, item: Sequence, seed: str) -> tuple:
        if isinstance(item, (str, bytes)) or not 3 <= len(item) <= 4:
            raise ValueError(f"item: expected (layer, unit, position) or (layer, unit, position, index), got {item!r}")
        layer, unit, position = item[0], item[1], item[2]
        index = item[3] if len(item) == 4 else 0
        child = self._child(layer)
        act = self._output(rec, child)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(rec):
            raise ValueError(f"index: expected 0..{len(rec) - 1}, got {index!r}")
        C = act.shape[1]
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < C:
            raise ValueError(f"unit: expected 0..{C - 1}, got {unit!r}")
        if position is not None:
            if act.dim() == 2:
                raise ValueError(f"position: {layer} is a fully connected layer; expected None, got {position!r}")
            if seed == "map":
                raise ValueError(f"position: a map seed uses the whole feature map; expected None, got {position!r}")
            H, W = act.shape[-2:]
            ok = isinstance(position, (tuple, list)) and len(position) == 2 and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in position)
            if not ok or not (0 <= position[0] < H and 0 <= position[1] < W):
                raise ValueError(f"position: expected (y, x) with y in 0..{H - 1} and x in 0..{W - 1}, "
                                 f"got {position!r}")
            position = (int(position[0]), int(position[1]))
        return child, int(unit), position, int(index)

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

    def _project_group(self, rec: Record, child: str, items: list[tuple], method: str, seed: str,
                       out: torch.Tensor | None = None) -> torch.Tensor:
        act = self._output(rec, child)
        dev = act.device
        n = torch.tensor([it[3] for it in items], dtype=torch.long, device=dev)
        units = torch.tensor([it[1] for it in items], dtype=torch.long, device=dev)
        ys = xs = None
        if act.dim() == 4 and seed == "point":
            ys, xs = self.strongest(act, n, units)
            given = [k for k, it in enumerate(items) if it[2] is not None]
            if given:
                g = torch.tensor(given, dtype=torch.long, device=dev)
                ys[g] = torch.tensor([items[k][2][0] for k in given], dtype=torch.long, device=dev)
                xs[g] = torch.tensor([items[k][2][1] for k in given], dtype=torch.long, device=dev)
        sig = deconvnet.seed_signal(act, n, units, ys, xs, seed)
        return deconvnet.backward(self._children, self._child_index[child], sig, rec, method, out)

    @staticmethod
    def strongest(act: torch.Tensor, n: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, x) of each item's strongest activation (first maximum in row-major order)."""
        maps = act[n, units]  # (K, H, W)
        flat = maps.flatten(1).argmax(1)
        W = act.shape[-1]
        return flat // W, flat % W

    # ------------------------------------------------------------ geometry

    def receptive_field(self, layer: str, y: int | None = None, x: int | None = None,
                        input_size: int | tuple[int, int] | None = None,
                        clip: bool = True) -> tuple[int, int, int, int]:
        """Input pixels ``(top, left, bottom, right)`` (bottom/right exclusive) that
        ``layer`` at ``(y, x)`` sees, clipped to the image; an fc layer sees the whole image."""
        child = self._child(layer)
        size = self._size(input_size)
        i = self._child_index[child]
        if spatial_sizes(self._children[:i + 1], size)[i + 1] is not None:
            for v, nm in ((y, "y"), (x, "x")):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise ValueError(f"{nm}: expected an integer position in {layer}, got {v!r}")
        return input_box(self._children, i, None if y is None else int(y), None if x is None else int(x),
                         size, clip=clip)

    def seed_box(self, rec: Record, layer: str, unit: int, position: tuple[int, int] | None = None,
                 item: int = 0) -> tuple[tuple[int, int] | None, tuple[int, int, int, int]]:
        """Where a point seed of ``unit`` sits and the input box it sees: ``(position, box)``.

        ``position`` is the one given, else the (y, x) of the unit's strongest
        activation in item ``item`` of ``rec`` (first maximum in row-major
        order, as ``project``'s point seed takes it); ``box`` is its
        ``receptive_field`` at ``rec``'s input size. An fc unit: ``(None,
        the whole image)``.
        """
        self._child(layer)  # KeyError naming the layers for an unknown one
        a = rec.activations[layer][item, unit]
        size = tuple(rec.input.shape[-2:])
        if a.dim() == 0:
            return None, self.receptive_field(layer, input_size=size)
        if position is None:
            position = divmod(int(a.flatten().argmax()), a.shape[-1])
        y, x = int(position[0]), int(position[1])
        return (y, x), self.receptive_field(layer, y, x, input_size=size)

    def receptive_field_size(self, layer: str, input_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Unclipped receptive-field (height, width) of one position of ``layer``."""
        child = self._child(layer)
        return box_size(self._children, self._child_index[child], self._size(input_size))

    def _size(self, input_size) -> tuple[int, int]:
        s = input_size if input_size is not None else self.meta.input_size
        return (int(s), int(s)) if isinstance(s, (int, np.integer)) else (int(s[0]), int(s[1]))
