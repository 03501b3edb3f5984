"""Feature evolution during training (Zeiler & Fergus 2013, Sec. 4.1 and Fig. 4).

Fig. 4 of the paper: "Evolution of a randomly chosen subset of model features
through training. Each layer's features are displayed in a different block.
Within each block, we show a randomly chosen subset of features at epochs
[1, 2, 5, 10, 20, 30, 40, 64]. The visualization shows the strongest
activation (across all training examples) for a given feature map, projected
down to pixel space using our deconvnet approach."

Here, for each chosen unit and each training snapshot (``train.py`` writes
them at the epochs of Fig. 4):

1. the unit's strongest activation over a fixed image subset (the maximum over
   positions and images; ``EvolutionScan`` keeps every unit's per-image
   maximum, so any unit can be asked for afterwards without a new scan);
2. the deconvnet projection (``method="deconv"``, point seed) of that
   activation, from that image at that position.

Any architecture: the snapshots are scanned with the top-k index's scan loop
and layers (:mod:`deconvlab.index.scan`): a paper model's ``conv1`` .. ``fc8``,
a graph-engine net's rectified maps and block outputs (a ResNet trained with
``deconvlab train --arch resnet18``: ``relu``, ``layer1.0.relu``, ``layer1.0``,
..., ``fc``), streamed through its fx graph.

Assumptions, stated once:

* The snapshots are of one training run, so unit ``u`` of layer ``l`` is the
  same feature at every epoch (as in the paper).
* "Over the data set" is a fixed subset of the split (``subset_indices``: a
  seeded random sample, by default 500 val images) so that the analysis is
  interactive; ``n=0`` takes the whole split. Ties go to the lowest image
  index and the first position in row-major order.
* Images are read as ``Net.preprocess`` reads them (shorter side resized,
  centre crop, the model's mean/std).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .._util import atomic_npz
from ..data import Split, decoded, list_split
from ..index.scan import LayerInfo, index_layers, scan
from ..nets import load_checkpoint, models_dir, read_registry
from .report import write_report

SNAPSHOT_RE = re.compile(r"^epoch-(\d+)\.safetensors$")


# ------------------------------------------------------------------ snapshots

def snapshot_paths(source: str | Path, root: Path | None = None) -> list[tuple[int, Path]]:
    """``[(epoch, checkpoint path)]`` sorted by epoch, from one of:

    * a registry name whose entry has ``"snapshots"`` (a folder relative to
      ``models/``, as ``deconvlab publish`` writes it);
    * a training run's folder (``<out>/snapshots/epoch-XXX.safetensors``);
    * a folder of ``epoch-XXX.safetensors`` files.

    ``root`` is the models folder of the registry (default ``nets.models_dir()``).
    """
    p = Path(source)
    folder: Path | None = None
    if p.is_dir():
        folder = p / "snapshots" if (p / "snapshots").is_dir() else p
    else:
        reg = read_registry(root)
        entry = reg["models"].get(str(source))
        if entry is None:
            raise KeyError(f"unknown model: expected a registry name, a run folder or a snapshots folder, "
                           f"got {str(source)!r} (registered: {sorted(reg['models'])})")
        if not entry.get("snapshots"):
            raise FileNotFoundError(f"model {source!r} has no training snapshots in the registry "
                                    f"(expected a \"snapshots\" entry, as `deconvlab publish` writes)")
        folder = (root or models_dir()) / entry["snapshots"]
    out = []
    for f in sorted(folder.glob("epoch-*.safetensors")) if folder.is_dir() else []:
        m = SNAPSHOT_RE.match(f.name)
        if m:
            out.append((int(m.group(1)), f))
    if not out:
        raise FileNotFoundError(f"no training snapshots in {folder} (expected epoch-XXX.safetensors files)")
    return sorted(out)


def load_snapshots(paths: Iterable[tuple[int, Path]], device: str = "cpu") -> list[tuple[int, "object"]]:
    """``[(epoch, Net)]`` for ``snapshot_paths``' answer."""
    from ..net import Net

    out = []
    for epoch, path in paths:
        module, meta = load_checkpoint(path)
        out.append((int(epoch), Net(module, meta, device=device)))
    return out


# ------------------------------------------------------------------ images

def subset_indices(total: int, n: int = 500, seed: int = 0) -> np.ndarray:
    """A fixed, sorted random sample of ``n`` of ``total`` image indices (all when ``n`` is 0 or >= total)."""
    if n < 0:
        raise ValueError(f"n: expected 0 (all) or a positive number of images, got {n}")
    if n == 0 or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB (N, S, S, 3) -> float (N, C, S, S), normalised as ``Net.preprocess`` does, with
    C = ``len(mean)``: 3 (RGB as it is) or 1 (luminance, as PIL's ``convert("L")`` makes it for a
    one-channel model). Errors: other C, or ``std`` of another length: ``ValueError``."""
    C = len(mean)
    if C not in (1, 3) or len(std) != C:
        raise ValueError(f"mean, std: expected one value per input channel, 1 (grayscale) or 3 (RGB), "
                         f"got {len(mean)} and {len(std)}")
    a = np.asarray(images, dtype=np.uint8)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 RGB of shape (N, S, S, 3), got {a.shape}")
    if C == 1:  # the same rounding as Net.preprocess's im.convert("L")
        a = np.stack([np.asarray(Image.fromarray(im, "RGB").convert("L")) for im in a])[..., None]
    x = torch.from_numpy(np.array(a, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0  # a writable copy
    m = torch.tensor(mean, dtype=torch.float32).view(1, C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, C, 1, 1)
    return (x - m) / s


def image_loader(split: Split, size: int, mean, std) -> Callable[[Sequence[int]], torch.Tensor]:
    """``load(indices)``: those images of ``split`` as a normalised (N, C, size, size) batch
    (C = ``len(mean)``), read as ``Net.preprocess`` reads them."""
    def load(indices: Sequence[int]) -> torch.Tensor:
        arr = decoded(split, size, progress=False, indices=np.asarray(indices, dtype=np.int64))
        return normalise(arr, mean, std)

    return load


# ------------------------------------------------------------------ scan

@dataclass
class SnapshotScan:
    """Every unit's strongest activation so far over the subset, at one snapshot.

    ``value[u]`` is the largest maximum-over-positions of unit ``u`` over the
    images scanned so far, ``row[u]`` the subset row of that image (the first
    one on ties) and ``position[u]`` where in the map it is (-1 for fc
    units). Memory is O(units), whatever the subset's size.
    """

    epoch: int
    layers: list[LayerInfo]
    value: np.ndarray  # (U,) float32, -inf before any image
    row: np.ndarray  # (U,) int64, -1 before any image
    position: np.ndarray  # (U, 2) int32
    scanned: int = 0  # images scanned so far

    @classmethod
    def empty(cls, epoch: int, layers: list[LayerInfo]) -> "SnapshotScan":
        u = sum(L.units for L in layers)
        return cls(int(epoch), layers, np.full(u, -np.inf, np.float32), np.full(u, -1, np.int64),
                   np.full((u, 2), -1, np.int32))

    def update(self, values: np.ndarray, positions: np.ndarray, first_row: int) -> None:
        """Add a batch: ``values`` (B, U) per-image maxima, ``positions`` (B, U, 2), rows ``first_row``..."""
        best = np.argmax(values, axis=0)  # first maximum within the batch
        v = values[best, np.arange(values.shape[1])]
        better = v > self.value  # strictly: earlier rows win ties
        self.value[better] = v[better]
        self.row[better] = first_row + best[better]
        self.position[better] = positions[best[better], np.flatnonzero(better)]
        self.scanned += len(values)

    def unit_index(self, layer: str, unit: int) -> int:
        for L in self.layers:
            if L.name == layer:
                if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < L.units:
                    raise ValueError(f"unit: expected 0..{L.units - 1} for layer {layer}, got {unit!r}")
                return L.offset + int(unit)
        raise KeyError(f"unknown layer: expected one of {[L.name for L in self.layers]}, got {layer!r}")

    def strongest(self, layer: str, unit: int) -> tuple[float, int, tuple[int, int] | None]:
        """``(value, subset row, position)`` of the unit's strongest activation over the subset."""
        u = self.unit_index(layer, unit)
        if self.row[u] < 0:
            raise ValueError("the snapshot has not been scanned yet (call Evolution.scan first)")
        y, x = (int(v) for v in self.position[u])
        return float(self.value[u]), int(self.row[u]), (None if y < 0 else (y, x))

    def layer_values(self, layer: str) -> np.ndarray:
        """The strongest activation of every unit of ``layer``."""
        for L in self.layers:
            if L.name == layer:
                return self.value[L.offset:L.offset + L.units]
        raise KeyError(f"unknown layer: expected one of {[L.name for L in self.layers]}, got {layer!r}")


# ------------------------------------------------------------------ evolution

@dataclass
class EvolutionStep:
    """One cell of Fig. 4: a unit's strongest activation at one snapshot."""

    epoch: int
    value: float  # the strongest activation over the subset
    image_index: int  # index of that image in the split (not in the subset)
    position: tuple[int, int] | None  # (y, x) in the layer's map; None for fc units
    box: tuple[int, int, int, int]  # receptive field of that position, input pixels (t, l, b, r)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "value": self.value, "image_index": self.image_index,
                "position": None if self.position is None else list(self.position), "box": list(self.box)}


class Evolution:
    """Fig. 4 over a list of snapshots and one image subset.

    ``nets``: ``[(epoch, Net)]`` (``load_snapshots``), all at one input size;
    ``image_indices``: the subset, as indices into a split; ``load(indices)``
    returns those images as a normalised batch (``image_loader``). ``scan()``
    streams the subset through every snapshot once, a batch at a time (each
    batch is decoded once for all snapshots; ``scan_steps`` yields after each
    batch, so a server can interleave other work); ``unit`` and
    ``projection`` then answer any unit of any layer.
    """

    def __init__(self, nets: list[tuple[int, object]], image_indices: Sequence[int],
                 load: Callable[[Sequence[int]], torch.Tensor], batch_size: int = 64):
        if not nets:
            raise ValueError("nets: expected at least one (epoch, Net) snapshot, got none")
        if len(image_indices) == 0:
            raise ValueError("image_indices: expected at least one image, got none")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        self.nets = sorted(nets, key=lambda t: t[0])
        epochs = [e for e, _ in self.nets]
        if len(set(epochs)) != len(epochs):
            raise ValueError(f"nets: expected one snapshot per epoch, got epochs {epochs}")
        sizes = {int(n.meta.input_size) for _, n in self.nets}
        if len(sizes) != 1:
            raise ValueError(f"nets: expected snapshots of one input size, got {sorted(sizes)}")
        self.input_size = sizes.pop()
        self.image_indices = np.asarray(image_indices, dtype=np.int64)
        self.load = load
        self.batch_size = batch_size
        self.key = ""  # names the scan for save/load_scans (build_evolution sets it)
        # the top-k index's layers and scan loop: a paper model's conv1..fc8, a graph net's (e.g. a
        # ResNet's) rectified maps and block outputs (``index.scan_graph``), streamed
        self.scans = {e: SnapshotScan.empty(e, index_layers(n, self.input_size)) for e, n in self.nets}
        names = {e: [L.name for L in sc.layers] for e, sc in self.scans.items()}
        if len({tuple(v) for v in names.values()}) != 1:
            raise ValueError(f"nets: expected snapshots of one architecture (the same layers), got {names}")

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in self.nets]

    @property
    def scanned(self) -> bool:
        return all(s.scanned == len(self.image_indices) for s in self.scans.values())

    def net(self, epoch: int):
        for e, n in self.nets:
            if e == epoch:
                return n
        raise KeyError(f"unknown epoch: expected one of {self.epochs}, got {epoch!r}")

    def batches(self) -> list[int]:
        """First subset row of each batch still to scan."""
        done = min(s.scanned for s in self.scans.values())
        return list(range(done, len(self.image_indices), self.batch_size))

    @torch.no_grad()
    def scan_batch(self, first_row: int) -> None:
        """Scan subset rows ``first_row .. first_row + batch_size`` through every snapshot."""
        rows = self.image_indices[first_row:first_row + self.batch_size]
        x = self.load(rows)
        for e, net in self.nets:
            snapshot = self.scans[e]
            if snapshot.scanned != first_row:
                raise ValueError(f"scan: expected the batch at row {snapshot.scanned}, got {first_row}")
            values, positions = scan(net, x.to(net.device), snapshot.layers)  # the index's scan loop
            snapshot.update(values.numpy(), positions.numpy(), first_row)

    def scan(self, progress: bool = False) -> "Evolution":
        from tqdm import tqdm

        for first in tqdm(self.batches(), desc=f"scan {len(self.nets)} snapshots", unit="batch",
                          disable=not progress):
            self.scan_batch(first)
        return self

    def save(self, path: str | Path) -> Path:
        """Write the finished scans to ``path`` (``.npz``, atomically) for ``load_scans``."""
        if not self.scanned:
            raise ValueError("save: expected a finished scan (call scan first)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"image_indices": self.image_indices, "epochs": np.asarray(self.epochs)}
        for e, sc in self.scans.items():
            arrays.update({f"value_{e}": sc.value, f"row_{e}": sc.row, f"position_{e}": sc.position})
        return atomic_npz(path, arrays)

    def load_scans(self, path: str | Path) -> bool:
        """Take the scans from a ``save`` file when it is for the same epochs, images and units; True if so."""
        path = Path(path)
        if not path.is_file():
            return False
        with np.load(path, allow_pickle=False) as z:
            if (z["epochs"].tolist() != self.epochs
                    or not np.array_equal(z["image_indices"], self.image_indices)
                    or any(z[f"value_{e}"].shape != sc.value.shape for e, sc in self.scans.items())):
                return False
            for e, sc in self.scans.items():
                sc.value[:], sc.row[:], sc.position[:] = z[f"value_{e}"], z[f"row_{e}"], z[f"position_{e}"]
                sc.scanned = len(self.image_indices)
        return True

    def unit(self, layer: str, unit: int) -> list[EvolutionStep]:
        """The unit's strongest activation at every snapshot, oldest first."""
        steps = []
        for e, net in self.nets:
            value, row, pos = self.scans[e].strongest(layer, unit)
            box = net.receptive_field(layer, *(pos if pos is not None else (None, None)))
            steps.append(EvolutionStep(e, value, int(self.image_indices[row]), pos, tuple(int(v) for v in box)))
        return steps

    @torch.no_grad()
    def projection(self, layer: str, unit: int, epoch: int, method: str = "deconv") -> np.ndarray:
        """The deconvnet projection (C x S x S float32) of the unit's strongest activation at ``epoch``."""
        net = self.net(epoch)
        value, row, pos = self.scans[epoch].strongest(layer, unit)
        x = self.load(self.image_indices[row:row + 1])
        rec = net.forward(x.to(net.device))
        return net.project(rec, layer, int(unit), method=method, position=pos).float().cpu().numpy()


def parse_units(specs: Iterable[str]) -> list[tuple[str, int]]:
    """``["conv1:3", "conv5:12"]`` -> ``[("conv1", 3), ("conv5", 12)]``."""
    out = []
    for s in specs:
        layer, sep, unit = str(s).partition(":")
        if not sep or not layer or not unit.strip().lstrip("-").isdigit():
            raise ValueError(f"unit: expected LAYER:UNIT such as conv5:12, got {s!r}")
        out.append((layer, int(unit)))
    return out


PAPER_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def default_units(ev: Evolution, per_layer: int = 2, layers: Sequence[str] | None = None,
                  seed: int = 0) -> list[tuple[str, int]]:
    """``per_layer`` units of each conv layer chosen at random (seeded), as Fig. 4 shows "a randomly
    chosen subset of model features"; units that never fire on the subset at the last snapshot are
    left out (they have nothing to show). ``layers`` (default): a paper model's ``conv1`` ..
    ``conv5``; a graph net's block outputs (its scanned spatial layers that are module paths
    with a parent block, e.g. resnet18's ``layer1.0`` .. ``layer4.1``), else all its spatial layers."""
    last = ev.scans[ev.epochs[-1]]
    if layers is None:
        layers = _default_layers(ev, last.layers)
    rng = np.random.default_rng(seed)
    out = []
    for L in last.layers:
        if L.name not in layers:
            continue
        alive = np.flatnonzero(last.layer_values(L.name) > 0)
        for u in np.sort(rng.choice(alive, size=min(per_layer, len(alive)), replace=False)):
            out.append((L.name, int(u)))
    return out


def _default_layers(ev: Evolution, scanned: list[LayerInfo]) -> list[str]:
    names = [L.name for L in scanned]
    if set(PAPER_CONVS) <= set(names):
        return list(PAPER_CONVS)
    spatial = [L.name for L in scanned if L.kind == "conv"]
    net = ev.net(ev.epochs[-1])
    if getattr(net, "engine", None) == "graph":
        info = {d["name"]: d for d in net.layer_info()}
        modules = dict(net.module.named_modules())
        blocks = [n for n in spatial if n in modules and info.get(n, {}).get("parent") is not None
                  and info[n]["type"] != "ReLU"]
        if blocks:
            return blocks
    return spatial


# ------------------------------------------------------------------ figure and numbers

def projection_crop(projection: np.ndarray, box: Sequence[int], size: int = 96) -> Image.Image:
    """A projection as RGB (mid-grey zero, ``render.projection_image``), cropped to ``box``, ``size`` px wide."""
    from ..render import projection_image

    t, l, b, r = (int(v) for v in box)
    im = projection_image(projection).crop((l, t, r, b))
    return im.resize((size, max(1, round(size * (b - t) / max(r - l, 1)))), Image.NEAREST
                     if (r - l) < size else Image.BILINEAR)


def evolution_strip(ev: Evolution, units: Sequence[tuple[str, int]], cell: int = 96,
                    progress: bool = False) -> tuple[Image.Image, dict]:
    """Fig. 4: one row per unit, one column per snapshot (the projection cropped to its receptive
    field), epoch and value written under each cell. Returns the image and the numbers."""
    from PIL import ImageDraw
    from tqdm import tqdm

    label_w, text_h, pad = 90, 26, 4
    cols = len(ev.epochs)
    W = label_w + cols * (cell + pad)
    H = 20 + len(units) * (cell + text_h + pad)
    sheet = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(sheet)
    for c, e in enumerate(ev.epochs):
        draw.text((label_w + c * (cell + pad) + 2, 4), f"epoch {e}", fill="black")
    numbers = {"epochs": ev.epochs, "subset_size": int(len(ev.image_indices)), "units": []}
    for r, (layer, unit) in enumerate(tqdm(units, desc="project", disable=not progress)):
        y0 = 20 + r * (cell + text_h + pad)
        draw.text((4, y0 + cell // 2 - 6), f"{layer}:{unit}", fill="black")
        steps = ev.unit(layer, unit)
        for c, st in enumerate(steps):
            p = ev.projection(layer, unit, st.epoch)
            tile = projection_crop(p, st.box, cell)
            x0 = label_w + c * (cell + pad)
            sheet.paste(tile.crop((0, 0, cell, min(cell, tile.height))), (x0, y0))
            draw.text((x0 + 2, y0 + cell + 2), f"{st.value:.3g}", fill="black")
            draw.text((x0 + 2, y0 + cell + 13), f"img {st.image_index}", fill=(90, 90, 90))
        numbers["units"].append({"layer": layer, "unit": int(unit), "snapshots": [s.to_dict() for s in steps]})
    return sheet, numbers


def write_evolution(ev: Evolution, units: Sequence[tuple[str, int]], out: str | Path, meta: dict | None = None,
                    progress: bool = False) -> dict:
    """Write ``evolution.png`` (the strips) and ``evolution.json`` (the numbers) into ``out``."""
    sheet, numbers = evolution_strip(ev, units, progress=progress)
    numbers.update(meta or {})
    write_report(out, "evolution", sheet, numbers)
    return numbers


def scan_key(paths: Sequence[tuple[int, Path]], split: Split, n: int, seed: int) -> str:
    """sha256 naming one scan: the snapshots' bytes, the split's listing, ``n`` and ``seed``
    (a saved scan is reused only for exactly these)."""
    import hashlib

    from ..data import file_digest

    h = hashlib.sha256()
    for epoch, path in paths:
        h.update(f"{epoch}:{file_digest(Path(path))}|".encode())
    h.update(f"{split.name}|{split.listing_hash()}|{n}|{seed}".encode())
    return h.hexdigest()


def build_evolution(model: str | Path, data: str | Path, split: str | Split = "val", n: int = 500, seed: int = 0,
                    device: str = "cpu", batch_size: int = 64, root: Path | None = None) -> Evolution:
    """Every snapshot of ``model`` and a fixed subset of ``n`` images of ``data/split``, not yet scanned
    (call ``.scan()``, or ``.load_scans()`` a saved one: ``.key`` names it). The CLI's and the API's way in."""
    paths = snapshot_paths(model, root)
    nets = load_snapshots(paths, device=device)
    meta = nets[0][1].meta
    listing = split if isinstance(split, Split) else list_split(data, split)
    indices = subset_indices(len(listing), n, seed)
    ev = Evolution(nets, indices, image_loader(listing, meta.input_size, meta.mean, meta.std),
                   batch_size=batch_size)
    ev.key = scan_key(paths, listing, n, seed)
    return ev
