"""Start-up sweep of what a killed server leaves in its state folder (issue 12: kill -9 during uploads).

Every file the server writes goes through a temporary file renamed into place,
and an upload's image is written before its ``.json`` (the commit point; see
``storage.py``, owned by the image-reading side). A process killed in between
leaves:

=======================================  ===============================================
leftover                                 removed at start-up when older than ``grace_s``
=======================================  ===============================================
``*.tmp`` and ``*.tmp.npz`` files        temporary files never renamed
``uploads/<xx>/<id>.<ext>`` without      an image whose metadata was never written: the
``<id>.json``                            upload never answered 201, so no id names it
``occlusions/<id>.npz`` without ``.json``  a result never committed
=======================================  ===============================================

``grace_s`` (60 s) spares the files of another server writing into the same
folder right now. ``sweep(root)`` returns the paths it removed.
"""

from __future__ import annotations

import time
from pathlib import Path

GRACE_S = 60.0


def _old(path: Path, now: float, grace_s: float) -> bool:
    try:
        return now - path.stat().st_mtime > grace_s
    except FileNotFoundError:
        return False


def sweep(root: str | Path, grace_s: float = GRACE_S) -> list[Path]:
    """Remove the leftovers above under ``root`` (the server's ``state_dir``); the paths removed."""
    root, now, gone = Path(root), time.time(), []
    if not root.is_dir():
        return gone
    candidates = [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or ".tmp." in p.name)]
    uploads = root / "uploads"
    if uploads.is_dir():
        candidates += [p for p in uploads.glob("*/*") if p.is_file() and p.suffix != ".json"
                       and ".tmp" not in p.name and not p.with_suffix(".json").exists()]
    occlusions = root / "occlusions"
    if occlusions.is_dir():
        candidates += [p for p in occlusions.glob("*.npz") if not p.with_suffix(".json").exists()]
    for p in candidates:
        if _old(p, now, grace_s):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone
