"""The top-k index on disk: its file format, atomic commits, and staleness.

FORMAT (version 1)
    An index is a folder; nothing in it is pickled.

    ``manifest.json``
        Written last, atomically (temp file + ``os.replace``,
        :func:`deconvlab._util.atomic_json`): it is the commit point, and it
        names the array files of its build, so a reader never sees a
        half-written index. Keys: ``format`` ("deconvlab-top-k"), ``version``
        (1), ``build_id``, ``created``, ``k``, ``model`` {``name``, ``arch``,
        ``sha256`` (see :func:`model_sha256`), ``input_size``, ``mean``,
        ``std``}, ``data`` {``root``, ``split``, ``listing_sha256``
        (:meth:`deconvlab.data.Split.listing_hash`), ``num_images``,
        ``class_ids``, ``labels``}, ``layers`` [{``name``, ``child``, ``kind``
        ("conv" | "fc"), ``units``, ``shape``, ``offset``[, ``aliases``]}] (rows
        ``offset .. offset+units`` of the entry arrays belong to that layer;
        ``child`` is a graph net's fx node; ``aliases``, graph nets only: the
        other layer names of that node, which readers accept too), ``arrays``
        {role: file name}, ``build`` {``batch_size``, ``world_size``,
        ``images_per_s``, ``wall_s``}.
    Entry arrays, one row per unit of every layer in layer order (``.npy``; :mod:`.tracker`):
        ``values``   float32 [U, k]     the unit's max over positions, rank order
        ``image``    int64   [U, k]     index into the split's sorted listing; -1: empty slot
        ``position`` int32   [U, k, 2]  (y, x) of the max in the layer's map; -1 for fc and empty
        ``sha``      uint64  [U, k]     first 8 bytes (big-endian) of the image file's sha256
    Image table (``.npy``), the distinct images the entries name, sorted by index:
        ``images_index`` int64 [M], ``images_path`` unicode [M] (relative to
        the data root), ``images_target`` int64 [M] (class index).
    ``partial/``
        Checkpoints of a build in progress, one per rank (:mod:`.build`):
        ``rank{r}-of-{w}.json`` (batches done, hashes, settings) naming
        ``rank{r}-of-{w}-{n}.npz`` (the four entry arrays). Removed when the
        build commits.

Staleness
    An index belongs to one set of weights and one data listing. :func:`staleness`
    says in a sentence what no longer matches (the model's sha256, its input
    size, the listing's sha256 and size); readers refuse a stale index
    (:class:`StaleIndexError`, whose ``why`` is that sentence).

Errors: no manifest is a ``FileNotFoundError`` ("no top-k index at ...");
another format or version a ``ValueError`` ("expected a deconvlab-top-k index
of version 1, got ..."); a manifest naming a missing array file a
``FileNotFoundError`` ("... is incomplete: ... is missing").
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from .._util import atomic_json, atomic_npy
from ..data import Split, cache_dir
from .scan import LayerInfo
from .tracker import ARRAY_ROLES, TopK

__all__ = ["FORMAT", "VERSION", "ARRAY_ROLES", "TABLE_ROLES", "StaleIndexError", "model_sha256", "sha_prefix_hex",
           "default_index_path", "manifest_path", "read_manifest", "staleness", "read_arrays", "write_index",
           "remove_old_files", "remove_file"]

FORMAT = "deconvlab-top-k"
VERSION = 1
TABLE_ROLES = ("images_index", "images_path", "images_target")


class StaleIndexError(RuntimeError):
    """The index was built for other weights or another data listing; the message names which.

    ``why`` is the reason alone (the sentence of :func:`staleness`)."""

    def __init__(self, message: str, why: str | None = None):
        super().__init__(message)
        self.why = why or message


# ------------------------------------------------------------------ hashes

def model_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state dict: every entry's name, dtype, shape and raw bytes, in order.

    Any module: a ``Net`` is read through its ``module``; a tensor of any dtype (bfloat16,
    bool) by its bytes, a sparse or quantized one through its dense float value, a
    non-tensor entry (a module's ``get_extra_state``) by its ``repr``."""
    module = getattr(module, "module", module)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected an nn.Module or a Net, got {type(module).__name__}")
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        if not isinstance(t, torch.Tensor):
            h.update(f"extra:{t!r}".encode())
            continue
        t = t.detach()
        if t.is_quantized:
            t = t.dequantize()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha_prefix_hex(v: int) -> str:
    """The stored uint64 content-hash prefix as the first 16 hex digits of the sha256."""
    return f"{int(v):016x}"


# ------------------------------------------------------------------ where

def default_index_path(model_name: str, data_root: str | Path, split: str = "val") -> Path:
    """``cache_dir()/index/<model>-<split>-<hash of the data root's absolute path>``."""
    root = str(Path(data_root).resolve())
    tag = hashlib.sha256(root.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (model_name or "model"))
    return cache_dir() / "index" / f"{safe}-{split}-{tag}"


def manifest_path(path: str | Path) -> Path:
    """The manifest of the index folder ``path`` (or ``path`` itself when it names the manifest)."""
    p = Path(path)
    return p if p.name == "manifest.json" else p / "manifest.json"


# ------------------------------------------------------------------ reading

def read_manifest(path: str | Path) -> dict:
    """The manifest of the index at ``path``, checked for format and version."""
    file = manifest_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no top-k index at {Path(path)} (expected {file}); "
                                f"build one with `deconvlab index`")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{file}: expected a {FORMAT} index of version {VERSION}, "
                         f"got format {manifest.get('format')!r} version {manifest.get('version')!r}")
    return manifest


def staleness(manifest: dict, net=None, split: Split | None = None) -> str | None:
    """Why the index no longer matches ``net``/``split`` (a sentence), or None when it does."""
    why = []
    model = manifest["model"]
    if net is not None:
        module = net.module if hasattr(net, "module") else net
        now = model_sha256(module)
        if now != model["sha256"]:
            why.append(f"the model's weights changed (index built for model {model['name']!r} sha256 "
                       f"{model['sha256'][:12]}, the model now has sha256 {now[:12]})")
        size = getattr(getattr(net, "meta", None), "input_size", None)
        if size is not None and int(size) != model["input_size"]:
            why.append(f"the model's input size changed (index: {model['input_size']} px, model: {size} px)")
    if split is not None:
        data = manifest["data"]
        now = split.listing_hash()
        if now != data["listing_sha256"]:
            why.append(f"the data-set listing changed ({split.root / split.name}: index built for "
                       f"{data['num_images']} images with listing sha256 {data['listing_sha256'][:12]}, "
                       f"now {len(split)} images with listing sha256 {now[:12]})")
    return "; ".join(why) or None


def read_arrays(folder: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The entry arrays (memory-mapped) and the image table (loaded) that ``manifest`` names."""
    arrays = {}
    for role in ARRAY_ROLES + TABLE_ROLES:
        f = folder / manifest["arrays"][role]
        if not f.is_file():
            raise FileNotFoundError(f"top-k index at {folder} is incomplete: {f.name} is missing")
        arrays[role] = np.load(f, mmap_mode="r" if role in ARRAY_ROLES else None, allow_pickle=False)
    return arrays


# ------------------------------------------------------------------ writing

def _layer_entry(L: LayerInfo, aliases: dict) -> dict:
    entry = {"name": L.name, "child": L.child, "kind": L.kind, "units": L.units, "shape": list(L.shape),
             "offset": L.offset}
    if aliases.get(L.name):
        entry["aliases"] = list(aliases[L.name])
    return entry


def _manifest(build_id: str, tracker: TopK, layers: list[LayerInfo], meta, split: Split, model_sha: str,
              listing_sha: str, files: dict, build: dict, aliases: dict | None = None) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "build_id": build_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "k": tracker.k,
        "model": {"name": getattr(meta, "name", ""), "arch": getattr(meta, "arch", ""), "sha256": model_sha,
                  "input_size": int(meta.input_size), "mean": list(meta.mean), "std": list(meta.std)},
        "data": {"root": str(Path(split.root).resolve()), "split": split.name, "listing_sha256": listing_sha,
                 "num_images": len(split), "class_ids": list(split.class_ids), "labels": list(split.labels)},
        "layers": [_layer_entry(L, aliases or {}) for L in layers],
        "arrays": files, "build": build,
    }


def write_index(out: Path, tracker: TopK, layers: list[LayerInfo], meta, split: Split, model_sha: str,
                listing_sha: str, build: dict, aliases: dict | None = None) -> None:
    """Write ``tracker``'s arrays and the image table under fresh names, then commit the manifest."""
    build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    used = np.unique(tracker.image[tracker.image >= 0])
    table = {"images_index": used.astype(np.int64),
             "images_path": np.array([split.files[i] for i in used], dtype=str) if len(used)
             else np.array([], "<U1"),
             "images_target": np.array([split.targets[i] for i in used], dtype=np.int64)}
    files = {}
    for role, a in {**tracker.arrays(), **table}.items():
        files[role] = f"{role}-{build_id}.npy"
        atomic_npy(out / files[role], a)
    atomic_json(manifest_path(out), _manifest(build_id, tracker, layers, meta, split, model_sha, listing_sha,
                                              files, build, aliases))


def remove_file(p: Path) -> None:
    """Remove ``p`` if it is there."""
    Path(p).unlink(missing_ok=True)


def remove_old_files(out: Path) -> None:
    """Remove array files of earlier builds and an empty ``partial/`` (the manifest names the live ones)."""
    try:
        live = set(json.loads(manifest_path(out).read_text())["arrays"].values())
    except (OSError, ValueError, KeyError):
        return
    for role in ARRAY_ROLES + TABLE_ROLES:
        for f in out.glob(f"{role}-*.npy"):
            if f.name not in live:
                remove_file(f)
    part = out / "partial"
    if part.is_dir() and not any(part.glob("*.json")):
        for f in part.glob("*.npz"):
            remove_file(f)
        try:
            part.rmdir()
        except OSError:
            pass
