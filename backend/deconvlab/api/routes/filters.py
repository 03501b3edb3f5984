"""The first layer's filters as a mosaic (Fig. 6)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ..deps import Model, State
from ..errors import library_errors
from ..png import PNG_HEADERS, png_bytes

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
