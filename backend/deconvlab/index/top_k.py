"""The top-k index: the k data-set images that excite each unit most (Zeiler & Fergus 2013, Sec. 2.1, Fig. 2).

For every unit of every paper layer (``conv1`` ... ``conv5``, ``fc6``, ``fc7``,
``fc8``; see :func:`deconvlab.nets.layer_map`) the index keeps the k images of
one split of an ImageFolder data set with the strongest activation, where an
image's activation is the *maximum over positions* of that unit's feature map
(fc units have one position). One entry per image per unit, so the k images
of a unit are distinct -- the paper's "top 9 activations ... across the
validation data" shown with their image patches and their deconvnet projections.

How it is built (:func:`build_index`)
    The split streams through the model in batches (a DataLoader whose
    workers read, hash, decode, :func:`deconvlab.data.resize_crop` and
    normalise). :func:`scan_values` runs the ``nn.Sequential`` children
    itself (no switches are recorded, unlike ``Net.forward``) and reduces
    each layer's activation to its max per unit and image; the argmax is
    taken (:func:`argmax_positions`) only for the few (unit, image) pairs that
    enter a top-k, which keeps the scan close to a plain forward pass. :class:`TopK`
    keeps fixed-shape arrays, as DeepVis's ``MaxTracker`` does: values
    ``[units, k]``, image index ``[units, k]``, position ``[units, k, 2]``,
    updated after every batch, so memory stays bounded whatever the data
    set's size. Order is deterministic: value descending, then image index
    ascending.

    Under ``torchrun --nproc_per_node N`` (one node or several) rank r scans
    batches ``r, r + N, r + 2N, ...`` of the listing (:func:`shard_batches`:
    no padding, no duplicates, unlike ``DistributedSampler``); the per-rank
    top-k are gathered and merged exactly (the global top-k is the top-k of
    the union of the ranks' top-k) and rank 0 writes the index. Because each
    batch holds the same images as in a one-process build, the builds are
    bit-identical for the same batch size, whatever the number of processes
    or loader workers. (A CPU convolution may round differently for another
    batch shape, so a different ``batch_size`` can change values in the last
    bit and, with them, the order of near-ties. Thread counts can matter for
    the same reason; the test runs one thread per process.)

How it is served (:class:`TopKIndex`)
    ``TopKIndex.open`` memory-maps the arrays and refuses a stale index
    (:class:`StaleIndexError` names the model hash or data listing that
    changed). ``patch`` crops the receptive field (``net.receptive_field``)
    from the model's input view of the image; ``projection`` is the
    point-seed deconvnet projection (``net.project_many``, all k entries of
    a unit in one batch) cropped to the same box. Both are computed on first
    request and kept in a bounded in-memory LRU cache.

FORMAT (version 1)
    An index is a folder; nothing in it is pickled.

    ``manifest.json``
        Written last, atomically (temp file + ``os.replace``): it is the
        commit point, and it names the array files of its build, so a
        reader never sees a half-written index. Keys: ``format``
        ("deconvlab-top-k"), ``version`` (1), ``build_id``, ``created``,
        ``k``, ``model`` {``name``, ``arch``, ``sha256`` (see
        :func:`model_sha256`), ``input_size``, ``mean``, ``std``},
        ``data`` {``root``, ``split``, ``listing_sha256``
        (:meth:`deconvlab.data.Split.listing_hash`), ``num_images``,
        ``class_ids``, ``labels``}, ``layers`` [{``name``, ``child``,
        ``kind`` ("conv" | "fc"), ``units``, ``shape``, ``offset``}] (rows
        ``offset .. offset+units`` of the entry arrays belong to that
        layer), ``arrays`` {role: file name}, ``build`` {``batch_size``,
        ``world_size``, ``images_per_s``, ``wall_s``}.
    Entry arrays, one row per unit of every layer in layer order (``.npy``):
        ``values``   float32 [U, k]     the unit's max over positions, rank order
        ``image``    int64   [U, k]     index into the split's sorted listing; -1: empty slot
        ``position`` int32   [U, k, 2]  (y, x) of the max in the layer's map; -1 for fc and empty
        ``sha``      uint64  [U, k]     first 8 bytes (big-endian) of the image file's sha256
    Image table (``.npy``), the distinct images the entries name, sorted by index:
        ``images_index`` int64 [M], ``images_path`` unicode [M] (relative to
        the data root), ``images_target`` int64 [M] (class index).
    ``partial/``
        Checkpoints of a build in progress, one per rank: ``rank{r}-of-{w}.json``
        (batches done, hashes, settings) naming ``rank{r}-of-{w}-{n}.npz`` (the
        four entry arrays). Removed when the build commits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from ..data import Split, cache_dir, list_split, resize_crop, to_rgb
from ..nets import layer_map

FORMAT = "deconvlab-top-k"
VERSION = 1
ARRAY_ROLES = ("values", "image", "position", "sha")
TABLE_ROLES = ("images_index", "images_path", "images_target")
_MAX_IMAGES = 2**32 - 1  # image indices fit the low half of TopK's uint64 order key


class StaleIndexError(RuntimeError):
    """The index was built for other weights or another data listing; the message names which."""


# ------------------------------------------------------------------ hashes

def model_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state dict: every entry's name, dtype, shape and raw bytes, in order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha_prefix_hex(v: int) -> str:
    """The stored uint64 content-hash prefix as the first 16 hex digits of the sha256."""
    return f"{int(v):016x}"


# ------------------------------------------------------------------ scan

@dataclass
class LayerInfo:
    name: str  # paper name, e.g. "conv3"
    child: str  # the Sequential child whose output is read (e.g. "relu3")
    kind: str  # "conv" or "fc"
    units: int  # channels
    shape: tuple  # (C, H, W) or (C,)
    offset: int  # first row of this layer in the entry arrays


def index_layers(module: torch.nn.Sequential, input_size: int) -> list[LayerInfo]:
    """Every paper layer of ``module`` with its activation shape at ``input_size`` px."""
    lm = layer_map(module)
    if not lm:
        raise ValueError("the model has no conv*/fc* children to index (expected a named nn.Sequential)")
    p = next(module.parameters(), None)
    x = torch.zeros(1, 3, input_size, input_size, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    shapes = {}
    wanted = set(lm.values())
    was_training = module.training
    try:
        module.eval()
        with torch.inference_mode():
            for name, m in module.named_children():
                x = m(x)
                if name in wanted:
                    shapes[name] = tuple(x.shape[1:])
                    if len(shapes) == len(wanted):
                        break
    finally:
        module.train(was_training)
    out, off = [], 0
    for layer, child in lm.items():
        s = shapes[child]
        if len(s) not in (1, 3):
            raise ValueError(f"layer {layer}: expected an activation of shape (C, H, W) or (C,), got {s}")
        out.append(LayerInfo(layer, child, "conv" if len(s) == 3 else "fc", int(s[0]), s, off))
        off += int(s[0])
    return out


def scan_values(module: torch.nn.Sequential, x: torch.Tensor, layers: list[LayerInfo]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One batch through ``module``'s children: each unit's max over positions, and the maps.

    Returns ``values`` [B, U] (float32, on the CPU; the U units of all
    ``layers`` side by side in layer order) and the activation of each layer
    (kept so :func:`argmax_positions` can locate the few maxima that enter a
    top-k, instead of an argmax over every map). Stops after the last layer
    asked for; records no switches. Assumes ``module`` is in eval mode and
    ``x`` is normalised as the model expects.
    """
    by_child = {L.child: L for L in layers}
    last = layers[-1].child
    vals, acts = [], []
    for name, m in module.named_children():
        x = m(x)
        L = by_child.get(name)
        if L is not None:
            if x.dim() == 4:
                v = x.flatten(2).amax(dim=2)
            elif x.dim() == 2:
                v = x
            else:
                raise ValueError(f"layer {L.name}: expected a 2-D or 4-D activation, got {tuple(x.shape)}")
            vals.append(v.float())
            acts.append(x)
        if name == last:
            break
    return torch.cat(vals, 1).cpu(), acts


def argmax_positions(acts: list[torch.Tensor], layers: list[LayerInfo], units: np.ndarray,
                     images: np.ndarray) -> np.ndarray:
    """(y, x) of the first maximum (row-major) of unit ``units[i]`` (a row of the U units) in batch
    image ``images[i]``, from :func:`scan_values`' maps; (-1, -1) for fc units. [n, 2] int32."""
    out = np.full((len(units), 2), -1, dtype=np.int32)
    for L, a in zip(layers, acts):
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
    """One batch through ``module``'s children; each unit's max over positions and where it is.

    Returns ``values`` [B, U] (float32) and ``position`` [B, U, 2] (int32,
    (y, x) of the first maximum in row-major order; -1 for fc units), the U
    units of all ``layers`` side by side in layer order. Stops after the last
    layer asked for. Records no switches and keeps no activation beyond the
    one being reduced. Assumes ``module`` is in eval mode and ``x`` is
    normalised as the model expects.
    """
    by_child = {L.child: L for L in layers}
    last = layers[-1].child
    vals, poss = [], []
    for name, m in module.named_children():
        x = m(x)
        L = by_child.get(name)
        if L is not None:
            if x.dim() == 4:
                b, c, h, w = x.shape
                v, i = x.reshape(b, c, h * w).max(dim=2)
                pos = torch.stack((i // w, i % w), dim=2).to(torch.int32)
            elif x.dim() == 2:
                v = x
                pos = torch.full((x.shape[0], x.shape[1], 2), -1, dtype=torch.int32, device=x.device)
            else:
                raise ValueError(f"layer {L.name}: expected a 2-D or 4-D activation, got {tuple(x.shape)}")
            vals.append(v.float())
            poss.append(pos)
        if name == last:
            break
    return torch.cat(vals, 1).cpu(), torch.cat(poss, 1).cpu()


class TopK:
    """Fixed-shape top-k arrays over U units (DeepVis's ``MaxTracker``, all layers side by side).

    ``values`` [U, k] float32 (-inf when empty), ``image`` [U, k] int64 (-1
    when empty), ``position`` [U, k, 2] int32, ``sha`` [U, k] uint64. Each row
    is kept sorted by value descending, then image index ascending; a NaN
    value ranks as -inf. Callers add each image at most once.
    """

    def __init__(self, units: int, k: int):
        if k < 1:
            raise ValueError(f"k: expected a positive number of entries per unit, got {k}")
        self.k = k
        self.values = np.full((units, k), -np.inf, dtype=np.float32)
        self.image = np.full((units, k), -1, dtype=np.int64)
        self.position = np.full((units, k, 2), -1, dtype=np.int32)
        self.sha = np.zeros((units, k), dtype=np.uint64)

    @property
    def units(self) -> int:
        return self.values.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "image": self.image, "position": self.position, "sha": self.sha}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "TopK":
        t = cls.__new__(cls)
        t.values = np.ascontiguousarray(a["values"], dtype=np.float32)
        t.image = np.ascontiguousarray(a["image"], dtype=np.int64)
        t.position = np.ascontiguousarray(a["position"], dtype=np.int32)
        t.sha = np.ascontiguousarray(a["sha"], dtype=np.uint64)
        t.k = t.values.shape[1]
        if t.image.shape != t.values.shape or t.sha.shape != t.values.shape \
                or t.position.shape != t.values.shape + (2,):
            raise ValueError(f"top-k arrays disagree in shape: values {t.values.shape}, image {t.image.shape}, "
                             f"position {t.position.shape}, sha {t.sha.shape}")
        return t

    @staticmethod
    def _rank_key(values: np.ndarray) -> np.ndarray:
        # NaN ranks as -inf (still above an empty slot); -0.0 as +0.0
        return np.where(np.isnan(values), -np.inf, values).astype(np.float32) + np.float32(0)

    @classmethod
    def _order_key(cls, values: np.ndarray, image: np.ndarray) -> np.ndarray:
        """One uint64 per entry whose descending order is (value desc, image index asc, empty last):
        the value's float32 bits made order-preserving in the high half, ``2**32 - 1 - index``
        (0 for an empty slot) in the low half."""
        b = cls._rank_key(values).view(np.uint32).astype(np.uint64)
        hi = np.where(b >> np.uint64(31) == 1, b ^ np.uint64(0xFFFFFFFF), b | np.uint64(0x80000000))
        lo = np.where(image < 0, np.uint64(0), np.uint64(0xFFFFFFFF) - image.astype(np.uint64))
        return (hi << np.uint64(32)) | lo

    @classmethod
    def _order(cls, k: int, values, image) -> np.ndarray:
        """Rows of candidates [R, n] -> the columns of the first k of each by (value desc, image index asc)."""
        key = ~cls._order_key(values, image)  # ascending order of ~key = descending order of key
        if key.shape[1] > k:
            part = np.argpartition(key, k - 1, axis=1)[:, :k]
            return np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1), 1)
        return np.argsort(key, axis=1)

    @classmethod
    def _select(cls, k: int, values, image, position, sha) -> tuple:
        order = cls._order(k, values, image)
        return (np.take_along_axis(values, order, 1), np.take_along_axis(image, order, 1),
                np.take_along_axis(position, order[:, :, None], 1), np.take_along_axis(sha, order, 1))

    def update(self, values: np.ndarray, image: np.ndarray, position, sha: np.ndarray) -> None:
        """Add one batch: ``values`` [B, U], ``image`` [B], ``sha`` [B], and ``position`` either
        [B, U, 2] or a function ``(units, batch_rows) -> [n, 2]`` asked only for the entries kept.

        Only the units where some new image beats the current k-th entry are
        re-sorted, so a batch costs little once the arrays have filled.
        """
        b, u = values.shape
        if u != self.units:
            raise ValueError(f"expected activations of {self.units} units, got {u}")
        image = np.asarray(image, dtype=np.int64)
        if image.size and (image.min() < 0 or image.max() >= _MAX_IMAGES):
            raise ValueError(f"image indices: expected 0..{_MAX_IMAGES - 1}, got {image.min()}..{image.max()}")
        last = self._order_key(self.values[:, -1:], self.image[:, -1:])
        rows = np.flatnonzero((self._order_key(values.T, np.broadcast_to(image, (u, b))) > last).any(1))
        if rows.size == 0:
            return
        n, k = rows.size, self.k
        cand_v = np.concatenate([self.values[rows], values.T[rows].astype(np.float32)], 1)
        cand_i = np.concatenate([self.image[rows], np.broadcast_to(image, (n, b))], 1)
        cand_s = np.concatenate([self.sha[rows], np.broadcast_to(np.asarray(sha, np.uint64), (n, b))], 1)
        order = self._order(k, cand_v, cand_i)
        pos = np.take_along_axis(self.position[rows], np.minimum(order, k - 1)[:, :, None], 1)
        r_i, s_i = np.nonzero(order >= k)  # entries that come from this batch
        if r_i.size:
            units, cols = rows[r_i], order[r_i, s_i] - k
            pos[r_i, s_i] = position(units, cols) if callable(position) else position[cols, units]
        self.values[rows] = np.take_along_axis(cand_v, order, 1)
        self.image[rows] = np.take_along_axis(cand_i, order, 1)
        self.sha[rows] = np.take_along_axis(cand_s, order, 1)
        self.position[rows] = pos

    @classmethod
    def merge(cls, parts: Iterable["TopK"]) -> "TopK":
        """The exact top-k of the union of ``parts`` (disjoint image sets, e.g. one per rank)."""
        parts = list(parts)
        k = parts[0].k
        kept = cls._select(k, *(np.concatenate([getattr(p, r) for p in parts], 1) for r in ARRAY_ROLES))
        return cls.from_arrays(dict(zip(ARRAY_ROLES, kept)))


# ------------------------------------------------------------------ data

def _sha_u64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


class _SplitImages(torch.utils.data.Dataset):
    """Image ``i`` of a split as a normalised tensor, with its index and content-hash prefix.

    Runs in the DataLoader's workers: read the file once, hash its bytes,
    decode, resize the shorter side and centre-crop to ``size``, normalise.
    """

    def __init__(self, split: Split, size: int, mean, std):
        self.split, self.size = split, size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        i = int(i)
        path = self.split.path(i)
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.seek(0)
                rgb = to_rgb(im)
        except Exception as e:  # noqa: BLE001 -- name the file, keep the cause
            raise ValueError(f"cannot decode data-set image {self.split.files[i]}: {e}") from e
        a = np.asarray(resize_crop(rgb, self.size), dtype=np.float32) / 255.0  # as Net.preprocess does
        x = ((torch.from_numpy(a).permute(2, 0, 1) - self.mean) / self.std).contiguous()
        sha = np.uint64(_sha_u64(hashlib.sha256(data).digest())).view(np.int64)  # torch has no uint64
        return x, i, int(sha)


# ------------------------------------------------------------------ files

def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _atomic_npy(path: Path, a: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, a, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def default_index_path(model_name: str, data_root: str | Path, split: str = "val") -> Path:
    """``cache_dir()/index/<model>-<split>-<hash of the data root's absolute path>``."""
    root = str(Path(data_root).resolve())
    tag = hashlib.sha256(root.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (model_name or "model"))
    return cache_dir() / "index" / f"{safe}-{split}-{tag}"


def _manifest_path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.name == "manifest.json" else p / "manifest.json"


# ------------------------------------------------------------------ build

def _net_parts(net):
    """(module, meta, device) of a ``Net`` (or a model name/path, loaded with ``deconvlab.load``)."""
    if isinstance(net, (str, Path)):
        from .. import load
        net = load(str(net))
    module, meta = net.module, net.meta
    device = getattr(net, "device", None)
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    return module, meta, torch.device(device)


class _Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.owned = False
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        if dist.is_available() and not dist.is_initialized() and ws > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # the collectives use the rank's own GPU
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def gather(self, obj) -> list:
        if not self.on:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.on:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()


def shard_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Rank ``rank``'s batches: batches ``rank, rank + world, ...`` of ``0..n-1`` cut in ``batch_size``.

    Every image is in exactly one batch of one rank (no padding, no repeats,
    unlike ``DistributedSampler``), and each batch holds the same images as in
    a one-process build, so the numbers (which a CPU convolution may compute
    differently for different batch shapes) are bit-identical too.
    """
    return [list(range(s, min(s + batch_size, n))) for s in range(rank * batch_size, n, world * batch_size)]


def build_index(net, data_root: str | Path, split: str = "val", out: str | Path | None = None, k: int = 9,
                batch_size: int = 64, workers: int | None = None, checkpoint_every: int = 20,
                progress: bool = True, on_batch: Callable[[int], None] | None = None) -> Path:
    """Scan one split of ``data_root`` and write its top-``k`` index; returns the index folder.

    ``net`` is a :class:`deconvlab.net.Net` (anything with ``module``, ``meta``
    and ``device``) or a model name/path. ``out`` defaults to
    :func:`default_index_path`. A checkpoint is written every
    ``checkpoint_every`` batches; a build that finds a matching checkpoint
    (same weights, listing, k, batch size, world size) resumes after it.
    ``on_batch(batches_done)`` is called after every batch (and after its
    checkpoint), e.g. to report or to stop. Under torchrun the ranks shard
    the split, their top-k are merged exactly and rank 0 writes.
    """
    t0 = time.perf_counter()
    module, meta, device = _net_parts(net)
    if k < 1:
        raise ValueError(f"k: expected a positive number of entries per unit, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number, got {batch_size}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected a positive number of batches, got {checkpoint_every}")
    sp = list_split(data_root, split)
    if len(sp) == 0:
        raise ValueError(f"{Path(data_root) / split} holds no images")
    name = getattr(meta, "name", "") or "model"
    out = Path(out) if out is not None else default_index_path(name, data_root, split)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a folder for the index, got the file {out}")
    size = int(meta.input_size)
    layers = index_layers(module, size)
    units = sum(L.units for L in layers)
    msha, lsha = model_sha256(module), sp.listing_hash()
    dist = _Dist(device)
    try:
        rank, world = dist.rank, dist.world
        batches = shard_batches(len(sp), batch_size, rank, world)
        n_mine = sum(len(b) for b in batches)
        out.mkdir(parents=True, exist_ok=True)
        part_dir = out / "partial"
        part_dir.mkdir(exist_ok=True)
        ck_json = part_dir / f"rank{rank}-of-{world}.json"
        settings = {"format": FORMAT + "-checkpoint", "version": VERSION, "model_sha256": msha,
                    "listing_sha256": lsha, "split": split, "k": k, "batch_size": batch_size,
                    "rank": rank, "world_size": world, "units": units,
                    "layers": [L.name for L in layers], "input_size": size}
        tk, done = TopK(units, k), 0
        if ck_json.is_file():
            ck = json.loads(ck_json.read_text())
            if {kk: ck.get(kk) for kk in settings} == settings and (part_dir / ck["arrays"]).is_file():
                with np.load(part_dir / ck["arrays"], allow_pickle=False) as z:
                    tk = TopK.from_arrays({r: z[r] for r in ARRAY_ROLES})
                done = int(ck["batches_done"])
                if progress and rank == 0:
                    print(f"index: resuming {out} after {done} of {len(batches)} batches", flush=True)
        ds = _SplitImages(sp, size, meta.mean, meta.std)
        nw = min(2, os.cpu_count() or 1) if workers is None else workers
        loader = torch.utils.data.DataLoader(ds, batch_sampler=batches[done:], num_workers=nw,
                                             pin_memory=device.type == "cuda")
        from tqdm import tqdm

        bar = tqdm(total=n_mine, initial=sum(len(b) for b in batches[:done]), unit="img",
                   desc=f"index {name} {split}" + (f" (rank 0 of {world})" if world > 1 else ""),
                   disable=not progress or rank != 0, dynamic_ncols=True)
        scanned, t_scan = 0, time.perf_counter()
        was_training = module.training
        module.eval()
        try:
            with torch.inference_mode():
                for x, idx, sha in loader:
                    v, acts = scan_values(module, x.to(device, non_blocking=True), layers)
                    tk.update(v.numpy(), idx.numpy(), partial(argmax_positions, acts, layers),
                              sha.numpy().view(np.uint64))
                    del acts  # the maps of this batch
                    done += 1
                    scanned += len(idx)
                    bar.update(len(idx))
                    if done % checkpoint_every == 0 and done < len(batches):
                        _save_checkpoint(part_dir, ck_json, settings, tk, done)
                    if on_batch is not None:
                        on_batch(done)
        finally:
            module.train(was_training)
            bar.close()
        ips = scanned / max(time.perf_counter() - t_scan, 1e-9)
        parts = dist.gather({"arrays": tk.arrays(), "model_sha256": msha, "listing_sha256": lsha,
                             "images_per_s": ips})
        for r, p in enumerate(parts):
            if p["model_sha256"] != msha or p["listing_sha256"] != lsha:
                raise RuntimeError(f"rank {r} sees other weights or another data listing than rank {rank}")
        if rank == 0:
            merged = TopK.merge(TopK.from_arrays(p["arrays"]) for p in parts) if world > 1 else tk
            _write_index(out, merged, layers, meta, sp, msha, lsha, k,
                         {"batch_size": batch_size, "world_size": world,
                          "images_per_s": round(sum(p["images_per_s"] for p in parts), 2),
                          "wall_s": round(time.perf_counter() - t0, 3)})
        dist.barrier()
        _remove_file(ck_json)
        dist.barrier()
        if rank == 0:
            _clean(out)
        return out
    finally:
        dist.close()


def _save_checkpoint(part_dir: Path, ck_json: Path, settings: dict, tk: TopK, done: int) -> None:
    name = f"{ck_json.stem}-{done}.npz"
    _atomic_npz(part_dir / name, tk.arrays())
    _atomic_json(ck_json, dict(settings, batches_done=done, arrays=name))
    for old in part_dir.glob(f"{ck_json.stem}-*.npz"):  # older checkpoints of this rank
        if old.name != name:
            _remove_file(old)


def _remove_file(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _write_index(out: Path, tk: TopK, layers: list[LayerInfo], meta, sp: Split, msha: str, lsha: str,
                 k: int, build: dict) -> None:
    bid = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    files = {}
    for role, a in tk.arrays().items():
        files[role] = f"{role}-{bid}.npy"
        _atomic_npy(out / files[role], a)
    used = np.unique(tk.image[tk.image >= 0])
    table = {"images_index": used.astype(np.int64),
             "images_path": np.array([sp.files[i] for i in used], dtype=str) if len(used) else np.array([], "<U1"),
             "images_target": np.array([sp.targets[i] for i in used], dtype=np.int64)}
    for role, a in table.items():
        files[role] = f"{role}-{bid}.npy"
        _atomic_npy(out / files[role], a)
    manifest = {
        "format": FORMAT, "version": VERSION, "build_id": bid,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "k": k,
        "model": {"name": getattr(meta, "name", ""), "arch": getattr(meta, "arch", ""), "sha256": msha,
                  "input_size": int(meta.input_size), "mean": list(meta.mean), "std": list(meta.std)},
        "data": {"root": str(Path(sp.root).resolve()), "split": sp.name, "listing_sha256": lsha,
                 "num_images": len(sp), "class_ids": list(sp.class_ids), "labels": list(sp.labels)},
        "layers": [{"name": L.name, "child": L.child, "kind": L.kind, "units": L.units,
                    "shape": list(L.shape), "offset": L.offset} for L in layers],
        "arrays": files, "build": build,
    }
    _atomic_json(_manifest_path(out), manifest)


def _clean(out: Path) -> None:
    """Remove array files of earlier builds and an empty ``partial/`` (the manifest names the live ones)."""
    try:
        live = set(json.loads(_manifest_path(out).read_text())["arrays"].values())
    except (OSError, ValueError, KeyError):
        return
    for role in ARRAY_ROLES + TABLE_ROLES:
        for f in out.glob(f"{role}-*.npy"):
            if f.name not in live:
                _remove_file(f)
    part = out / "partial"
    if part.is_dir() and not any(part.glob("*.json")):
        for f in part.glob("*.npz"):
            _remove_file(f)
        try:
            part.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------ serve

class TopKIndex:
    """A built index, memory-mapped; entries, image paths, patches and projections of each unit."""

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray], split: Split | None,
                 net=None, cache_bytes: int = 256 << 20):
        self.path, self.manifest, self.net = path, manifest, net
        self._a = arrays
        self._split = split
        self._layers = {d["name"]: d for d in manifest["layers"]}
        self._cache: "OrderedDict[tuple, dict]" = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes
        self._lock = threading.RLock()

    # ---- opening
    @classmethod
    def read_manifest(cls, path: str | Path) -> dict:
        mp = _manifest_path(path)
        if not mp.is_file():
            raise FileNotFoundError(f"no top-k index at {Path(path)} (expected {mp}); "
                                    f"build one with `deconvlab index`")
        m = json.loads(mp.read_text())
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise ValueError(f"{mp}: expected a {FORMAT} index of version {VERSION}, "
                             f"got format {m.get('format')!r} version {m.get('version')!r}")
        return m

    @classmethod
    def staleness(cls, manifest: dict, net=None, split: Split | None = None) -> str | None:
        """Why the index no longer matches ``net``/``split`` (a sentence), or None when it does."""
        why = []
        if net is not None:
            module = net.module if hasattr(net, "module") else net
            now = model_sha256(module)
            if now != manifest["model"]["sha256"]:
                why.append(f"the model's weights changed (index built for model "
                           f"{manifest['model']['name']!r} sha256 {manifest['model']['sha256'][:12]}, "
                           f"the model now has sha256 {now[:12]})")
            size = getattr(getattr(net, "meta", None), "input_size", None)
            if size is not None and int(size) != manifest["model"]["input_size"]:
                why.append(f"the model's input size changed (index: {manifest['model']['input_size']} px, "
                           f"model: {size} px)")
        if split is not None:
            now = split.listing_hash()
            if now != manifest["data"]["listing_sha256"]:
                why.append(f"the data-set listing changed ({split.root / split.name}: index built for "
                           f"{manifest['data']['num_images']} images with listing sha256 "
                           f"{manifest['data']['listing_sha256'][:12]}, now {len(split)} images with "
                           f"listing sha256 {now[:12]})")
        return "; ".join(why) or None

    @classmethod
    def open(cls, path: str | Path, net=None, data_root: str | Path | None = None,
             cache_bytes: int = 256 << 20) -> "TopKIndex":
        """Memory-map the index at ``path``; refuse it (``StaleIndexError``) when it no longer matches.

        ``net`` (needed for boxes, patches and projections) is checked against
        the model hash, ``data_root`` (default: the root recorded at build
        time) against the listing hash. ``FileNotFoundError`` when missing.
        """
        path = Path(path)
        m = cls.read_manifest(path)
        root = Path(data_root) if data_root is not None else Path(m["data"]["root"])
        split = list_split(root, m["data"]["split"])
        why = cls.staleness(m, net, split)
        if why:
            raise StaleIndexError(f"stale top-k index at {_manifest_path(path).parent}: {why}; "
                                  f"rebuild it with `deconvlab index`")
        d = _manifest_path(path).parent
        arrays = {}
        for role in ARRAY_ROLES + TABLE_ROLES:
            f = d / m["arrays"][role]
            if not f.is_file():
                raise FileNotFoundError(f"top-k index at {d} is incomplete: {f.name} is missing")
            arrays[role] = np.load(f, mmap_mode="r" if role in ARRAY_ROLES else None, allow_pickle=False)
        return cls(d, m, arrays, split, net, cache_bytes)

    # ---- what it holds
    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def layers(self) -> list[str]:
        return [d["name"] for d in self.manifest["layers"]]

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
        if layer not in self._layers:
            raise KeyError(f"unknown layer: expected one of {self.layers}, got {layer!r}")
        return self._layers[layer]

    def _row(self, layer: str, unit: int) -> int:
        d = self.layer_info(layer)
        if not isinstance(unit, (int, np.integer)) or isinstance(unit, bool) or not 0 <= unit < d["units"]:
            raise ValueError(f"unit: expected an integer in 0..{d['units'] - 1} for layer {layer}, got {unit!r}")
        return d["offset"] + int(unit)

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
        r = self._row(layer, unit)
        kind = self._layers[layer]["kind"]
        values, image = self._a["values"][r], self._a["image"][r]
        position, sha = self._a["position"][r], self._a["sha"][r]
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
        t, l, b, r = (int(v) for v in self.net.receptive_field(layer, position[0], position[1]))
        return max(t, 0), max(l, 0), min(b, s), min(r, s)

    # ---- patches and projections (cached per unit)
    def _entry(self, layer: str, unit: int, rank: int) -> dict:
        e = self.entries(layer, unit)
        self._check_rank(rank, len(e))
        return e[rank]

    def _unit(self, layer: str, unit: int, projections: bool) -> dict:
        key = (layer, int(unit))
        with self._lock:
            item = self._cache.get(key)
            if item is None:
                entries = self.entries(layer, unit)
                if any(e["box"] is None for e in entries):
                    raise ValueError("patches need the model's receptive fields: open the index with net=")
                views = [self._view(e["image_index"]) for e in entries]
                item = {"entries": entries, "views": views, "proj": None,
                        "nbytes": sum(v.width * v.height * 3 for v in views)}
                self._put(key, item)
            else:
                self._cache.move_to_end(key)
            if projections and item["proj"] is None:
                item["proj"] = self._project(layer, unit, item["entries"], item["views"])
                extra = sum(p.nbytes for p in item["proj"])
                item["nbytes"] += extra
                self._cache_bytes += extra
                self._evict()
            return item

    def clear_cache(self) -> None:
        """Forget every cached patch and projection (the next request is cold)."""
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    def _put(self, key, item) -> None:
        self._cache[key] = item
        self._cache_bytes += item["nbytes"]
        self._evict()

    def _evict(self) -> None:
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old["nbytes"]

    def _view(self, image_index: int) -> Image.Image:
        """The model's input view of a data-set image (RGB, input_size x input_size)."""
        from ..data import load_rgb

        return resize_crop(load_rgb(self.image_path(image_index)), int(self.manifest["model"]["input_size"]))

    def _project(self, layer: str, unit: int, entries: list[dict], views: list[Image.Image]) -> list[np.ndarray]:
        if self.net is None:
            raise ValueError("projections need the model: open the index with net=")
        if not entries:
            return []
        x = torch.cat([self.net.preprocess(v) for v in views], 0)
        rec = self.net.forward(x, upto=layer)  # a point seed at ``layer`` needs nothing above it
        seeds = [(layer, int(unit), e["position"], i) for i, e in enumerate(entries)]
        p = self.net.project_many(rec, seeds, method="deconv", seed="point")
        p = p.detach().float().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p, np.float32)
        out = []
        for i, e in enumerate(entries):
            t, l, b, r = e["box"]
            out.append(np.ascontiguousarray(p[i, :, t:b, l:r], dtype=np.float32))
        return out

    def iter_projections(self, layers: Iterable[str] | None = None, units_per_batch: int = 8,
                         views: int = 512):
        """Yield ``(layer, unit, [k projections])`` for every unit of ``layers`` (default: all),
        ``units_per_batch`` units per forward pass and ``project_many`` call (the images of a
        Fig. 2 atlas); bypasses the unit cache, keeps at most ``views`` decoded images."""
        if self.net is None:
            raise ValueError("projections need the model: open the index with net=")
        cache: "OrderedDict[int, Image.Image]" = OrderedDict()

        def view(i: int) -> Image.Image:
            if i in cache:
                cache.move_to_end(i)
            else:
                cache[i] = self._view(i)
                if len(cache) > views:
                    cache.popitem(last=False)
            return cache[i]

        for layer in (self.layers if layers is None else list(layers)):
            n = self.layer_info(layer)["units"]
            for start in range(0, n, units_per_batch):
                group = [(u, self.entries(layer, u)) for u in range(start, min(start + units_per_batch, n))]
                flat = [(u, e) for u, es in group for e in es]
                if not flat:
                    continue
                x = torch.cat([self.net.preprocess(view(e["image_index"])) for _, e in flat], 0)
                rec = self.net.forward(x, upto=layer)
                p = self.net.project_many(rec, [(layer, u, e["position"], i) for i, (u, e) in enumerate(flat)],
                                          method="deconv", seed="point").detach().float().cpu().numpy()
                i = 0
                for u, es in group:
                    out = []
                    for e in es:
                        t, l, b, r = e["box"]
                        out.append(np.ascontiguousarray(p[i, :, t:b, l:r]))
                        i += 1
                    yield layer, u, out

    def patch(self, layer: str, unit: int, rank: int) -> Image.Image:
        """RGB receptive-field crop of the model's input view of entry ``rank``'s image."""
        item = self._unit(layer, unit, projections=False)
        self._check_rank(rank, len(item["entries"]))
        t, l, b, r = item["entries"][rank]["box"]
        return item["views"][rank].crop((l, t, r, b))

    def projection(self, layer: str, unit: int, rank: int) -> np.ndarray:
        """float32 3xhxw point-seed deconvnet projection of entry ``rank``, cropped to its box."""
        item = self._unit(layer, unit, projections=True)
        self._check_rank(rank, len(item["entries"]))
        return item["proj"][rank]

    def projections(self, layer: str, unit: int) -> list[np.ndarray]:
        """All of the unit's projections (one batch)."""
        return list(self._unit(layer, unit, projections=True)["proj"])


# ------------------------------------------------------------------ open or build

def index_status(path: str | Path, net=None, data_root: str | Path | None = None) -> str:
    """"ready", "missing" or "stale: <why>" (the strings of ``GET /api/ready``)."""
    try:
        m = TopKIndex.read_manifest(path)
    except FileNotFoundError:
        return "missing"
    except ValueError as e:
        return f"stale: {e}"
    try:
        split = list_split(data_root if data_root is not None else m["data"]["root"], m["data"]["split"])
    except FileNotFoundError as e:
        return f"stale: {e}"
    why = TopKIndex.staleness(m, net, split)
    return f"stale: {why}" if why else "ready"


def open_or_build(net, data_root: str | Path, split: str = "val", out: str | Path | None = None, k: int = 9,
                  rebuild_stale: bool = True, **build_kw) -> TopKIndex:
    """Open the index at ``out`` (default :func:`default_index_path`), building it when missing
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
