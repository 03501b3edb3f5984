"""``Net``: the public Python API over one model, whatever its architecture.

    import deconvlab
    net = deconvlab.load("zfnet-imagenette")          # registry name, checkpoint, "torchvision:resnet50", .pt2
    net = deconvlab.Net.from_module(my_cnn, input_size=28, mean=(0.13,), std=(0.31,))   # any nn.Module
    rec = net.forward(net.preprocess(image))          # logits, activations (and max-pool switches)
    p = net.project(rec, layer="conv5", unit=12)      # 3 x S x S, input space (Zeiler & Fergus, Sec. 2.1)
    ps = net.project_many(rec, [("conv5", 12, None), ("conv3", 7, (4, 9))])
    net.receptive_field("conv5", 6, 6)                # (top, left, bottom, right), bottom/right exclusive

Two engines behind one interface (``net.engine`` says which):

==============  =========================================  =======================================
engine          takes                                      layers are named
==============  =========================================  =======================================
``sequential``  a flat ``nn.Sequential`` with paper names  ``conv1`` .. ``conv5``, ``fc6`` ..
                (ZFNet, AlexNet, VGG-16 of ``nets``)        ``fc8`` (VGG-16: ``conv1`` .. ``conv13``),
                                                           and its pools ``pool1``, ...
``graph``       any ``nn.Module`` mapping (N, C, H, W)     ``named_modules`` paths (``layer3.1``)
                images to (N, classes) logits              and torch.fx names of functional ops
                                                           (``layer1.0.add``, ``layer1.0.relu_1``)
==============  =========================================  =======================================

``engine="graph"`` runs a paper model through the graph engine too (tests compare
the two); its paper names then still work, and mean what they mean above.

Errors: an unknown layer raises ``KeyError("unknown layer: expected one of
[...], got 'x'")``; a unit, position, batch index, method or seed out of range
raises ``ValueError("unit: expected 0..N-1, got 300")`` and the like; a module
that is not an image classifier raises ``ValueError("expected output of shape
(N, classes), got ...")``.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .data import resize_crop, to_rgb
from .engine import deconvnet
from .engine.items import check_item, iter_checked
from .engine.items import strongest as _strongest
from .engine.sequential import SequentialEngine, is_sequential
from .nets import ModelMeta, resolve

ENGINES = ("auto", "sequential", "graph")


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


def _first_in_channels(module: nn.Module, default: int = 3) -> int:
    first = next((m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return first.in_channels if isinstance(first, nn.Conv2d) else default


def _eval(module: nn.Module) -> nn.Module:
    """``module.eval()``; a ``torch.export`` program's module refuses it (it is an inference graph
    already, exported in the mode its author chose), and is used as it is."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


class Net:
    """A model ready for forward passes and projections (see the module docstring).

    ``module`` is put in eval mode on ``device``. The sequential engine makes its
    ReLUs non-in-place and folds a BatchNorm2d right after a conv into that conv
    (the same function, plain filters for the deconvnet); the graph engine works
    on a private copy and leaves ``module`` as it is.
    """

    def __init__(self, module: nn.Module, meta: ModelMeta, device: str | torch.device = "cpu",
                 engine: str = "auto"):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if engine not in ENGINES:
            raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
        if engine == "auto":
            engine = "sequential" if is_sequential(module) else "graph"
        if engine == "sequential" and not isinstance(module, nn.Sequential):
            raise TypeError(f"module: the sequential engine expects a flat nn.Sequential, got {type(module).__name__}")
        self.device = pick_device(device)
        self.meta = meta
        self.engine = engine
        self._alias: dict[str, str] = {}  # paper name -> graph layer (a paper model on the graph engine)
        if engine == "sequential":
            self._seq = SequentialEngine(module.to(self.device).eval())
            self.module = self._seq.module
            self.layers: list[str] = list(self._seq.layers)
            self.pools: list[str] = list(self._seq.pools)
            self.in_channels = self._seq.in_channels
            self._graph = None
        else:
            from .engine.graph import GraphEngine

            self.module = _eval(module.to(self.device))
            self.in_channels = int(meta.config.get("in_channels", 0)) or _first_in_channels(module)
            s = int(meta.input_size)
            self._graph = GraphEngine(self.module, (self.in_channels, s, s))
            self._seq = None
            self.layers, self.pools = self._graph_layers(module)
        self._info: list[dict] | None = None
        self._geometry: dict = {}

    def _graph_layers(self, module: nn.Module) -> tuple[list[str], list[str]]:
        from .nets import layer_map

        layers = list(self._graph.layers)
        if isinstance(module, nn.Sequential) and layer_map(module):  # a paper model: keep its names
            self._alias = layer_map(module)
            pools = [n for n, m in module.named_children() if isinstance(m, nn.MaxPool2d)]
            return list(self._alias), pools
        return layers, []

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, name_or_path: str = "zfnet-imagenette", device: str | torch.device = "auto",
             weights: str | None = None, engine: str = "auto") -> "Net":
        """A registry name, a checkpoint path, ``"torchvision:<arch>"`` (``weights``: a file,
        ``"torchvision"``/an enum name, or None for random weights) or a ``.pt2`` file -> ``Net``
        (``nets.resolve`` says what each is)."""
        module, meta = resolve(str(name_or_path), weights=weights)
        return cls(module, meta, device=device, engine=engine)

    @classmethod
    def from_module(cls, module: nn.Module, input_size: int = 224, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, classes: Sequence[str] | None = None,
                    name: str | None = None, device: str | torch.device = "cpu") -> "Net":
        """Wrap any ``nn.Module`` that maps (N, C, H, W) images to (N, classes) logits.

        ``mean``/``std``: one value per input channel (default ImageNet's for 3
        channels, 0.5/0.5 for one); ``classes``: one label per logit (default
        "0", "1", ...). The module itself is not changed: ``Net`` works on a
        copy (weights shared on the CPU), so no flag, mode or hook of the
        caller's object moves.
        """
        from .nets.checks import check_module
        from .nets.registry import IMAGENET_MEAN, IMAGENET_STD

        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        in_channels = _first_in_channels(module)
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else \
            ((0.5,) * in_channels, (0.5,) * in_channels)
        mean = tuple(float(v) for v in (mean if mean is not None else default_mean))
        std = tuple(float(v) for v in (std if std is not None else default_std))
        for label, v in (("mean", mean), ("std", std)):
            if len(v) != in_channels:
                raise ValueError(f"{label}: expected {in_channels} value(s), one per input channel, got {len(v)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std: expected positive values, got {std}")
        # A copy, so the caller's module keeps its mode, flags and hooks; on the CPU it shares the
        # weights (.to("cpu") moves nothing), elsewhere it owns them (.to would move the shared ones).
        shared = pick_device(device).type == "cpu"
        memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())} if shared else {}
        own = copy.deepcopy(module, memo)
        for m in own.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        n_classes = check_module(own, in_channels, int(input_size))
        labels = [str(c) for c in classes] if classes is not None else [str(i) for i in range(n_classes)]
        if len(labels) != n_classes:
            raise ValueError(f"classes: expected {n_classes} labels (the module's outputs), got {len(labels)}")
        meta = ModelMeta(arch="module", config={"in_channels": in_channels}, classes=labels,
                         input_size=int(input_size), mean=mean, std=std, name=name or type(module).__name__)
        return cls(own, meta, device=device, engine="graph")

    def __repr__(self) -> str:
        return (f"Net({self.meta.name or self.meta.arch!r}, engine={self.engine!r}, {len(self.layers)} layers, "
                f"device={str(self.device)!r})")

    # ------------------------------------------------------------ layers

    def _graph_name(self, layer: str) -> str:
        """The graph engine's name for ``layer`` (a paper alias, else the layer itself)."""
        if layer in self._alias:
            return self._alias[layer]
        if layer in self._graph.layers:  # (of a paper model: its module paths, relu1, pool1, ...)
            return layer
        raise KeyError(f"unknown layer: expected one of {self.layers + self.pools}, got {layer!r}")

    def check_layer(self, layer: str) -> str:
        """``layer`` itself when this net has it, else ``KeyError("unknown layer: expected ...")``."""
        if self._seq is not None:
            self._seq.child(layer)
        else:
            self._graph_name(layer)
        return layer

    def node(self, layer: str) -> str:
        """Where ``layer`` is read in ``net.module``: the child's name (sequential engine: conv5 ->
        ``relu5``) or the graph engine's layer name (a paper alias resolved)."""
        return self._seq.child(layer) if self._seq is not None else self._graph_name(layer)

    def layer(self, layer: str) -> nn.Module:
        """The ``nn.Module`` whose output is ``layer``'s activation (conv5 -> its ReLU; fc8 -> itself;
        ``layer3.1`` -> that block). A functional op has none: ``KeyError``."""
        if self._seq is not None:
            return self._seq.layer(layer)
        name = self._graph_name(layer)
        modules = dict(self.module.named_modules())
        if name not in modules:
            raise KeyError(f"{layer}: a functional op, not a module (expected a module path, got {layer!r})")
        return modules[name]

    @property
    def max_batch(self) -> int:
        """Most items per batched backward pass in ``project_many`` (the engine's)."""
        return (self._seq or self._graph).max_batch

    @max_batch.setter
    def max_batch(self, n: int) -> None:
        (self._seq or self._graph).max_batch = int(n)

    @property
    def sequence(self) -> list[tuple[str, nn.Module]]:
        """The children of a sequential-engine net, in order (empty for the graph engine)."""
        return list(self._seq.children) if self._seq is not None else []

    def layer_info(self) -> list[dict]:
        """``[{"name", "kind": "conv"|"fc"|"op", "type", "channels", "shape", "parent"}]`` at
        ``meta.input_size``: each layer's kind, module (or op) type, channels, output shape
        without N, and the module path of the block it sits in (None at the top)."""
        if self._info is None:
            s = int(self.meta.input_size)
            if self._seq is not None:
                self._info = self._seq.layer_info((s, s))
            elif self._alias:
                by_name = {d["name"]: d for d in self._graph.layer_info()}
                self._info = [{**by_name[child], "name": layer, "kind": "fc" if len(by_name[child]["shape"]) == 1
                               else "conv"} for layer, child in self._alias.items()]
            else:
                self._info = self._graph.layer_info()
        return [dict(d) for d in self._info]

    @property
    def untraceable(self) -> str | None:
        """Why torch.fx could not trace the model (then only module-path layers exist), else None."""
        return self._graph.untraceable if self._graph is not None else None

    # ------------------------------------------------------------ input

    def preprocess(self, image) -> torch.Tensor:
        """A PIL image (any mode, any size) -> (1, C, S, S) float tensor on ``device``.

        RGB conversion (``data.to_rgb``: alpha composited on white, 16-bit
        scaled; then luminance for a one-channel model), shorter side resized to
        S = ``meta.input_size``, centre crop, per-channel normalisation with
        ``meta.mean`` / ``meta.std``.
        """
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image: expected at least 1x1 pixels, got {image.width}x{image.height}")
        im = resize_crop(to_rgb(image), int(self.meta.input_size))
        if self.in_channels == 1:
            im = im.convert("L")
        a = np.asarray(im, dtype=np.float32) / 255.0
        a = a[:, :, None] if a.ndim == 2 else a
        if a.shape[2] != self.in_channels:
            raise ValueError(f"image: this model takes {self.in_channels} channels, expected an RGB or "
                             f"grayscale picture, got {a.shape[2]}")
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)
        C = self.in_channels
        mean = torch.tensor(self.meta.mean, dtype=torch.float32).view(1, C, 1, 1)
        std = torch.tensor(self.meta.std, dtype=torch.float32).view(1, C, 1, 1)
        return ((x - mean) / std).contiguous().to(self.device)

    def forward(self, x: torch.Tensor, switches: bool = True, upto: str | None = None):
        """Run the model on ``x`` (N, C, H, W) without autograd and record everything a
        projection needs: ``logits``, ``activations`` of every layer (by layer name),
        and (sequential engine) max-pool switches and ReLU outputs.

        ``switches=False`` skips the switches (faster; such a record cannot be
        projected). ``upto="conv3"`` stops after that layer (sequential engine;
        the graph engine runs the whole model): enough to project from it or
        below; the record's ``logits`` are then that output.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels \
                or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a float tensor of shape (N, {self.in_channels}, H, W), got {got}")
        p = next(self.module.parameters(), None)
        x = x.to(self.device, p.dtype if p is not None and p.is_floating_point() else x.dtype)
        if self._seq is not None:
            return self._seq.forward(x, switches=switches, upto=upto)
        if upto is not None:
            self._graph_name(upto)
        rec = self._graph.forward(x)
        for paper, child in self._alias.items():  # a paper model on the graph engine keeps its names
            rec.activations[paper] = rec.activations[child]
        return rec

    def activation(self, rec, layer: str) -> torch.Tensor:
        """``layer``'s tensor in a record of ``forward``: (N, C, H, W) or (N, C)."""
        if self._seq is not None:
            return self._seq.activation(rec, layer)
        name = self._graph_name(layer)
        if name not in rec.activations:
            raise ValueError(f"rec: expected a record with layer {layer!r}, got one without it")
        return rec.activations[name]

    # ------------------------------------------------------------ projections

    def project(self, rec, layer: str, unit: int, method: str = "deconv", seed: str = "point",
                position: tuple[int, int] | None = None, index: int = 0) -> torch.Tensor:
        """Project one unit of ``layer`` to input space: a (C_in, H, W) tensor.

        ``method``: ``"deconv"`` (Zeiler & Fergus), ``"guided"`` or ``"backprop"``
        (see ``engine.deconvnet`` and ``engine.graph_rules`` for the rules). ``seed``:
        ``"point"`` (``position``, default the unit's strongest activation) or
        ``"map"`` (the whole feature map). ``index``: the image in a batched record.
        """
        return self.project_many(rec, [(layer, unit, position, index)], method=method, seed=seed)[0]

    def project_many(self, rec, items: Iterable[Sequence], method: str = "deconv",
                     seed: str = "point") -> torch.Tensor:
        """Project K units at once: (K, C_in, H, W) in the order of ``items``.

        Each item is ``(layer, unit, position_or_None)`` or ``(layer, unit,
        position_or_None, index)``; items of the same layer run as one batched
        pass (at most 64 at a time, fewer where each item's maps are large).
        """
        if method not in deconvnet.METHODS:
            raise ValueError(f"method: expected one of {list(deconvnet.METHODS)}, got {method!r}")
        if seed not in deconvnet.SEEDS:
            raise ValueError(f"seed: expected one of {list(deconvnet.SEEDS)}, got {seed!r}")
        self._check_record(rec)
        checked = []
        for item in iter_checked(items):
            act = self.activation(rec, item[0])
            checked.append(check_item(item, act, len(rec), item[0], seed))
        if self._seq is not None:
            return self._seq.project_many(rec, checked, method, seed)
        graph_items = [(self._graph_name(layer), u, p, i) for layer, u, p, i in checked]
        return self._graph.project_many(rec, graph_items, method=method, seed=seed)

    def _check_record(self, rec) -> None:
        if self._seq is not None:
            from .engine.switches import Record as want
        else:
            from .engine.graph import GraphRecord as want
        if not isinstance(rec, want):
            raise TypeError(f"rec: expected a {want.__name__} from Net.forward, got {type(rec).__name__}")

    @staticmethod
    def strongest(act: torch.Tensor, n: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, x) of each item's strongest activation (first maximum in row-major order)."""
        return _strongest(act, n, units)

    # ------------------------------------------------------------ geometry

    def receptive_field(self, layer: str, y: int | None = None, x: int | None = None,
                        input_size: int | tuple[int, int] | None = None,
                        clip: bool = True) -> tuple[int, int, int, int]:
        """Input pixels ``(top, left, bottom, right)`` (bottom/right exclusive) that
        ``layer`` at ``(y, x)`` sees, clipped to the image; an fc layer (and any unit
        behind a global pool or a gate) sees the whole image."""
        size = self._size(input_size)
        if self._spatial(layer, size):
            for v, nm in ((y, "y"), (x, "x")):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise ValueError(f"{nm}: expected an integer position in {layer}, got {v!r}")
        y = None if y is None else int(y)
        x = None if x is None else int(x)
        if self._seq is not None:
            return self._seq.receptive_field(layer, y, x, size, clip=clip)
        geo = self._graph_geometry(size)
        if geo is None:  # untraceable: no graph to walk, so the honest box is the whole image
            return 0, 0, size[0], size[1]
        return geo.box(self._graph.node_of(self._graph_name(layer)), y, x, clip=clip)

    def receptive_field_size(self, layer: str, input_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Unclipped receptive-field (height, width) of one position of ``layer``."""
        size = self._size(input_size)
        if self._seq is not None:
            return self._seq.receptive_field_size(layer, size)
        geo = self._graph_geometry(size)
        if geo is None:
            return size
        return geo.box_size(self._graph.node_of(self._graph_name(layer)))

    def seed_box(self, rec, layer: str, unit: int, position: tuple[int, int] | None = None,
                 item: int = 0) -> tuple[tuple[int, int] | None, tuple[int, int, int, int]]:
        """Where a point seed of ``unit`` sits and the input box it sees: ``(position, box)``.

        ``position`` is the one given, else the (y, x) of the unit's strongest
        activation in item ``item`` of ``rec`` (first maximum in row-major
        order, as ``project``'s point seed takes it); ``box`` is its
        ``receptive_field`` at ``rec``'s input size. An fc unit: ``(None,
        the whole image)``.
        """
        a = self.activation(rec, layer)[item, unit]
        size = tuple(rec.input.shape[-2:])
        if a.dim() == 0:
            return None, self.receptive_field(layer, input_size=size)
        if position is None:
            position = divmod(int(a.flatten().argmax()), a.shape[-1])
        y, x = int(position[0]), int(position[1])
        return (y, x), self.receptive_field(layer, y, x, input_size=size)

    def _spatial(self, layer: str, size: tuple[int, int]) -> bool:
        if self._seq is not None:
            return self._seq.spatial(layer, size)
        info = {d["name"]: d for d in self.layer_info()}
        name = layer if layer in info else self._graph_name(layer)
        if name in info:
            return len(info[name]["shape"]) == 3
        return True

    def _graph_geometry(self, size: tuple[int, int]):
        if self._graph.untraceable:
            return None
        if size not in self._geometry:
            from .engine.graph_receptive_field import GraphGeometry

            self._geometry[size] = GraphGeometry(self._graph._gm, size, in_channels=self.in_channels,
                                                 qualnames=self._graph._t.qualname)
        return self._geometry[size]

    def _size(self, input_size) -> tuple[int, int]:
        s = input_size if input_size is not None else self.meta.input_size
        return (int(s), int(s)) if isinstance(s, (int, np.integer)) else (int(s[0]), int(s[1]))
