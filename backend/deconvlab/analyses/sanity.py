"""Parameter-randomisation sanity checks of a unit's projection (Adebayo et al. 2018, Sec. 3).

Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity Checks for
Saliency Maps" (NeurIPS 2018), re-initialise a trained network's weights and
ask whether an explanation changes: "If a saliency method depends on the
learned parameters of the model, we should expect its output to differ
substantially". They found guided backprop nearly unchanged under
randomisation while the plain gradient changes; Nie, Zhang and Patel (ICML
2018) showed that deconvnet and guided backprop largely recover the image
through the max-pool switches and the ReLU masks, whatever the higher weights.

    from deconvlab import sanity
    r = sanity.randomization(net, x, "conv5", 12, "guided", mode="cascading", seed=0)
    [(s.randomized, s.spearman, s.ssim) for s in r.steps]   # step 0: the trained model

What is randomised (``randomizable_layers``): the weights the projection of a
unit of ``layer`` passes through, grouped into steps, in forward order:

=====================  ===================================================================
engine                 one step per
=====================  ===================================================================
``sequential``         conv or fc child from the first up to ``layer``'s own (``conv1`` ..
                       ``conv5``, ``fc6`` ..); batch norm is folded into its conv already
``graph`` (traced)     module with parameters of its own that ``layer``'s node depends on
                       (the fx graph's ancestors: a residual net's downsample conv counts
                       only where its branch feeds the unit); a batch norm (any norm module)
                       whose input is a conv's or linear's output goes with that module, as
                       one step (the sequential engine's folding; Adebayo et al.'s code
                       re-initialises a block's trainable variables together). Parameters
                       read by functional ops (``get_attr``) are not randomised
``graph`` (untraced)   module with parameters registered before ``layer``'s module ends
                       (the module order: an approximation of forward order)
=====================  ===================================================================

``cascading`` (Adebayo et al.'s Fig. 2): step k re-initialises the last k
groups, from ``layer``'s own down to the first, cumulatively. ``independent``
(their Fig. 5): step k re-initialises group k alone (the others trained).

How a module is re-initialised: "the layer's own initialiser" with a seed, i.e.
the initialisation the model's builder gives that kind of module (Adebayo et
al. re-run each trainable variable's own initialiser, so Inception v3's
moving averages, not trainable, stay):

===============================  ==============================================================
model (``meta.arch``)            conv / linear                       norm (BatchNorm, ...)
===============================  ==============================================================
``zfnet`` (trained here)         N(0, 0.01), bias 0 (``nets.zfnet.   (folded into its conv)
                                 init_weights``: the recipe's init)
``resnet18`` (trained here)      conv: He normal, fan_out (torch-    weight 1, bias 0; running
                                 vision's); fc: PyTorch's default    statistics kept
anything else (AlexNet, VGG-16,  PyTorch's default for the type:     weight 1, bias 0; running
torchvision models, modules)     He uniform (a = sqrt 5), bias       statistics kept
                                 U(+-1/sqrt(fan_in))
===============================  ==============================================================

Each module draws from its own generator, seeded with ``seed`` and its name,
so a layer gets the same random weights in both modes and at every step.
``init=`` replaces the rule (``init(name, module, generator)``, in place).

The randomised copies: one deep copy of ``net.module`` per call (its own
tensors, never the served ``Net``'s), one ``Net`` over it; steps re-initialise
its modules in place. Each step's projection is computed from the randomised
model's own forward pass (its own switches and ReLU masks), from the same seed
position: ``position``, else the trained model's strongest activation of the
unit (``Net.seed_box``). Where the randomised unit does not fire there
(``seed_value`` 0; a dead ReLU) its projection is zero: every method starts
from that value (deconv) or passes the unit's ReLU mask (guided, backprop).

The numbers, each computed inside the seed's receptive field (the box
``Net.seed_box`` gives; an fc unit's is the whole image): outside it every
projection is zero whatever the weights, and counting those pixels would count
agreement no weight can change.

=================  ==================================================================================
number             how
=================  ==================================================================================
``spearman``       ``scipy.stats.spearmanr`` of the absolute projections summed over the colour
                   channels (Adebayo et al.'s "absolute value" rank correlation, their masks made 2-D
                   by summing absolute values over channels), trained vs randomised; None when
                   either is constant in the box (a dead seed: no ranking to compare). Computed as
                   ``spearmanr`` does (Pearson's r of ``scipy.stats.rankdata`` ranks, ties averaged)
                   with the trained map ranked once per check (``_Ranked``); ``rank_correlation``
                   calls ``spearmanr`` itself, and the tests hold the two equal
``ssim``           ``skimage.metrics.structural_similarity`` of the two projections as deconvlab
                   renders them (``render.projection_rgb``: zero at mid grey, each scaled by its own
                   largest magnitude; uint8 RGB, ``data_range`` 255, colour channels averaged,
                   window 7 or the largest odd size the box allows, None below 3 px): Adebayo et al.
                   compute SSIM on the visualised masks
``edge_spearman``  the same rank correlation between the projection and the Sobel magnitude
                   (``skimage.filters.sobel``) of the input's luminance (``x`` un-normalised): the
                   "edge detector" Adebayo et al. compare saliency maps against
=================  ==================================================================================

Errors: an unknown layer raises ``KeyError`` (``Net``'s); a bad method, mode,
seed, unit or position ``ValueError("method: expected one of [...], got 'x'")``
and the like.

(Over 500 lines: this docstring's rule tables are a fifth of it, and the test,
its metrics and its re-initialisation rules belong together.)
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

METHODS = ("deconv", "guided", "backprop")
MODES = ("cascading", "independent")
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
SEED_MAX = 2 ** 31 - 1


@dataclass
class SanityStep:
    """One model of the sequence: which modules are random, and how its projection compares."""

    randomized: list[str]  # module names re-initialised in this model ([]: the trained model)
    spearman: float | None  # rank correlation of |projection| with the trained model's (in the box)
    ssim: float | None  # SSIM of the rendered projections (in the box)
    edge_spearman: float | None  # rank correlation of |projection| with the input's Sobel magnitude
    seed_value: float  # the unit's activation at the seed in this model (0: it does not fire there)
    projection: np.ndarray = field(repr=False)  # float32 (C, H, W)


@dataclass
class SanityResult:
    layer: str
    unit: int
    method: str
    mode: str
    seed: int
    position: tuple[int, int] | None  # the point seed (None: an fc unit)
    box: tuple[int, int, int, int]  # where the numbers are computed: (top, left, bottom, right)
    steps: list[SanityStep]

    @property
    def edge_spearman(self) -> float | None:
        """The trained model's projection against the edge map."""
        return self.steps[0].edge_spearman

    def to_dict(self) -> dict:
        """The numbers (no projections), JSON-ready."""
        return {"layer": self.layer, "unit": self.unit, "method": self.method, "mode": self.mode,
                "seed": self.seed, "position": None if self.position is None else list(self.position),
                "box": list(self.box), "edge_spearman": self.edge_spearman,
                "steps": [{"randomized": list(s.randomized), "spearman": s.spearman, "ssim": s.ssim,
                           "edge_spearman": s.edge_spearman, "seed_value": s.seed_value} for s in self.steps]}


# ---------------------------------------------------------------- metrics

def _abs_map(p) -> np.ndarray:
    a = p.detach().float().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p, dtype=np.float64)
    return np.abs(a).sum(axis=0) if a.ndim == 3 else np.abs(a)


def _crop(a: np.ndarray, box) -> np.ndarray:
    t, l, b, r = box
    return a[t:b, l:r]


def rank_correlation(a, b, box=None) -> float | None:
    """Spearman's rho of two maps' absolute values (3-D: summed over channels), inside ``box``;
    None when either is constant there."""
    from scipy.stats import spearmanr

    u, v = _abs_map(a), _abs_map(b)
    if u.shape != v.shape:
        raise ValueError(f"maps: expected the same shape, got {u.shape} and {v.shape}")
    if box is not None:
        u, v = _crop(u, box), _crop(v, box)
    u, v = u.ravel(), v.ravel()
    if u.size < 2 or np.ptp(u) == 0 or np.ptp(v) == 0:
        return None
    return float(spearmanr(u, v).statistic)


class _Ranked:
    """A map's absolute values in ``box``, ranked once (``scipy.stats.rankdata``, ties averaged),
    centred and scaled to unit length: Spearman's rho of two maps is then the dot product of
    theirs (Pearson's r of the ranks, which is how ``scipy.stats.spearmanr`` computes it), so a
    reference ranked once serves every step. ``z`` is None for a constant map."""

    def __init__(self, a, box=None):
        from scipy.stats import rankdata

        u = _abs_map(a)
        u = (_crop(u, box) if box is not None else u).ravel()
        self.z = None
        if u.size >= 2 and np.ptp(u) > 0:
            r = rankdata(u)
            r -= r.mean()
            self.z = r / math.sqrt(float((r * r).sum()))  # (no BLAS call: see rho)

    def rho(self, other: "_Ranked") -> float | None:
        if self.z is None or other.z is None:
            return None
        return float(np.clip((self.z * other.z).sum(), -1.0, 1.0))  # (not BLAS: its threads wait on busy cores)


def rendered_ssim(a, b, box=None) -> float | None:
    """SSIM of two projections as ``render.projection_rgb`` draws them, inside ``box``."""
    from skimage.metrics import structural_similarity

    from ..render import projection_rgb

    u, v = projection_rgb(a), projection_rgb(b)
    if box is not None:
        u, v = _crop(u, box), _crop(v, box)
    side = min(u.shape[:2])
    if side < 3:
        return None
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(u, v, win_size=win, channel_axis=2, data_range=255))


def edge_map(x: torch.Tensor, mean, std) -> np.ndarray:
    """Sobel magnitude (``skimage.filters.sobel``) of the luminance of ``x`` (1xCxHxW, normalised
    with ``mean``/``std``): H x W float64."""
    from skimage.filters import sobel

    a = x.detach().float().cpu()[0].numpy().astype(np.float64)
    a = a * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    grey = a[0] if a.shape[0] == 1 else np.tensordot([0.299, 0.587, 0.114], a[:3], axes=1)
    return sobel(grey)


# ---------------------------------------------------------------- what is randomised

def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def randomizable_layers(net, layer: str) -> list[list[str]]:
    """The module groups a projection of ``layer`` passes through, in forward order (module doc)."""
    net.check_layer(layer)
    if net.engine == "sequential":
        names = [n for n, _ in net.sequence]
        end = names.index(net.node(layer))
        return [[n] for n, m in net.sequence[:end + 1] if isinstance(m, LINEAR) or _own_params(m)]
    eng = net._graph
    root = eng.root
    if eng.untraceable:
        path = net.node(layer)
        groups, seen_layer = [], False
        for name, m in root.named_modules():
            inside = name == path or name.startswith(path + ".")
            if seen_layer and not inside:
                break
            seen_layer = seen_layer or inside
            if name and _own_params(m):
                groups.append([name])
        return groups
    return _graph_groups(eng, net.node(layer))


def _graph_groups(eng, layer_name: str) -> list[list[str]]:
    target = eng.node_of(layer_name)
    nodes = {n.name: n for n in eng._order}
    need, todo = set(), [nodes[target]]
    while todo:  # the seed node and its ancestors
        n = todo.pop()
        if n.name not in need:
            need.add(n.name)
            todo.extend(n.all_input_nodes)
    groups: list[list[str]] = []
    group_of: dict[str, list[str]] = {}  # fx node name -> its group
    for n in eng._order:
        if n.name not in need or n.op != "call_module":
            continue
        m = eng.root.get_submodule(n.target)
        if not _own_params(m):
            continue
        src = n.args[0] if n.args else None
        if isinstance(m, NORMS) and getattr(src, "name", None) in group_of \
                and isinstance(eng.root.get_submodule(src.target), LINEAR):
            group_of[src.name].append(n.target)
            continue
        g = [n.target]
        groups.append(g)
        group_of[n.name] = g
    return groups


def steps_of(groups: list[list[str]], mode: str) -> list[list[str]]:
    """The randomised module names of each step after the trained model (module doc)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    out, acc = [], []
    for g in reversed(groups):
        acc = acc + g if mode == "cascading" else list(g)
        out.append(list(acc))
    return out


# ---------------------------------------------------------------- re-initialisation

def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))


def _fill(p: torch.Tensor, values: torch.Tensor) -> None:
    p.copy_(values.to(device=p.device, dtype=p.dtype))


def _fan_in(w: torch.Tensor) -> int:
    return int(w[0].numel()) if w.dim() > 1 else int(w.numel())


def _pytorch_default(m: nn.Module, g: torch.Generator) -> None:
    """PyTorch's own init of conv/linear: He uniform with a = sqrt(5), bias U(+-1/sqrt(fan_in))."""
    w = m.weight
    fan_in = _fan_in(w)
    bound = math.sqrt(6.0 / ((1 + 5) * fan_in))  # gain sqrt(2 / (1 + a^2)) times sqrt(3 / fan_in)
    _fill(w, (torch.rand(w.shape, generator=g) * 2 - 1) * bound)
    if m.bias is not None:
        b = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        _fill(m.bias, (torch.rand(m.bias.shape, generator=g) * 2 - 1) * b)


def _paper(m: nn.Module, g: torch.Generator, std: float = 0.01) -> None:
    _fill(m.weight, torch.randn(m.weight.shape, generator=g) * std)
    if m.bias is not None:
        m.bias.zero_()


def _torchvision_resnet(m: nn.Module, g: torch.Generator) -> None:
    if isinstance(m, nn.Conv2d):
        fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
        _fill(m.weight, torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.zero_()
    else:
        _pytorch_default(m, g)


INITIALISERS: dict[str, Callable] = {"zfnet": _paper, "resnet18": _torchvision_resnet}


def reinitialise(name: str, m: nn.Module, g: torch.Generator, arch: str = "") -> None:
    """Re-initialise module ``m`` in place with the rule of the module doc (``arch``: ``meta.arch``)."""
    if isinstance(m, LINEAR):
        INITIALISERS.get(arch, _pytorch_default)(m, g)
    elif isinstance(m, NORMS):
        if getattr(m, "weight", None) is not None:
            m.weight.fill_(1.0)
        if getattr(m, "bias", None) is not None:
            m.bias.zero_()
    elif hasattr(m, "reset_parameters"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=g)))
            m.reset_parameters()
    else:
        raise ValueError(f"{name}: expected a conv, linear or norm module (or one with reset_parameters), "
                         f"got {type(m).__name__}")


def _private_net(net):
    """A ``Net`` over a deep copy of ``net.module`` whose tensors are its own (plain, not inference
    tensors, so they can be changed in place and the graph engine shares them)."""
    from ..net import Net

    with torch.inference_mode(False), torch.no_grad():
        memo = {}
        for t in list(net.module.parameters()) + list(net.module.buffers()):
            c = t.detach().clone()
            memo[id(t)] = nn.Parameter(c, requires_grad=False) if isinstance(t, nn.Parameter) else c
        module = copy.deepcopy(net.module, memo)
    meta = copy.deepcopy(net.meta)
    return Net(module, meta, device=net.device, engine=net.engine)


def _modules_of(rnet) -> dict[str, nn.Module]:
    root = rnet._graph.root if rnet._graph is not None else rnet.module
    return dict(root.named_modules())


class _Randomiser:
    """Re-initialises and restores named modules of a private ``Net`` in place."""

    def __init__(self, rnet, seed: int, init=None):
        self.net = rnet
        self.modules = _modules_of(rnet)
        self.seed, self.arch = seed, str(rnet.meta.arch)
        self.init = init
        self.saved: dict[str, list[torch.Tensor]] = {}
        self.random: set[str] = set()

    def _tensors(self, name: str) -> list[torch.Tensor]:
        m = self.modules[name]
        return list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))

    def set(self, names: list[str]) -> None:
        """Make exactly ``names`` random (the others trained)."""
        with torch.inference_mode(False), torch.no_grad():
            for name in sorted(self.random - set(names)):
                for t, v in zip(self._tensors(name), self.saved[name]):
                    t.copy_(v)
                self.random.discard(name)
            for name in names:
                if name in self.random:
                    continue
                if name not in self.modules:
                    raise KeyError(f"unknown module: expected one of {sorted(self.modules)}, got {name!r}")
                self.saved.setdefault(name, [t.detach().clone() for t in self._tensors(name)])
                g = _generator(self.seed, name)
                if self.init is not None:
                    self.init(name, self.modules[name], g)
                else:
                    reinitialise(name, self.modules[name], g, self.arch)
                self.random.add(name)


# ---------------------------------------------------------------- the check

def _check(method: str, mode: str, seed) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed: expected an integer 0..{SEED_MAX}, got {seed!r}")


def _seeds(net, rec, layer: str, units, positions) -> list[tuple]:
    """Per image: ``Net.seed_box``'s ``(position, box)`` after ``Net.project``'s checks."""
    from ..engine.items import check_item

    act, n = net.activation(rec, layer), len(units)
    out = []
    for i, (u, pos) in enumerate(zip(units, positions)):
        check_item((layer, u, pos, i), act, n, layer, "point")
        position, box = net.seed_box(rec, layer, int(u), pos, item=i)
        out.append((position, tuple(int(v) for v in box)))
    return out


def _project(net, x, layer, units, positions, methods) -> tuple[dict[str, np.ndarray], list[float]]:
    """One forward pass of the batch, then each method's projections from it (one batched pass per
    method): ``({method: N x C x H x W}, the seed value of each image)``."""
    rec = net.forward(x)
    act = net.activation(rec, layer)
    values = [float(act[i, u] if pos is None else act[i, u][pos]) for i, (u, pos) in enumerate(zip(units, positions))]
    items = [(layer, int(u), pos, i) for i, (u, pos) in enumerate(zip(units, positions))]
    out = {m: net.project_many(rec, items, method=m).detach().float().cpu().numpy() for m in methods}
    return out, values


def _step(randomized, p, p0, ref: _Ranked, edges: _Ranked, box, value) -> SanityStep:
    """One model's numbers: ``ref`` and ``edges`` are the trained projection and the edge map, ranked."""
    ranked = _Ranked(p, box)
    return SanityStep(list(randomized), ranked.rho(ref), rendered_ssim(p0, p, box), ranked.rho(edges), value, p)


def randomization(net, x: torch.Tensor, layer: str, unit: int, method: str = "deconv",
                  mode: str = "cascading", seed: int = 0, position: tuple[int, int] | None = None,
                  init: Callable | None = None, progress: Callable | None = None) -> SanityResult:
    """Adebayo et al.'s model-parameter randomisation test of one unit's projection (module doc).

    ``net``: a ``Net`` (either engine; never changed). ``x``: one normalised image, 1xCxHxW
    (or CxHxW). ``method``: deconv, guided or backprop; ``mode``: cascading or independent;
    ``seed``: 0..2**31-1, the random weights; ``position``: the point seed (default: the
    trained model's strongest activation of ``unit``). ``init``: ``init(name, module,
    generator)`` re-initialising a module in place instead of the rule of the module doc.
    ``progress``: called ``(done, total)`` after each model. Returns a ``SanityResult`` whose
    first step is the trained model (``randomized == []``).
    """
    return randomization_methods(net, x, layer, unit, (method,), mode, seed, position, init, progress)[method]


def randomization_methods(net, x: torch.Tensor, layer: str, unit: int, methods=METHODS,
                          mode: str = "cascading", seed: int = 0, position: tuple[int, int] | None = None,
                          init: Callable | None = None, progress: Callable | None = None) -> dict[str, SanityResult]:
    """``randomization`` for several methods at once, sharing each model's forward pass:
    ``{method: SanityResult}``."""
    x = x.unsqueeze(0) if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x: expected one image, 1xCxHxW, got shape {tuple(x.shape)}")
    return randomization_batch(net, x, layer, [unit], methods, mode, seed, [position], init, progress)[0]


def randomization_batch(net, x: torch.Tensor, layer: str, units, methods=METHODS, mode: str = "cascading",
                        seed: int = 0, positions=None, init: Callable | None = None,
                        progress: Callable | None = None) -> list[dict[str, SanityResult]]:
    """``randomization_methods`` for a batch of N images (N x C x H x W), one unit of ``layer`` each
    (``units``; ``positions``: one per image or None), every model run once on the whole batch:
    ``[{method: SanityResult}]`` in the images' order (what the CLI runs)."""
    methods = tuple(methods)
    if not methods:
        raise ValueError("methods: expected at least one of ['deconv', 'guided', 'backprop'], got none")
    for m in methods:
        _check(m, mode, seed)
    units = [int(u) if isinstance(u, (int, np.integer)) and not isinstance(u, bool) else u for u in units]
    positions = [None] * len(units) if positions is None else list(positions)
    if x.dim() != 4 or x.shape[0] != len(units) or len(positions) != len(units) or not units:
        raise ValueError(f"x, units, positions: expected N images (N x C x H x W) with one unit and position "
                         f"each, got x of shape {tuple(x.shape)}, {len(units)} units, {len(positions)} positions")
    seeds = _seeds(net, net.forward(x), layer, units, positions)
    positions = [pos for pos, _ in seeds]
    p0, v0 = _project(net, x, layer, units, positions, methods)
    edges = [_Ranked(edge_map(x[i:i + 1], net.meta.mean, net.meta.std), b) for i, (_, b) in enumerate(seeds)]
    refs = {m: [_Ranked(p0[m][i], b) for i, (_, b) in enumerate(seeds)] for m in methods}

    def steps_of_model(names, p, v):
        return {m: [_step(names, p[m][i], p0[m][i], refs[m][i], edges[i], seeds[i][1], v[i])
                    for i in range(len(units))] for m in methods}

    schedule = steps_of(randomizable_layers(net, layer), mode)
    models = [steps_of_model([], p0, v0)]
    if progress is not None:
        progress(1, len(schedule) + 1)
    rand = _Randomiser(_private_net(net), int(seed), init)
    for k, names in enumerate(schedule):
        rand.set(names)
        models.append(steps_of_model(names, *_project(rand.net, x, layer, units, positions, methods)))
        if progress is not None:
            progress(k + 2, len(schedule) + 1)
    return [{m: SanityResult(layer, units[i], m, mode, int(seed), seeds[i][0], seeds[i][1],
                             [model[m][i] for model in models]) for m in methods} for i in range(len(units))]


def randomized_projection(net, x: torch.Tensor, layer: str, unit: int, method: str, randomize: list[str],
                          seed: int = 0, position: tuple[int, int] | None = None,
                          init: Callable | None = None) -> tuple[np.ndarray, float]:
    """``(projection, seed_value)`` of ``unit`` with the named modules (any of ``net``'s, also ones the
    projection does not pass through) re-initialised on a private copy; ``position`` default: the
    trained model's strongest activation."""
    _check(method, "cascading", seed)
    x = x.unsqueeze(0) if x.dim() == 3 else x
    ((position, _),) = _seeds(net, net.forward(x), layer, [unit], [position])
    rnet = _private_net(net)
    _Randomiser(rnet, int(seed), init).set(list(randomize))
    p, values = _project(rnet, x, layer, [unit], [position], (method,))
    return p[method][0], values[0]
