"""Serving the top-k index: a unit's entries, patches and projections (Zeiler & Fergus 2013, Fig. 2).

"For each feature map we show the top 9 activations ... across the validation
data, projected down to pixel space using our deconvolutional network
approach", next to "the corresponding image patches".

=========================  ======================================================================
name                       what it does
=========================  ======================================================================
``TopKIndex.open``         memory-maps a built index; refuses a stale one (:class:`.store.StaleIndexError`
                           names the model hash or data listing that changed)
``TopKIndex.entries``      a unit's k entries in rank order: image, value, position, receptive-field box
``TopKIndex.patch``        the receptive field (``net.receptive_field``) cropped from the model's input
                           view of the image
``TopKIndex.projection``   the point-seed deconvnet projection (``net.project_many``, all k entries of
                           a unit in one batch) cropped to the same box
``iter_projections``       every unit's projections, a few units per batch (a Fig. 2 atlas)
:func:`open_index`         the one reading of an index folder for a caller that reports rather than
                           raises: ``(index, "ready")`` or ``(None, "missing" | "stale: <why>")``
:func:`index_status`       that status alone (the strings of ``GET /api/ready``)
:func:`open_or_build`      open, building (or resuming a killed build) when missing or stale
=========================  ======================================================================

Patches and projections are computed on first request and kept, per unit, in
a byte-bounded LRU (:class:`deconvlab._util.ByteLRU`, ``cache_bytes``; the unit
asked for last is kept whatever its size). A ``TopKIndex`` may be shared by
threads: the cache is behind a lock.

Errors: an unknown layer is a ``KeyError``; a unit or rank out of range, or a
patch or projection asked of an index opened without ``net=``, a
``ValueError``; an image index out of range an ``IndexError`` -- each saying
what was expected and what it got.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from .._util import ByteLRU
from ..data import Split, list_split, resize_crop
from .build import build_index
from .store import (StaleIndexError, default_index_path, manifest_path, read_arrays, read_manifest, sha_prefix_hex,
                    staleness)

__all__ = ["TopKIndex", "open_index", "index_status", "open_or_build"]


class TopKIndex:
    """A built index, memory-mapped; entries, image paths, patches and projections of each unit.

    ``cache`` is the unit cache (a :class:`deconvlab._util.ByteLRU` of
    ``cache_bytes``): its ``bytes`` and ``len()`` say what it holds now.
    """

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray], split: Split | None,
                 net=None, cache_bytes: int = 256 << 20):
        self.path, self.manifest, self.net = path, manifest, net
        self._arrays = arrays
        self._split = split
        self._layers = {info["name"]: info for info in manifest["layers"]}
        self._alias = {a: info["name"] for info in manifest["layers"] for a in info.get("aliases", ())}
        self.cache = ByteLRU(cache_bytes, keep_newest=True)
        self._lock = threading.RLock()

    # ---- opening
    @classmethod
    def read_manifest(cls, path: str | Path) -> dict:
        """The index's manifest (:func:`.store.read_manifest`)."""
        return read_manifest(path)

    @classmethod
    def staleness(cls, manifest: dict, net=None, split: Split | None = None) -> str | None:
        """Why the index no longer matches ``net``/``split`` (:func:`.store.staleness`), or None."""
        return staleness(manifest, net, split)

    @classmethod
    def open(cls, path: str | Path, net=None, data_root: str | Path | None = None,
             cache_bytes: int = 256 << 20) -> "TopKIndex":
        """Memory-map the index at ``path``; refuse it (``StaleIndexError``) when it no longer matches.

        ``net`` (needed for boxes, patches and projections) is checked against
        the model hash, ``data_root`` (default: the root recorded at build
        time) against the listing hash. ``FileNotFoundError`` when missing.
        """
        manifest = read_manifest(path)
        folder = manifest_path(path).parent
        root = Path(data_root) if data_root is not None else Path(manifest["data"]["root"])
        split = list_split(root, manifest["data"]["split"])
        why = staleness(manifest, net, split)
        if why:
            raise StaleIndexError(f"stale top-k index at {folder}: {why}; rebuild it with `deconvlab index`", why)
        return cls(folder, manifest, read_arrays(folder, manifest), split, net, cache_bytes)

    # ---- what it holds
    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def layers(self) -> list[str]:
        return [info["name"] for info in self.manifest["layers"]]

    @property
    def split(self) -> str:
        return self.manifest["data"]["split"]

    @property
    def num_images(self) -> int:
        return int(self.manifest["data"]["num_images"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["data"]["labels"])

    def layer_info(self, layer: str) -> dict:
        """The manifest's entry of ``layer`` (or of the indexed layer it is another name of)."""
        if layer not in self._layers:
            if layer in self._alias:
                return self._layers[self._alias[layer]]
            raise KeyError(f"unknown layer: expected one of {self.layers}, got {layer!r}")
        return self._layers[layer]

    def _row(self, layer: str, unit: int) -> int:
        info = self.layer_info(layer)
        if not isinstance(unit, (int, np.integer)) or isinstance(unit, bool) or not 0 <= unit < info["units"]:
            raise ValueError(f"unit: expected an integer in 0..{info['units'] - 1} for layer {layer}, got {unit!r}")
        return info["offset"] + int(unit)

    def _check_rank(self, rank: int, n: int) -> None:
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < n:
            raise ValueError(f"rank: expected an integer in 0..{n - 1}, got {rank!r}")

    def label_of(self, image_index: int) -> str:
        return self.labels[self._split.targets[self._check_image(image_index)]]

    def _check_image(self, image_index: int) -> int:
        n = len(self._split)
        if not isinstance(image_index, (int, np.integer)) or not 0 <= image_index < n:
            raise IndexError(f"image_index: expected an integer in 0..{n - 1}, got {image_index!r}")
        return int(image_index)

    def image_path(self, image_index: int) -> Path:
        """The data-set image at ``image_index`` of the sorted listing (addressed by index only)."""
        return self._split.path(self._check_image(image_index))

    def image_id(self, image_index: int) -> str:
        """The image's path relative to the data root."""
        return self._split.files[self._check_image(image_index)]

    def entries(self, layer: str, unit: int) -> list[dict]:
        """The unit's entries in rank order (fewer than k when the split holds fewer images)."""
        row = self._row(layer, unit)
        kind = self.layer_info(layer)["kind"]
        values, image = self._arrays["values"][row], self._arrays["image"][row]
        position, sha = self._arrays["position"][row], self._arrays["sha"][row]
        out = []
        for rank in range(self.k):
            i = int(image[rank])
            if i < 0:
                break
            pos = (int(position[rank, 0]), int(position[rank, 1])) if kind == "conv" else None
            out.append({"rank": rank, "image_index": i, "image_id": self._split.files[i],
                        "sha256": sha_prefix_hex(sha[rank]),
                        "label": self.labels[self._split.targets[i]], "value": float(values[rank]),
                        "position": pos, "box": self.box(layer, pos)})
        return out

    def box(self, layer: str, position) -> tuple[int, int, int, int]:
        """Input box (top, left, bottom, right; bottom/right exclusive) of ``position``, clipped to the input."""
        s = int(self.manifest["model"]["input_size"])
        if position is None or self.net is None:
            return (0, 0, s, s) if position is None else None
        top, left, bottom, right = (int(v) for v in self.net.receptive_field(layer, position[0], position[1]))
        return max(top, 0), max(left, 0), min(bottom, s), min(right, s)

    # ---- patches and projections (cached per unit)
    def _unit(self, layer: str, unit: int, projections: bool) -> dict:
        """The unit's entries and input views (and projections, when asked), from the cache or made now."""
        key = (layer, int(unit))
        with self._lock:
            item = self.cache.get(key)
            if item is None:
                entries = self.entries(layer, unit)
                if any(e["box"] is None for e in entries):
                    raise ValueError("patches need the model's receptive fields: open the index with net=")
                views = [self._view(e["image_index"]) for e in entries]
                item = {"entries": entries, "views": views, "projections": None,
                        "nbytes": sum(v.width * v.height * 3 for v in views)}
                self.cache.put(key, item, item["nbytes"])
            if projections and item["projections"] is None:
                item["projections"] = self._project(layer, [(int(unit), e) for e in item["entries"]],
                                                    item["views"])
                item["nbytes"] += sum(p.nbytes for p in item["projections"])
                self.cache.put(key, item, item["nbytes"])  # the same item, now larger
            return item

    def clear_cache(self) -> None:
        """Forget every cached patch and projection (the next request is cold)."""
        with self._lock:
            self.cache.clear()

    def _view(self, image_index: int) -> Image.Image:
        """The model's input view of a data-set image (RGB, input_size x input_size)."""
        from ..data import load_rgb

        return resize_crop(load_rgb(self.image_path(image_index)), int(self.manifest["model"]["input_size"]))

    def _project(self, layer: str, seeds: list[tuple[int, dict]], views: list[Image.Image]) -> list[np.ndarray]:
        """The point-seed deconvnet projection of each ``(unit, entry)`` from its view, cropped to its box."""
        if self.net is None:
            raise ValueError("projections need the model: open the index with net=")
        if not seeds:
            return []
        x = torch.cat([self.net.preprocess(v) for v in views], 0)
        rec = self.net.forward(x, upto=layer)  # a point seed at ``layer`` needs nothing above it
        p = self.net.project_many(rec, [(layer, unit, e["position"], i) for i, (unit, e) in enumerate(seeds)],
                                  method="deconv", seed="point")
        p = p.detach().float().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p, np.float32)
        out = []
        for i, (_, e) in enumerate(seeds):
            top, left, bottom, right = e["box"]
            out.append(np.ascontiguousarray(p[i, :, top:bottom, left:right], dtype=np.float32))
        return out

    def iter_projections(self, layers: Iterable[str] | None = None, units_per_batch: int = 8,
                         views: int = 512):
        """Yield ``(layer, unit, [k projections])`` for every unit of ``layers`` (default: all),
        ``units_per_batch`` units per forward pass and ``project_many`` call (the images of a
        Fig. 2 atlas); bypasses the unit cache, keeps at most ``views`` decoded images."""
        if self.net is None:
            raise ValueError("projections need the model: open the index with net=")
        size = int(self.manifest["model"]["input_size"])
        decoded = ByteLRU(views * size * size * 3)  # every view is size x size RGB: at most ``views`` of them

        def view(i: int) -> Image.Image:
            im = decoded.get(i)
            if im is None:
                im = self._view(i)
                decoded.put(i, im, im.width * im.height * 3)
            return im

        for layer in (self.layers if layers is None else list(layers)):
            n = self.layer_info(layer)["units"]
            for start in range(0, n, units_per_batch):
                group = [(u, self.entries(layer, u)) for u in range(start, min(start + units_per_batch, n))]
                seeds = [(u, e) for u, entries in group for e in entries]
                if not seeds:
                    continue
                projections = iter(self._project(layer, seeds, [view(e["image_index"]) for _, e in seeds]))
                for u, entries in group:
                    yield layer, u, [next(projections) for _ in entries]

    def patch(self, layer: str, unit: int, rank: int) -> Image.Image:
        """RGB receptive-field crop of the model's input view of entry ``rank``'s image."""
        item = self._unit(layer, unit, projections=False)
        self._check_rank(rank, len(item["entries"]))
        top, left, bottom, right = item["entries"][rank]["box"]
        return item["views"][rank].crop((left, top, right, bottom))

    def projection(self, layer: str, unit: int, rank: int) -> np.ndarray:
        """float32 3xhxw point-seed deconvnet projection of entry ``rank``, cropped to its box."""
        item = self._unit(layer, unit, projections=True)
        self._check_rank(rank, len(item["entries"]))
        return item["projections"][rank]

    def projections(self, layer: str, unit: int) -> list[np.ndarray]:
        """All of the unit's projections (one batch)."""
        return list(self._unit(layer, unit, projections=True)["projections"])



# ------------------------------------------------------------------ open, report, build

def open_index(path: str | Path, net=None, data_root: str | Path | None = None,
               cache_bytes: int = 256 << 20) -> tuple[TopKIndex | None, str]:
    """``(index, "ready")``, or ``(None, "missing")`` when there is no index at ``path``, or
    ``(None, "stale: <why>")`` when it is stale, of another format, incomplete, or its data is gone.

    For callers that report an index's state instead of raising (the server's ``/api/ready``)."""
    if not manifest_path(path).is_file():
        return None, "missing"
    try:
        return TopKIndex.open(path, net=net, data_root=data_root, cache_bytes=cache_bytes), "ready"
    except StaleIndexError as e:
        return None, f"stale: {e.why}"
    except (FileNotFoundError, ValueError) as e:
        return None, f"stale: {e}"


def index_status(path: str | Path, net=None, data_root: str | Path | None = None) -> str:
    """"ready", "missing" or "stale: <why>" (the strings of ``GET /api/ready``; see :func:`open_index`)."""
    return open_index(path, net, data_root)[1]


def open_or_build(net, data_root: str | Path, split: str = "val", out: str | Path | None = None, k: int = 9,
                  rebuild_stale: bool = True, **build_kw) -> TopKIndex:
    """Open the index at ``out`` (default :func:`.store.default_index_path`), building it when missing
    (and when stale, unless ``rebuild_stale`` is false); resumes a killed build."""
    if isinstance(net, (str, Path)):
        from .. import load
        net = load(str(net))
    out = Path(out) if out is not None else default_index_path(net.meta.name, data_root, split)
    try:
        idx = TopKIndex.open(out, net=net, data_root=data_root)
        if idx.k == k and idx.split == split:
            return idx
    except FileNotFoundError:
        pass
    except (StaleIndexError, ValueError):
        if not rebuild_stale:
            raise
    build_index(net, data_root, split=split, out=out, k=k, **build_kw)
    return TopKIndex.open(out, net=net, data_root=data_root)
