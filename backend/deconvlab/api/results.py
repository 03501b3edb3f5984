"""Stored occlusion results (Fig. 7): files under the server's state folder, keyed by what made them.

A result is ``<root>/<id>.npz`` (the three maps) and ``<root>/<id>.json`` (the
rest), where the id is the first 20 hex digits of the sha256 of (model, image,
size, stride, layer, class): asking again answers from the files, and the
heat-map URLs keep working after a restart. The ``.npz`` is written first and
the ``.json`` last (each atomically), so a result without its ``.json`` is
never read.

=========================  =================================================
call                       what it does
=========================  =================================================
``key(model, image, ...)`` the id of a request
``get(id)``                ``(meta, arrays)`` or None (also for a malformed id)
``put(id, meta, arrays)``  store a result
=========================  =================================================
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

from .storage import _atomic_write

KINDS = ("activation", "probability", "top_class")  # the three maps, as stored and as served
ID_LENGTH = 20
_ID_RE = re.compile(rf"^[0-9a-f]{{{ID_LENGTH}}}$")


class OcclusionStore:
    """Occlusion results as files under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path, disk=None):
        self.root = Path(root)
        self.disk = disk  # disk_cache.DiskCache: a read or a write marks the result used

    @staticmethod
    def key(model: str, image_id: str, size: int, stride: int, layer: str, class_index: int | None) -> str:
        text = json.dumps([model, image_id, size, stride, layer, class_index])
        return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]

    def _paths(self, oid: str) -> tuple[Path, Path]:
        return self.root / f"{oid}.npz", self.root / f"{oid}.json"

    def get(self, oid: str) -> tuple[dict, dict] | None:
        if not _ID_RE.match(oid):
            return None
        npz, js = self._paths(oid)
        try:
            meta = json.loads(js.read_text())
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in KINDS}
        except FileNotFoundError:
            return None
        if self.disk is not None:
            self.disk.touch(js)
        return meta, arrays

    def put(self, oid: str, meta: dict, arrays: dict) -> None:
        npz, js = self._paths(oid)
        buf = io.BytesIO()
        np.savez(buf, **{k: arrays[k] for k in KINDS})
        _atomic_write(npz, buf.getvalue())
        _atomic_write(js, json.dumps(meta).encode())  # last: the commit point
        if self.disk is not None:
            self.disk.touch(js)
