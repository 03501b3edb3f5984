"""One unit's page as one self-contained HTML file (issue 16, "Share"): ``GET .../units/{unit}/report.html``.

The page is ``analyses.unit_report.build_report`` of the uploaded image (the
stored bytes, so its sha256 is the one ``image_id`` is a prefix of), with what
this server already holds and nothing more:

===============  =================================================================  ========================
section          taken from                                                         absent when
===============  =================================================================  ========================
projections      the projection route's cache (``records.projection``), 3 methods  never
top-9            the model's top-k index (``slot.index``)                           no index (its status)
evolution        a scan the server has already made (``state.evolutions``; the     not scanned yet, no
                 largest ``n`` kept in memory); never started for a report          snapshots, no data set
occlusion        the stored results (``state.occlusions``) of this model and        none stored; never
                 image, those tracking this unit first (at most ``MAX_OCCLUSIONS``)  computed for a report
sanity           the stored sanity check (``sanity_store``, seed 0; never run)       none stored
===============  =================================================================  ========================

Query: ``method`` (the one the page names first; all three are shown), ``seed``
and ``y``/``x`` as for the projection route (422 the same way), ``download=true``
for ``Content-Disposition: attachment``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from ..deps import Image, Model, State
from ..errors import library_errors
from ..params import Layer, Unit, seed_position
from ..records import forward_record, projection as cached_projection

router = APIRouter(tags=["images"])

MAX_OCCLUSIONS = 4  # stored results shown per report, this unit's first


def stored_occlusions(state, model: str, image_id: str, layer: str, unit: int) -> list[dict]:
    """The occlusion results stored for (model, image), as ``unit_report.occlusion_data`` mappings: those
    tracking ``layer:unit`` first, then ``layer``'s, then the rest; read from the files, never computed."""
    found = []
    root = state.occlusions.root
    for js in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            meta = json.loads(js.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("model") != model or meta.get("image_id") != image_id:
            continue
        got = state.occlusions.get(js.stem)
        if got is not None:
            found.append({**got[0], **got[1]})
    rank = (lambda d: (d["layer"] != layer or int(d["feature_map"]) != unit, d["layer"] != layer))
    return sorted(found, key=rank)[:MAX_OCCLUSIONS]


def cached_evolution(state, slot):
    """The Evolution of the largest ``n`` the server has scanned for this model (any seed), or
    ``(None, why)``. Reads the cache's scans (``EvolutionCache.views``) and starts none."""
    from ...analyses.evolution import snapshot_paths

    try:
        snapshot_paths(slot.name, state.settings.models_path())
    except (FileNotFoundError, KeyError):
        return None, f"no training snapshots for model {slot.name!r}"
    if state.split is None:
        return None, "the server has no data set to scan the training snapshots over (DECONVLAB_DATA)"
    views = state.evolutions.views(slot.name)
    if not views:
        return None, ("not scanned on this server yet (GET /api/layers/{layer}/units/{unit}/evolution "
                      "scans the snapshots)")
    return max(views, key=lambda v: len(v.image_indices)), ""


def cached_sanity(state, slot, img, layer: str, unit: int, method: str):
    """The sanity check stored for this unit (``sanity_store``: the report's method first, then the
    others; cascading, then independent; seed 0) with its steps' projections, or ``(None, why)``."""
    from ...analyses.unit_report import METHODS
    from ..sanity_store import sanity_store

    store = sanity_store(state)
    for m in (method, *[m for m in METHODS if m != method]):
        for mode in ("cascading", "independent"):
            sid = store.key(slot.name, img.image_id, layer, unit, m, mode, 0)
            found = store.get(sid)
            if found is None:
                continue
            steps = [dict(s, projection=store.projection(sid, k)) for k, s in enumerate(found["steps"])]
            if all(s["projection"] is not None for s in steps):
                return {**found, "steps": steps}, ""
    return None, (f"no sanity check computed for this unit (GET /api/images/{img.image_id}/layers/{layer}/units/"
                  f"{unit}/sanity runs one)")


def _build(state, slot, img, layer: str, unit: int, method: str, seed: str, position, evolution):
    """The report, on the worker thread."""
    from ...analyses.unit_report import METHODS, build_report
    from ...index.store import model_sha256

    net = slot.net
    rec = forward_record(state, slot, img)
    projections = {m: cached_projection(state, slot, img, layer, unit, m, seed, position)[0] for m in METHODS}
    weights = state.runner.cache.get_or_compute(("weights_sha256", slot.name), lambda: model_sha256(net))
    absent = {}
    if slot.index is None:
        absent["top"] = f"the server's top-k index for model {slot.name!r} is {slot.index_status}"
    ev, why = evolution
    if ev is None:
        absent["evolution"] = why.replace("{layer}", layer).replace("{unit}", str(unit))
    sanity, why = cached_sanity(state, slot, img, layer, unit, method)
    if sanity is None:
        absent["sanity"] = why
    occlusions = stored_occlusions(state, slot.name, img.image_id, layer, unit)
    with library_errors():
        return build_report(net, state.store.read(img), layer, unit, method=method, seed=seed, position=position,
                            index=slot.index, evolution=ev, occlusion=occlusions or None, sanity=sanity,
                            absent=absent, rec=rec, projections=projections, weights_sha256=weights).to_html()


@router.get("/images/{image_id}/layers/{layer}/units/{unit}/report.html", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}},
                             "description": "one self-contained HTML page (every image inline, no script)"}})
async def report_html(request: Request, state: State, slot: Model, img: Image, layer: Layer, unit: Unit,
                      method: Literal["deconv", "guided", "backprop"] = "deconv",
                      seed: Literal["point", "map"] = "point",
                      y: Annotated[int | None, Query(description="position in the layer's map (point seed)")] = None,
                      x: Annotated[int | None, Query()] = None,
                      download: Annotated[bool, Query(description="answer as an attachment")] = False
                      ) -> HTMLResponse:
    """The unit's page: input, the three projections, feature map, top-9, evolution, occlusion and
    sanity when the server has them, and a provenance block; one file with every image inline."""
    position = seed_position(slot.unit(layer, unit), y, x)
    evolution = cached_evolution(state, slot)
    body = await state.runner.run(_build, state, slot, img, layer, unit, method, seed, position, evolution,
                                  cost=10, request=request)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{slot.name}-{layer}-{unit}") + ".html"
    disposition = f'{"attachment" if download else "inline"}; filename="{name}"'
    return HTMLResponse(body, headers={"Content-Disposition": disposition, "Cache-Control": "no-cache"})
