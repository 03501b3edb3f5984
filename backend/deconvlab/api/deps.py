"""The server's state and the route dependencies (``Annotated[..., Depends(...)]``).

``AppState`` is made once per app at start-up (``app.py``'s lifespan) and
hangs on ``app.state.deconvlab``: the settings, the runner, the image store,
and one ``ModelSlot`` per served model (its ``Net``, its top-k index or why
there is none). Routes receive what they need through the dependencies here,
which also answer 404 for an unknown model or image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request

from .config import Settings
from .errors import IndexUnavailable, ModelUnavailable, NotFound, Unprocessable
from .runner import Runner
from .storage import ImageStore, StoredImage, TooLarge


@dataclass
class ModelSlot:
    name: str
    net: Any = None  # deconvlab.net.Net once loaded
    error: str = ""  # why it failed to load
    index: Any = None  # top_k.TopKIndex when ready
    index_status: str = "no data set"  # "ready" | "missing" | "stale: <why>" | "building" | "no data set"
    info: list[dict] = field(default_factory=list)  # net.layer_info()

    def layer(self, layer: str) -> dict:
        """The layer's info; 404 naming it (and the model's layers) when unknown."""
        for d in self.info:
            if d["name"] == layer:
                return d
        raise NotFound(f"unknown layer: {layer!r} (model {self.name!r} has {', '.join(d['name'] for d in self.info)})")

    def unit(self, layer: str, unit: int) -> dict:
        d = self.layer(layer)
        if not 0 <= unit < d["channels"]:
            raise Unprocessable(f"unit: expected 0..{d['channels'] - 1} for layer {layer}, got {unit}")
        return d


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.runner = Runner(settings.queue_size, settings.retry_after_s, settings.cache_bytes)
        self.store = ImageStore(settings.state_dir() / "uploads", settings.max_pixels)
        self.occlusion_dir = settings.state_dir() / "occlusions"
        self.models: dict[str, ModelSlot] = {}
        self.default = ""
        self.split = None  # data.Split of the data set, when one is configured
        self.lock = threading.Lock()

    def slot(self, name: str | None) -> ModelSlot:
        name = name or self.default
        s = self.models.get(name)
        if s is None:
            raise NotFound(f"unknown model: {name!r} (expected one of {', '.join(sorted(self.models)) or 'none'})")
        if s.net is None:
            raise ModelUnavailable(f"model {name!r} failed to load: {s.error}")
        return s


def get_state(request: Request) -> AppState:
    return request.app.state.deconvlab


State = Annotated[AppState, Depends(get_state)]


def get_slot(state: State, model: Annotated[str | None, Query(
        description="model id (default: the registry's default model)")] = None) -> ModelSlot:
    return state.slot(model)


Model = Annotated[ModelSlot, Depends(get_slot)]


def get_image(state: State, image_id: Annotated[str, Path(description="id from POST /api/images")]) -> StoredImage:
    rec = state.store.get(image_id)
    if rec is None:
        raise NotFound(f"unknown image: {image_id!r} (upload it with POST /api/images)")
    return rec


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


# ------------------------------------------------------------------ uploads

async def read_upload(request: Request, field_name: str = "file") -> tuple[bytes, str]:
    """The bytes and file name of the multipart part ``field_name``, counted while they stream in.

    The size limit (``Settings.max_upload_bytes``) applies to the part's
    bytes as they arrive, whatever Content-Length says; past it the rest of
    the body is read and dropped (up to a hard cap, so that the client gets
    the 413 rather than a reset connection) and ``TooLarge`` is raised.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    state: AppState = request.app.state.deconvlab
    limit = state.settings.max_upload_bytes
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise Unprocessable(f"upload: expected a multipart/form-data body with a {field_name!r} field, "
                            f"got content type {ctype.decode('latin-1') or 'none'!r}")
    part = {"name": None, "filename": "", "headers": {}, "field": b"", "value": b""}
    found: dict = {}
    chunks: list[bytes] = []
    size = [0, False]  # bytes of our part, over the limit?

    def on_part_begin():
        part.update(name=None, filename="", headers={}, field=b"", value=b"")

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished():
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        part["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(data, start, end):
        if part["name"] != field_name or "done" in found:
            return
        size[0] += end - start
        if size[0] > limit:
            size[1] = True
            chunks.clear()
        elif not size[1]:
            chunks.append(bytes(data[start:end]))

    def on_part_end():
        if part["name"] == field_name and "done" not in found:
            found["done"] = True
            found["filename"] = part["filename"]

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    body_cap = limit + (1 << 20)  # the whole body: the file plus at most 1 MiB of other parts and headers
    hard_cap = 4 * limit + (1 << 20)
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_cap:
                size[1] = True
            if size[1]:
                if received > hard_cap:
                    break
                continue  # drain: the answer is 413 either way
            parser.write(chunk)
        if not size[1]:
            parser.finalize()
    except FormParserError as e:
        raise Unprocessable(f"upload: malformed multipart body ({e})") from None
    if size[1]:
        raise TooLarge(f"upload too large: expected at most {limit} bytes, got more than {limit}"
                       + ("" if size[0] > limit else " in the request body"))
    if "done" not in found:
        raise Unprocessable(f"upload: expected a multipart field named {field_name!r}, got none")
    return b"".join(chunks), found.get("filename", "")


UPLOAD_OPENAPI = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF"}}}}}}}
