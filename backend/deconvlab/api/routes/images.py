"""Uploads and everything about one uploaded image: input view, predictions, layers, units, projections."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from ..deps import Image, Model, State
from ..errors import Unprocessable, echo
from ..params import Layer, Unit, model_query, seed_position
from ..png import PNG_HEADERS, feature_map_png, png_bytes, projection_png
from ..records import forward_record, projection as cached_projection
from ..schemas import ImageInfo, LayerSummary, Predictions, UnitDetail, UnitSummary
from ..upload import UPLOAD_OPENAPI, read_upload

router = APIRouter(tags=["images"])


@router.post("/images", status_code=201, response_model=ImageInfo, openapi_extra=UPLOAD_OPENAPI,
             responses={413: {"description": "over the byte or pixel limit"},
                        415: {"description": "format outside JPEG, PNG, WebP, BMP, GIF, TIFF"},
                        422: {"description": "empty, truncated or corrupt image"}})
async def upload(request: Request, state: State) -> ImageInfo:
    """Store an image (multipart field ``file``); its id is a hash of its bytes."""
    data, _ = await read_upload(request)
    stored, _ = await state.runner.run(state.store.put, data)
    return ImageInfo(**stored.public())


@router.get("/images/{image_id}", response_model=ImageInfo)
async def image_info(img: Image) -> ImageInfo:
    return ImageInfo(**img.public())


@router.get("/images/{image_id}/input.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def input_png(state: State, slot: Model, img: Image) -> Response:
    """The model's view of the image: shorter side resized to the input size, centre crop."""
    from ...data import resize_crop

    def work():
        return png_bytes(resize_crop(state.store.load(img), slot.net.meta.input_size))

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)


@router.get("/images/{image_id}/predictions", response_model=Predictions)
async def predictions(state: State, slot: Model, img: Image, k: Annotated[int, Query()] = 5) -> Predictions:
    """The k most probable classes."""
    n = slot.info[-1]["channels"]
    if not 1 <= k <= n:
        raise Unprocessable(f"k: expected 1..{n}, got {echo(k)}")

    def work():
        import torch  # the logits, not Record.probabilities(): a graph net's GraphRecord has no such method

        v, i = torch.softmax(forward_record(state, slot, img).logits[0].float(), 0).cpu().topk(k)
        return v.tolist(), i.tolist()

    values, idx = await state.runner.run(work)
    return Predictions(image_id=img.image_id, model=slot.name, predictions=[
        {"class_index": c, "label": slot.label(c), "probability": v} for v, c in zip(values, idx)])


@router.get("/images/{image_id}/layers/{layer}", response_model=LayerSummary)
async def layer_summary(state: State, slot: Model, img: Image, layer: Layer) -> LayerSummary:
    """Per unit of the layer: max, min, mean and the (y, x) of the max."""
    from ...engine.unit_stats import layer_stats

    d = slot.layer(layer)
    stats = await state.runner.run(lambda: layer_stats(forward_record(state, slot, img), layer))
    return LayerSummary(image_id=img.image_id, model=slot.name, layer=layer, kind=d["kind"], shape=list(d["shape"]),
                        units=[UnitSummary(unit=s.unit, max=s.max, min=s.min, mean=s.mean,
                                           argmax=None if s.argmax is None else list(s.argmax)) for s in stats])


@router.get("/images/{image_id}/layers/{layer}/units/{unit}", response_model=UnitDetail)
async def unit_detail(state: State, slot: Model, img: Image, layer: Layer, unit: Unit) -> UnitDetail:
    """One unit: its strongest activation, where it is, and that position's receptive field."""
    slot.unit(layer, unit)

    def work():
        rec = forward_record(state, slot, img)
        position, box = slot.net.seed_box(rec, layer, unit)
        a = rec.activations[layer][0, unit]
        return float(a if position is None else a[position]), position, box

    top, position, box = await state.runner.run(work)
    base = f"/api/images/{img.image_id}/layers/{layer}/units/{unit}"
    return UnitDetail(unit=unit, layer=layer, max=top, position=None if position is None else list(position),
                      box=list(box), map_url=f"{base}/map.png{model_query(slot)}",
                      projection_url=f"{base}/projection{model_query(slot)}")


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/map.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def unit_map(state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                   size: Annotated[int, Query(description="side of the PNG in pixels")] = 112) -> Response:
    """The unit's feature map, colour-mapped (viridis), upscaled to ``size`` px."""
    slot.unit(layer, unit)
    if not 8 <= size <= 1024:
        raise Unprocessable(f"size: expected 8..1024 pixels, got {echo(size)}")

    def work():
        act = forward_record(state, slot, img).activations[layer][0]
        if act.dim() == 1:  # an fc unit: one value, coloured on the layer's scale 0..max
            return feature_map_png(np.atleast_2d(float(act[unit])), size, 0.0, max(float(act.max()), 1e-12))
        return feature_map_png(act[unit].float().cpu().numpy(), size)

    return Response(await state.runner.run(work), media_type="image/png", headers=PNG_HEADERS)


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/projection", response_class=Response,
            responses={200: {"content": {"image/png": {}, "application/octet-stream": {}},
                             "description": "PNG, or the raw float32 3xHxW array as .npy; point seeds "
                                            "carry X-Receptive-Field: top,left,bottom,right"}})
async def projection(state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                     method: Literal["deconv", "guided", "backprop"] = "deconv",
                     seed: Literal["point", "map"] = "point",
                     y: Annotated[int | None, Query(description="position in the layer's map (point seed)")] = None,
                     x: Annotated[int | None, Query()] = None,
                     format: Literal["png", "npy"] = "png") -> Response:
    """The unit's projection to input space (Sec. 2.1): deconvnet, guided backprop or gradient."""
    position = seed_position(slot.unit(layer, unit), y, x)

    def work():
        p, box = cached_projection(state, slot, img, layer, unit, method, seed, position)
        return (_npy(p) if format == "npy" else projection_png(p)), box

    body, box = await state.runner.run(work)
    headers = dict(PNG_HEADERS)
    if box is not None:
        headers["X-Receptive-Field"] = ",".join(str(int(v)) for v in box)
    return Response(body, media_type="application/octet-stream" if format == "npy" else "image/png", headers=headers)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
