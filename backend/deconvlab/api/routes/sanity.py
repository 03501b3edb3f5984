"""Sanity checks of a unit's projection (issue 15; Adebayo et al. 2018, Sec. 3): randomise, compare.

``GET .../units/{unit}/sanity`` runs ``deconvlab.sanity.randomization`` on the
uploaded image (the trained model first, then one model per randomisation
step) and answers its numbers; each step's projection is served at its
``projection_url`` (PNG, or ``format=npy``: the raw float32 3xHxW array, as the
projection route). Results are stored by ``sanity_store.SanityStore`` (same
model, image, layer, unit, method, mode and seed: asked again, answered from
the files; ``sanity_store.cached_sanity`` looks one up).
"""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel

from ...analyses.sanity import SEED_MAX
from ..deps import Image, Model, State
from ..errors import NotFound, echo, library_errors
from ..params import Layer, Unit
from ..png import PNG_HEADERS, projection_png
from ..records import forward_record
from ..runner import check_cancelled
from ..sanity_store import sanity_store

router = APIRouter(tags=["sanity"])

Method = Literal["deconv", "guided", "backprop"]
Mode = Literal["cascading", "independent"]
Seed = Annotated[int, Query(ge=0, le=SEED_MAX, description="seed of the random weights")]


class SanityStep(BaseModel):
    step: int  # 0: the trained model
    randomized: list[str]  # modules re-initialised in this model
    spearman: float | None  # rank correlation of |projection| with the trained model's (null: a silent seed)
    ssim: float | None  # SSIM of the rendered projections, inside the receptive field
    edge_spearman: float | None  # rank correlation of |projection| with the input's Sobel magnitude
    seed_value: float  # the unit's activation at the seed in this model (0: it does not fire there)
    projection_url: str


class SanityResponse(BaseModel):
    image_id: str
    model: str
    layer: str
    unit: int
    method: str
    mode: str
    seed: int
    position: list[int] | None  # the point seed (null: an fc unit)
    box: list[int]  # the receptive field the numbers are computed in: top, left, bottom, right
    edge_spearman: float | None  # the trained model's projection against the edge map
    steps: list[SanityStep]


def _base(img, layer: str, unit: int) -> str:
    return f"/api/images/{img.image_id}/layers/{layer}/units/{unit}/sanity"


def _compute(state, slot, img, layer, unit, method, mode, seed) -> tuple[dict, list]:
    """The run on the worker thread: the answer (with URLs) and the steps' projections."""
    from ...analyses.sanity import randomization

    x = forward_record(state, slot, img).input[:1]
    with library_errors():
        r = randomization(slot.net, x, layer, unit, method, mode=mode, seed=seed,
                          progress=lambda done, total: check_cancelled())
    query = f"?model={slot.name}&method={method}&mode={mode}&seed={seed}"
    body = {"image_id": img.image_id, "model": slot.name, **r.to_dict()}
    for k, s in enumerate(body["steps"]):
        s.update(step=k, projection_url=f"{_base(img, layer, unit)}/{k}/projection{query}")
    return body, [s.projection for s in r.steps]


def _models(slot, layer: str) -> int:
    """How many models a check of ``layer`` runs: the trained one and one per randomised group."""
    from ...analyses.sanity import randomizable_layers

    with library_errors():
        return len(randomizable_layers(slot.net, layer)) + 1


async def _answer(request, state, slot, img, layer, unit, method, mode, seed, step: int | None = None) -> dict:
    slot.unit(layer, unit)
    store = sanity_store(state)
    sid = store.key(slot.name, img.image_id, layer, unit, method, mode, seed)
    found = store.get(sid)
    if found is None:
        cost = _models(slot, layer)  # one forward + projection per model
        if step is not None and step >= cost:
            raise NotFound(f"unknown step: {echo(step)} (this check has steps 0..{cost - 1})")
        found, projections = await state.runner.run(_compute, state, slot, img, layer, unit, method, mode, seed,
                                                    cost=cost, request=request)
        store.put(sid, found, projections)
    return found


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/sanity", response_model=SanityResponse)
async def sanity(request: Request, state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                 method: Method = "deconv", mode: Mode = "cascading", seed: Seed = 0) -> SanityResponse:
    """Adebayo et al.'s parameter-randomisation test of the unit's point-seed projection: the
    trained model, then the weights it passes through re-initialised from the unit's layer down
    (``cascading``: cumulatively; ``independent``: one layer at a time); per model the rank
    correlation and SSIM with the trained model's projection and the rank correlation with an edge map."""
    return SanityResponse(**await _answer(request, state, slot, img, layer, unit, method, mode, seed))


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/sanity/{step}/projection", response_class=Response,
            responses={200: {"content": {"image/png": {}, "application/octet-stream": {}},
                             "description": "PNG, or the raw float32 3xHxW array as .npy"}})
async def sanity_projection(request: Request, state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                            step: Annotated[int, Path(ge=0, description="0: the trained model")],
                            method: Method = "deconv", mode: Mode = "cascading", seed: Seed = 0,
                            format: Literal["png", "npy"] = "png") -> Response:
    """One step's projection, rendered as the projection route renders it (or raw)."""
    found = await _answer(request, state, slot, img, layer, unit, method, mode, seed, step)
    if step >= len(found["steps"]):
        raise NotFound(f"unknown step: {echo(step)} (this check has steps 0..{len(found['steps']) - 1})")
    store = sanity_store(state)
    p = store.projection(store.key(slot.name, img.image_id, layer, unit, method, mode, seed), step)
    if p is None:  # evicted between the two reads
        raise NotFound(f"sanity step {step} is no longer stored; ask GET {_base(img, layer, unit)} again")
    if format == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(p, dtype=np.float32), allow_pickle=False)
        return Response(buf.getvalue(), media_type="application/octet-stream", headers=PNG_HEADERS)
    body = await state.runner.run(projection_png, p)
    return Response(body, media_type="image/png", headers=PNG_HEADERS)
