"""The library calls the image routes share, through the runner's cache (run them on the worker thread).

=====================================================  ==============================================
call                                                   what it gives
=====================================================  ==============================================
``forward_record(state, slot, image)``                 ``Net.forward`` of the uploaded image (cached
                                                       per model and image)
``projection(state, slot, image, layer, unit, ...)``   ``Net.project`` as float32 3xHxW, and the
                                                       point seed's receptive-field box (``None`` for a
                                                       map seed); cached per all its arguments
=====================================================  ==============================================
"""

from __future__ import annotations

import numpy as np

from .errors import library_errors


def forward_record(state, slot, image):
    """The forward record (``engine.switches.Record``) of stored ``image`` under ``slot``'s model."""
    net = slot.net

    def compute():
        return net.forward(net.preprocess(state.store.load(image)))

    return state.runner.cache.get_or_compute(("record", slot.name, image.image_id), compute)


def projection(state, slot, image, layer: str, unit: int, method: str, seed: str,
               position: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """``(projection, box)``: the unit's projection and, for a point seed, the input box it sees."""
    net = slot.net
    rec = forward_record(state, slot, image)

    def compute():
        with library_errors():
            return net.project(rec, layer, unit, method=method, seed=seed,
                               position=position).detach().float().cpu().numpy()

    key = ("projection", slot.name, image.image_id, layer, unit, method, seed, position)
    p = state.runner.cache.get_or_compute(key, compute)
    box = net.seed_box(rec, layer, unit, position)[1] if seed == "point" else None
    return p, box
