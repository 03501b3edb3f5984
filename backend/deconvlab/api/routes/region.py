"""Units from an image region (issue 16): ``POST /images/{image_id}/layers/{layer}/region``.

The body ``{"box": [top, left, bottom, right], "k": 20}`` (input pixels of the model's view); the
answer ranks the layer's units by ``deconvlab.region.rank_units``' rule (said in the answer's
``rule``), with the URL of each unit's projection seeded at the position it was found at. 404: unknown
model, image, layer; 422: a box that is not four integers inside the image with top < bottom and
left < right, ``k`` outside 1..the layer's channels.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..deps import Image, Model, State
from ..errors import library_errors
from ..params import Layer, model_query
from ..records import forward_record

router = APIRouter(tags=["region"])


class RegionRequest(BaseModel):
    # strict: [1, 2, 3, 4] and nothing else; true is not 1, "4" is not 4, 4.0 is not 4
    model_config = ConfigDict(strict=True)

    box: list[int] = Field(description="[top, left, bottom, right] in input pixels of the model's view "
                                       "(input.png), bottom/right exclusive")
    k: int | None = Field(None, description="units listed: 1..the layer's channels (default 20, or all when fewer)")


class RegionUnitOut(BaseModel):
    unit: int
    value: float = Field(description="the unit's strongest activation among the kept positions")
    position: list[int] | None = Field(description="(y, x) of it; null for an fc layer")
    box: list[int] = Field(description="that position's receptive field: top, left, bottom, right")
    unit_url: str
    projection_url: str = Field(description="the projection seeded at that position (PNG)")


class RegionOut(BaseModel):
    image_id: str
    model: str
    layer: str
    box: list[int]
    rule: str
    overlap: int = Field(description="pixels of the box the kept positions' receptive fields cover")
    positions: list[list[int]] | None = Field(description="the kept positions (y, x); null for an fc layer")
    units: list[RegionUnitOut]


@router.post("/images/{image_id}/layers/{layer}/region", response_model=RegionOut)
async def region(state: State, slot: Model, img: Image, layer: Layer, req: RegionRequest) -> RegionOut:
    """The layer's units ranked by their strongest activation where their receptive fields cover the box most."""
    from ...analyses.region import rank_units

    slot.layer(layer)

    def work():
        rec = forward_record(state, slot, img)
        with library_errors():
            return rank_units(slot.net, rec, layer, req.box, req.k)

    r = await state.runner.run(work)
    base, q = f"/api/images/{img.image_id}/layers/{layer}/units", model_query(slot)
    units = []
    for u in r.units:
        at = "" if u.position is None else f"&y={u.position[0]}&x={u.position[1]}"
        units.append(RegionUnitOut(unit=u.unit, value=u.value, position=None if u.position is None else
                                   list(u.position), box=list(u.box), unit_url=f"{base}/{u.unit}{q}",
                                   projection_url=f"{base}/{u.unit}/projection{q}{at}"))
    return RegionOut(image_id=img.image_id, model=slot.name, layer=layer, box=list(r.box), rule=r.rule,
                     overlap=r.overlap, positions=None if r.positions is None else [list(p) for p in r.positions],
                     units=units)
