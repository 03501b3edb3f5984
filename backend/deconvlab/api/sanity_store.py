"""Stored sanity-check results (issue 15): files under the server's state folder, keyed by what made them.

A result is ``<state>/sanity/<id>.npz`` (each step's projection, float32
CxHxW, under ``p0``, ``p1``, ...; compressed: outside the receptive field they
are zeros) and ``<id>.json`` (the answer of the sanity route), where the id is
the first 20 hex digits of the sha256 of (model, image, layer, unit, method,
mode, seed). The ``.npz`` is written first and the ``.json`` last (each
atomically), so a result without its ``.json`` is never read. Like the
occlusion results they are a cache under ``DECONVLAB_DISK_CACHE_BYTES``: the
folder joins the server's ``DiskCache`` when the store is first made.

===============================================================  ============================================
call                                                             what it does
===============================================================  ============================================
``sanity_store(state)``                                          the app's store (made on first use)
``cached_sanity(state, model, image_id, layer, unit, method,     the stored answer (a dict, as the route
mode, seed)``                                                    answers it) or None: the look-up for
                                                                 features that show a computed strip
``SanityStore.key(...)``, ``.get(id)``, ``.projection(id, k)``,  the id; the answer; one step's projection
``.put(id, answer, projections)``                                (or None); store a result
===============================================================  ============================================
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from pathlib import Path

import numpy as np

from .storage import _atomic_write

FOLDER = "sanity"
ID_LENGTH = 20
_ID_RE = re.compile(rf"^[0-9a-f]{{{ID_LENGTH}}}$")
_lock = threading.Lock()


class SanityStore:
    """Sanity results as files under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path, disk=None):
        self.root = Path(root)
        self.disk = disk  # disk_cache.DiskCache: a read or a write marks the result used

    @staticmethod
    def key(model: str, image_id: str, layer: str, unit: int, method: str, mode: str, seed: int) -> str:
        text = json.dumps([model, image_id, layer, int(unit), method, mode, int(seed)])
        return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]

    def _paths(self, sid: str) -> tuple[Path, Path]:
        return self.root / f"{sid}.npz", self.root / f"{sid}.json"

    def get(self, sid: str) -> dict | None:
        if not _ID_RE.match(sid):
            return None
        npz, js = self._paths(sid)
        try:
            answer = json.loads(js.read_text())
        except FileNotFoundError:
            return None
        if not npz.is_file():
            return None
        if self.disk is not None:
            self.disk.touch(js)
        return answer

    def projection(self, sid: str, step: int) -> np.ndarray | None:
        """Step ``step``'s projection (float32 CxHxW), or None when not stored."""
        if not _ID_RE.match(sid):
            return None
        npz, js = self._paths(sid)
        try:
            with np.load(npz, allow_pickle=False) as z:
                key = f"p{int(step)}"
                return z[key].astype(np.float32) if key in z.files else None
        except FileNotFoundError:
            return None

    def put(self, sid: str, answer: dict, projections: list[np.ndarray]) -> None:
        npz, js = self._paths(sid)
        buf = io.BytesIO()
        np.savez_compressed(buf, **{f"p{k}": np.asarray(p, dtype=np.float32) for k, p in enumerate(projections)})
        _atomic_write(npz, buf.getvalue())
        _atomic_write(js, json.dumps(answer).encode())  # last: the commit point
        if self.disk is not None:
            self.disk.touch(js)


def sanity_store(state) -> SanityStore:
    """The app's ``SanityStore`` (``state.sanity``), made on first use; its folder joins ``state.disk``."""
    store = getattr(state, "sanity", None)
    if store is None:
        with _lock:
            store = getattr(state, "sanity", None)
            if store is None:
                disk = getattr(state, "disk", None)
                if disk is not None and FOLDER not in disk.folders:
                    disk.folders = tuple(disk.folders) + (FOLDER,)
                store = SanityStore(state.settings.state_path() / FOLDER, disk)
                state.sanity = store
    return store


def cached_sanity(state, model: str, image_id: str, layer: str, unit: int, method: str = "deconv",
                  mode: str = "cascading", seed: int = 0) -> dict | None:
    """The stored answer of ``GET .../units/{unit}/sanity`` for these arguments, or None (not computed)."""
    store = sanity_store(state)
    return store.get(store.key(model, image_id, layer, unit, method, mode, seed))
