"""The server's side of ``deconvlab.compare``: second networks, image subsets and stored results (issue 16).

=====================================  ============================================================
what                                   rule
=====================================  ============================================================
the second network ("other")           a served model (``state.slot``), or one of its training
                                       snapshots (``analyses.evolution.snapshot_paths``), loaded on
                                       the served model's device and kept (``SNAPSHOTS`` of them)
the images                             the first ``n`` of ``default_rng(seed).permutation`` of the
                                       data set (the evolution routes' draw), each net reading them
                                       at its own input size, mean and std
a result (a correlation matrix of      computed once on the inference thread (cost: n x 2 passes;
two layers, a CKA matrix)              stops between batches when its client goes), then kept in
                                       memory (``KEEP``) and as ``<state_dir>/compare/<key>.npz``
the key                                sha256 of both models' weights (``index.model_sha256``, once
                                       per loaded net), the data listing, ``n``, ``seed``, the kind,
                                       the layers and the rule
disk                                   the folder is bounded on its own by
                                       ``DECONVLAB_DISK_CACHE_BYTES`` (``disk_cache.DiskCache``),
                                       least recently used first out
=====================================  ============================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .disk_cache import DiskCache
from .errors import NotFound, echo

KEEP = 32  # results kept in memory
SNAPSHOTS = 4  # snapshot nets kept in memory


class Other:
    """The second network of a comparison: its id, epoch (None: the served model), Net and slot."""

    def __init__(self, name: str, epoch: int | None, net, slot):
        self.name, self.epoch, self.net, self.slot = name, epoch, net, slot
        self.info = net.layer_info()

    def layer(self, layer: str) -> dict:
        for d in self.info:
            if d["name"] == layer:
                return d
        where = self.name if self.epoch is None else f"{self.name} (epoch {self.epoch})"
        raise NotFound(f"unknown other_layer: {echo(layer)} (model {where!r} has "
                       f"{', '.join(d['name'] for d in self.info)})")


class CompareCache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.disk = DiskCache(self.root.parent, max_bytes, (self.root.name,))
        self._results: "OrderedDict[str, dict]" = OrderedDict()
        self._snapshots: "OrderedDict[tuple, object]" = OrderedDict()
        self._sha = weakref.WeakKeyDictionary()  # net -> sha256 of its weights (nets are not changed)
        self._listing: dict[int, tuple] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- the second network
    def snapshot_epochs(self, state, name: str) -> dict[int, Path]:
        from ..analyses.evolution import snapshot_paths

        try:
            return dict(snapshot_paths(name, state.settings.models_path()))
        except (FileNotFoundError, KeyError):
            return {}

    async def other(self, state, name: str, epoch: int | None) -> Other:
        """The served model ``name`` (404 ``other: unknown model``), or its snapshot ``epoch`` (404 when none)."""
        try:
            slot = state.slot(name)
        except NotFound as e:
            raise NotFound(f"other: {e.detail}") from None
        if epoch is None:
            return Other(name, None, slot.net, slot)
        paths = self.snapshot_epochs(state, name)
        if epoch not in paths:
            raise NotFound(f"unknown epoch: {echo(epoch)} (model {name!r} has training snapshots at "
                           f"{sorted(paths) or 'no epoch'})")
        key = (name, epoch)
        net = self._snapshots.get(key)
        if net is None:
            net = await state.runner.run(_load_snapshot, paths[epoch], slot.net.device, f"{name}@{epoch}")
            self._snapshots[key] = net
            while len(self._snapshots) > SNAPSHOTS:
                self._snapshots.popitem(last=False)
        self._snapshots.move_to_end(key)
        return Other(name, epoch, net, None)

    # ---- keys
    def sha(self, net) -> str:
        from ..index.store import model_sha256

        got = self._sha.get(net)
        if got is None:
            got = self._sha[net] = model_sha256(net)
        return got

    def listing(self, split) -> str:
        got = self._listing.get(id(split))
        if got is None or got[0] is not split:
            got = self._listing[id(split)] = (split, split.listing_hash())
        return got[1]

    def key(self, net_a, net_b, split, n: int, seed: int, *parts) -> str:
        h = hashlib.sha256()
        for p in (self.sha(net_a), self.sha(net_b), self.listing(split), n, seed, *parts):
            h.update(f"{p!r}|".encode())
        return h.hexdigest()

    # ---- results
    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def get(self, key: str) -> dict | None:
        if key in self._results:
            self._results.move_to_end(key)
            return self._results[key]
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None
        self.disk.touch(path)
        return self._keep(key, found)

    def _keep(self, key: str, arrays: dict) -> dict:
        self._results[key] = arrays
        while len(self._results) > KEEP:
            self._results.popitem(last=False)
        return arrays

    def put(self, key: str, arrays: dict) -> dict:
        from .._util import atomic_npz

        self.root.mkdir(parents=True, exist_ok=True)
        path = atomic_npz(self._path(key), arrays)
        self.disk.touch(path)
        return self._keep(key, arrays)

    async def get_or_compute(self, state, key: str, compute, cost: int, request=None) -> dict:
        """The stored result of ``key``, else ``compute()`` run on the inference thread (one at a time per key)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self.get(key)
            if found is None:
                found = self.put(key, await state.runner.run(compute, cost=cost, request=request))
        if not lock.locked():
            self._locks.pop(key, None)
        return found


def _load_snapshot(path: Path, device, name: str):
    from ..net import Net
    from ..nets import load_checkpoint

    module, meta = load_checkpoint(path)
    meta.name = name
    return Net(module, meta, device=device)


def cache_of(state) -> CompareCache:
    """The app's ``CompareCache``, made on first use (under ``state_dir/compare``)."""
    cache = getattr(state, "compare_cache", None)
    if cache is None:
        with state.lock:
            cache = getattr(state, "compare_cache", None)
            if cache is None:
                cache = CompareCache(state.settings.state_path() / "compare", state.settings.disk_cache_bytes)
                state.compare_cache = cache
    return cache


def subset(split, n: int, seed: int) -> np.ndarray:
    """The first ``n`` of the seeded permutation of the data set (the evolution routes' draw), sorted."""
    return np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
