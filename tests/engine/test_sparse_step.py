"""The sparse deconvnet layer (``sparse_step``: unpool, rectify, filter in one step)
against the three dense rules it replaces.

The dense rules are themselves checked against autograd (``test_engine_deconvnet``,
which runs with the sparse step switched on, so the step is checked against
autograd there too). Here the two routes must agree on every net, method, seed
kind, border position and odd geometry (dilation, padding, strides,
non-overlapping and padded pools), and a hand-worked case pins the one subtle
rule: values that share a maximum are added *before* they are rectified.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from conftest import fast_build, he_init
from deconvlab.engine import sparse_step, deconvnet
from deconvlab.net import Net
from deconvlab.nets import ModelMeta, ZFNetConfig, zfnet
from deconvlab.nets.torchvision_nets import alexnet, vgg16

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not sparse_step.available(), reason="numba is not installed")]

METHODS = ("deconv", "guided", "backprop")


def both_routes(net: Net, rec, items, method: str, seed: str, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparse, dense) projections of ``items``; fails if the sparse step never ran.

    Each sparse step is also checked on the spot against the three dense rules run on
    the same signal: the same windows (offsets and sizes) and the same values."""
    calls = []
    real = sparse_step.unpool_rectify_filter

    def spy(children, i, sig, rec, method):
        calls.append(children[i][0])
        got = real(children, i, sig, rec, method)
        want = sig
        for j in (i, i - 1, i - 2):
            want = deconvnet.rule_for(children[j][1])(children[j][1], children[j][0], want, rec, method)
        want = want.dense()
        assert got.values.shape == want.values.shape, (children[i][0], got.values.shape, want.values.shape)
        assert torch.equal(got.oy, want.oy) and torch.equal(got.ox, want.ox), children[i][0]
        assert (got.H, got.W, got.units) == (want.H, want.W, None)
        scale = float(want.values.abs().max())
        assert float((got.values - want.values).abs().max()) <= 1e-5 * max(scale, 1e-20), children[i][0]
        return got

    monkeypatch.setattr(sparse_step, "unpool_rectify_filter", spy)
    sparse = net.project_many(rec, items, method=method, seed=seed)
    assert calls, "the sparse step did not run: this test would compare the dense route with itself"
    monkeypatch.setattr(sparse_step, "ENABLED", False)
    n = len(calls)
    dense = net.project_many(rec, items, method=method, seed=seed)
    assert len(calls) == n, "ENABLED = False still ran the sparse step"
    monkeypatch.setattr(sparse_step, "ENABLED", True)
    return sparse, dense


def assert_close(sparse: torch.Tensor, dense: torch.Tensor, items) -> None:
    assert sparse.shape == dense.shape
    nonzero = 0
    for k, item in enumerate(items):
        scale = float(dense[k].abs().max())
        err = float((sparse[k] - dense[k]).abs().max())
        assert err <= 1e-5 * max(scale, 1e-30), (item, err, scale)
        nonzero += scale > 0
    assert nonzero >= len(items) // 2, "most projections are zero: the comparison would prove little"


def _image(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the rule for shared maxima, by hand

def shared_max_net(w2: list[float], b2: float) -> Net:
    """1x5x5 -> conv1 (1x1, weight 1) -> relu1 -> pool1 (3x3 / 2, ceil: 2x2) -> conv2 (2x2, ``w2``, bias ``b2``)."""
    c1, c2 = nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 1, 2)
    with torch.no_grad():
        c1.weight.fill_(1.0)
        c2.weight.copy_(torch.tensor(w2).view(1, 1, 2, 2))
        c2.bias.fill_(b2)
    module = nn.Sequential(OrderedDict(conv1=c1, relu1=nn.ReLU(), pool1=nn.MaxPool2d(3, 2, ceil_mode=True),
                                       conv2=c2))
    return Net(module, ModelMeta(arch="tiny", input_size=5, mean=(0.0,), std=(1.0,)))


@pytest.mark.parametrize("enabled", [True, False])
def test_shared_maximum_is_summed_then_rectified(enabled, monkeypatch):
    monkeypatch.setattr(sparse_step, "ENABLED", enabled)
    # One bright pixel (4 at (2, 2)) is the maximum of all four overlapping pool windows.
    # conv2 = 4 * (1 - 3 + 0.5 + 0.25) + 10 = 5: the seed. conv2's transposed filter sends
    # 5 * w2 = (5, -15, 2.5, 1.25) to the four pooled positions, all with the switch (2, 2):
    # their sum, -6.25, reaches relu1.
    #   deconv / guided: relu(-6.25) = 0 -> nothing reaches the pixels (rectifying each of the
    #   four first would give 5 + 2.5 + 1.25 = 8.75 at (2, 2)).
    #   backprop: -6.25 * [relu1 input > 0] = -6.25 at (2, 2): the seed, 5, times
    #   d conv2 / d x[2, 2] = the sum of w2 = -1.25 (the plain gradient).
    net = shared_max_net([1.0, -3.0, 0.5, 0.25], 10.0)
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 4.0
    rec = net.forward(x)
    assert rec.activations["conv2"].item() == 5.0
    assert bool((rec.switches["pool1"] == 12).all())
    assert sparse_step.applies(net.sequence, 2, _pool_signal(net, rec), rec) is enabled
    for method in ("deconv", "guided"):
        assert torch.equal(net.project(rec, "conv2", 0, method=method), torch.zeros(1, 5, 5)), method
    want = torch.zeros(1, 5, 5)
    want[0, 2, 2] = -6.25
    assert torch.equal(net.project(rec, "conv2", 0, method="backprop"), want)
    # the same image with conv2's weights all positive: 4 * 4.75 + 10 = 29 -> 29 * 4.75 at (2, 2)
    net = shared_max_net([1.0, 3.0, 0.5, 0.25], 10.0)
    rec = net.forward(x)
    want[0, 2, 2] = 29.0 * 4.75
    for method in METHODS:
        assert torch.allclose(net.project(rec, "conv2", 0, method=method), want, rtol=1e-6), method


def _pool_signal(net: Net, rec):
    """A signal at pool1's output, as the pass below conv2 would hand it on."""
    from deconvlab.engine import deconvnet

    sig = deconvnet.seed_signal(rec.outputs["pool1"], torch.tensor([0]), torch.tensor([0]), None, None, "map")
    return sig.dense()


# ------------------------------------------------------------------ the two routes on real architectures

def zfnet_net(norm: str) -> Net:
    cfg = ZFNetConfig(num_classes=10, width=0.25, fc_size=64, norm=norm)
    return Net(he_init(zfnet(cfg), seed=5), ModelMeta(arch="zfnet", config=cfg.to_dict()))


ZF_ITEMS = [("conv1", 3, (0, 0)), ("conv1", 7, (109, 109)), ("pool1", 2, (54, 0)), ("conv2", 1, None),
            ("conv2", 30, (0, 25)), ("pool2", 4, (12, 12)), ("conv3", 0, (0, 0)), ("conv5", 11, None),
            ("conv5", 12, (12, 0)), ("pool5", 9, (0, 5)), ("fc6", 3, None), ("fc8", 2, None)]


@pytest.mark.parametrize("norm", ["none", "lrn"])
@pytest.mark.parametrize("method", METHODS)
def test_zfnet_sparse_equals_dense(norm, method, monkeypatch):
    net = zfnet_net(norm)
    rec = net.forward(_image(3, 224))
    # three images in one record: the items read different ones
    items = [it + (k % 3,) for k, it in enumerate(ZF_ITEMS)]
    assert_close(*both_routes(net, rec, items, method, "point", monkeypatch), items)
    maps = [(layer, unit, None, k % 3) for k, (layer, unit, _) in enumerate(ZF_ITEMS)]
    assert_close(*both_routes(net, rec, maps, method, "map", monkeypatch), maps)


@pytest.mark.parametrize("method", METHODS)
def test_alexnet_sparse_equals_dense(method, monkeypatch):
    net = Net(fast_build(alexnet, 10), ModelMeta(arch="alexnet", config={"num_classes": 10}))
    rec = net.forward(_image(1, 224, 1))
    items = [("conv1", 5, (54, 54)), ("conv2", 9, None), ("pool2", 1, (0, 12)), ("conv5", 4, (12, 12)),
             ("conv4", 100, None), ("fc7", 8, None)]
    assert_close(*both_routes(net, rec, items, method, "point", monkeypatch), items)


@pytest.mark.parametrize("method", METHODS)
def test_vgg16_sparse_equals_dense(method, monkeypatch):
    net = Net(fast_build(vgg16, 10), ModelMeta(arch="vgg16", config={"num_classes": 10}, input_size=64))
    rec = net.forward(_image(1, 64, 2))
    # 2x2 non-overlapping pools; at 64 px every stage's map is small, so windows hit borders
    items = [("conv2", 9, (0, 63)), ("pool2", 3, None), ("conv7", 20, (15, 0)), ("conv10", 0, None),
             ("conv13", 5, (3, 3)), ("fc6", 0, None)]
    assert_close(*both_routes(net, rec, items, method, "point", monkeypatch), items)


# ------------------------------------------------------------------ odd geometry

def odd_net() -> Net:
    """Dilation, padding, stride 2 and 3, a padded overlapping pool, a non-overlapping pool."""
    module = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, stride=1, padding=2, dilation=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2, 2),
        conv2=nn.Conv2d(6, 8, 4, stride=3, padding=1), relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        conv3=nn.Conv2d(8, 5, 1), relu3=nn.ReLU()))
    return Net(he_init(module, seed=7).eval(), ModelMeta(arch="odd", input_size=29))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", ["point", "map"])
def test_odd_geometry_sparse_equals_dense(method, seed, monkeypatch):
    net = odd_net()
    rec = net.forward(_image(2, 29, 3))
    H = rec.activations["conv3"].shape[-1]
    if seed == "point":
        items = [("conv3", u, (y, x), n) for u in range(5) for (y, x) in ((0, 0), (H - 1, 1), (2, H - 1))
                 for n in range(2)] + [("pool2", 3, (0, 0)), ("conv2", 2, None), ("conv2", 7, (0, 4))]
    else:
        items = [("conv3", u, None, n) for u in range(5) for n in range(2)] + [("pool2", 6, None), ("conv2", 1, None)]
    assert_close(*both_routes(net, rec, items, method, seed, monkeypatch), items)


def test_two_threads_give_the_one_thread_answer():
    net = zfnet_net("none")
    rec = net.forward(_image(1, 224, 4))
    items = [("conv5", u, None) for u in range(12)] + [("fc6", u, None) for u in range(6)]
    one = net.project_many(rec, items)
    torch.set_num_threads(2)
    try:
        two = net.project_many(rec, items)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)  # items split between threads: each item's sums in the same order


def test_warm_up_compiles_the_kernel_and_leaves_the_random_state(monkeypatch):
    monkeypatch.setattr(sparse_step, "ENABLED", False)
    assert sparse_step.warm_up() is False
    monkeypatch.setattr(sparse_step, "ENABLED", True)
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    assert sparse_step.warm_up() is True
    assert sparse_step._compiled is not None
    assert torch.equal(torch.rand(3), want)


def random_stack(rng: random.Random) -> tuple[Net, int]:
    """1-3 stages of Conv2d (kernel 1-5, stride 1-3, dilation 1-2, padding up to the
    dilated kernel) -> ReLU -> MaxPool2d (2 or 3, stride up to the kernel, padding,
    ceil or floor), then a 1x1 conv and ReLU; the input 12-40 px."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    c, size = 3, rng.randint(12, 40)
    H = size
    for s in range(1, rng.randint(1, 3) + 1):
        k, st, d = rng.randint(1, 5), rng.randint(1, 3), rng.choice([1, 1, 2])
        conv = nn.Conv2d(c, rng.randint(2, 9), k, stride=st, padding=rng.randint(0, d * (k - 1)), dilation=d)
        pk = rng.randint(2, 3)
        pool = nn.MaxPool2d(pk, rng.randint(1, pk), padding=rng.randint(0, pk // 2), ceil_mode=rng.random() < 0.5)
        span = H + 2 * conv.padding[0] - d * (k - 1)
        if span < 3 * st:  # conv's map under 3 px: stop stacking
            break
        with torch.no_grad():
            H = pool(conv(torch.zeros(1, c, H, H))).shape[-1]
        layers[f"conv{s}"], layers[f"relu{s}"], layers[f"pool{s}"] = conv, nn.ReLU(), pool
        c = conv.out_channels
    layers["convt"], layers["relut"] = nn.Conv2d(c, 4, 1), nn.ReLU()
    module = he_init(nn.Sequential(layers), seed=rng.randint(0, 999)).eval()
    return Net(module, ModelMeta(arch="random", input_size=size)), size


@pytest.mark.parametrize("trial", range(30))
def test_random_stacks_sparse_equals_dense(trial, monkeypatch):
    """Geometry fuzzing: random stacks, random units, positions and images, every method and seed."""
    rng = random.Random(trial)
    net, size = random_stack(rng)
    rec = net.forward(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(trial)))
    for method in METHODS:
        for seed in ("point", "map"):
            items = []
            for layer in net.layers + net.pools:
                act = net.activation(rec, layer)
                for _ in range(3):
                    pos = None if seed == "map" or rng.random() < 0.3 else (rng.randrange(act.shape[2]),
                                                                             rng.randrange(act.shape[3]))
                    items.append((layer, rng.randrange(act.shape[1]), pos, rng.randrange(2)))
            sparse, dense = both_routes(net, rec, items, method, seed, monkeypatch)
            for k, item in enumerate(items):
                scale = float(dense[k].abs().max())
                assert float((sparse[k] - dense[k]).abs().max()) <= 1e-5 * max(scale, 1e-20), (trial, method, item)


def test_a_numba_that_does_not_import_falls_back_to_the_dense_rules(tmp_path):
    """A broken Numba install (here a stand-in that raises on import, as Numba does beside a
    NumPy it does not support) must leave projections working: the dense rules run."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.2 or less. Got NumPy 9.9.")\n')
    script = """
import logging, torch
logging.basicConfig(level=logging.WARNING)
from collections import OrderedDict
from torch import nn
from deconvlab.engine import sparse_step
from deconvlab.net import Net
from deconvlab.nets import ModelMeta, he_init
m = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3), relu1=nn.ReLU(), pool1=nn.MaxPool2d(3, 2),
                              conv2=nn.Conv2d(4, 4, 1), relu2=nn.ReLU()))
net = Net(he_init(m, seed=0).eval(), ModelMeta(arch="t", input_size=15))
rec = net.forward(torch.randn(1, 3, 15, 15, generator=torch.Generator().manual_seed(0)))
p = net.project(rec, "conv2", 1)
assert sparse_step.warm_up() is False and sparse_step.available() is False
assert p.shape == (3, 15, 15) and float(p.abs().max()) > 0
print("dense fallback ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dense fallback ok" in r.stdout
    assert "numba does not import (ImportError: Numba needs NumPy 2.2 or less" in r.stderr


def test_a_pool_window_wholly_in_padding_is_a_clear_error():
    # dilation 2, padding 1, ceil mode on a 1x1 map: PyTorch makes windows that see only
    # padding (-inf, with a switch outside the map); unpooling them must not write past the map
    module = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 2, 3), relu1=nn.ReLU(),
                                       pool1=nn.MaxPool2d(3, 3, padding=1, dilation=2, ceil_mode=True),
                                       conv2=nn.Conv2d(2, 2, 1), relu2=nn.ReLU()))
    net = Net(he_init(module, seed=0).eval(), ModelMeta(arch="degenerate", input_size=3))
    rec = net.forward(torch.randn(1, 3, 3, 3, generator=torch.Generator().manual_seed(0)))
    assert bool(torch.isinf(rec.outputs["pool1"]).all())
    with pytest.raises(ValueError, match="expected every max-pool window to overlap its 1x1 input"):
        net.project_many(rec, [("pool1", 0, None)], seed="map")


def test_filters_changed_in_place_are_read_again(monkeypatch):
    """The step keeps each conv's filters re-laid out between calls; weights changed in place
    (a snapshot loaded into the same module) must not leave it on the old ones."""
    net = zfnet_net("none")
    x = _image(1, 224, 6)
    items = [("conv2", 3, None), ("conv5", 1, None)]
    before = net.project_many(net.forward(x), items)
    with torch.no_grad():
        net.module.conv1.weight.mul_(-1.5)
        net.module.conv2.weight.add_(0.01)
    rec = net.forward(x)
    sparse, dense = both_routes(net, rec, items, "deconv", "point", monkeypatch)
    assert_close(sparse, dense, items)
    assert not torch.allclose(sparse, before)


def test_a_net_made_in_inference_mode_runs_the_sparse_step(monkeypatch):
    """The server loads its models and projects inside ``torch.inference_mode()`` (its runner):
    its weights are inference tensors, which have no version counter."""
    with torch.inference_mode():
        net = zfnet_net("none")
        rec = net.forward(_image(1, 224, 7))
        assert net.module.conv2.weight.is_inference()
        items = [("conv5", 2, None), ("fc6", 5, None)]
        assert_close(*both_routes(net, rec, items, "deconv", "point", monkeypatch), items)
