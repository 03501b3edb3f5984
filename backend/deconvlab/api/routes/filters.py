"""The first layer's filters as a mosaic (Fig. 6), and each filter's numbers (norm, dead or not)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ..deps import Model, State
from ..errors import library_errors
from ..params import model_query
from ..png import PNG_HEADERS, png_bytes
from ..schemas import Filters

router = APIRouter(tags=["filters"])


@router.get("/layers/{layer}/filters.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def filters_png(state: State, slot: Model,
                      layer: Annotated[str, Path(description="a conv layer over the 3 colours: conv1")]) -> Response:
    """Each filter of the layer contrast-normalised on its own, in one mosaic."""
    from ...analyses.filters import filters_mosaic

    slot.layer(layer)

    def work():
        with library_errors():
            return png_bytes(filters_mosaic(slot.net, layer))

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)


@router.get("/layers/{layer}/filters", response_model=Filters)
async def filters_json(state: State, slot: Model,
                       layer: Annotated[str, Path(description="a conv layer over the 3 colours: conv1")]) -> Filters:
    """Per filter of the layer: its weights' L2 norm and RMS, and whether it is dead by weight
    (``rule``: RMS below 0.05 of the layer's median filter RMS, as ``deconvlab filters`` counts)."""
    from ...analyses.filters import filter_images, filter_stats

    slot.layer(layer)

    def work():
        with library_errors():
            filter_images(slot.net, layer)  # the same 422 as filters.png for a layer that is no image
            return filter_stats(slot.net, layer)

    stats = await state.runner.run(work)
    return Filters(model=slot.name, layer=layer, **stats,
                   mosaic_url=f"/api/layers/{layer}/filters.png{model_query(slot)}")
