"""Feature evolution over the training snapshots (Zeiler & Fergus 2013, Fig. 4), for the browser app.

``GET /api/layers/{layer}/units/{unit}/evolution`` answers, for each training
snapshot of the model, the unit's strongest activation over a fixed subset of
the server's data set (``n`` images drawn with ``seed``; default 500) and the
URL of its deconvnet projection, ``.../evolution/{epoch}.png`` (cropped to the
receptive field, as the top-k projections are). The scans are the server's
``evolution_cache.EvolutionCache``; afterwards any unit of any layer is a
lookup, and a projection is one forward pass and one deconvnet pass.

404: unknown model or layer, or a model without training snapshots
(``"snapshots"`` in its registry entry); 422: unit, ``n`` or ``seed`` out of
range; 503: the server has no data set.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from ..deps import Model, Split, State
from ..errors import echo, library_errors
from ..params import Layer, Unit, image_count, model_query
from ..png import PNG_HEADERS, png_bytes

router = APIRouter(tags=["analyses"])

DEFAULT_N = 500
N = Annotated[int | None, Query(description="data-set images searched: the first n of the seed's draw (default "
                                            "500; at most the data set and DECONVLAB_EVOLUTION_MAX_N)")]
Seed = Annotated[int, Query(description="seed of the image subset")]


class EvolutionSnapshot(BaseModel):
    epoch: int = Field(description="training epoch of the snapshot")
    value: float = Field(description="the unit's strongest activation over the subset at that epoch")
    image_index: int = Field(description="that image's index in the data set (GET /api/dataset/images/{i})")
    label: str = Field(description="that image's class")
    position: list[int] | None = Field(description="(y, x) in the layer's map; null for fc units")
    box: list[int] = Field(description="receptive field of the position: top, left, bottom, right (exclusive)")
    projection_url: str = Field(description="the deconvnet projection, cropped to the box (PNG)")


class Evolution(BaseModel):
    model: str
    layer: str
    unit: int
    images: int = Field(description="size of the image subset searched")
    seed: int
    snapshots: list[EvolutionSnapshot]


@router.get("/layers/{layer}/units/{unit}/evolution", response_model=Evolution)
async def evolution(request: Request, state: State, slot: Model, split: Split, layer: Layer, unit: Unit,
                    n: N = None, seed: Seed = 0) -> Evolution:
    """Fig. 4: the unit's strongest activation over ``n`` data-set images at each training snapshot."""
    slot.unit(layer, unit)
    n = image_count(state, split, n, seed, DEFAULT_N)
    _, view = await state.evolutions.get(state, slot, n, seed, request)
    with library_errors():
        steps = view.unit(layer, unit)
    labels, targets = split.labels, split.targets
    q = f"{model_query(slot)}&n={n}&seed={seed}"
    return Evolution(model=slot.name, layer=layer, unit=unit, images=n, seed=seed, snapshots=[EvolutionSnapshot(
        epoch=s.epoch, value=s.value, image_index=s.image_index, label=labels[targets[s.image_index]],
        position=None if s.position is None else list(s.position), box=list(s.box),
        projection_url=f"/api/layers/{layer}/units/{unit}/evolution/{s.epoch}.png{q}") for s in steps])


@router.get("/layers/{layer}/units/{unit}/evolution/{epoch}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def evolution_png(request: Request, state: State, slot: Model, split: Split, layer: Layer, unit: Unit,
                        epoch: Annotated[int, Path(description="a snapshot's epoch")],
                        n: N = None, seed: Seed = 0) -> Response:
    """The deconvnet projection of the unit's strongest activation at ``epoch``, cropped to its receptive field."""
    slot.unit(layer, unit)
    n = image_count(state, split, n, seed, DEFAULT_N)
    scan, view = await state.evolutions.get(state, slot, n, seed, request)
    body = scan.png.get((n, layer, unit, epoch))
    if body is None:
        body = await state.runner.run(_projection_png, view, layer, unit, epoch)
        scan.remember((n, layer, unit, epoch), body)
    return Response(body, media_type="image/png", headers=PNG_HEADERS)


def _projection_png(ev, layer: str, unit: int, epoch: int) -> bytes:
    """The snapshot's projection of the unit, cropped to its receptive field, as PNG (on the worker)."""
    from ...render import projection_image

    with library_errors():
        step = next((s for s in ev.unit(layer, unit) if s.epoch == epoch), None)
        if step is None:
            raise KeyError(f"unknown epoch: expected one of {ev.epochs}, got {echo(epoch)}")
        t, l, b, r = step.box
        return png_bytes(projection_image(ev.projection(layer, unit, epoch)).crop((l, t, r, b)))
