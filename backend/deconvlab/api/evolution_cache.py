"""The server's scanned training snapshots (Fig. 4), in memory and on disk.

The first request for a model (and ``n``, ``seed``) loads its snapshots and
scans the subset once through all of them (``analyses.evolution``); the scan
runs on the inference thread one batch per job, so other requests are served
in between, and concurrent requests wait for the same scan. The finished scan
is saved under ``<root>/<key>.npz`` (keyed by the snapshots' bytes, the data
listing, ``n`` and ``seed``), so a restarted server only loads the snapshots.
The last ``KEEP`` scans are kept in memory (each holds one ``Net`` per
snapshot), with up to ``PNGS`` rendered projections each.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

from .errors import NotFound, library_errors

KEEP = 2  # scans kept in memory; each holds one Net per snapshot
PNGS = 256  # rendered projections kept per scan


class Scan:
    """One scanned ``analyses.evolution.Evolution`` and its rendered projections."""

    def __init__(self):
        self.lock = asyncio.Lock()
        self.ev = None  # evolution.Evolution, scanned
        self.png: "OrderedDict[tuple, bytes]" = OrderedDict()

    def remember(self, key: tuple, body: bytes) -> None:
        self.png[key] = body
        while len(self.png) > PNGS:
            self.png.popitem(last=False)


class EvolutionCache:
    """Scans by (model, n, seed), the last ``KEEP`` in memory, finished ones saved under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._scans: "OrderedDict[tuple, Scan]" = OrderedDict()

    async def get(self, state, slot, n: int, seed: int) -> Scan:
        """The scan of ``slot``'s snapshots over ``n`` images drawn with ``seed`` (scanned on first use)."""
        from ..analyses.evolution import build_evolution, snapshot_paths

        key = (slot.name, n, seed)
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
        async with scan.lock:
            if scan.ev is None:
                def build():
                    with library_errors():
                        return build_evolution(slot.name, state.settings.data, state.split, n, seed,
                                               device=state.settings.device, root=state.settings.models_path())

                ev = await state.runner.run(build)
                saved = self.root / f"{ev.key[:24]}.npz"
                if not await state.runner.run(ev.load_scans, saved):
                    for first in ev.batches():  # one job per batch: other requests get the thread in between
                        await state.runner.run(ev.scan_batch, first)
                    await state.runner.run(ev.save, saved)
                scan.ev = ev
        return scan
