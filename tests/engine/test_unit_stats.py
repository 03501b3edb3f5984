"""``engine.unit_stats.layer_stats`` against numpy on the same record, and ``Net.seed_box`` against
``Net.receptive_field`` at the position numpy finds."""

from __future__ import annotations

import numpy as np
import pytest

from deconvlab.engine.unit_stats import layer_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("layer", ["conv1", "conv5", "fc7"])
def test_layer_stats_equal_numpy(small_record, layer):
    a = small_record.activations[layer][0].numpy().astype(np.float64)
    stats = layer_stats(small_record, layer)
    assert [s.unit for s in stats] == list(range(a.shape[0]))
    flat = a.reshape(a.shape[0], -1)
    np.testing.assert_allclose([s.max for s in stats], flat.max(1), rtol=1e-6)
    np.testing.assert_allclose([s.mean for s in stats], flat.mean(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([s.min for s in stats], flat.min(1), rtol=1e-6)
    for s in stats:
        if a.ndim == 1:
            assert s.argmax is None
        else:  # the first maximum in row-major order (numpy's argmax takes the first too)
            assert s.argmax == np.unravel_index(int(flat[s.unit].argmax()), a.shape[1:])


def test_layer_stats_errors(small_record):
    with pytest.raises(KeyError, match="unknown layer"):
        layer_stats(small_record, "conv9")
    with pytest.raises(ValueError, match="item: expected 0..0, got 1"):
        layer_stats(small_record, "conv1", item=1)


def test_seed_box_is_the_receptive_field_of_the_strongest_position(small_net, small_record):
    for layer, unit in [("conv2", 3), ("conv4", 7), ("conv5", 1)]:
        a = small_record.activations[layer][0, unit].numpy()
        y, x = np.unravel_index(int(a.argmax()), a.shape)
        assert small_net.seed_box(small_record, layer, unit) == ((y, x), small_net.receptive_field(layer, y, x))
    assert small_net.seed_box(small_record, "conv3", 11, (2, 9)) == ((2, 9), small_net.receptive_field("conv3", 2, 9))
    assert small_net.seed_box(small_record, "fc6", 2) == (None, (0, 0, 224, 224))
    with pytest.raises(KeyError, match="unknown layer"):
        small_net.seed_box(small_record, "conv9", 0)
