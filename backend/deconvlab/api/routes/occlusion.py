"""Occlusion sensitivity (Fig. 7): run it on an uploaded image, fetch its rendered maps.

Results are kept by ``results.OcclusionStore`` (same model, image and body:
the same ``occlusion_id``), so asking again answers from the stored files and
the heat-map URLs keep working after a restart.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request, Response

from ..deps import Image, Model, State
from ..errors import NotFound, Unprocessable, echo, library_errors
from ..png import PNG_HEADERS, class_map_png, heat_map_png
from ..records import forward_record
from ..results import KINDS
from ..runner import check_cancelled
from ..schemas import OcclusionRequest, OcclusionResponse

router = APIRouter(tags=["occlusion"])


def _check(slot, req: OcclusionRequest, budget: int) -> int:
    """The run's forward passes; 422 for a layer, size, stride or class out of range, or over the budget."""
    from ...analyses.occlusion import occlusion_passes

    slot.layer(req.layer)
    S = slot.net.meta.input_size
    with library_errors():
        passes = occlusion_passes(S, S, req.size, req.stride)
    if passes > budget:
        raise Unprocessable(f"occlusion with size {echo(req.size)} and stride {echo(req.stride)} needs {passes} "
                            f"forward passes; the budget is {budget} (use a larger stride or square)")
    n = slot.info[-1]["channels"]
    if req.class_index is not None and not 0 <= req.class_index < n:
        raise Unprocessable(f"class_index: expected 0..{n - 1}, got {echo(req.class_index)}")
    return passes


def _default_layer(slot, req: OcclusionRequest) -> OcclusionRequest:
    """A body without ``layer`` on a model without ``conv5`` (a resnet, the user's own net): its last
    conv layer with a map larger than 1x1 (resnet18: ``layer4``), the nearest thing to the paper's conv5.
    A ``layer`` the client names is never replaced (an unknown one is a 404)."""
    if "layer" in req.model_fields_set or any(d["name"] == req.layer for d in slot.info):
        return req
    maps = [d["name"] for d in slot.info if d["kind"] == "conv" and d["shape"][1] * d["shape"][2] > 1]
    return req.model_copy(update={"layer": maps[-1]}) if maps else req


def _response(oid: str, meta: dict, arrays: dict) -> OcclusionResponse:
    return OcclusionResponse(occlusion_id=oid, **meta, **{k: arrays[k].tolist() for k in KINDS},
                             urls={k: f"/api/occlusions/{oid}/{k}.png" for k in KINDS})


def _compute(state, slot, img, req: OcclusionRequest) -> tuple[dict, dict]:
    """The occlusion run, on the worker thread: ``(meta, arrays)`` as ``OcclusionStore`` keeps them."""
    from ...analyses.occlusion import occlusion

    rec = forward_record(state, slot, img)
    with library_errors():  # after each batch: stop if the client has gone (runner.Cancelled)
        r = occlusion(slot.net, rec.input[:1], req.size, req.stride, req.layer, class_index=req.class_index,
                      batch_size=state.settings.occlusion_batch, max_passes=state.settings.occlusion_max_passes,
                      progress=lambda done, total: check_cancelled())
    meta = {"image_id": img.image_id, "model": slot.name, "size": r.size, "stride": r.stride,
            "grid": list(r.grid), "layer": r.layer, "feature_map": r.feature_map, "class_index": r.class_index,
            "class_label": slot.label(r.class_index),
            "top_class_labels": {str(int(c)): slot.label(int(c)) for c in np.unique(r.top_class)}}
    return meta, {"activation": r.activation, "probability": r.probability, "top_class": r.top_class}


@router.post("/images/{image_id}/occlusion", response_model=OcclusionResponse)
async def run_occlusion(request: Request, state: State, slot: Model, img: Image,
                        req: OcclusionRequest) -> OcclusionResponse:
    """Slide a grey square over the image; per position the layer's strongest map's total
    activation, the class's probability and the most probable class."""
    req = _default_layer(slot, req)
    passes = _check(slot, req, state.settings.occlusion_max_passes)
    oid = state.occlusions.key(slot.name, img.image_id, req.size, req.stride, req.layer, req.class_index)
    found = state.occlusions.get(oid)
    if found is None:
        found = await state.runner.run(_compute, state, slot, img, req, cost=passes, request=request)
        state.occlusions.put(oid, *found)
    return _response(oid, *found)


@router.get("/occlusions/{occlusion_id}/{kind}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def occlusion_png(state: State, occlusion_id: Annotated[str, Path()], kind: Annotated[str, Path()]) -> Response:
    """One of the three maps as a picture: activation and probability through viridis
    (probability on a fixed 0..1 scale), the top class in one colour per class."""
    if kind not in KINDS:
        raise NotFound(f"unknown occlusion map: {echo(kind)} (expected one of {', '.join(KINDS)})")
    found = state.occlusions.get(occlusion_id)
    if found is None:
        raise NotFound(f"unknown occlusion: {echo(occlusion_id)} (run POST /api/images/{{image_id}}/occlusion)")
    a = found[1][kind]
    scale = max(1, round(224 / max(a.shape)))

    def work():
        if kind == "top_class":
            return class_map_png(a, scale)
        return heat_map_png(a, *((0.0, 1.0) if kind == "probability" else (None, None)), scale)

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)
