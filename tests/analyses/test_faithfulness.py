"""Faithfulness (RISE deletion/insertion with ROAD's imputation).

ROAD's imputation against closed forms written out by hand (one pixel, a corner, two coupled
pixels) and against its own defining equations on a random mask; the curves on a net whose unit is
the sum of its input pixels against running sums of the removed pixels, and under the ROAD fill
against ``road_impute`` called directly; the benchmark on a paper net (both engines agree) and on a
residual graph net; the command's files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_sample_image, small_zfnet_module
from deconvlab.analyses import faithfulness as fa
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W8 = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


# ---------------------------------------------------------------- ROAD's imputation

def test_road_one_pixel_is_the_weighted_mean_of_its_neighbours():
    img = np.random.default_rng(1).normal(size=(2, 3, 3))
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    out = fa.road_impute(img, m, noise=0)
    for c in range(2):
        assert out[c, 1, 1] == pytest.approx((W8 * img[c]).sum(), abs=1e-12)
    assert np.array_equal(out[:, ~m], img[:, ~m])  # the rest untouched


def test_road_corner_pixel_is_normalised_by_the_neighbours_inside():
    img = np.arange(16, dtype=float).reshape(4, 4) ** 1.5
    m = np.zeros((4, 4), bool)
    m[0, 0] = True
    want = (img[0, 1] / 6 + img[1, 0] / 6 + img[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert fa.road_impute(img, m, noise=0)[0, 0] == pytest.approx(want, abs=1e-12)


def test_road_two_coupled_pixels_match_the_closed_form():
    # u = (1,1), v = (1,2) in a 3x4 image, both interior; each is the mean of its 8 neighbours and
    # they are direct neighbours (w = 1/6): u = s_u + v/6, v = s_v + u/6, so
    # u = (s_u + s_v/6) / (1 - 1/36), v = (s_v + s_u/6) / (1 - 1/36)
    img = np.random.default_rng(2).normal(size=(3, 4))
    m = np.zeros((3, 4), bool)
    m[1, 1] = m[1, 2] = True
    s_u = (W8 * img[0:3, 0:3]).sum() - img[1, 2] / 6
    s_v = (W8 * img[0:3, 1:4]).sum() - img[1, 1] / 6
    out = fa.road_impute(img, m, noise=0)
    assert out[1, 1] == pytest.approx((s_u + s_v / 6) / (1 - 1 / 36), abs=1e-12)
    assert out[1, 2] == pytest.approx((s_v + s_u / 6) / (1 - 1 / 36), abs=1e-12)


def test_road_solution_satisfies_its_equations_and_keeps_planes():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(3, 14, 12))
    m = rng.random((14, 12)) < 0.6
    out = fa.road_impute(img, m, noise=0)
    pad = np.pad(out, ((0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((14, 12)), 1)
    for y, x in zip(*np.nonzero(m)):  # every removed pixel: the weighted mean of its neighbours inside
        win, wts = pad[:, y:y + 3, x:x + 3], W8 * inside[y:y + 3, x:x + 3]
        assert np.allclose((win * wts).sum(axis=(1, 2)) / wts.sum(), out[:, y, x], atol=1e-10)
    assert np.array_equal(out[:, ~m], img[:, ~m])
    yy, xx = np.mgrid[0:14, 0:12]
    plane = 0.3 + 0.2 * yy - 0.1 * xx  # a symmetric stencil reproduces a plane away from the border
    hole = np.zeros((14, 12), bool)
    hole[4:9, 3:8] = True
    assert np.allclose(fa.road_impute(plane, hole, noise=0), plane, atol=1e-10)


def test_road_noise_is_seeded_gaussian_on_the_removed_pixels_only():
    img = np.random.default_rng(4).normal(size=(3, 40, 40))
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    clean = fa.road_impute(img, m, noise=0)
    a, b = fa.road_impute(img, m, noise=0.5, seed=7), fa.road_impute(img, m, noise=0.5, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, fa.road_impute(img, m, noise=0.5, seed=8))
    d = a - clean
    assert np.array_equal(d[:, ~m], np.zeros_like(d[:, ~m]))
    assert d[:, m].std() == pytest.approx(0.5, rel=0.05) and abs(d[:, m].mean()) < 0.03
    everything = fa.road_impute(img, np.ones((40, 40), bool), noise=0)  # nothing known: the mean, 0
    assert np.array_equal(everything, np.zeros_like(img))


def test_road_coarse_route_keeps_a_plane_and_the_kept_pixels():
    yy, xx = np.mgrid[0:32, 0:32]
    plane = torch.from_numpy(np.stack([0.5 + 0.05 * yy - 0.02 * xx, -0.03 * yy + 0.04 * xx])).float()
    filler = fa._Filler(plane, "road", 4, 0.0, [0], "blur", 0.0)
    cells = np.zeros((8, 8), bool)
    cells[2:6, 3:6] = True  # interior cells: the pooled plane is a plane, and so is its bilinear upsampling
    out = filler(cells, "deletion", 1)
    assert torch.allclose(out, plane, atol=1e-5)
    bumpy = plane + torch.from_numpy(np.random.default_rng(5).normal(size=plane.shape)).float()
    out = fa._Filler(bumpy, "road", 4, 0.0, [0], "blur", 0.0)(cells, "deletion", 1)
    kept = ~torch.from_numpy(fa.cells_to_pixels(cells, 4, 32, 32))
    assert torch.equal(out[:, kept], bumpy[:, kept]) and not torch.allclose(out, bumpy)


def test_road_refuses_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match="mask: expected a bool array of shape"):
        fa.road_impute(np.zeros((3, 4, 4)), np.zeros((4, 5), bool))


# ---------------------------------------------------------------- curves on a net that sums its input

@pytest.fixture(scope="module")
def sum_net():
    lin = nn.Linear(3 * 8 * 8, 2, bias=False)
    with torch.no_grad():
        lin.weight[0] = 1.0  # unit 0: the sum of the input pixels
        lin.weight[1] = -1.0
    return Net.from_module(nn.Sequential(nn.Flatten(), lin), input_size=8)


def _fc(net):
    return [d["name"] for d in net.layer_info() if len(d["shape"]) == 1][-1]


@pytest.mark.parametrize("cell, steps", [(1, 64), (1, 16), (2, 16), (2, 4)])
def test_sum_net_curves_are_running_sums(sum_net, cell, steps):
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(3, 8, 8))).float()
    g = 8 // cell
    order = np.random.default_rng(7).permutation(g * g)
    r = fa.deletion_insertion(sum_net, x, _fc(sum_net), 0, order, fill="constant", start="constant",
                              steps=steps, cell=cell, batch_size=7)
    per_cell = x.double().sum(0).reshape(g, cell, g, cell).sum(axis=(1, 3)).flatten().numpy()[order]
    csum = np.concatenate([[0.0], np.cumsum(per_cell)])[np.arange(steps + 1) * len(order) // steps]
    total = float(x.double().sum())
    assert np.allclose(r["insertion"], csum, atol=1e-4)
    assert np.allclose(r["deletion"], total - csum, atol=1e-4)
    assert r["clean"] == pytest.approx(total, abs=1e-4)
    assert r["auc_insertion_raw"] == pytest.approx(np.trapezoid(csum, np.linspace(0, 1, steps + 1)), abs=1e-4)


def test_sum_net_under_road_reads_the_imputed_images(sum_net):
    x = torch.from_numpy(np.random.default_rng(8).normal(size=(3, 8, 8))).float()
    order = np.random.default_rng(9).permutation(64)
    r = fa.deletion_insertion(sum_net, x, _fc(sum_net), 0, order, fill="road", steps=8, cell=1, noise=0.0)
    for k in range(9):
        m = np.zeros(64, bool)
        m[order[:8 * k]] = True
        assert r["deletion"][k] == pytest.approx(fa.road_impute(x, m.reshape(8, 8), noise=0).sum(), abs=1e-3)
        m = np.zeros(64, bool)
        m[order[8 * k:]] = True
        assert r["insertion"][k] == pytest.approx(fa.road_impute(x, m.reshape(8, 8), noise=0).sum(), abs=1e-3)


def test_blur_start_and_errors(sum_net):
    x = torch.from_numpy(np.random.default_rng(10).normal(size=(3, 8, 8))).float()
    r = fa.deletion_insertion(sum_net, x, _fc(sum_net), 0, np.arange(64), fill="constant", steps=2)
    assert r["insertion"][0] == pytest.approx(float(fa.blurred(x).sum()), abs=1e-4)
    with pytest.raises(ValueError, match="fill: expected one of"):
        fa.deletion_insertion(sum_net, x, _fc(sum_net), 0, np.arange(64), fill="zero")
    with pytest.raises(ValueError, match="order: expected distinct cell indices"):
        fa.deletion_insertion(sum_net, x, _fc(sum_net), 0, [0, 0, 1], fill="constant")


def test_relevance_order_ranks_cells_in_the_box():
    s = np.zeros((8, 8))
    s[0:2, 2:4] = 5.0  # cell (0, 1) of a 4x4 grid of 2 px cells
    s[6, 6] = 2.0  # cell (3, 3)
    s[4, 0] = 1.0  # cell (2, 0)
    o = fa.relevance_order(s, cell=2)
    assert list(o[:3]) == [1, 15, 8] and sorted(o) == list(range(16))
    assert sorted(fa.relevance_order(s, cell=2, box=(3, 1, 6, 4))) == [4, 5, 8, 9]  # rows 1-2, cols 0-1
    a, b = fa.relevance_order(np.zeros((8, 8)), 2, seed=1), fa.relevance_order(np.zeros((8, 8)), 2, seed=2)
    assert sorted(a) == sorted(b) and list(a) != list(b)  # ties: a seeded random order


def test_bootstrap_interval():
    s = fa.bootstrap_ci([2.0, 2.0, None, 2.0])
    assert (s["mean"], s["lo"], s["hi"], s["n"]) == (2.0, 2.0, 2.0, 3)
    v = np.random.default_rng(11).normal(1.0, 1.0, 400)
    s = fa.bootstrap_ci(v)
    assert s["lo"] < v.mean() < s["hi"] and s["hi"] - s["lo"] == pytest.approx(2 * 1.96 / 20, rel=0.2)


# ---------------------------------------------------------------- the benchmark

def _images(net, n=1, size=112):
    """``n`` sample pictures, preprocessed, at ``size`` px (smaller than the nets' 224: quicker)."""
    x = torch.cat([net.preprocess(make_sample_image(size + 20, size, seed=k)) for k in range(n)])
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def test_paper_net_benchmark_same_on_both_engines():
    module, meta = small_zfnet_module()
    seq = Net(module, meta, device="cpu")
    graph = Net(module, meta, device="cpu", engine="graph")
    x = _images(seq)
    kw = dict(layers=["conv2", "fc8"], steps=4, cell=8, noise=0.0)
    a, b = fa.faithfulness(seq, x, **kw), fa.faithfulness(graph, x, **kw)
    assert a["units"] == b["units"]
    assert a["units"][0][0]["box"] != [0, 0, 112, 112] and a["units"][0][1]["box"] == [0, 0, 112, 112]
    for f in fa.FILLS:
        for L in kw["layers"]:
            for name in fa.METHODS + fa.BASELINES:
                for c in ("deletion", "insertion"):
                    assert a["auc"][f][L][name][c] == pytest.approx(b["auc"][f][L][name][c], abs=1e-4)
                    cur = a["curves"][f][L][name][c]
                    assert len(cur) == 5 and cur[0 if c == "deletion" else -1] == pytest.approx(1.0, abs=1e-4)
                if f == "road":  # no noise: deleting every ranked cell is the start of insertion
                    cur = a["curves"][f][L][name]
                    assert cur["deletion"][-1] == pytest.approx(cur["insertion"][0], abs=1e-4)
    assert set(a["summary"]["road"]["fc8"]["deconv"]) >= {"deletion", "insertion", "deletion_minus_random"}


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        h = self.pool(torch.relu(h + self.body(h)))
        return self.head(h.mean(dim=(2, 3)))


def test_graph_net_benchmark_runs_on_its_default_layers():
    torch.manual_seed(0)
    net = Net.from_module(_Residual(), input_size=32)
    x = _images(net, 2, 32)
    r = fa.faithfulness(net, x, steps=4, cell=2, fill_images={"constant": 1})
    assert r["config"]["layers"] == fa.default_layers(net) and r["config"]["layers"][-1] == "head"
    L = r["config"]["layers"][0]
    assert r["config"]["fill_images"] == {"road": 2, "constant": 1}
    assert len(r["auc"]["road"][L]["guided"]["deletion"]) == 2
    assert len(r["auc"]["constant"][L]["guided"]["deletion"]) == 1
    assert r["summary"]["constant"][L]["sobel"]["insertion"]["n"] == 1


def test_command_writes_table_figure_and_json(tmp_path, small_checkpoint):
    from PIL import Image

    from deconvlab.cli.main import main

    root = tmp_path / "data"
    for k, c in enumerate(["n01440764", "n02102040"]):
        (root / "val" / c).mkdir(parents=True)
        make_sample_image(240, 224, seed=k).save(root / "val" / c / "a.png")
    out = tmp_path / "out"
    rc = main(["faithfulness", "--model", str(small_checkpoint), "--data", str(root), "--images", "2",
               "--layers", "conv5", "fc8", "--methods", "deconv", "--steps", "2", "--cell", "16",
               "--constant-images", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "faithfulness.json").read_text())
    assert res["meta"]["files"] == ["val/n01440764/a.png", "val/n02102040/a.png"]
    assert res["meta"]["command"].startswith("deconvlab faithfulness --model") and res["meta"]["wall_s"] > 0
    table = (out / "faithfulness.md").read_text()
    assert "| fc8 | deconv |" in table and "Spearman's rho" in table and "## fill `constant`, insertion from `blur` (1 images)" in table
    with Image.open(out / "faithfulness.png") as im:
        assert im.width > 400 and np.asarray(im.convert("L")).std() > 5
    assert main(["faithfulness", "--model", str(small_checkpoint), "--data", str(root), "--layers", "conv9",
                 "--out", str(out), "--no-progress"]) == 2


def test_rank_agreement_of_deletion_and_insertion():
    from deconvlab.cli.faithfulness import rank_agreement

    def by(d, i):
        return {k: {"deletion": {"mean": a}, "insertion": {"mean": b}} for k, (a, b) in enumerate(zip(d, i))}

    assert rank_agreement(by([0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.5, 0.4])) == pytest.approx(1.0)
    assert rank_agreement(by([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.5, 0.6])) == pytest.approx(-1.0)
