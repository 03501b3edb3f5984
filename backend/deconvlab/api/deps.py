"""The route dependencies (``Annotated[..., Depends(...)]``), and nothing else.

=========  =======================================================  ==========================
name       what a route receives                                    answers
=========  =======================================================  ==========================
``State``  the app's ``state.AppState``
``Model``  the ``state.ModelSlot`` of ``?model=`` (default model)   404 unknown, 503 not loaded
``Image``  the ``storage.StoredImage`` of path ``{image_id}``        404 unknown or malformed id
``Index``  the model's top-k index (``index.TopKIndex``)            503 missing, stale, building
``Split``  the server's data set (``data.Split``)                   503 none configured
=========  =======================================================  ==========================
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request

from .errors import IndexUnavailable, NotFound, echo
from .state import AppState, ModelSlot
from .storage import StoredImage


def get_state(request: Request) -> AppState:
    return request.app.state.deconvlab


State = Annotated[AppState, Depends(get_state)]


def get_slot(state: State, model: Annotated[str | None, Query(
        description="model id (default: the registry's default model)")] = None) -> ModelSlot:
    return state.slot(model)


Model = Annotated[ModelSlot, Depends(get_slot)]


def get_image(state: State, image_id: Annotated[str, Path(description="id from POST /api/images")]) -> StoredImage:
    stored = state.store.get(image_id)
    if stored is None:
        raise NotFound(f"unknown image: {echo(image_id)} (upload it with POST /api/images)")
    return stored


Image = Annotated[StoredImage, Depends(get_image)]


def get_index(slot: Model):
    if slot.index is None:
        if slot.index_status == "missing":
            raise IndexUnavailable(f"top-k index for model {slot.name!r} is missing: build it with "
                                   f"`deconvlab index --model {slot.name}`")
        if slot.index_status == "no data set":
            raise IndexUnavailable(f"top-k index for model {slot.name!r} is missing: the server has no data "
                                   f"set (set DECONVLAB_DATA)")
        raise IndexUnavailable(f"top-k index for model {slot.name!r} is {slot.index_status}")
    return slot.index


Index = Annotated[Any, Depends(get_index)]


def get_split(state: State):
    if state.split is None:
        raise IndexUnavailable("the server has no data set: set DECONVLAB_DATA to an ImageFolder root")
    return state.split


Split = Annotated[Any, Depends(get_split)]
