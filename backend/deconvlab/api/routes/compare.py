"""Comparing a model with a second one or with a training snapshot (issue 16; contract: api/README.md).

=================================================================  =====================================
route                                                              answer
=================================================================  =====================================
``GET /compare/targets``                                           what ``other``/``epoch`` can name
``GET /images/{id}/layers/{layer}/units/{unit}/matches``           the unit's best matches in ``other``
``GET /images/{id}/snapshots/{epoch}/layers/{l}/units/{u}/...png``  a snapshot unit's projection
``GET /compare/cka``, ``GET /compare/cka.png``                     the layer-by-layer linear CKA
=================================================================  =====================================

Matrices are computed by ``deconvlab.compare`` on the inference thread and kept by
``compare_cache.CompareCache``. 404: unknown model, other, epoch, layer, other_layer; 422: unit,
k, n, seed, layers out of range, or ``by=position`` on maps of different sizes; 503: no data set.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from ..compare_cache import cache_of, subset
from ..deps import Image, Model, Split, State
from ..errors import Unprocessable, echo, library_errors
from ..params import Layer, Unit, image_count, model_query
from ..png import PNG_HEADERS, heat_map_png, projection_png
from ..runner import check_cancelled

router = APIRouter(tags=["compare"])

DEFAULT_N = 100
MAX_LAYERS = 40
NO_SNAPSHOT_INDEX = "a training snapshot has no top-k index"
OtherQ = Annotated[str, Query(description="the second model: a served model's id (the model itself is allowed)")]
EpochQ = Annotated[int | None, Query(description="a training snapshot of `other` (GET /api/compare/targets); "
                                                 "default: the served model itself")]
N = Annotated[int | None, Query(description="data-set images correlated over (default 100; at most the data set "
                                            "and DECONVLAB_EVOLUTION_MAX_N)")]
Seed = Annotated[int, Query(description="seed of the image subset")]


class Target(BaseModel):
    other: str
    epoch: int | None
    kind: Literal["model", "snapshot"]
    label: str
    layers: list[str]
    top_k: bool = Field(description="whether its top-k index is ready (never for a snapshot)")


class Targets(BaseModel):
    model: str
    targets: list[Target]


class OneToOne(BaseModel):
    unit: int | None
    correlation: float | None


class Match(BaseModel):
    unit: int
    correlation: float
    projection_url: str = Field(description="the match's projection on the same uploaded image (PNG)")
    top_url: str | None = Field(description="its top-9 (GET .../top) where that model has a ready index, else null")


class Matches(BaseModel):
    model: str
    layer: str
    unit: int
    other: str
    epoch: int | None
    other_layer: str
    images: int
    seed: int
    by: Literal["position", "max"]
    constant: bool = Field(description="the unit is constant over the images: no correlation, no matches")
    one_to_one: OneToOne
    matches: list[Match]
    top_status: str


class CKAOut(BaseModel):
    model: str
    other: str
    epoch: int | None
    images: int
    seed: int
    layers: list[str]
    other_layers: list[str]
    cka: list[list[float | None]] = Field(description="rows: layers; columns: other_layers; null where a layer "
                                                      "is constant over the images")
    features: str


@router.get("/compare/targets", response_model=Targets)
async def targets(state: State, slot: Model) -> Targets:
    """Every served model (this one first) and every training snapshot of each, with their layers."""
    cache = cache_of(state)
    slots = [slot] + [s for name, s in sorted(state.models.items()) if s is not slot and s.net is not None]
    out = [Target(other=s.name, epoch=None, kind="model", label=s.name, layers=[d["name"] for d in s.info],
                  top_k=s.index is not None) for s in slots]
    for s in slots:
        for e in sorted(cache.snapshot_epochs(state, s.name)):
            out.append(Target(other=s.name, epoch=e, kind="snapshot", label=f"{s.name}, epoch {e}",
                              layers=[d["name"] for d in s.info], top_k=False))
    return Targets(model=slot.name, targets=out)


def _other_layer(slot, layer: str, other, other_layer: str | None) -> str:
    if other_layer is not None:
        other.layer(other_layer)
        return other_layer
    if any(d["name"] == layer for d in other.info):
        return layer
    raise Unprocessable(f"other_layer: expected one of {', '.join(d['name'] for d in other.info)} (model "
                        f"{other.name!r} has no layer {layer!r}), got none")


def _top(other, layer: str) -> tuple[bool, str]:
    """Whether ``other`` answers the top-k route for ``layer``, and why not."""
    if other.epoch is not None:
        return False, NO_SNAPSHOT_INDEX
    if other.slot.index is None:
        return False, other.slot.index_status
    try:
        other.slot.index.layer_info(layer)
    except KeyError:
        return False, f"layer {layer} is not in the top-k index of model {other.name!r}"
    return True, "ready"


async def _correlations(request, state, slot, other, split, layer, other_layer, by, n, seed) -> tuple:
    from ...analyses import compare

    with library_errors():
        used = compare.resolve_by(slot.net, layer, other.net, other_layer, by)
    cache = cache_of(state)
    indices = subset(split, n, seed)

    def compute():
        with library_errors():
            r, _ = compare.correlations(slot.net, layer, other.net, other_layer, compare.DatasetImages(split, indices),
                                        by=used, progress=lambda done, total: check_cancelled())
        return {"r": r}

    key = cache.key(slot.net, other.net, split, n, seed, "matches", layer, other_layer, used)
    found = await cache.get_or_compute(state, key, compute, cost=2 * n, request=request)
    return found["r"], used


def _projection_url(img, other, layer: str, unit: int) -> str:
    if other.epoch is None:
        return f"/api/images/{img.image_id}/layers/{layer}/units/{unit}/projection?model={other.name}"
    return f"/api/images/{img.image_id}/snapshots/{other.epoch}/layers/{layer}/units/{unit}/projection.png" \
           f"?model={other.name}"


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/matches", response_model=Matches)
async def matches(request: Request, state: State, slot: Model, split: Split, img: Image, layer: Layer, unit: Unit,
                  other: OtherQ, epoch: EpochQ = None,
                  other_layer: Annotated[str | None, Query(description="layer of `other` (default: `layer`)")] = None,
                  k: Annotated[int, Query(description="matches listed: 1..other_layer's channels")] = 5,
                  n: N = None, seed: Seed = 0, by: Literal["auto", "position", "max"] = "auto") -> Matches:
    """The unit's most correlated units in ``other`` (Li et al. 2016), with projections and top-9 URLs."""
    from ...analyses.compare import best_matches, top_matches

    slot.unit(layer, unit)
    n = image_count(state, split, n, seed, DEFAULT_N)
    o = await cache_of(state).other(state, other, epoch)
    lb = _other_layer(slot, layer, o, other_layer)
    channels = o.layer(lb)["channels"]
    if not 1 <= k <= channels:
        raise Unprocessable(f"k: expected 1..{channels} (the units of {lb} in {other!r}), got {echo(k)}")
    r, used = await _correlations(request, state, slot, o, split, layer, lb, by, n, seed)
    pairs = top_matches(r, unit, k)
    partner, corr = best_matches(r, one_to_one=True)
    has_top, status = _top(o, lb)
    q = f"?model={o.name}"
    return Matches(model=slot.name, layer=layer, unit=unit, other=o.name, epoch=epoch, other_layer=lb, images=n,
                   seed=seed, by=used, constant=bool(np.isnan(r[unit]).all()),
                   one_to_one=OneToOne(unit=int(partner[unit]) if partner[unit] >= 0 else None,
                                       correlation=None if np.isnan(corr[unit]) else float(corr[unit])),
                   matches=[Match(unit=j, correlation=c, projection_url=_projection_url(img, o, lb, j),
                                  top_url=f"/api/layers/{lb}/units/{j}/top{q}" if has_top else None)
                            for j, c in pairs], top_status=status)


@router.get("/images/{image_id}/snapshots/{epoch}/layers/{layer}/units/{unit}/projection.png",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def snapshot_projection(state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                              epoch: Annotated[int, Path(description="a training snapshot's epoch")]) -> Response:
    """The unit's deconvnet projection (point seed at its strongest position in this image) in one snapshot."""
    o = await cache_of(state).other(state, slot.name, epoch)
    d = o.layer(layer)
    if not 0 <= unit < d["channels"]:
        raise Unprocessable(f"unit: expected 0..{d['channels'] - 1} for layer {layer}, got {echo(unit)}")

    def work():
        net = o.net

        def compute():
            rec = net.forward(net.preprocess(state.store.load(img)))
            with library_errors():
                p = net.project(rec, layer, unit).detach().float().cpu().numpy()
                return projection_png(p), net.seed_box(rec, layer, unit)[1]

        key = ("snapshot-projection", slot.name, epoch, img.image_id, layer, unit)
        return state.runner.cache.get_or_compute(key, compute)

    body, box = await state.runner.run(work)
    headers = {**PNG_HEADERS, "X-Receptive-Field": ",".join(str(int(v)) for v in box)}
    return Response(body, media_type="image/png", headers=headers)


def _layers(text: str | None, info: list[dict], what: str) -> list[str] | None:
    if text is None or not text.strip():
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if len(names) > MAX_LAYERS:
        raise Unprocessable(f"{what}: expected at most {MAX_LAYERS} layers, got {len(names)}")
    known = {d["name"] for d in info}
    for name in names:
        if name not in known:
            from ..errors import NotFound

            raise NotFound(f"unknown layer in {what}: {echo(name)} (expected some of {', '.join(sorted(known))})")
    return names


async def _cka(request, state, slot, split, other, epoch, n, seed, layers, other_layers):
    from ...analyses import compare

    n = image_count(state, split, n, seed, DEFAULT_N)
    o = await cache_of(state).other(state, other, epoch)
    la = _layers(layers, slot.info, "layers") or compare.default_layers(slot.net)
    lb = _layers(other_layers, o.info, "other_layers") or compare.default_layers(o.net)
    for names, what in ((la, "layers"), (lb, "other_layers")):
        if len(names) > MAX_LAYERS:
            raise Unprocessable(f"{what}: expected at most {MAX_LAYERS} layers (name them), got {len(names)}")
    cache = cache_of(state)
    indices = subset(split, n, seed)

    def compute():
        with library_errors():
            c = compare.cka(slot.net, o.net, compare.DatasetImages(split, indices), la, lb,
                            progress=lambda done, total: check_cancelled())
        return {"cka": c.matrix}

    key = cache.key(slot.net, o.net, split, n, seed, "cka", tuple(la), tuple(lb), compare.DEFAULT_GRID)
    found = await cache.get_or_compute(state, key, compute, cost=2 * n, request=request)
    return CKAOut(model=slot.name, other=o.name, epoch=epoch, images=n, seed=seed, layers=la, other_layers=lb,
                  cka=[[None if np.isnan(v) else float(v) for v in row] for row in found["cka"]],
                  features=f"a conv layer's map average-pooled to at most {compare.DEFAULT_GRID}x"
                           f"{compare.DEFAULT_GRID} cells, flattened with its channels; an fc layer as it is; "
                           f"centred over the images (examples = images)")


LayersQ = Annotated[str | None, Query(description="comma-separated layers (default: the model's main layers)")]


@router.get("/compare/cka", response_model=CKAOut)
async def cka(request: Request, state: State, slot: Model, split: Split, other: OtherQ, epoch: EpochQ = None,
              n: N = None, seed: Seed = 0, layers: LayersQ = None, other_layers: LayersQ = None) -> CKAOut:
    """Linear CKA (Kornblith et al. 2019) of every pair of layers of the model and ``other``."""
    return await _cka(request, state, slot, split, other, epoch, n, seed, layers, other_layers)


@router.get("/compare/cka.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def cka_png(request: Request, state: State, slot: Model, split: Split, other: OtherQ, epoch: EpochQ = None,
                  n: N = None, seed: Seed = 0, layers: LayersQ = None, other_layers: LayersQ = None) -> Response:
    """The CKA matrix as a heat map: viridis on 0..1, rows the model's layers, columns ``other``'s."""
    out = await _cka(request, state, slot, split, other, epoch, n, seed, layers, other_layers)
    m = np.array([[0.0 if v is None else v for v in row] for row in out.cka], dtype=np.float64)
    body = await state.runner.run(heat_map_png, m, 0.0, 1.0, max(4, 320 // max(m.shape)))
    return Response(body, media_type="image/png", headers=PNG_HEADERS)
