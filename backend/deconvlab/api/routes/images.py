"""Uploads and everything about one uploaded image: input view, predictions, layers, units, projections."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response

from ..deps import UPLOAD_OPENAPI, Image, Model, ModelSlot, State, read_upload
from ..errors import Unprocessable, library_errors
from ..png import PNG_HEADERS, feature_map_png, png_bytes, projection_png
from ..schemas import ImageInfo, LayerSummary, Predictions, UnitDetail, UnitSummary

router = APIRouter(tags=["images"])

Layer = Annotated[str, Path(description="paper layer name: conv1 .. conv5, fc6 .. fc8")]
Unit = Annotated[int, Path(description="unit (channel) of the layer")]


def record(state, slot: ModelSlot, img):
    """The forward record of ``img`` under ``slot``'s model, from the cache (on the worker thread)."""
    net = slot.net

    def compute():
        return net.forward(net.preprocess(state.store.load(img)))

    return state.runner.cache.get_or_compute(("record", slot.name, img.image_id), compute)


def _q(slot: ModelSlot) -> str:
    return f"?model={slot.name}"


@router.post("/images", status_code=201, response_model=ImageInfo, openapi_extra=UPLOAD_OPENAPI,
             responses={413: {"description": "over the byte or pixel limit"},
                        415: {"description": "format outside JPEG, PNG, WebP, BMP, GIF, TIFF"},
                        422: {"description": "empty, truncated or corrupt image"}})
async def upload(request: Request, state: State) -> ImageInfo:
    """Store an image (multipart field ``file``); its id is a hash of its bytes."""
    data, _ = await read_upload(request)
    rec, _ = await state.runner.run(state.store.put, data)
    return ImageInfo(**rec.public())


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
    classes = list(slot.net.meta.classes)
    n = slot.info[-1]["channels"]
    if not 1 <= k <= n:
        raise Unprocessable(f"k: expected 1..{n}, got {k}")

    def work():
        p = record(state, slot, img).probabilities()[0].float().cpu()
        v, i = p.topk(k)
        return v.tolist(), i.tolist()

    values, idx = await state.runner.run(work)
    return Predictions(image_id=img.image_id, model=slot.name, predictions=[
        {"class_index": c, "label": classes[c] if c < len(classes) else str(c), "probability": v}
        for v, c in zip(values, idx)])


@router.get("/images/{image_id}/layers/{layer}", response_model=LayerSummary)
async def layer_summary(state: State, slot: Model, img: Image, layer: Layer) -> LayerSummary:
    """Per unit of the layer: max, mean and the (y, x) of the max."""
    d = slot.layer(layer)

    def work():
        a = record(state, slot, img).activations[layer][0].float()
        flat = a.reshape(a.shape[0], -1)
        mx, am = flat.max(dim=1)
        mean = flat.mean(dim=1)
        W = a.shape[-1] if a.dim() == 3 else 1
        return mx.cpu().tolist(), mean.cpu().tolist(), am.cpu().tolist(), W

    mx, mean, am, W = await state.runner.run(work)
    conv = d["kind"] == "conv"
    return LayerSummary(image_id=img.image_id, model=slot.name, layer=layer, kind=d["kind"],
                        shape=list(d["shape"]), units=[
                            UnitSummary(unit=u, max=mx[u], mean=mean[u],
                                        argmax=[am[u] // W, am[u] % W] if conv else None)
                            for u in range(len(mx))])


@router.get("/images/{image_id}/layers/{layer}/units/{unit}", response_model=UnitDetail)
async def unit_detail(state: State, slot: Model, img: Image, layer: Layer, unit: Unit) -> UnitDetail:
    """One unit: its strongest activation, where it is, and that position's receptive field."""
    d = slot.unit(layer, unit)
    S = slot.net.meta.input_size

    def work():
        a = record(state, slot, img).activations[layer][0, unit].float()
        if a.dim() == 0:
            return float(a), None, [0, 0, S, S]
        i = int(a.flatten().argmax())
        y, x = divmod(i, a.shape[-1])
        return float(a.flatten()[i]), [y, x], list(slot.net.receptive_field(layer, y, x))

    mx, pos, box = await state.runner.run(work)
    base = f"/api/images/{img.image_id}/layers/{layer}/units/{unit}"
    return UnitDetail(unit=unit, layer=d["name"], max=mx, position=pos, box=box,
                      map_url=f"{base}/map.png{_q(slot)}", projection_url=f"{base}/projection{_q(slot)}")


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/map.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def unit_map(state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                   size: Annotated[int, Query(description="side of the PNG in pixels")] = 112) -> Response:
    """The unit's feature map, colour-mapped (viridis), upscaled to ``size`` px."""
    slot.unit(layer, unit)
    if not 8 <= size <= 1024:
        raise Unprocessable(f"size: expected 8..1024 pixels, got {size}")

    def work():
        act = record(state, slot, img).activations[layer][0]
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
    d = slot.unit(layer, unit)
    if (y is None) != (x is None):
        raise Unprocessable(f"position: expected both y and x, or neither, got y={y}, x={x}")
    position = None if y is None else (y, x)
    if position is not None and d["kind"] == "conv":
        _, H, W = d["shape"]
        if not (0 <= y < H and 0 <= x < W):
            raise Unprocessable(f"position: expected y in 0..{H - 1} and x in 0..{W - 1} for layer {layer}, "
                                f"got ({y}, {x})")
    net = slot.net

    def work():
        rec = record(state, slot, img)

        def compute():
            with library_errors():
                p = net.project(rec, layer, unit, method=method, seed=seed, position=position)
            return p.detach().float().cpu().numpy()

        key = ("projection", slot.name, img.image_id, layer, unit, method, seed, position)
        p = state.runner.cache.get_or_compute(key, compute)
        box = None
        if seed == "point":
            a = rec.activations[layer][0, unit]
            if a.dim() == 0:
                box = (0, 0, net.meta.input_size, net.meta.input_size)
            else:
                py, px = position if position is not None else divmod(int(a.flatten().argmax()), a.shape[-1])
                box = net.receptive_field(layer, py, px)
        body = _npy(p) if format == "npy" else projection_png(p)
        return body, box

    body, box = await state.runner.run(work)
    headers = dict(PNG_HEADERS)
    if box is not None:
        headers["X-Receptive-Field"] = ",".join(str(int(v)) for v in box)
    media = "application/octet-stream" if format == "npy" else "image/png"
    return Response(body, media_type=media, headers=headers)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
