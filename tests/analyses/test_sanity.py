"""Parameter-randomisation sanity checks (analyses/sanity.py, issue 15).

Each test can fail: the projection a randomisation cannot reach stays bit-equal
(and a control that it can reach does change), a hand-set net whose projection
provably ignores the randomised weight scores 1 where a general one scores
less, the metrics equal values written out here, and the two routes to an
independent step (the in-place restore vs a fresh copy) agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import small_zfnet_module
from deconvlab.analyses import sanity
from deconvlab.net import Net

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METHODS = ("deconv", "guided", "backprop")


def smooth_input(size: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A normalised-looking image: blurred noise, 1 x C x size x size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, size // 4, size // 4, generator=g)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def zf():
    module, meta = small_zfnet_module()
    return Net(module, meta)


@pytest.fixture(scope="module")
def x112():
    return smooth_input(112)


def weights_of(net) -> dict:
    return {k: v.detach().clone() for k, v in net.module.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TwoPath(nn.Module):
    """conv1 -> relu -> (branch a: conv_a + bn_a -> relu) + (branch b: conv_b) -> fc: a graph with a
    branch that a unit of ``relu_a`` does not depend on."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        a = self.relu_a(self.bn_a(self.conv_a(h)))
        return self.fc((a + self.conv_b(h)).mean(dim=(2, 3)))


class Chain(nn.Module):
    """conv1 (3 -> c1, 3x3) -> relu -> max pool -> conv2 (c1 -> c2, k x k) -> relu -> mean -> fc."""

    def __init__(self, c1: int, c2: int, k: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, k, padding=k // 2)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(c2, 2)

    def forward(self, x):
        h = self.pool(F.relu(self.conv1(x)))
        return self.fc(self.relu2(self.conv2(h)).mean(dim=(2, 3)))


def graph_net(module: nn.Module, seed: int = 0, size: int = 32) -> Net:
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return Net.from_module(module.eval(), input_size=size)


# ------------------------------------------------------------------ what is randomised

def test_sequential_groups_run_from_the_first_layer_to_the_units(zf):
    assert sanity.randomizable_layers(zf, "conv5") == [["conv1"], ["conv2"], ["conv3"], ["conv4"], ["conv5"]]
    assert sanity.randomizable_layers(zf, "pool2") == [["conv1"], ["conv2"]]
    assert sanity.randomizable_layers(zf, "fc8")[-3:] == [["fc6"], ["fc7"], ["fc8"]]
    groups = [["a"], ["b", "b.bn"], ["c"]]
    assert sanity.steps_of(groups, "cascading") == [["c"], ["c", "b", "b.bn"], ["c", "b", "b.bn", "a"]]
    assert sanity.steps_of(groups, "independent") == [["c"], ["b", "b.bn"], ["a"]]
    with pytest.raises(ValueError, match=r"mode: expected one of \['cascading', 'independent'\], got 'both'"):
        sanity.steps_of(groups, "both")


def test_graph_groups_are_the_units_ancestors_with_their_batch_norm():
    net = graph_net(TwoPath())
    assert sanity.randomizable_layers(net, "relu_a") == [["conv1"], ["conv_a", "bn_a"]]
    assert sanity.randomizable_layers(net, "fc") == [["conv1"], ["conv_a", "bn_a"], ["conv_b"], ["fc"]]


# ------------------------------------------------------------------ invariance and its control

@pytest.mark.parametrize("method", METHODS)
def test_a_layer_the_projection_does_not_pass_through_changes_nothing(zf, x112, method):
    rec = zf.forward(x112)
    p0 = zf.project(rec, "conv3", 5, method=method).numpy()
    before = weights_of(zf)
    p, _ = sanity.randomized_projection(zf, x112, "conv3", 5, method, ["fc6", "conv5", "conv4"], seed=3)
    np.testing.assert_array_equal(p, p0)
    assert sanity.rank_correlation(p0, p) == pytest.approx(1.0)
    assert sanity.rendered_ssim(p0, p) == pytest.approx(1.0)
    q, _ = sanity.randomized_projection(zf, x112, "conv3", 5, method, ["conv2"], seed=3)  # the control
    assert not np.array_equal(q, p0)
    assert same_weights(before, weights_of(zf))


def test_a_branch_the_unit_does_not_read_changes_nothing_on_a_graph_net():
    net = graph_net(TwoPath())
    x = smooth_input(32, seed=1)
    p0 = net.project(net.forward(x), "relu_a", 2, method="guided").numpy()
    p, _ = sanity.randomized_projection(net, x, "relu_a", 2, "guided", ["conv_b", "fc"], seed=0)
    np.testing.assert_array_equal(p, p0)
    q, _ = sanity.randomized_projection(net, x, "relu_a", 2, "guided", ["conv_a", "bn_a"], seed=0)
    assert not np.array_equal(q, p0)


def positive_scalar(name, m, g):
    """Re-initialise a 1x1, one-channel conv2 with a positive weight and no bias; the rest as the default."""
    if name == "conv2":
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.zero_()
    else:
        sanity.reinitialise(name, m, g)


@pytest.mark.parametrize("method", METHODS)
def test_a_projection_that_provably_ignores_the_weights_scores_one(method):
    """conv2 is one positive number times its input: its re-initialisation only scales the projection
    of a conv2 unit (the seed still fires, every ReLU mask is the same), so rank correlation and SSIM are 1."""
    net = graph_net(Chain(1, 1, 1), seed=2)
    with torch.no_grad():
        net.module.conv2.weight.fill_(0.7)
        net.module.conv2.bias.zero_()
    r = sanity.randomization(net, smooth_input(32, seed=2), "relu2", 0, method, mode="independent",
                             init=positive_scalar)
    step = next(s for s in r.steps if s.randomized == ["conv2"])
    assert step.seed_value > 0
    assert step.spearman == pytest.approx(1.0, abs=1e-6)
    assert step.ssim == pytest.approx(1.0, abs=1e-3)
    assert not np.array_equal(step.projection, r.steps[0].projection)  # scaled, not the same numbers


@pytest.mark.parametrize("method", METHODS)
def test_a_projection_that_reads_the_weights_scores_less(method):
    net = graph_net(Chain(4, 4, 3), seed=2)
    x = smooth_input(32, seed=2)
    for seed in range(20):  # the first seed whose randomised unit still fires at the seed position
        r = sanity.randomization(net, x, "relu2", 0, method, mode="independent", seed=seed)
        step = next(s for s in r.steps if s.randomized == ["conv2"])
        if step.seed_value > 0:
            break
    assert step.seed_value > 0
    assert step.spearman < 0.99 and step.ssim < 0.99


# ------------------------------------------------------------------ the sequence of models

def test_steps_start_with_the_trained_model_and_follow_the_mode(zf, x112):
    before = weights_of(zf)
    rec = zf.forward(x112)
    casc = sanity.randomization(zf, x112, "conv3", 7, "deconv", mode="cascading", seed=1)
    assert [s.randomized for s in casc.steps] == [[], ["conv3"], ["conv3", "conv2"], ["conv3", "conv2", "conv1"]]
    np.testing.assert_array_equal(casc.steps[0].projection, zf.project(rec, "conv3", 7).numpy())
    assert casc.steps[0].spearman == pytest.approx(1.0, abs=1e-12) and casc.steps[0].ssim == 1.0
    edges = sanity.edge_map(x112, zf.meta.mean, zf.meta.std)
    for s in casc.steps:  # the ranked-once route against scipy.stats.spearmanr itself
        for got, want in ((s.spearman, sanity.rank_correlation(casc.steps[0].projection, s.projection, casc.box)),
                          (s.edge_spearman, sanity.rank_correlation(s.projection, edges, casc.box))):
            assert (got is None) == (want is None) and (want is None or got == pytest.approx(want, abs=1e-9))
    assert casc.position == zf.seed_box(rec, "conv3", 7)[0] and casc.box == zf.seed_box(rec, "conv3", 7)[1]
    ind = sanity.randomization(zf, x112, "conv3", 7, "deconv", mode="independent", seed=1)
    assert [s.randomized for s in ind.steps] == [[], ["conv3"], ["conv2"], ["conv1"]]
    # the in-place restore of the independent steps against a fresh copy per step, and the cascade's end
    for s in ind.steps[1:]:
        p, v = sanity.randomized_projection(zf, x112, "conv3", 7, "deconv", s.randomized, seed=1)
        np.testing.assert_array_equal(s.projection, p)
        assert s.seed_value == v
    p, _ = sanity.randomized_projection(zf, x112, "conv3", 7, "deconv", ["conv1", "conv2", "conv3"], seed=1)
    np.testing.assert_array_equal(casc.steps[-1].projection, p)
    assert same_weights(before, weights_of(zf))
    again = sanity.randomization(zf, x112, "conv3", 7, "deconv", mode="cascading", seed=1)
    other = sanity.randomization(zf, x112, "conv3", 7, "deconv", mode="cascading", seed=2)
    assert again.to_dict() == casc.to_dict()
    assert any(not np.array_equal(a.projection, b.projection) or a.seed_value != b.seed_value
               for a, b in zip(other.steps[1:], casc.steps[1:]))  # other random weights


def test_a_silent_seed_has_no_rank_correlation(zf, x112):
    r = sanity.randomization(zf, x112, "conv2", 1, "backprop", mode="cascading", seed=0)
    for s in r.steps:
        if s.seed_value == 0:
            assert not s.projection.any() and s.spearman is None and s.edge_spearman is None
        else:
            assert s.spearman is not None


def test_an_fc_unit_is_compared_over_the_whole_image(zf, x112):
    r = sanity.randomization(zf, x112, "fc8", 2, "guided", mode="independent")
    assert r.position is None and r.box == (0, 0, 112, 112)
    assert [s.randomized for s in r.steps][1:4] == [["fc8"], ["fc7"], ["fc6"]]


def test_bad_arguments_say_what_was_expected(zf, x112):
    with pytest.raises(ValueError, match=r"method: expected one of \['deconv', 'guided', 'backprop'\], got 'x'"):
        sanity.randomization(zf, x112, "conv2", 0, "x")
    with pytest.raises(ValueError, match=r"seed: expected an integer 0..2147483647, got -1"):
        sanity.randomization(zf, x112, "conv2", 0, "deconv", seed=-1)
    with pytest.raises(KeyError, match="unknown layer"):
        sanity.randomization(zf, x112, "conv9", 0, "deconv")
    with pytest.raises(ValueError, match=r"unit: expected 0\.\.23, got 24"):
        sanity.randomization(zf, x112, "conv1", 24, "deconv")
    with pytest.raises(ValueError, match=r"position: expected \(y, x\) with y in 0\.\.\d+"):
        sanity.randomization(zf, x112, "conv1", 0, "deconv", position=(99, 0))


# ------------------------------------------------------------------ the numbers

def test_rank_correlation_of_absolute_values_against_written_out_values():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, -3.0], [2.0, -4.0]])  # |b| ranks 1, 3, 2, 4: d^2 = 2, rho = 1 - 6 * 2 / (4 * 15)
    assert sanity.rank_correlation(a, b) == pytest.approx(0.8)
    three = np.stack([a / 2, -a / 4, a / 4])  # |.| summed over channels: a itself
    assert sanity.rank_correlation(three, b) == pytest.approx(0.8)
    big = np.zeros((3, 6, 6))
    big[:, 2:4, 1:3] = three
    assert sanity.rank_correlation(big, np.pad(b, ((2, 2), (1, 3))), box=(2, 1, 4, 3)) == pytest.approx(0.8)
    assert sanity.rank_correlation(a, np.zeros_like(a)) is None


def test_ssim_of_rendered_projections_against_written_out_values():
    grey, white = np.zeros((3, 16, 16)), np.ones((3, 16, 16))  # rendered: 128 everywhere, 255 everywhere
    c1 = (0.01 * 255) ** 2  # flat images: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), the structure term 1
    want = (2 * 128 * 255 + c1) / (128 ** 2 + 255 ** 2 + c1)
    assert sanity.rendered_ssim(grey, white) == pytest.approx(want, rel=1e-6)
    noise = np.random.default_rng(0).normal(size=(3, 16, 16))
    assert sanity.rendered_ssim(noise, 3 * noise) == pytest.approx(1.0)  # own scale: the same picture
    assert sanity.rendered_ssim(noise, -noise) < 0
    assert sanity.rendered_ssim(noise, white, box=(0, 0, 2, 16)) is None  # a box under 3 px


def test_edge_map_is_the_sobel_magnitude_of_the_un_normalised_luminance():
    raw = torch.zeros(1, 3, 12, 12)
    raw[..., 6:] = 1.0  # a vertical step between columns 5 and 6
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    e = sanity.edge_map(x, mean, std)
    np.testing.assert_allclose(e, sanity.edge_map(raw, (0, 0, 0), (1, 1, 1)), atol=1e-12)
    assert set(np.flatnonzero(e[6] > 1e-9)) == {5, 6}  # only beside the step


def test_several_methods_at_once_equal_one_at_a_time(zf, x112):
    both = sanity.randomization_methods(zf, x112, "conv4", 2, ("guided", "backprop"), mode="independent", seed=4)
    for method in ("guided", "backprop"):
        one = sanity.randomization(zf, x112, "conv4", 2, method, mode="independent", seed=4)
        assert both[method].to_dict() == one.to_dict()
        for a, b in zip(both[method].steps, one.steps):
            np.testing.assert_array_equal(a.projection, b.projection)


def test_a_batch_of_images_equals_one_image_at_a_time(zf):
    x = torch.cat([smooth_input(112, seed=s) for s in (5, 6, 7)])
    units = [0, 3, 9]
    batch = sanity.randomization_batch(zf, x, "conv3", units, ("deconv", "guided"), mode="cascading", seed=2)
    for i, u in enumerate(units):
        one = sanity.randomization_methods(zf, x[i:i + 1], "conv3", u, ("deconv", "guided"), seed=2)
        for m in ("deconv", "guided"):
            a, b = batch[i][m], one[m]
            assert (a.position, a.box) == (b.position, b.box)
            for sa, sb in zip(a.steps, b.steps):
                np.testing.assert_allclose(sa.projection, sb.projection, rtol=1e-4, atol=1e-6)
                assert sa.seed_value == pytest.approx(sb.seed_value, rel=1e-5, abs=1e-7)
                assert (sa.spearman is None) == (sb.spearman is None)
                if sa.spearman is not None:
                    assert sa.spearman == pytest.approx(sb.spearman, abs=1e-4)


def test_the_command_writes_table_numbers_and_figure_equal_to_the_library(models_env, tmp_path, monkeypatch):
    import json

    from PIL import Image

    from conftest import make_sample_image
    from deconvlab import load
    from deconvlab.analyses.evolution import normalise
    from deconvlab.cli.main import main
    from deconvlab.data import decoded, list_split

    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))
    for c, cls in enumerate(["n01440764", "n02102040"]):
        (tmp_path / "data" / "val" / cls).mkdir(parents=True)
        for i in range(2):
            make_sample_image(120, 100, seed=10 * c + i).save(tmp_path / "data" / "val" / cls / f"{i}.png")
    out = tmp_path / "out"
    assert main(["sanity", "--data", str(tmp_path / "data"), "--images", "3", "--batch", "2", "--layers", "conv1",
                 "conv2", "--methods", "guided", "backprop", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "sanity.json").read_text())
    per = json.loads((out / "sanity_images.json").read_text())
    assert len(data["rows"]) == 2 * (2 + 3) and len(per["images"]) == 3
    assert Image.open(out / "sanity.png").size[0] > 200 and "| conv2 | cascading | backprop | 2 | conv1 |" in \
        (out / "sanity.md").read_text()
    net = load("zfnet-imagenette", device="cpu")
    sp = list_split(tmp_path / "data", "val")
    idx = [sp.files.index(f) for f in per["images"]]
    x = normalise(decoded(sp, 224, indices=np.asarray(idx), progress=False), net.meta.mean, net.meta.std)
    rec = per["per_image"]["conv2"]["cascading"][2]
    a = net.activation(net.forward(x[2:3]), "conv2")[0]
    assert rec["unit"] == int(a.reshape(a.shape[0], -1).amax(dim=1).argmax())  # the strongest unit
    lib = sanity.randomization(net, x[2:3], "conv2", rec["unit"], "backprop", seed=0)
    for k, s in enumerate(lib.steps):
        for f in ("spearman", "ssim", "edge_spearman"):
            want = getattr(s, f)
            assert (rec["backprop"][f][k] is None) == (want is None)
            if want is not None:
                assert rec["backprop"][f][k] == pytest.approx(want, abs=2e-3)
