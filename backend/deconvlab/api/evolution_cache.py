"""The server's scans of the training snapshots (Fig. 4): one per model and seed, shared by every ``n``.

A request asks for the strongest activation over ``n`` data-set images drawn
with ``seed``. Here the draw is NESTED: the images are the first ``n`` of one
seeded permutation of the data set, cut at ``evolution_max_n``. So one scan,
for a model, its snapshots, the data set and the seed, serves every ``n``: it
reads the permutation in order, and the per-unit maxima after the first
``n`` rows (``SnapshotScan``: O(units) each) are kept as that ``n``'s
checkpoint. Asking for a larger ``n`` scans on from where the scan is; a
smaller one that has no checkpoint yet rescans just its ``n`` images. Ties go
to the image drawn first.

=====================================  ============================================================
what                                   rule
=====================================  ============================================================
scan work                              on the inference thread, one batch per job (other requests
                                       in between), each batch costing images x snapshots passes;
                                       a scan whose only client leaves stops between batches, and
                                       its progress is kept for the next request
concurrent requests                    wait for the one scan (a lock per scan)
memory                                 ``KEEP`` scans (each holds one ``Net`` per snapshot), ``CHECKPOINTS``
                                       ``n`` each, ``PNGS`` rendered projections each
disk                                   each checkpoint as ``<root>/<key>.npz`` (the key hashes the
                                       snapshots' bytes, the data listing, the seed, the order and
                                       ``n``), so a restarted server only loads the snapshots; the
                                       files count toward the server's disk-cache bound
=====================================  ============================================================
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import NotFound, library_errors

KEEP = 2  # scans kept in memory; each holds one Net per snapshot
CHECKPOINTS = 16  # n's kept per scan
PNGS = 256  # rendered projections kept per scan
BATCH = 64  # images per scan job


class Scan:
    """One model's snapshots reading one seeded order of the data set, and its checkpoints."""

    def __init__(self):
        self.lock = asyncio.Lock()
        self.ev = None  # analyses.evolution.Evolution over the whole order, scanned up to some row
        self.key = ""  # names the scan on disk (with n)
        self.views: "OrderedDict[int, object]" = OrderedDict()  # n -> an Evolution over the first n rows
        self.png: "OrderedDict[tuple, bytes]" = OrderedDict()

    def remember(self, key: tuple, body: bytes) -> None:
        self.png[key] = body
        while len(self.png) > PNGS:
            self.png.popitem(last=False)

    def view(self, n: int):
        """The Evolution of the first ``n`` rows (a checkpoint), or None."""
        if n in self.views:
            self.views.move_to_end(n)
            return self.views[n]
        return None

    def keep(self, n: int, view) -> None:
        self.views[n] = view
        while len(self.views) > CHECKPOINTS:
            self.views.popitem(last=False)


def _view(ev, n: int, scans=None):
    """An Evolution sharing ``ev``'s nets and loader over its first ``n`` rows (with ``scans``, or fresh)."""
    from ..analyses.evolution import SnapshotScan

    v = copy.copy(ev)
    v.image_indices = ev.image_indices[:n]
    v.scans = scans if scans is not None else {e: SnapshotScan.empty(e, s.layers) for e, s in ev.scans.items()}
    return v


def _snapshot_scans(ev) -> dict:
    return {e: copy.deepcopy(s) for e, s in ev.scans.items()}


class EvolutionCache:
    """Scans by (model, seed) over one nested draw of at most ``max_n`` images (see the module doc)."""

    def __init__(self, root: str | Path, max_n: int = 1000, disk=None):
        self.root = Path(root)
        self.max_n = max_n
        self.disk = disk  # disk_cache.DiskCache or None
        self._scans: "OrderedDict[tuple, Scan]" = OrderedDict()

    def _entry(self, state, slot, seed: int) -> Scan:
        from ..analyses.evolution import snapshot_paths

        key = (slot.name, seed)
        scan = self._scans.get(key)
        if scan is None:
            try:
                snapshot_paths(slot.name, state.settings.models_path())
            except (FileNotFoundError, KeyError) as e:
                raise NotFound(f"no training snapshots for model {slot.name!r}: "
                               f"{e.args[0] if isinstance(e, KeyError) else e}") from None
            scan = self._scans[key] = Scan()
            while len(self._scans) > KEEP:
                self._scans.popitem(last=False)
        self._scans.move_to_end(key)
        return scan

    def views(self, model: str) -> list:
        """Every Evolution already scanned for ``model`` (any seed and ``n``); starts none."""
        return [v for (name, _), scan in list(self._scans.items()) if name == model
                for v in list(scan.views.values())]

    async def get(self, state, slot, n: int, seed: int, request=None):
        """The Evolution of ``slot``'s snapshots over the first ``n`` images of ``seed``'s order."""
        scan = self._entry(state, slot, seed)
        async with scan.lock:
            if scan.ev is None:
                scan.ev, scan.key = await state.runner.run(self._build, state, slot, seed)
            view = scan.view(n)
            if view is None:
                view = await self._checkpoint(state, scan, n, request)
                scan.keep(n, view)
        return scan, view

    def _build(self, state, slot, seed: int):
        """Load the snapshots, draw the order (on the worker thread)."""
        from ..analyses.evolution import Evolution, image_loader, load_snapshots, scan_key, snapshot_paths

        s = state.settings
        with library_errors():
            paths = snapshot_paths(slot.name, s.models_path())
            nets = load_snapshots(paths, device=s.device)
            meta = nets[0][1].meta
            total = len(state.split)
            order = np.random.default_rng(seed).permutation(total)[:min(self.max_n, total)]
            ev = Evolution(nets, order, image_loader(state.split, meta.input_size, meta.mean, meta.std),
                           batch_size=BATCH)
        key = hashlib.sha256(f"{scan_key(paths, state.split, len(order), seed)}|nested".encode()).hexdigest()
        return ev, key[:24]

    async def _checkpoint(self, state, scan: Scan, n: int, request):
        """Scan (or load) the first ``n`` rows; the Evolution over them."""
        path = self.root / f"{scan.key}-{n}.npz"
        view = _view(scan.ev, n)
        if await state.runner.run(view.load_scans, path):
            self._touch(path)
            return view
        ev = scan.ev
        done = min(s.scanned for s in ev.scans.values())
        source = ev if done <= n else view  # scan on, or rescan a shorter prefix from its start
        first = min(s.scanned for s in source.scans.values())
        cost = len(ev.nets)
        while first < n:
            rows = min(BATCH, n - first)
            await state.runner.run(_scan_rows, source, first, rows, cost=rows * cost, request=request)
            first += rows
        if source is ev:
            view = _view(ev, n, _snapshot_scans(ev))
        await state.runner.run(view.save, path)
        self._touch(path)
        return view

    def _touch(self, path: Path) -> None:
        if self.disk is not None:
            self.disk.touch(path)


def _scan_rows(ev, first: int, rows: int) -> None:
    """Scan rows ``first .. first + rows`` of ``ev``'s order through every snapshot (on the worker)."""
    from .runner import check_cancelled

    check_cancelled()
    ev.batch_size = rows
    ev.scan_batch(first)
