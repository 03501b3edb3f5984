"""Liveness, readiness and the served models."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import State
from ..schemas import Health, LayerInfo, ModelInfo, Models, Ready

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/ready", response_model=Ready)
async def ready(state: State) -> Ready:
    """Readiness: every model loaded (and, per model, the top-k index's state)."""
    models = {n: s.net is not None for n, s in state.models.items()}
    index = {n: s.index_status for n, s in state.models.items()}
    return Ready(ready=bool(models) and all(models.values()), models=models, index=index)


@router.get("/models", response_model=Models)
async def models(state: State) -> Models:
    """Every loaded model: architecture, input size, class labels, layers."""
    out = []
    for name, s in state.models.items():
        if s.net is None:
            continue
        m = s.net.meta
        out.append(ModelInfo(id=name, arch=m.arch, input_size=m.input_size, classes=list(m.classes),
                             layers=[LayerInfo(**{**d, "shape": list(d["shape"])}) for d in s.info],
                             engine=s.net.engine, untraceable=s.net.untraceable))
    return Models(default=state.default, models=out)
