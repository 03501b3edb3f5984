"""The server's state: one ``AppState`` per app, one ``ModelSlot`` per served model.

``AppState`` is made once at start-up (``app.py``'s lifespan) and hangs on
``app.state.deconvlab``. It holds:

=================  ==============================================================
field              what it is
=================  ==============================================================
``settings``       the ``Settings`` the app was made with
``runner``         the inference thread, its cost budget and its record cache
``store``          uploaded images (``storage.ImageStore``)
``disk``           the bound on the on-disk caches (``disk_cache.DiskCache``)
``occlusions``     stored occlusion results (``results.OcclusionStore``)
``evolutions``     scanned training snapshots (``evolution_cache.EvolutionCache``)
``models``         model id -> ``ModelSlot`` (its ``Net``, its top-k index or why none)
``default``        the default model's id
``split``          the data set's ``data.Split``, when one is configured
=================  ==============================================================

The route dependencies (``deps.py``) read it; nothing here knows FastAPI
beyond the HTTP errors it raises.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .disk_cache import DiskCache
from .errors import ModelUnavailable, NotFound, Unprocessable, echo
from .evolution_cache import EvolutionCache
from .results import OcclusionStore
from .runner import Runner
from .storage import ImageStore
from .sweep import sweep

log = logging.getLogger("deconvlab.api")


@dataclass
class ModelSlot:
    name: str
    net: Any = None  # deconvlab.net.Net once loaded
    error: str = ""  # why it failed to load
    index: Any = None  # index.TopKIndex when ready
    index_status: str = "no data set"  # "ready" | "missing" | "stale: <why>" | "queued" | "building" | "no data set"
    info: list[dict] = field(default_factory=list)  # net.layer_info()

    def layer(self, layer: str) -> dict:
        """The layer's info; 404 naming it (and the model's layers) when unknown."""
        for d in self.info:
            if d["name"] == layer:
                return d
        names = ", ".join(d["name"] for d in self.info)
        raise NotFound(f"unknown layer: {echo(layer)} (model {self.name!r} has {names})")

    def unit(self, layer: str, unit: int) -> dict:
        d = self.layer(layer)
        if not 0 <= unit < d["channels"]:
            raise Unprocessable(f"unit: expected 0..{d['channels'] - 1} for layer {layer}, got {echo(unit)}")
        return d

    def label(self, class_index: int) -> str:
        """The class's label (its number when the model has fewer labels than classes)."""
        classes = self.net.meta.classes
        return classes[class_index] if class_index < len(classes) else str(class_index)


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.runner = Runner(settings.queue_size, settings.retry_after_s, settings.cache_bytes, settings.queue_passes)
        root = settings.state_path()
        self.store = ImageStore(root / "uploads", settings.max_pixels, settings.max_aspect)
        self.swept = sweep(root)  # what a killed server left (sweep.py)
        for path in self.swept:
            log.warning("start-up sweep: removed the leftover %s", path)
        # every folder of computed results counts against one bound (the compare cache also keeps its own)
        self.disk = DiskCache(root, settings.disk_cache_bytes, ("occlusions", "evolution", "sanity", "compare"))
        self.disk.enforce()
        self.occlusions = OcclusionStore(root / "occlusions", self.disk)
        self.evolutions = EvolutionCache(root / "evolution", settings.evolution_max_n, self.disk)
        self.models: dict[str, ModelSlot] = {}
        self.default = ""
        self.split = None  # data.Split of the data set, when one is configured
        self.lock = threading.Lock()

    def slot(self, name: str | None) -> ModelSlot:
        """The slot of model ``name`` (None: the default); 404 for any other name, "" included."""
        name = self.default if name is None else name
        s = self.models.get(name)
        if s is None:
            raise NotFound(f"unknown model: {echo(name)} (expected one of {', '.join(sorted(self.models)) or 'none'})")
        if s.net is None:
            raise ModelUnavailable(f"model {name!r} failed to load: {s.error}")
        return s
