"""Path and query parameters the routes share, and the ``?model=`` part of the URLs they answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

Layer = Annotated[str, Path(description="a layer of the model (GET /api/models): conv1 .. conv5, fc6 .. fc8 "
                                        "for the paper nets; module paths and fx op names for others "
                                        "(layer3.1, layer1.0.add)")]
Unit = Annotated[int, Path(description="unit (channel) of the layer")]
Rank = Annotated[int, Path(description="0 = the strongest")]


def model_query(slot) -> str:
    """``?model=<id>``: the query that keeps a URL on ``slot``'s model."""
    return f"?model={slot.name}"
