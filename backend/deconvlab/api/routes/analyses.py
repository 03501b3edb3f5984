"""Feature evolution over the training snapshots (Zeiler & Fergus 2013, Fig. 4), for the browser app.

``GET /api/layers/{layer}/units/{unit}/evolution`` answers, for each training
snapshot of the model, the unit's strongest activation over a fixed subset of
the server's data set (``n`` images drawn with ``seed``; default 500) and the
URL of its deconvnet projection, ``.../evolution/{epoch}.png`` (cropped to the
receptive field, as the top-k projections are).

The first request for a model (and ``n``, ``seed``) loads its snapshots and
scans the subset once through all of them (``evolution.Evolution``); the scan
runs on the inference thread one batch per job, so other requests are served
in between, and concurrent requests wait for the same scan. The finished scan
is saved under the server's state folder (``evolution/<key>.npz``, keyed by
the snapshots' bytes, the data listing, ``n`` and ``seed``), so a restarted
server only loads the snapshots (about 20 s of scanning for the default model
and 500 images on two CPU cores, against well under a second). Afterwards any
unit of any layer is a lookup; a projection is one forward pass and one
deconvnet pass. The last ``KEEP`` scanned models are kept.

404: unknown model or layer, or a model without training snapshots
(``"snapshots"`` in its registry entry); 422: unit, ``n`` or ``seed`` out of
range; 503: the server has no data set.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from ..deps import Model, State
from ..errors import IndexUnavailable, NotFound, Unprocessable, library_errors
from ..png import PNG_HEADERS, png_bytes

router = APIRouter(tags=["analyses"])

KEEP = 2  # scanned (model, n, seed) kept in memory; each holds one Net per snapshot
DEFAULT_N = 500

Layer = Annotated[str, Path(description="paper layer name: conv1 .. conv5, fc6 .. fc8")]
Unit = Annotated[int, Path(description="unit (channel) of the layer")]
N = Annotated[int | None, Query(description="data-set images searched (default 500, at most the data set)")]
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


class _Entry:
    def __init__(self):
        self.lock = asyncio.Lock()
        self.ev = None  # evolution.Evolution, scanned
        self.png: "OrderedDict[tuple, bytes]" = OrderedDict()


def _entries(state) -> "OrderedDict[tuple, _Entry]":
    return state.__dict__.setdefault("evolutions", OrderedDict())


def _subset(state, n: int | None, seed: int) -> int:
    if state.split is None:
        raise IndexUnavailable("the server has no data set to search for the strongest activations: "
                               "set DECONVLAB_DATA to an ImageFolder root")
    total = len(state.split)
    n = min(DEFAULT_N, total) if n is None else n
    if not 1 <= n <= total:
        raise Unprocessable(f"n: expected 1..{total} (the data set's images), got {n}")
    if seed < 0:
        raise Unprocessable(f"seed: expected a non-negative integer, got {seed}")
    return n


async def _evolution(state, slot, n: int, seed: int):
    """The scanned ``evolution.Evolution`` of ``slot``'s snapshots over ``n`` images (built on first use)."""
    from ...analyses.evolution import build_evolution, snapshot_paths

    key = (slot.name, n, seed)
    entries = _entries(state)
    entry = entries.get(key)
    if entry is None:
        try:
            snapshot_paths(slot.name, state.settings.models_path())
        except (FileNotFoundError, KeyError) as e:
            raise NotFound(f"no training snapshots for model {slot.name!r}: "
                           f"{e.args[0] if isinstance(e, KeyError) else e}") from None
        entry = entries[key] = _Entry()
        while len(entries) > KEEP:
            entries.popitem(last=False)
    entries.move_to_end(key)
    async with entry.lock:
        if entry.ev is None:
            def build():
                with library_errors():
                    return build_evolution(slot.name, state.settings.data, state.split, n, seed,
                                           device=state.settings.device, root=state.settings.models_path())

            ev = await state.runner.run(build)
            saved = state.settings.state_dir() / "evolution" / f"{ev.key[:24]}.npz"
            if not await state.runner.run(ev.load_scans, saved):
                for first in ev.batches():  # one job per batch: other requests get the thread in between
                    await state.runner.run(ev.scan_batch, first)
                await state.runner.run(ev.save, saved)
            entry.ev = ev
    return entry


@router.get("/layers/{layer}/units/{unit}/evolution", response_model=Evolution)
async def evolution(state: State, slot: Model, layer: Layer, unit: Unit, n: N = None, seed: Seed = 0) -> Evolution:
    """Fig. 4: the unit's strongest activation over ``n`` data-set images at each training snapshot."""
    slot.unit(layer, unit)
    n = _subset(state, n, seed)
    entry = await _evolution(state, slot, n, seed)
    with library_errors():
        steps = entry.ev.unit(layer, unit)
    labels, targets = state.split.labels, state.split.targets
    q = f"?model={slot.name}&n={n}&seed={seed}"
    return Evolution(model=slot.name, layer=layer, unit=unit, images=n, seed=seed, snapshots=[EvolutionSnapshot(
        epoch=s.epoch, value=s.value, image_index=s.image_index, label=labels[targets[s.image_index]],
        position=None if s.position is None else list(s.position), box=list(s.box),
        projection_url=f"/api/layers/{layer}/units/{unit}/evolution/{s.epoch}.png{q}") for s in steps])


@router.get("/layers/{layer}/units/{unit}/evolution/{epoch}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def evolution_png(state: State, slot: Model, layer: Layer, unit: Unit,
                        epoch: Annotated[int, Path(description="a snapshot's epoch")],
                        n: N = None, seed: Seed = 0) -> Response:
    """The deconvnet projection of the unit's strongest activation at ``epoch``, cropped to its receptive field."""
    from ...render import projection_image

    slot.unit(layer, unit)
    n = _subset(state, n, seed)
    entry = await _evolution(state, slot, n, seed)
    key = (layer, unit, epoch)
    body = entry.png.get(key)
    if body is None:
        def work():
            with library_errors():
                ev = entry.ev
                step = next((s for s in ev.unit(layer, unit) if s.epoch == epoch), None)
                if step is None:
                    raise KeyError(f"unknown epoch: expected one of {ev.epochs}, got {epoch}")
                t, l, b, r = step.box
                return png_bytes(projection_image(ev.projection(layer, unit, epoch)).crop((l, t, r, b)))

        body = await state.runner.run(work)
        entry.png[key] = body
        while len(entry.png) > 256:
            entry.png.popitem(last=False)
    return Response(body, media_type="image/png", headers=PNG_HEADERS)
