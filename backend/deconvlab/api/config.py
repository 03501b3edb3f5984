"""The server's settings: one ``Settings`` object, read from ``DECONVLAB_*`` environment variables.

Every field can be set as ``DECONVLAB_<FIELD>`` (e.g. ``DECONVLAB_DEVICE=cpu``,
``DECONVLAB_MAX_UPLOAD_BYTES=1048576``) or passed to ``Settings(...)`` directly
(tests do that). Paths left empty fall back to the library's own defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DECONVLAB_", extra="ignore", populate_by_name=True)

    # address uvicorn binds; loopback by default so nothing is exposed unless asked
    host: str = "127.0.0.1"
    # TCP port of the server
    port: int = Field(8000, ge=0, le=65535)
    # where models run: "auto" (CUDA when present, else CPU), "cpu" or "cuda"
    device: str = Field("auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    # model registry folder (registry.json + checkpoints); empty: deconvlab.nets.models_dir()
    models: str = ""
    # comma-separated models to load at start-up: registry names, model files (served under their stem:
    # api.app.served_models) or torchvision:<arch>; empty: every model in the registry
    serve_models: str = ""
    # ImageFolder data set the top-k index and the data-set routes read; empty: none
    data: str = ""
    # split of ``data`` the top-k index was built on
    index_split: str = "val"
    # build a missing or stale top-k index in a background thread at start-up (`make run` turns it on)
    build_index: bool = False
    # the server's own files (uploads, occlusion results, evolution scans), not to be confused with
    # ``data``, the data set it reads; empty: <cache dir>/server (DECONVLAB_CACHE or ~/.cache/deconvlab).
    # DECONVLAB_STATE_DIR; the older name DECONVLAB_DATA_DIR (and ``data_dir=``) still works
    state_dir: str = Field("", validation_alias=AliasChoices("DECONVLAB_STATE_DIR", "DECONVLAB_DATA_DIR"))
    # largest upload accepted, in bytes, counted while the body streams in (413 beyond)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    # largest image accepted, in pixels (width x height), checked before decoding (413 beyond)
    max_pixels: int = Field(40_000_000, ge=1)
    # most times the longer side of an image may be its shorter side (422 beyond, from the header):
    # panoramas are within about 1:10; a 1 x 40,000,000 strip passes the pixel limit, yet its
    # centre crop (the model's view) would be one 40-millionth of it
    max_aspect: float = Field(100.0, ge=1.0)
    # inference jobs allowed to wait or run at once; one more gets 429 with Retry-After
    queue_size: int = Field(32, ge=1)
    # seconds a client is told to wait (Retry-After) when the queue is full
    retry_after_s: int = Field(1, ge=1)
    # memory bound of the forward-record cache (activations, switches) per server, bytes
    cache_bytes: int = Field(512 * 1024 * 1024, ge=0)
    # most forward passes one occlusion request may cost (422 beyond, naming the budget)
    occlusion_max_passes: int = Field(4096, ge=1)
    # occluder positions per batch in the occlusion computation
    occlusion_batch: int = Field(128, ge=1)
    # largest JSON (non-multipart) request body accepted, in bytes (413 beyond): the biggest body the API
    # takes, an occlusion request, is under 200 bytes; uploads have max_upload_bytes instead
    max_body_bytes: int = Field(1 << 20, ge=1)
    # estimated forward passes allowed to wait or run at once (an occlusion costs its positions + 1, an
    # evolution batch its images x snapshots, anything else 1); one more gets 429 with Retry-After
    queue_passes: int = Field(8192, ge=1)
    # bytes of the server's on-disk caches (occlusion results, evolution scans) under state_dir; the least
    # recently used files go first beyond it (0: no bound)
    disk_cache_bytes: int = Field(1 << 30, ge=0)
    # most data-set images one evolution request may search (n; 422 beyond): the scan costs n x snapshots
    # forward passes, shared by every request for the model
    evolution_max_n: int = Field(1000, ge=1)
    # browser app served at "/" (a folder with index.html); empty: the package's copy or the checkout's frontend/
    frontend_dir: str = ""

    def model_names(self) -> list[str]:
        return [n.strip() for n in self.serve_models.split(",") if n.strip()]

    def models_path(self) -> Path:
        """``models``, else ``deconvlab.nets.models_dir()`` (``$DECONVLAB_MODELS``, the user folder over
        the shipped models, or the checkout's ``models/``)."""
        from ..nets import models_dir

        return Path(self.models) if self.models else models_dir()

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, values):
        """``Settings(data_dir=...)``, the field's name before it was ``state_dir``."""
        if isinstance(values, dict) and "data_dir" in values:
            values = dict(values)
            values.setdefault("state_dir", values.pop("data_dir"))
        return values

    def state_path(self) -> Path:
        """The folder of the server's own files (``state_dir``, or its default)."""
        from ..data import cache_dir

        return Path(self.state_dir) if self.state_dir else cache_dir() / "server"

    def frontend_path(self) -> Path | None:
        """``frontend_dir``, else the package's copy of the browser app, else the checkout's ``frontend/``
        (``deconvlab._resources.frontend_dir``); ``None`` when there is none (no app at ``/``)."""
        if self.frontend_dir:
            return Path(self.frontend_dir)
        from .._resources import frontend_dir

        return frontend_dir()
