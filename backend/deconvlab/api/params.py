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


def image_count(state, split, n: int | None, seed: int, default: int) -> int:
    """``n`` and ``seed`` of a route that draws images from the data set: ``n`` (``default``
    when absent) must lie in 1..min(the split's size, DECONVLAB_EVOLUTION_MAX_N), ``seed`` be
    non-negative; else a 422 that says so."""
    from .errors import Unprocessable, echo

    top = min(len(split), state.settings.evolution_max_n)
    n = min(default, top) if n is None else n
    if not 1 <= n <= top:
        raise Unprocessable(f"n: expected 1..{top} (the data set's images, at most DECONVLAB_EVOLUTION_MAX_N), "
                            f"got {echo(n)}")
    if seed < 0:
        raise Unprocessable(f"seed: expected a non-negative integer, got {echo(seed)}")
    return n


def seed_position(d: dict, y: int | None, x: int | None) -> tuple[int, int] | None:
    """The point seed's (y, x) from the query, checked against the layer's map ``d`` (a
    ``layer_info`` entry); a 422 otherwise."""
    from .errors import Unprocessable, echo

    if (y is None) != (x is None):
        raise Unprocessable(f"position: expected both y and x, or neither, got y={echo(y)}, x={echo(x)}")
    if y is not None and d["kind"] == "conv":
        _, H, W = d["shape"]
        if not (0 <= y < H and 0 <= x < W):
            raise Unprocessable(f"position: expected y in 0..{H - 1} and x in 0..{W - 1} for layer {d['name']}, "
                                f"got ({echo(y)}, {echo(x)})")
    return None if y is None else (y, x)
