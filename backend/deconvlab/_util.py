"""Small helpers that several parts of deconvlab need, each written once.

=====================  =========================================================  ==============================
helper                 what it does                                               used by
=====================  =========================================================  ==============================
``atomic_write``       write a file through a temp file in the same folder and    the index's manifest, arrays
                       ``os.replace`` it into place: a reader sees the old file   and checkpoints; the evolution
                       or the new one, never half of one                          scan
``atomic_json``        ``atomic_write`` of a JSON document
``atomic_npy``         ``atomic_write`` of one array (``np.save``, no pickles)
``atomic_npz``         ``atomic_write`` of named arrays (``np.savez``)
``pair``               ``3`` or ``(3, 3)`` -> ``(3, 3)``: a layer's kernel, stride,  the engine's window geometry
                       padding or dilation as (height, width)                     and receptive fields
``ByteLRU``            least-recently-used values, bounded by their bytes         the index's unit cache, the
                                                                                  API's record cache
=====================  =========================================================  ==============================

``os.replace`` is atomic on POSIX and on Windows when source and target are on
one file system, which is why the temp file lives next to the target (its name
starts with a dot and holds the process id, so two processes writing the same
file do not share a temp file). On an error the temp file is removed and the
target left as it was.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable, Hashable

import numpy as np

__all__ = ["atomic_write", "atomic_json", "atomic_npy", "atomic_npz", "pair", "ByteLRU"]


# ------------------------------------------------------------------ atomic writes

def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a binary temp file next to ``path``, then move it onto ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_json(path: str | Path, obj, indent: int | None = 1) -> Path:
    """``obj`` as JSON (UTF-8) at ``path``, atomically."""
    data = json.dumps(obj, indent=indent).encode()
    return atomic_write(path, lambda f: f.write(data))


def atomic_npy(path: str | Path, array: np.ndarray) -> Path:
    """One array as ``.npy`` at ``path`` (no pickled objects), atomically."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def atomic_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Named arrays as an uncompressed ``.npz`` at ``path``, atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


# ------------------------------------------------------------------ layer geometry

def pair(v) -> tuple[int, int]:
    """A size given as one number or as (height, width) -> ``(height, width)`` as ints."""
    if hasattr(v, "__len__"):  # a tuple, list or torch.Size
        if len(v) != 2:
            raise ValueError(f"expected a number or a (height, width) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ------------------------------------------------------------------ cache

class ByteLRU:
    """Values in least-recently-used order, bounded by the bytes their owner says they hold.

    ``put(key, value, nbytes)`` adds (or replaces) a value and then drops the
    least recently used ones until the total is at most ``max_bytes``.
    ``keep_newest`` decides what happens to a value larger than the bound on
    its own: False (the default) does not keep it (``put`` returns False);
    True keeps the newest value whatever its size, so the last thing asked
    for is always at hand. ``get`` counts as a use. Not thread-safe: callers
    that share one hold their own lock around it.
    """

    def __init__(self, max_bytes: int, keep_newest: bool = False):
        if max_bytes < 0:
            raise ValueError(f"max_bytes: expected 0 or more, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.keep_newest = keep_newest
        self._items: "OrderedDict[Hashable, tuple[Any, int]]" = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key, default=None):
        """The value under ``key`` (now the most recently used), or ``default``."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key, value, nbytes: int) -> bool:
        """Keep ``value`` under ``key`` as holding ``nbytes``; True when it is kept."""
        if nbytes < 0:
            raise ValueError(f"nbytes: expected 0 or more, got {nbytes}")
        self.pop(key)
        if nbytes > self.max_bytes and not self.keep_newest:
            return False
        self._items[key] = (value, int(nbytes))
        self.bytes += int(nbytes)
        floor = 1 if self.keep_newest else 0
        while self.bytes > self.max_bytes and len(self._items) > floor:
            _, (_, size) = self._items.popitem(last=False)
            self.bytes -= size
        return key in self._items

    def pop(self, key, default=None):
        """Remove ``key``; its value, or ``default``."""
        item = self._items.pop(key, None)
        if item is None:
            return default
        self.bytes -= item[1]
        return item[0]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
