"""``/openapi.json`` as the server behaves (issue 12: "an honest OpenAPI document").

FastAPI's own document says a 422 is an array of validation errors (the
server answers ``{"detail": str}``), documents no 404, 413, 429 or 503, and
knows none of the bounds that the routes check themselves. ``install(app)``
rewrites it once, at the first request for it:

=============================  =================================================================
what                           the document says
=============================  =================================================================
every 4xx/5xx answer           ``Error``: ``{"detail": str}`` (the 500 adds ``error_id``)
404                            on every operation with a path parameter or a ``model`` query
422                            on every operation with a parameter or a body
400, 413                       on every operation with a body (400: not UTF-8)
429 (``Retry-After``)          on every operation that runs on the inference thread
503                            where a model may have failed to load, or the data set is needed
bounds                         ``unit``, ``rank``, ``image_index``, ``y``, ``x``, ``seed`` >= 0;
                               ``k`` >= 1; ``size`` 8..1024; ``n`` 1..200 (samples) or
                               1..``evolution_max_n`` (evolution); occlusion ``size``/``stride``
                               1..the largest input side, ``class_index`` >= 0
enums                          ``model``: the served models; ``layer``: their layers' names;
                               ``kind``: the three occlusion maps
=============================  =================================================================

Upper bounds that depend on the layer or the model (a unit below the
layer's channels, ``k`` up to the classes or the index's k, a square no
larger than the input) are said in the parameter's description: they are
422 answers naming the bound.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .results import KINDS

ERROR = {"type": "object", "required": ["detail"], "additionalProperties": True,
         "properties": {"detail": {"type": "string", "description": "one sentence: what was expected, what came"},
                        "error_id": {"type": "string", "description": "500 only: the id in the server log"}}}
_REF = {"$ref": "#/components/schemas/Error"}
_WHY = {"400": "a body that cannot be read as text (not UTF-8)",
        "404": "unknown model, layer, image, occlusion, rank or data-set image (the detail names it)",
        "413": "request body over the byte limit (or an upload over the byte or pixel limit)",
        "415": "upload format outside JPEG, PNG, WebP, BMP, GIF, TIFF",
        "422": "a value out of range or of the wrong type (the detail names the parameter and the bound), "
               "or a stored image too long and thin (over max_aspect)",
        "429": "the inference queue's budget of forward passes is spent; retry after Retry-After seconds",
        "503": "the model failed to load, or the server has no data set / top-k index (the detail says which)",
        "500": "an unexpected server error: the detail and error_id, which the server log also shows"}
NO_RUNNER = {"health", "ready", "models", "image_info", "dataset_image", "dataset_samples"}
NEEDS_DATA = {"top", "top_patch", "top_projection", "dataset_image", "dataset_samples", "evolution", "evolution_png"}
BOUNDS = {"unit": {"minimum": 0}, "rank": {"minimum": 0}, "image_index": {"minimum": 0}, "y": {"minimum": 0},
          "x": {"minimum": 0}, "seed": {"minimum": 0}, "k": {"minimum": 1}}
BODY_BOUNDS = {"size": {"minimum": 1}, "stride": {"minimum": 1}, "class_index": {"minimum": 0}}


def _error(status: str) -> dict:
    out = {"description": _WHY[status], "content": {"application/json": {"schema": _REF}}}
    if status == "429":
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


def _bound(param: dict, op_name: str, max_n: int, enums: dict) -> None:
    name, schema = param["name"], param.setdefault("schema", {})
    target = next((s for s in schema.get("anyOf", []) if s.get("type") in ("integer", "string")), schema)
    extra = dict(BOUNDS.get(name, {}))
    if name in enums and enums[name]:
        extra = {"enum": enums[name]}
    if name == "size" and op_name == "unit_map":
        extra = {"minimum": 8, "maximum": 1024}
    elif name == "n":
        extra = {"minimum": 1, "maximum": 200 if op_name == "dataset_samples" else max_n}
    target.update(extra)


def _operation(op: dict, path: str, max_n: int, enums: dict) -> None:
    name = op.get("operationId", "").split("_api_")[0]
    params = op.get("parameters", [])
    for p in params:
        _bound(p, name, max_n, enums)
    statuses = {"500"}
    if params or "requestBody" in op:
        statuses.add("422")
    if "{" in path or any(p["name"] == "model" for p in params):
        statuses.add("404")
    if "requestBody" in op:
        statuses |= {"400", "413"}
    if name == "upload":
        statuses |= {"415"}
    if name not in NO_RUNNER:
        statuses.add("429")
    if any(p["name"] == "model" for p in params) or name in NEEDS_DATA:
        statuses.add("503")
    responses = op.setdefault("responses", {})
    for s in sorted(statuses):
        responses[s] = {**_error(s), "description": responses.get(s, {}).get("description") or _WHY[s]}
        responses[s]["content"] = {"application/json": {"schema": _REF}}


def _enums(app: FastAPI) -> dict:
    """The served models and their layers' names (the values a ``model`` or ``layer`` may take)."""
    state = getattr(app.state, "deconvlab", None)
    if state is None:  # the document asked for before start-up
        return {}
    slots = [s for s in state.models.values() if s.net is not None]
    layers = sorted({d["name"] for s in slots for d in s.info})
    return {"model": sorted(s.name for s in slots), "layer": layers, "kind": list(KINDS),
            "side": max((s.net.meta.input_size for s in slots), default=None)}


def honest_openapi(app: FastAPI, max_n: int) -> dict:
    enums = _enums(app)
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR
    for name, bound in BODY_BOUNDS.items():
        prop = schemas.get("OcclusionRequest", {}).get("properties", {}).get(name)
        if prop is not None:
            target = next((s for s in prop.get("anyOf", []) if s.get("type") == "integer"), prop)
            target.update(bound)
            if name in ("size", "stride") and enums.get("side"):  # at most the largest served input side
                target["maximum"] = enums["side"]
    for path, item in doc["paths"].items():
        for op in item.values():
            _operation(op, path, max_n, enums)
    return doc


def install(app: FastAPI, max_n: int) -> None:
    """Serve ``honest_openapi`` at ``app.openapi_url`` (made once, then kept)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = honest_openapi(app, max_n)
        return app.openapi_schema

    app.openapi = openapi
