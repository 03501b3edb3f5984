"""The graph engine's rule table on small nets whose answers are known another way.

1. A hand-written module (conv -> F.relu -> max pool -> conv -> GELU, a residual
   add, a ``cat``, adaptive average pool, linear) with hand-set weights, whose
   projections are computed step by step below without autograd and without the
   engine: every rule of the table for the three methods.
2. A one-channel LeNet on 28x28 inputs against the autograd reference.
3. An op with no ``deconv`` rule (``tanh``) raises ``UnsupportedOp`` naming it;
   ``backprop`` through it is the gradient.
4. A model with data-dependent control flow: ``untraceable`` says why, its
   module paths are its layers, and it projects like the reference.
5. A flat ZFNet (no normalisation, and with LRN) projects as the sequential
   engine (``deconvlab.net.Net``) does, for every method and both seeds.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_sample_image, small_zfnet_module
from deconvlab.engine.graph import GraphEngine
from deconvlab.engine.graph_rules import UnsupportedOp
from test_graph_engine import assert_close, image, init_model, reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ 1. hand-written module

class Hand(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 2, 1, bias=False)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))  # c1 = (x, -x)
            self.conv2.weight.copy_(torch.tensor([[1.0, -0.5], [-1.0, 0.25]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 1.0], [0.5, 0.5, -1.0, 2.0]]))

    def forward(self, x):
        p = self.pool(F.relu(self.conv1(x)))
        s = self.gelu(self.conv2(p)) + p
        c = torch.cat([s, p], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(c, 1), 1))


X = [[1.0, -2.0, 3.0, 0.5],
     [-1.0, 2.0, -3.0, 4.0],
     [0.5, -0.5, 2.0, -2.0],
     [3.0, 1.0, -1.0, -4.0]]  # every 2x2 block of relu(x) and of relu(-x) has one maximum


def _rect(g: float, x: float, method: str, dgelu: float | None = None) -> float:
    if method == "backprop":
        return g * (dgelu if dgelu is not None else float(x > 0))
    g = max(g, 0.0)
    return g * float(x > 0) if method == "guided" else g


def hand_projection(method: str, out_unit: int) -> list[list[float]]:
    """The projection of logit ``out_unit``, step by step with plain floats."""
    W2 = [[1.0, -0.5], [-1.0, 0.25]]
    Wfc = [[1.0, -2.0, 0.5, 1.0], [0.5, 0.5, -1.0, 2.0]]
    c1 = [[[X[i][j] * (1 if c == 0 else -1) for j in range(4)] for i in range(4)] for c in range(2)]
    p, switch = [[[0.0] * 2 for _ in range(2)] for _ in range(2)], {}
    for c in range(2):
        for i in range(2):
            for j in range(2):
                cells = [(2 * i + a, 2 * j + b) for a in range(2) for b in range(2)]
                y, x = max(cells, key=lambda yx: max(c1[c][yx[0]][yx[1]], 0.0))
                p[c][i][j], switch[c, i, j] = max(c1[c][y][x], 0.0), (y, x)
    c2 = [[[sum(W2[o][k] * p[k][i][j] for k in range(2)) for j in range(2)] for i in range(2)] for o in range(2)]

    def gelu(z):
        return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))

    def dgelu(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2))) + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    s = [[[gelu(c2[o][i][j]) + p[o][i][j] for j in range(2)] for i in range(2)] for o in range(2)]
    a = [sum(map(sum, m)) / 4 for m in s + p]
    y0 = sum(Wfc[out_unit][c] * a[c] for c in range(4))  # the seed: the logit's own value
    g_cat = [y0 * Wfc[out_unit][c] / 4 for c in range(4)]  # linear, then the average pool's adjoint
    g_p = [[[g_cat[2 + c] + g_cat[c] for _ in range(2)] for _ in range(2)] for c in range(2)]  # cat + add
    g_c2 = [[[_rect(g_cat[o], c2[o][i][j], method, dgelu(c2[o][i][j])) for j in range(2)] for i in range(2)]
            for o in range(2)]
    for k in range(2):  # conv2's transpose
        for i in range(2):
            for j in range(2):
                g_p[k][i][j] += sum(W2[o][k] * g_c2[o][i][j] for o in range(2))
    g_r = [[[0.0] * 4 for _ in range(4)] for _ in range(2)]
    for (c, i, j), (y, x) in switch.items():  # unpool through the switches
        g_r[c][y][x] += g_p[c][i][j]
    g_c1 = [[[_rect(g_r[c][i][j], c1[c][i][j], method) for j in range(4)] for i in range(4)] for c in range(2)]
    return [[g_c1[0][i][j] - g_c1[1][i][j] for j in range(4)] for i in range(4)]  # conv1's transpose


def test_hand_written_module_follows_the_table():
    model = Hand().eval()
    eng = GraphEngine(model, (1, 4, 4))
    for name in ("conv1", "relu", "pool", "conv2", "gelu", "add", "cat", "adaptive_avg_pool2d", "flatten", "fc"):
        assert name in eng.layers
    x = torch.tensor(X).view(1, 1, 4, 4)
    rec = eng.forward(x)
    results = {}
    for method in ("deconv", "guided", "backprop"):
        got = eng.project_many(rec, [("fc", 0, None), ("fc", 1, None)], method=method)
        for unit in (0, 1):
            want = torch.tensor(hand_projection(method, unit)).view(1, 4, 4)
            assert torch.allclose(got[unit], want, rtol=1e-5, atol=1e-6), (method, unit, got[unit], want)
            results[method, unit] = want
    # the rules differ where they should: deconv drops the masks, guided keeps them
    assert not torch.allclose(results["deconv", 1], results["guided", 1])
    assert not torch.allclose(results["guided", 1], results["backprop", 1])
    # a point seed on the residual add reaches only its 2x2 block's switches
    p = eng.project(rec, "add", 0, method="deconv", position=(1, 1))
    assert p[0, :2].abs().sum() == 0 and p[0, :, :2].abs().sum() == 0 and p.abs().sum() > 0


# ------------------------------------------------------------------ 2. one channel, 28x28

def lenet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 32), nn.ReLU(), nn.Linear(32, 10))


def test_one_channel_net_on_28px():
    model = init_model(lenet())
    eng = GraphEngine(model, (1, 28, 28))
    x = image(2, c=1, size=28)
    rec = eng.forward(x)
    assert rec.activations["9"].shape == (2, 10) and eng.layer_info()[-1]["shape"] == (10,)
    seeds = [(layer, int(rec.activations[layer][1].flatten(1).amax(1).argmax()) if layer == "4"
              else int(rec.activations[layer][1].argmax())) for layer in ("4", "8", "9")]
    for method in ("deconv", "guided", "backprop"):
        out = eng.project_many(rec, [(layer, unit, None, 1) for layer, unit in seeds], method=method)
        assert out.shape == (3, 1, 28, 28)
        for k, (layer, unit) in enumerate(seeds):
            ref, _ = reference(model, x[1:], layer, unit, None, method)
            assert_close(out[k], ref, f"lenet {method} {layer}")


# ------------------------------------------------------------------ 3. an op without a rule

class Tanhy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv2(torch.tanh(self.conv1(x)))).mean((2, 3))


def test_unknown_nonlinear_op_raises_under_deconv_and_is_differentiated_under_backprop():
    model = init_model(Tanhy())
    eng = GraphEngine(model, (3, 12, 12))
    assert eng.unsupported("deconv") == ["tanh"] and eng.unsupported("backprop") == []
    x = image(size=12)
    rec = eng.forward(x)
    for method in ("deconv", "guided"):
        with pytest.raises(UnsupportedOp, match=r"no rule for .*tanh.* at 'tanh'"):
            eng.project_many(rec, [("conv2", 1, None)], method=method)
    eng.project_many(rec, [("conv1", 1, None)], method="deconv")  # below the tanh: fine
    bp = eng.project(rec, "conv2", 1, method="backprop")
    ref, _ = reference(model, x, "conv2", 1, None, "backprop")
    assert_close(bp, ref, "tanh backprop")


# ------------------------------------------------------------------ 4. data-dependent control flow

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.c1(x), inplace=True)
        if h.mean() > 0:  # fx cannot trace this
            h = self.pool(h)
        h = torch.relu(self.c2(h))
        return self.fc(h.mean((2, 3)))


def test_untraceable_model_works_with_module_paths():
    model = init_model(Branchy())
    eng = GraphEngine(model, (3, 16, 16))
    assert eng.untraceable is not None and "control flow" in eng.untraceable
    assert eng.layers == ["c1", "pool", "c2", "fc"]
    assert [d["kind"] for d in eng.layer_info()] == ["conv", "conv", "conv", "fc"]
    x = image(2, size=16)
    rec = eng.forward(x)
    with torch.no_grad():
        assert torch.allclose(rec.logits, model(x), atol=1e-6)
    for method in ("deconv", "guided", "backprop"):
        out = eng.project_many(rec, [("c2", 1, None, 1), ("fc", 2, None, 1), ("pool", 0, (0, 7), 1)], method=method)
        for k, (layer, unit, pos) in enumerate([("c2", 1, None), ("fc", 2, None), ("pool", 0, (0, 7))]):
            ref, _ = reference(model, x[1:], layer, unit, pos, method)
            assert_close(out[k], ref, f"untraceable {method} {layer}")


def test_a_model_made_in_inference_mode_projects_on_both_routes():
    """The server builds its models under ``torch.inference_mode``; autograd (the vjp rule,
    the hook route) cannot use such tensors, so the engine's copy holds normal ones."""
    with torch.inference_mode():
        untraceable = init_model(Branchy())
        tanhy = init_model(Tanhy())
        for model, layer, size in ((untraceable, "c2", 16), (tanhy, "conv2", 12)):
            eng = GraphEngine(model, (3, size, size))
            rec = eng.forward(image(size=size))
            for method in ("deconv", "backprop") if model is untraceable else ("backprop",):
                assert float(eng.project(rec, layer, 1, method=method).abs().sum()) > 0


# ------------------------------------------------------------------ 5. the sequential engine on ZFNet

@pytest.mark.parametrize("norm", ["none", "lrn"])
def test_flat_zfnet_matches_the_sequential_engine(norm):
    from deconvlab.net import Net

    module, meta = small_zfnet_module(norm=norm)
    net = Net(copy.deepcopy(module), meta, device="cpu")
    eng = GraphEngine(module, (3, 224, 224))
    x = net.preprocess(make_sample_image())
    rec_s, rec_g = net.forward(x), eng.forward(x)
    layers = {"conv2": "relu2", "conv5": "relu5", "fc7": "relu7", "pool5": "pool5"}
    units = {}
    for paper, child in layers.items():
        a = rec_g.activations[child][0]
        assert torch.allclose(a, rec_s.activations.get(paper, rec_s.outputs.get(paper))[0], atol=1e-5)
        units[paper] = int(a.flatten(1).amax(1).argmax()) if a.dim() == 3 else int(a.argmax())
    for method in ("deconv", "guided", "backprop"):
        for seed in ("point", "map"):
            seq = net.project_many(rec_s, [(p, u, None) for p, u in units.items()], method=method, seed=seed)
            gra = eng.project_many(rec_g, [(layers[p], u, None) for p, u in units.items()], method=method, seed=seed)
            for k, paper in enumerate(units):
                assert_close(gra[k], seq[k], f"zfnet({norm}) {method} {seed} {paper}", rtol=1e-5)


# ------------------------------------------------------------------ 6. the conv rule's two kernels

@pytest.mark.parametrize("cin,cout,k,s,p,size", [(3, 64, 7, 2, 3, 32), (3, 8, 11, 4, 2, 37), (1, 8, 5, 1, 2, 28),
                                                 (3, 16, 3, 2, 0, 10), (16, 8, 3, 2, 1, 9)])
def test_sparse_and_polyphase_transposed_convs_are_the_gradient(cin, cout, k, s, p, size):
    from deconvlab.engine.graph_kernels import phase_conv_transpose, sparse_conv_transpose

    gen = torch.Generator().manual_seed(k)
    w = torch.randn((cout, cin, k, k), generator=gen)
    x = torch.randn((2, cin, size, size), generator=gen, requires_grad=True)
    y = F.conv2d(x, w, None, s, p)
    one = torch.zeros_like(y)  # one channel per item: a point, and a whole map
    one[0, 3, 1, 2] = 2.0
    one[1, 5] = torch.randn(y.shape[-2:], generator=gen)
    dense = torch.randn(y.shape, generator=gen)
    for g in (one, dense):
        (ref,) = torch.autograd.grad(y, x, g, retain_graph=True)
        if cin <= 4:
            assert torch.allclose(phase_conv_transpose(g, w, s, (p, p), (size, size)), ref, rtol=1e-4, atol=1e-4)
        sparse = sparse_conv_transpose(g, w, (s, s), (p, p), (size, size))
        if g is dense:
            assert sparse is None  # a dense signal is left to the dense kernels
        else:
            assert torch.allclose(sparse, ref, rtol=1e-5, atol=1e-5)
