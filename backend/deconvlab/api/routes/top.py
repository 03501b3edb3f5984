"""The top-k index (Fig. 2) and the data set's images, addressed by index only."""

from __future__ import annotations

import mimetypes
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse

from ..deps import Index, Model, Split, State
from ..errors import NotFound, Unprocessable, echo, library_errors
from ..params import Layer, Rank, Unit, model_query
from ..png import PNG_HEADERS, png_bytes, projection_png
from ..schemas import Samples, Top, TopEntry

router = APIRouter(tags=["top-k"])


@router.get("/layers/{layer}/units/{unit}/top", response_model=Top)
async def top(state: State, slot: Model, idx: Index, layer: Layer, unit: Unit,
              k: Annotated[int | None, Query(description="entries (default 9), at most the index's k")] = None
              ) -> Top:
    """The unit's k strongest data-set activations, with receptive-field boxes and URLs."""
    slot.unit(layer, unit)
    k = min(9, idx.k) if k is None else k
    if not 1 <= k <= idx.k:
        raise Unprocessable(f"k: expected 1..{idx.k} (the index keeps {idx.k} per unit), got {echo(k)}")

    def work():
        with library_errors():
            return idx.entries(layer, unit)[:k]

    entries = await state.runner.run(work)
    base, q = f"/api/layers/{layer}/units/{unit}/top", model_query(slot)
    return Top(model=slot.name, layer=layer, unit=unit, entries=[TopEntry(
        rank=e["rank"], image_index=e["image_index"], image_id=e["image_id"], label=e["label"], value=e["value"],
        position=None if e["position"] is None else list(e["position"]), box=list(e["box"]),
        patch_url=f"{base}/{e['rank']}/patch.png{q}", projection_url=f"{base}/{e['rank']}/projection.png{q}",
        image_url=f"/api/dataset/images/{e['image_index']}") for e in entries])


@router.get("/layers/{layer}/units/{unit}/top/{rank}/patch.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def top_patch(state: State, slot: Model, idx: Index, layer: Layer, unit: Unit, rank: Rank) -> Response:
    """The receptive-field crop of the rank-th image (the model's input view)."""
    slot.unit(layer, unit)

    def work():
        with library_errors():
            return png_bytes(idx.patch(layer, unit, rank))

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)


@router.get("/layers/{layer}/units/{unit}/top/{rank}/projection.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def top_projection(state: State, slot: Model, idx: Index, layer: Layer, unit: Unit, rank: Rank) -> Response:
    """The point-seed deconvnet projection of the rank-th entry, cropped to the same box."""
    slot.unit(layer, unit)

    def work():
        with library_errors():
            return projection_png(idx.projection(layer, unit, rank))

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)


@router.get("/dataset/images/{image_index}", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
async def dataset_image(split: Split, image_index: Annotated[int, Path()]) -> FileResponse:
    """A whole data-set image, as stored (addressed by its index in the sorted listing)."""
    if not 0 <= image_index < len(split):
        raise NotFound(f"unknown data-set image: {echo(image_index)} (expected 0..{len(split) - 1})")
    path = split.path(image_index)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/dataset/samples", response_model=Samples)
async def dataset_samples(split: Split, n: Annotated[int, Query()] = 12,
                          seed: Annotated[int, Query()] = 0) -> Samples:
    """``n`` data-set images drawn at random (the same ``seed``, the same draw)."""
    if not 1 <= n <= 200:
        raise Unprocessable(f"n: expected 1..200, got {echo(n)}")
    if seed < 0:
        raise Unprocessable(f"seed: expected a non-negative integer, got {echo(seed)}")
    pick = np.random.default_rng(seed).choice(len(split), size=min(n, len(split)), replace=False)
    labels = split.labels
    return Samples(samples=[{"image_index": int(i), "label": labels[split.targets[int(i)]],
                             "url": f"/api/dataset/images/{int(i)}"} for i in pick])
