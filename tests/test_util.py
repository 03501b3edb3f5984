"""deconvlab._util: atomic writes, pair, ByteLRU (each written once, used by the index, engine and API)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from deconvlab._util import ByteLRU, atomic_json, atomic_npy, atomic_npz, atomic_write, pair


def test_atomic_writes_round_trip_and_leave_no_temp_file(tmp_path):
    atomic_json(tmp_path / "m.json", {"a": [1, 2]})
    atomic_npy(tmp_path / "a.npy", np.arange(5, dtype=np.int64))
    atomic_npz(tmp_path / "z.npz", {"x": np.ones((2, 3), np.float32), "y": np.zeros(4, np.uint64)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2]}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
    with np.load(tmp_path / "z.npz") as z:
        assert z["x"].shape == (2, 3) and z["y"].dtype == np.uint64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "m.json", "z.npz"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "m.json"
    atomic_json(target, {"version": 1})

    def half_then_fail(f):
        f.write(b'{"version": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_pair_reads_every_way_torch_gives_a_size():
    conv = nn.Conv2d(3, 4, kernel_size=(3, 5), stride=2, padding=(1, 2))
    assert (pair(conv.kernel_size), pair(conv.stride), pair(conv.padding)) == ((3, 5), (2, 2), (1, 2))
    assert pair(nn.MaxPool2d(3, 2).kernel_size) == (3, 3)
    assert pair(np.int64(4)) == (4, 4) and pair([1, 2]) == (1, 2) and pair(torch.Size([7, 8])) == (7, 8)
    with pytest.raises(ValueError, match=r"expected a number or a \(height, width\) pair, got \(1, 2, 3\)"):
        pair((1, 2, 3))


def test_byte_lru_drops_the_least_recent_first_and_counts_bytes():
    lru = ByteLRU(10)
    for key in "abc":
        assert lru.put(key, key.upper(), 3)
    assert lru.get("a") == "A"  # a is now the most recent
    lru.put("d", "D", 3)  # 12 bytes > 10: b, the least recent, goes
    assert "b" not in lru and [k for k in "acd" if k in lru] == ["a", "c", "d"]
    assert lru.bytes == 9 == sum(3 for _ in range(len(lru)))
    lru.put("c", "C2", 5)  # replacing a value re-counts its bytes: 3 + 3 + 5 = 11 > 10, so a goes
    assert lru.bytes == 8 and lru.get("c") == "C2" and "a" not in lru
    assert not lru.put("big", 0, 11) and "big" not in lru and lru.bytes == 8  # too big: not kept
    assert lru.get("missing", "default") == "default"
    lru.clear()
    assert len(lru) == 0 and lru.bytes == 0


def test_byte_lru_keep_newest_keeps_one_value_larger_than_the_bound():
    lru = ByteLRU(10, keep_newest=True)
    lru.put("a", 1, 4)
    assert lru.put("big", 2, 25)  # kept, everything older dropped
    assert len(lru) == 1 and lru.bytes == 25 and lru.get("big") == 2
    lru.put("c", 3, 4)  # the big one is now older: it goes
    assert len(lru) == 1 and lru.bytes == 4
    with pytest.raises(ValueError, match="nbytes: expected 0 or more, got -1"):
        lru.put("d", 4, -1)
