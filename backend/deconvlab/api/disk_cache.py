"""The server's on-disk caches under one size bound, least recently used first out (issue 12).

Occlusion results (``occlusions/<id>.npz`` + ``.json``) and evolution scans
(``evolution/<key>-<n>.npz``) are caches: each can be computed again from the
upload or the data set. ``DiskCache`` keeps their total under
``Settings.disk_cache_bytes``:

========================  ================================================================
event                     what happens
========================  ================================================================
a file is written/read    ``touch(path)``: its access time becomes now (the recency; the
                          modification time stays, so it still says when the file was written)
then, and at start-up     ``enforce()``: while the folders hold more than ``max_bytes``, the
                          entry used longest ago goes (an entry: the files of one stem, so an
                          occlusion's ``.npz`` and ``.json`` go together); the entry just
                          touched stays even when it alone is over the bound
``max_bytes`` 0           no bound
========================  ================================================================

Uploads are not a cache (an image id must keep working) and are never evicted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class DiskCache:
    """LRU eviction over ``root/<folder>/*`` for each of ``folders`` (see the module doc)."""

    def __init__(self, root: str | Path, max_bytes: int, folders=("occlusions", "evolution")):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.folders = tuple(folders)
        self.evicted = 0  # entries removed so far
        self._lock = threading.Lock()

    def _entries(self) -> dict[Path, list[Path]]:
        out: dict[Path, list[Path]] = {}
        for folder in self.folders:
            d = self.root / folder
            for f in d.iterdir() if d.is_dir() else ():
                if f.is_file() and not f.name.startswith(".") and ".tmp" not in f.name:
                    out.setdefault(f.parent / f.name.split(".")[0], []).append(f)
        return out

    def bytes(self) -> int:
        return sum(f.stat().st_size for files in self._entries().values() for f in files)

    def touch(self, path: str | Path) -> None:
        """Mark ``path`` (and the other files of its entry) used now, then ``enforce``."""
        path = Path(path)
        now = time.time()
        stem = path.parent / path.name.split(".")[0]
        for f in self._entries().get(stem, [path]):
            try:
                os.utime(f, (now, f.stat().st_mtime))
            except FileNotFoundError:
                pass
        self.enforce(keep=stem)

    def enforce(self, keep: Path | None = None) -> int:
        """Evict least recently used entries until the bound holds; the number evicted."""
        if not self.max_bytes:
            return 0
        with self._lock:
            entries = []
            for stem, files in self._entries().items():
                stats = [f.stat() for f in files]
                entries.append((max(s.st_atime for s in stats), sum(s.st_size for s in stats), stem, files))
            total = sum(e[1] for e in entries)
            gone = 0
            for _, size, stem, files in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if stem == keep:
                    continue
                for f in sorted(files, key=lambda f: f.suffix != ".json"):  # the commit point first
                    f.unlink(missing_ok=True)
                total -= size
                gone += 1
            self.evicted += gone
            return gone
