"""The top-k tracker (index/tracker.py): order, ties, NaN, empty slots, and the exact merge of shards."""

from __future__ import annotations

import numpy as np
import pytest

from deconvlab.index import TopK

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)


def test_tracker_merge_equals_one_pass_and_keeps_distinct_images():
    rng = np.random.default_rng(0)
    units, k, n = 7, 5, 60
    vals = rng.integers(-3, 3, size=(n, units)).astype(np.float32)  # many ties, negatives
    vals[rng.random((n, units)) < 0.1] = -0.0  # equal to 0.0
    vals[3, 2], vals[4, 2], vals[5, 2] = np.nan, -np.inf, np.inf  # NaN ranks as -inf
    pos = rng.integers(0, 9, size=(n, units, 2)).astype(np.int32)
    sha = rng.integers(0, 2**63, size=n, dtype=np.int64).view(np.uint64)
    whole = TopK(units, k)
    for s in range(0, n, 8):
        whole.update(vals[s:s + 8], np.arange(s, min(s + 8, n)), pos[s:s + 8], sha[s:s + 8])
    parts = []
    for r in range(3):  # three "ranks", interleaved shards, fed in one batch each
        t = TopK(units, k)
        ids = np.arange(r, n, 3)
        t.update(vals[ids], ids, pos[ids], sha[ids])
        parts.append(t)
    merged = TopK.merge(parts)
    lazy, asked = TopK(units, k), []  # positions asked for only where an entry is kept
    for s in range(0, n, 8):
        ids = np.arange(s, min(s + 8, n))

        def where(u, b, ids=ids):
            asked.append(len(u))
            return pos[ids[b], u]
        lazy.update(vals[ids], ids, where, sha[ids])
        assert asked[-1] <= units * k
    assert sum(asked) < n * units
    for role in ("values", "image", "position", "sha"):
        np.testing.assert_array_equal(getattr(whole, role), getattr(merged, role), err_msg=role)
        np.testing.assert_array_equal(getattr(whole, role), getattr(lazy, role), err_msg=role)
    # the reference: sort each unit's column by (value desc, index asc) in plain Python
    for u in range(units):
        ref = sorted(range(n), key=lambda i: (-np.nan_to_num(vals[i, u], nan=-np.inf), i))[:k]
        assert whole.image[u].tolist() == ref
        assert len(set(ref)) == k
        np.testing.assert_array_equal(whole.position[u], pos[ref, u])
        np.testing.assert_array_equal(whole.sha[u], sha[ref])


def test_tracker_with_fewer_images_than_k_leaves_empty_slots():
    t = TopK(2, 4)
    t.update(np.array([[1.0, 2.0], [3.0, 0.5]], np.float32), np.array([5, 9]),
             np.zeros((2, 2, 2), np.int32), np.array([1, 2], np.uint64))
    assert t.image.tolist() == [[9, 5, -1, -1], [5, 9, -1, -1]]
    assert np.isneginf(t.values[:, 2:]).all()
    nan = TopK(1, 4)  # NaN ranks as -inf, ties broken by image index, both above an empty slot
    nan.update(np.array([[np.nan], [-np.inf], [1.0]], np.float32), np.array([7, 3, 9]),
               np.zeros((3, 1, 2), np.int32), np.zeros(3, np.uint64))
    assert nan.image.tolist() == [[9, 3, 7, -1]]
    with pytest.raises(ValueError, match="expected activations of 2 units, got 3"):
        t.update(np.zeros((1, 3), np.float32), np.array([1]), np.zeros((1, 3, 2), np.int32), np.zeros(1, np.uint64))
    with pytest.raises(ValueError, match="k: expected a positive"):
        TopK(2, 0)
