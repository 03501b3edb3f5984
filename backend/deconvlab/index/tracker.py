"""The top-k tracker: the k strongest images of every unit, in fixed-shape arrays (Fig. 2).

"For each feature map we show the top 9 activations" -- over a whole data set,
which never fits in memory at once. :class:`TopK` keeps, as DeepVis's
``MaxTracker`` does, fixed-shape arrays over U units (all layers side by side),
updated after every batch, so memory stays bounded whatever the data set's size:

============  ===============  ===========================================  =====================
array         dtype, shape     what it holds                                an empty slot
============  ===============  ===========================================  =====================
``values``    float32 [U, k]   the unit's max over positions, rank order    -inf
``image``     int64   [U, k]   index into the split's sorted listing        -1
``position``  int32 [U, k, 2]  (y, x) of the max in the layer's map         -1 (and for fc units)
``sha``       uint64  [U, k]   first 8 bytes of the image file's sha256     0
============  ===============  ===========================================  =====================

Order is deterministic: value descending, then image index ascending (a NaN
value ranks as -inf, still above an empty slot). One entry per image per
unit, so the k images of a unit are distinct: callers add each image once.

:meth:`TopK.merge` is exact for disjoint image sets (the ranks of a
distributed build): the global top-k is the top-k of the union of the parts'
top-k.

Errors (``ValueError``): k < 1; a batch of another number of units; image
indices outside 0 .. 2**32 - 2 (they share a uint64 sort key with the value);
arrays that disagree in shape.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["ARRAY_ROLES", "TopK"]

ARRAY_ROLES = ("values", "image", "position", "sha")  # TopK.arrays(), and the index's entry files
_MAX_IMAGES = 2**32 - 1  # image indices fit the low half of TopK's uint64 order key


class TopK:
    """Fixed-shape top-k arrays over U units (DeepVis's ``MaxTracker``, all layers side by side).

    ``values`` [U, k] float32 (-inf when empty), ``image`` [U, k] int64 (-1
    when empty), ``position`` [U, k, 2] int32, ``sha`` [U, k] uint64. Each row
    is kept sorted by value descending, then image index ascending; a NaN
    value ranks as -inf. Callers add each image at most once.
    """

    def __init__(self, units: int, k: int):
        if k < 1:
            raise ValueError(f"k: expected a positive number of entries per unit, got {k}")
        self.k = k
        self.values = np.full((units, k), -np.inf, dtype=np.float32)
        self.image = np.full((units, k), -1, dtype=np.int64)
        self.position = np.full((units, k, 2), -1, dtype=np.int32)
        self.sha = np.zeros((units, k), dtype=np.uint64)

    @property
    def units(self) -> int:
        return self.values.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        """The four arrays by role (:data:`ARRAY_ROLES`), not copied."""
        return {role: getattr(self, role) for role in ARRAY_ROLES}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "TopK":
        tracker = cls.__new__(cls)
        tracker.values = np.ascontiguousarray(arrays["values"], dtype=np.float32)
        tracker.image = np.ascontiguousarray(arrays["image"], dtype=np.int64)
        tracker.position = np.ascontiguousarray(arrays["position"], dtype=np.int32)
        tracker.sha = np.ascontiguousarray(arrays["sha"], dtype=np.uint64)
        tracker.k = tracker.values.shape[1]
        shape = tracker.values.shape
        if tracker.image.shape != shape or tracker.sha.shape != shape or tracker.position.shape != shape + (2,):
            raise ValueError(f"top-k arrays disagree in shape: values {shape}, image {tracker.image.shape}, "
                             f"position {tracker.position.shape}, sha {tracker.sha.shape}")
        return tracker

    @staticmethod
    def _rank_key(values: np.ndarray) -> np.ndarray:
        # NaN ranks as -inf (still above an empty slot); -0.0 as +0.0
        return np.where(np.isnan(values), -np.inf, values).astype(np.float32) + np.float32(0)

    @classmethod
    def _order_key(cls, values: np.ndarray, image: np.ndarray) -> np.ndarray:
        """One uint64 per entry whose descending order is (value desc, image index asc, empty last):
        the value's float32 bits made order-preserving in the high half, ``2**32 - 1 - index``
        (0 for an empty slot) in the low half."""
        bits = cls._rank_key(values).view(np.uint32).astype(np.uint64)
        hi = np.where(bits >> np.uint64(31) == 1, bits ^ np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
        lo = np.where(image < 0, np.uint64(0), np.uint64(0xFFFFFFFF) - image.astype(np.uint64))
        return (hi << np.uint64(32)) | lo

    @classmethod
    def _order(cls, k: int, values, image) -> np.ndarray:
        """Rows of candidates [R, n] -> the columns of the first k of each by (value desc, image index asc)."""
        key = ~cls._order_key(values, image)  # ascending order of ~key = descending order of key
        if key.shape[1] > k:
            part = np.argpartition(key, k - 1, axis=1)[:, :k]
            return np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1), 1)
        return np.argsort(key, axis=1)

    @classmethod
    def _select(cls, k: int, values, image, position, sha) -> tuple:
        order = cls._order(k, values, image)
        return (np.take_along_axis(values, order, 1), np.take_along_axis(image, order, 1),
                np.take_along_axis(position, order[:, :, None], 1), np.take_along_axis(sha, order, 1))

    def update(self, values: np.ndarray, image: np.ndarray, position, sha: np.ndarray) -> None:
        """Add one batch: ``values`` [B, U], ``image`` [B], ``sha`` [B], and ``position`` either
        [B, U, 2] or a function ``(units, batch_rows) -> [n, 2]`` asked only for the entries kept.

        Only the units where some new image beats the current k-th entry are
        re-sorted, so a batch costs little once the arrays have filled.
        """
        n_batch, n_units = values.shape
        if n_units != self.units:
            raise ValueError(f"expected activations of {self.units} units, got {n_units}")
        image = np.asarray(image, dtype=np.int64)
        if image.size and (image.min() < 0 or image.max() >= _MAX_IMAGES):
            raise ValueError(f"image indices: expected 0..{_MAX_IMAGES - 1}, got {image.min()}..{image.max()}")
        last = self._order_key(self.values[:, -1:], self.image[:, -1:])
        rows = np.flatnonzero((self._order_key(values.T, np.broadcast_to(image, (n_units, n_batch))) > last).any(1))
        if rows.size == 0:
            return
        shape, k = (rows.size, n_batch), self.k
        # candidates: the k kept entries of each row, then the batch's images
        cand_value = np.concatenate([self.values[rows], values.T[rows].astype(np.float32)], 1)
        cand_image = np.concatenate([self.image[rows], np.broadcast_to(image, shape)], 1)
        cand_sha = np.concatenate([self.sha[rows], np.broadcast_to(np.asarray(sha, np.uint64), shape)], 1)
        order = self._order(k, cand_value, cand_image)
        pos = np.take_along_axis(self.position[rows], np.minimum(order, k - 1)[:, :, None], 1)
        new_row, new_slot = np.nonzero(order >= k)  # entries that come from this batch
        if new_row.size:
            units, cols = rows[new_row], order[new_row, new_slot] - k
            pos[new_row, new_slot] = position(units, cols) if callable(position) else position[cols, units]
        self.values[rows] = np.take_along_axis(cand_value, order, 1)
        self.image[rows] = np.take_along_axis(cand_image, order, 1)
        self.sha[rows] = np.take_along_axis(cand_sha, order, 1)
        self.position[rows] = pos

    @classmethod
    def merge(cls, parts: Iterable["TopK"]) -> "TopK":
        """The exact top-k of the union of ``parts`` (disjoint image sets, e.g. one per rank)."""
        parts = list(parts)
        k = parts[0].k
        kept = cls._select(k, *(np.concatenate([getattr(p, role) for p in parts], 1) for role in ARRAY_ROLES))
        return cls.from_arrays(dict(zip(ARRAY_ROLES, kept)))

