"""render: mid-grey projections, viridis feature maps, class colours, mosaics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconvlab import render


def test_projection_zero_is_mid_grey_and_scaling_is_symmetric():
    p = torch.zeros(3, 2, 3)
    p[0, 0, 0], p[1, 0, 1], p[2, 1, 2] = 2.0, -2.0, 1.0
    p[0, 1, 0] = -0.5
    rgb = render.projection_rgb(p)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 128, 128)  # +max -> 255
    assert tuple(rgb[0, 1]) == (128, 1, 128)  # -max -> 1 (symmetric: 128 -/+ 127)
    assert tuple(rgb[1, 2]) == (128, 128, 192)  # 128 + 127 / 2 = 191.5 -> 192
    assert tuple(rgb[1, 0]) == (96, 128, 128)  # 128 - 127 / 4 = 96.25 -> 96
    assert tuple(rgb[1, 1]) == (128, 128, 128)
    # a shared scale: values above it saturate, half of it is half way
    rgb = render.projection_rgb(p, scale=4.0)
    assert tuple(rgb[0, 0]) == (192, 128, 128) and tuple(rgb[0, 1]) == (128, 64, 128)
    # negating the projection mirrors it around mid grey
    a, b = render.projection_rgb(p).astype(int), render.projection_rgb(-p).astype(int)
    assert ((a - 128) == -(b - 128)).all()


def test_projection_edge_cases():
    assert (render.projection_rgb(np.zeros((3, 4, 4))) == 128).all()  # all zero: flat grey
    grey = render.projection_rgb(np.array([[1.0, -1.0]]))  # H x W -> grey RGB
    assert grey.shape == (1, 2, 3) and tuple(grey[0, 0]) == (255, 255, 255) and tuple(grey[0, 1]) == (1, 1, 1)
    im = render.projection_image(torch.ones(3, 5, 7))
    assert im.size == (7, 5) and im.mode == "RGB"
    with pytest.raises(ValueError, match="finite"):
        render.projection_rgb(np.array([[[np.nan]]]))
    with pytest.raises(ValueError, match=r"expected an array of shape \(3, H, W\).*got \(2, 4, 4\)"):
        render.projection_rgb(np.zeros((2, 4, 4)))


def test_viridis_table():
    v = render.VIRIDIS
    assert v.shape == (256, 3) and v.dtype == np.uint8
    assert tuple(v[0]) == (0x44, 0x01, 0x54) and tuple(v[-1]) == (0xfd, 0xe7, 0x25) and tuple(v[128]) == (0x21, 0x91, 0x8c)
    # perceptually uniform and monotonic in lightness: luma rises at every step
    luma = v.astype(float) @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(luma) > -0.5).all() and (np.diff(luma[::4]) > 0).all()


def test_viridis_matches_matplotlib_when_it_is_installed():
    cm = pytest.importorskip("matplotlib").colormaps["viridis"]
    want = np.rint(np.asarray(cm.colors) * 255).astype(int)
    assert np.array_equal(render.VIRIDIS.astype(int), want)


def test_feature_maps_through_viridis():
    a = np.array([[0.0, 1.0], [2.0, 4.0]])
    rgb = render.colormap(a)
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == tuple(render.VIRIDIS[0]) and tuple(rgb[1, 1]) == tuple(render.VIRIDIS[255])
    assert tuple(rgb[1, 0]) == tuple(render.VIRIDIS[128])  # 2/4 * 255 = 127.5 -> 128
    assert tuple(render.colormap(a, lo=0, hi=8)[1, 1]) == tuple(render.VIRIDIS[128])
    assert (render.colormap(np.full((3, 3), 5.0)) == render.VIRIDIS[0]).all()  # constant map
    im = render.feature_map_image(torch.tensor(a), size=112)
    assert im.size == (112, 112)
    arr = np.asarray(im)
    assert tuple(arr[0, 0]) == tuple(render.VIRIDIS[0]) and tuple(arr[111, 111]) == tuple(render.VIRIDIS[255])
    assert tuple(arr[55, 56]) == tuple(render.VIRIDIS[int(round(255 / 4))])  # nearest: top-right cell
    with pytest.raises(ValueError, match=r"expected a 2-D array \(H, W\), got shape \(1, 2, 2\)"):
        render.colormap(a[None])


def test_upscale_is_nearest():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    up = render.upscale(a, (4, 6))
    assert np.array_equal(up, np.repeat(np.repeat(a, 2, 0), 2, 1))


def test_class_colors():
    c = render.class_colors(np.array([[0, 1], [20, 3]]))
    assert tuple(c[0, 0]) == (0x1f, 0x77, 0xb4) and tuple(c[1, 0]) == tuple(c[0, 0])  # 20 colours, cycled
    assert len({tuple(x) for x in render.CLASS_COLORS}) == 20
    with pytest.raises(ValueError, match="integer"):
        render.class_colors(np.zeros((2, 2)))


def test_mosaic_layout_and_borders():
    tiles = [np.full((2, 3, 3), i * 40, dtype=np.uint8) for i in range(5)]
    m = np.asarray(render.mosaic(tiles, border=1, border_color=(255, 0, 0)))
    # ceil(sqrt(5)) = 3 columns, 2 rows: (2 rows * (2 + 1) + 1) x (3 cols * (3 + 1) + 1)
    assert m.shape == (7, 13, 3)
    assert tuple(m[0, 0]) == (255, 0, 0) and tuple(m[3, 5]) == (255, 0, 0)  # borders
    assert (m[1:3, 1:4] == 0).all() and (m[1:3, 5:8] == 40).all() and (m[4:6, 5:8] == 160).all()
    assert (m[4:6, 9:12] == (255, 0, 0)).all()  # the empty sixth cell
    m2 = np.asarray(render.mosaic(tiles, columns=5, border=0))
    assert m2.shape == (2, 15, 3) and (m2[:, 12:] == 160).all()
    grey = np.asarray(render.mosaic([np.zeros((2, 2), dtype=np.uint8)]))
    assert grey.shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"expected every tile to be H x W x 3 like the first \(2, 3, 3\), got \(3, 3, 3\) at index 1"):
        render.mosaic([tiles[0], np.zeros((3, 3, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        render.mosaic([np.zeros((2, 2, 3))])
    with pytest.raises(ValueError, match="at least one tile"):
        render.mosaic([])


def test_a_real_projection_renders(small_net, small_record):
    act = small_record.activations["conv3"][0]
    unit = int(act.flatten(1).max(1).values.argmax())  # the most active unit
    p = small_net.project(small_record, "conv3", unit)
    rgb = render.projection_rgb(p)
    assert rgb.shape == (224, 224, 3)
    t, l, b, r = small_net.receptive_field("conv3", *divmod(int(act[unit].argmax()), 13))
    outside = np.ones((224, 224), bool)
    outside[t:b, l:r] = False
    assert (rgb[outside] == 128).all()  # zero outside the receptive field -> grey
    assert (rgb[~outside] != 128).any()
