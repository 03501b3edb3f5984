"""The activation scan (index/scan.py): the one scan loop, its two reductions, against a plain forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconvlab.index import argmax_positions, index_layers, scan, scan_values
from index_helpers import INPUT, small_zfnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable on a busy machine (tests/conftest.py)


def test_scan_matches_the_plain_forward_and_its_maxima():
    module = small_zfnet()
    layers = index_layers(module, INPUT)
    assert [(L.name, L.kind) for L in layers][:2] == [("conv1", "conv"), ("conv2", "conv")]
    x = torch.randn(4, 3, INPUT, INPUT)
    with torch.no_grad():
        v, pos = scan(module, x, layers)
        acts, h = {}, x
        for name, m in module.named_children():
            h = m(h)
            acts[name] = h
    assert v.shape == (4, sum(L.units for L in layers)) and pos.shape == v.shape + (2,)
    with torch.no_grad():
        v2, maps = scan_values(module, x, layers)
    torch.testing.assert_close(v2, v, rtol=0, atol=0)
    b, u = np.meshgrid(np.arange(4), np.arange(v.shape[1]), indexing="ij")
    np.testing.assert_array_equal(argmax_positions(maps, layers, u.ravel(), b.ravel()).reshape(pos.shape),
                                  pos.numpy())
    for L in layers:
        a = acts[L.child]
        got = v[:, L.offset:L.offset + L.units]
        if L.kind == "conv":
            torch.testing.assert_close(got, a.flatten(2).amax(2), rtol=0, atol=0)
            p = pos[:, L.offset:L.offset + L.units]
            at = a[torch.arange(4)[:, None], torch.arange(L.units)[None], p[..., 0].long(), p[..., 1].long()]
            torch.testing.assert_close(at, got, rtol=0, atol=0)
        else:
            torch.testing.assert_close(got, a, rtol=0, atol=0)
            assert (pos[:, L.offset:L.offset + L.units] == -1).all()
