"""The FastAPI app: ``create_app(settings)``; ``deconvlab serve`` runs it under uvicorn.

Start-up (the lifespan) loads every served model once, onto CUDA when present
(``DECONVLAB_DEVICE``), opens each model's top-k index when a data set is
configured (a missing or stale one is reported by ``/api/ready`` and answered
503 by the top-k routes, never served), and sets PIL's decompression-bomb
limit to the server's pixel limit. Routes live in ``routes/``; the error
mapping in ``errors.py``; the single inference thread in ``runner.py``.

``/docs`` is Swagger UI from files on disk (the ``fastapi-offline`` package's
copy), so it works with no network. The browser app (the package's copy in a
wheel, the checkout's ``frontend/`` otherwise: ``Settings.frontend_path()``) is
served at ``/`` when its ``index.html`` exists, its tests not (``static.py``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html

from .. import __version__
from . import bounds, fallback, openapi
from . import errors, static
from .config import Settings
from .state import AppState, ModelSlot

log = logging.getLogger("deconvlab.api")

DOCS_STATIC = "/docs-static"


def load_models(state: AppState) -> None:
    """Load the served models and open their indexes (start-up; blocking)."""
    from PIL import Image

    from ..nets import read_registry

    s = state.settings
    Image.MAX_IMAGE_PIXELS = s.max_pixels  # PIL refuses (DecompressionBombError) beyond twice this
    # full fp32 on the GPU (no TF32): projections and occlusion maps equal the CPU's within float rounding
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    root = s.models_path()
    reg = read_registry(root)
    sources = served_models(s.model_names() or sorted(reg["models"]), reg["models"])
    names = list(sources)
    state.default = reg.get("default", "") if reg.get("default") in names else (names[0] if names else "")
    if s.data:
        from ..data import list_split
        try:
            state.split = list_split(s.data, s.index_split)
        except FileNotFoundError as e:
            log.warning("data set: %s", e)
    for name in names:
        slot = ModelSlot(name)
        state.models[name] = slot
        try:
            slot.net = state.runner.call(_load_net, sources[name], root, s.device, name)
            slot.info = slot.net.layer_info()
        except Exception as e:  # a model that fails to load is reported, the others still serve
            slot.error = f"{type(e).__name__}: {e}"
            log.error("model %s failed to load: %s", name, slot.error)
            continue
        open_index(state, slot)
    if any(slot.net is not None and slot.net.device.type == "cpu" for slot in state.models.values()):
        from ..engine import sparse_step

        try:  # compile the sparse step now, so the first projection asked for does not wait for it
            state.runner.call(sparse_step.warm_up)
        except Exception as e:  # a kernel that cannot compile here: serve with the dense rules
            sparse_step.ENABLED = False
            log.error("the sparse deconvnet step failed to compile (%s: %s); using the dense rules",
                      type(e).__name__, e)


def served_models(sources: list[str], registered: dict) -> dict[str, str]:
    """Model id -> what ``nets.resolve`` opens: a registry name is its own id; a file (a checkpoint, a
    ``.pt2``/TorchScript program) is served under its stem (``-2``, ``-3``... when two share one, or a
    registered name is that stem), so ``?model=`` never carries a path; anything else keeps its text
    (``torchvision:<arch>``, or an unknown name, which then fails to load and says why)."""
    out: dict[str, str] = {}
    for src in sources:
        key = src
        if src not in registered and Path(src).expanduser().is_file():
            stem, n = Path(src).stem, 1
            key = stem
            while key in out or key in registered:
                n += 1
                key = f"{stem}-{n}"
        out.setdefault(key, src)
    return out


def _load_net(source: str, root: Path, device: str, name: str = ""):
    from ..net import Net
    from ..nets import resolve

    module, meta = resolve(str(Path(source).expanduser()) if Path(source).expanduser().is_file() else source, root)
    meta.name = name or meta.name
    return Net(module, meta, device=device)


def open_index(state: AppState, slot: ModelSlot) -> None:
    """Open the slot's top-k index (``index.open_index``: "ready", "missing" or "stale: <why>")."""
    s = state.settings
    if not s.data:
        slot.index_status = "no data set"
        return
    from .. import index

    path = index.default_index_path(slot.name, s.data, s.index_split)
    slot.index, slot.index_status = index.open_index(path, net=slot.net, data_root=s.data)


def build_indexes_in_background(state: AppState, slots: list[ModelSlot]) -> threading.Thread:
    """Build the slots' top-k indexes one after the other on a thread of their own, then open each
    (/api/ready: "queued", then "building", then "ready"). One at a time: two builds at once
    would only share the cores and make both late.

    The scan reads the model like any forward pass (eval mode, no state), so
    the inference thread keeps answering meanwhile; the images are decoded in
    this thread (no loader processes are forked from the server).
    """
    from .. import index

    s = state.settings
    for slot in slots:
        slot.index, slot.index_status = None, "queued"

    def work():
        for slot in slots:
            slot.index_status = "building"
            try:
                with torch.inference_mode():
                    slot.index = index.open_or_build(slot.net, s.data, s.index_split, k=9, workers=0,
                                                     progress=False,
                                                     out=index.default_index_path(slot.name, s.data, s.index_split))
                slot.index_status = "ready"
            except Exception as e:  # reported, never fatal to the server
                slot.index_status = f"stale: the build failed: {type(e).__name__}: {e}"
                log.error("top-k index for %s: %s", slot.name, slot.index_status)

    t = threading.Thread(target=work, name="deconvlab-index", daemon=True)
    t.start()
    return t


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState(settings)
        app.state.deconvlab = state
        load_models(state)
        if settings.build_index and state.split is not None:
            todo = [slot for slot in state.models.values() if slot.net is not None
                    and (slot.index_status == "missing" or slot.index_status.startswith("stale"))]
            if todo:
                build_indexes_in_background(state, todo)
        try:
            yield
        finally:
            state.runner.shutdown()

    app = FastAPI(title="deconvlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Zeiler & Fergus (2013), *Visualizing and Understanding Convolutional "
                              "Networks*: deconvnet projections, top-k patches, occlusion. "
                              "The contract: backend/deconvlab/api/README.md.")
    errors.install(app)
    bounds.install(app, settings.max_body_bytes)
    openapi.install(app, settings.evolution_max_n)

    from .routes import analyses, compare, filters, images, occlusion, region, report, sanity, system, top

    for r in (system.router, images.router, top.router, occlusion.router, filters.router, analyses.router,
              report.router, sanity.router, compare.router, region.router):
        app.include_router(r, prefix="/api")
    fallback.install(app)  # after the API routes, before any mount: 405 with the real Allow, JSON 404

    app.mount(DOCS_STATIC, static.docs_files(), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="deconvlab API",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")

    front = settings.frontend_path()
    if front is not None and (front / "index.html").is_file():
        app.mount("/", static.frontend_files(front), name="frontend")
    return app
