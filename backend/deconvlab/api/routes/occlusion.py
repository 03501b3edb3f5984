"""Occlusion sensitivity (Fig. 7): run it on an uploaded image, fetch its rendered maps.

A result is stored under ``<data dir>/occlusions/<id>.npz`` (+ ``.json``),
where the id hashes (model, image, size, stride, layer, class): asking again
answers from the file, and the heat-map URLs keep working after a restart.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Response

from ...analyses.occlusion import occlusion, occlusion_passes
from ..deps import Image, Model, State
from ..errors import NotFound, Unprocessable, library_errors
from ..png import PNG_HEADERS, class_map_png, heat_map_png
from ..schemas import OcclusionRequest, OcclusionResponse
from ..storage import _atomic_write
from .images import record

router = APIRouter(tags=["occlusion"])

KINDS = ("activation", "probability", "top_class")
_ID_RE = re.compile(r"^[0-9a-f]{20}$")


def _occlusion_id(model: str, image_id: str, req: OcclusionRequest) -> str:
    key = json.dumps([model, image_id, req.size, req.stride, req.layer, req.class_index])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _paths(state, oid: str):
    return state.occlusion_dir / f"{oid}.npz", state.occlusion_dir / f"{oid}.json"


def _load(state, oid: str) -> tuple[dict, dict] | None:
    npz, js = _paths(state, oid)
    if not js.is_file():
        return None
    meta = json.loads(js.read_text())
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in KINDS}
    return meta, arrays


def _save(state, oid: str, meta: dict, arrays: dict) -> None:
    npz, js = _paths(state, oid)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(npz, buf.getvalue())
    _atomic_write(js, json.dumps(meta).encode())  # last: the commit point


def _response(oid: str, meta: dict, arrays: dict) -> OcclusionResponse:
    base = f"/api/occlusions/{oid}"
    return OcclusionResponse(occlusion_id=oid, **meta, activation=arrays["activation"].tolist(),
                             probability=arrays["probability"].tolist(), top_class=arrays["top_class"].tolist(),
                             urls={k: f"{base}/{k}.png" for k in KINDS})


@router.post("/images/{image_id}/occlusion", response_model=OcclusionResponse)
async def run_occlusion(state: State, slot: Model, img: Image, req: OcclusionRequest) -> OcclusionResponse:
    """Slide a grey square over the image; per position the layer's strongest map's total
    activation, the class's probability and the most probable class."""
    slot.layer(req.layer)
    S = slot.net.meta.input_size
    budget = state.settings.occlusion_max_passes
    with library_errors():
        passes = occlusion_passes(S, S, req.size, req.stride)
    if passes > budget:
        raise Unprocessable(f"occlusion with size {req.size} and stride {req.stride} needs {passes} forward "
                            f"passes; the budget is {budget} (use a larger stride or square)")
    n = slot.info[-1]["channels"]
    if req.class_index is not None and not 0 <= req.class_index < n:
        raise Unprocessable(f"class_index: expected 0..{n - 1}, got {req.class_index}")
    oid = _occlusion_id(slot.name, img.image_id, req)
    found = _load(state, oid)
    if found is not None:
        return _response(oid, *found)

    def work():
        rec = record(state, slot, img)
        with library_errors():
            return occlusion(slot.net, rec.input[:1], req.size, req.stride, req.layer, class_index=req.class_index,
                             batch_size=state.settings.occlusion_batch, max_passes=budget)

    r = await state.runner.run(work)
    classes = list(slot.net.meta.classes)

    def label(c: int) -> str:
        return classes[c] if c < len(classes) else str(c)

    meta = {"image_id": img.image_id, "model": slot.name, "size": r.size, "stride": r.stride,
            "grid": list(r.grid), "layer": r.layer, "feature_map": r.feature_map, "class_index": r.class_index,
            "class_label": label(r.class_index),
            "top_class_labels": {str(int(c)): label(int(c)) for c in np.unique(r.top_class)}}
    arrays = {"activation": r.activation, "probability": r.probability, "top_class": r.top_class}
    _save(state, oid, meta, arrays)
    return _response(oid, meta, arrays)


@router.get("/occlusions/{occlusion_id}/{kind}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def occlusion_png(state: State, occlusion_id: Annotated[str, Path()], kind: Annotated[str, Path()]) -> Response:
    """One of the three maps as a picture: activation and probability through viridis
    (probability on a fixed 0..1 scale), the top class in one colour per class."""
    if kind not in KINDS:
        raise NotFound(f"unknown occlusion map: {kind!r} (expected one of {', '.join(KINDS)})")
    found = _load(state, occlusion_id) if _ID_RE.match(occlusion_id) else None
    if found is None:
        raise NotFound(f"unknown occlusion: {occlusion_id!r} (run POST /api/images/{{image_id}}/occlusion)")
    meta, arrays = found
    a = arrays[kind]
    scale = max(1, round(224 / max(a.shape)))

    def work():
        if kind == "top_class":
            return class_map_png(a, scale)
        lo, hi = (0.0, 1.0) if kind == "probability" else (None, None)
        return heat_map_png(a, lo, hi, scale)

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)
