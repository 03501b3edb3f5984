"""deconvlab.compare (issue 16): unit matching (Li et al. 2016) and linear CKA (Kornblith et al. 2019).

A model matched with itself gives the identity with correlation 1; matched with a copy whose conv3
channels are permuted (conv4's inputs permuted to match: the same function) it recovers the
permutation exactly. CKA is 1 on a layer with itself and does not move under that permutation or
under an isotropic scaling of the layer. The correlations are checked against np.corrcoef of samples
gathered by hand from Net.forward; the CKA against its feature-space formula and an HSIC with an
explicit centring matrix. The same on a graph net (torchvision's resnet18, seeded, 64 px).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

from deconvlab import compare
from deconvlab.net import Net
from deconvlab.nets import ModelMeta, ZFNetConfig, he_init, zfnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 96


def zf_net(module=None, seed: int = 0) -> Net:
    cfg = ZFNetConfig(num_classes=10, width=0.25, fc_size=64, norm="none", input_size=SIZE)
    module = module if module is not None else he_init(zfnet(cfg), seed).eval()
    meta = ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=[str(i) for i in range(10)], input_size=SIZE,
                     name="zf")
    return Net(module, meta)


@pytest.fixture(scope="module")
def base():
    cfg = ZFNetConfig(num_classes=10, width=0.25, fc_size=64, norm="none", input_size=SIZE)
    return he_init(zfnet(cfg), 0).eval()


@pytest.fixture(scope="module")
def perm(base):
    return torch.randperm(base.conv3.out_channels, generator=torch.Generator().manual_seed(1))


def permuted(module, perm, scale: float = 1.0):
    """A copy whose conv3 output channel j is the original's perm[j] (times ``scale``), conv4 reading
    them in the new order (divided by ``scale``): the same function."""
    m = copy.deepcopy(module)
    with torch.no_grad():
        m.conv3.weight.copy_(module.conv3.weight[perm] * scale)
        m.conv3.bias.copy_(module.conv3.bias[perm] * scale)
        m.conv4.weight.copy_(module.conv4.weight[:, perm] / scale)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def nets(base, perm):
    return zf_net(base), zf_net(permuted(base, perm)), zf_net(permuted(base, torch.arange(len(perm)), 3.0))


def alive(net, layer, images):
    a = net.activation(net.forward(images, switches=False), layer)
    return (a.amax(dim=(0, 2, 3)) > a.amin(dim=(0, 2, 3))).numpy()


def test_the_permuted_copy_is_the_same_function(nets, images):
    a, b, s = nets
    la, lb, ls = (n.forward(images, switches=False).logits for n in nets)
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ls, la, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("one_to_one", [False, True])
@pytest.mark.parametrize("by", ["position", "max"])
def test_a_model_with_itself_is_the_identity(nets, images, one_to_one, by):
    a = nets[0]
    live = alive(a, "conv3", images)
    assert live.sum() >= 0.8 * len(live)
    m = compare.match_units(a, "conv3", a, "conv3", images, one_to_one=one_to_one, by=by, batch_size=4)
    assert m.by == by
    units = np.arange(len(live))
    np.testing.assert_array_equal(m.unit[live], units[live])
    np.testing.assert_allclose(m.correlation[live], 1.0, atol=1e-9)
    assert (m.unit[~live] == -1).all() and np.isnan(m.correlation[~live]).all()


@pytest.mark.parametrize("one_to_one", [False, True])
def test_the_permutation_is_recovered(nets, images, perm, one_to_one):
    a, b, _ = nets
    live = alive(a, "conv3", images)
    m = compare.match_units(a, "conv3", b, "conv3", images, one_to_one=one_to_one)
    inverse = torch.argsort(perm).numpy()  # A's unit i is B's unit inverse[i]
    np.testing.assert_array_equal(m.unit[live], inverse[live])
    np.testing.assert_allclose(m.correlation[live], 1.0, atol=1e-6)
    assert m.by == "position"  # auto: the same map size


def test_correlations_equal_corrcoef_of_hand_gathered_samples(nets, images):
    a, b, _ = nets
    r, by = compare.correlations(a, "conv2", b, "conv3", images, by="max", batch_size=3)
    assert by == "max"
    xa = a.activation(a.forward(images, switches=False), "conv2").amax(dim=(2, 3)).double().numpy()
    xb = b.activation(b.forward(images, switches=False), "conv3").amax(dim=(2, 3)).double().numpy()
    with np.errstate(invalid="ignore"):  # a unit constant over the images: NaN in both
        want = np.corrcoef(xa.T, xb.T)[:xa.shape[1], xa.shape[1]:]
    ok = ~np.isnan(r)
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(ok, ~np.isnan(want))
    np.testing.assert_allclose(r[ok], want[ok], atol=1e-5)  # float32 maps of batches of 3 against one of 10
    # per position: conv3 against conv4 (maps of one size)
    r, by = compare.correlations(a, "conv3", b, "conv4", images, by="auto")
    fa = a.activation(a.forward(images, switches=False), "conv3").double()
    fb = b.activation(b.forward(images, switches=False), "conv4").double()
    sa = fa.permute(0, 2, 3, 1).reshape(-1, fa.shape[1]).numpy()
    sb = fb.permute(0, 2, 3, 1).reshape(-1, fb.shape[1]).numpy()
    with np.errstate(invalid="ignore"):
        want = np.corrcoef(sa.T, sb.T)[:sa.shape[1], sa.shape[1]:]
    ok = ~np.isnan(r)
    assert by == "position" and ok.mean() > 0.8
    np.testing.assert_array_equal(ok, ~np.isnan(want))
    np.testing.assert_allclose(r[ok], want[ok], atol=1e-8)


def test_top_matches_and_hungarian_on_a_hand_matrix():
    r = np.array([[0.9, 0.8, np.nan], [0.95, 0.1, np.nan], [np.nan, np.nan, np.nan]])
    unit, corr = compare.best_matches(r)
    np.testing.assert_array_equal(unit, [0, 0, -1])
    unit, corr = compare.best_matches(r, one_to_one=True)  # 0.8 + 0.95 beats 0.9 + 0.1
    np.testing.assert_array_equal(unit, [1, 0, -1])
    np.testing.assert_allclose(corr[:2], [0.8, 0.95])
    assert compare.top_matches(r, 0, 5) == [(0, 0.9), (1, 0.8)]
    assert compare.top_matches(np.array([[0.5, 0.5, 0.7]]), 0, 2) == [(2, 0.7), (0, 0.5)]


def hsic_cka(x, y):
    """CKA through HSIC with an explicit centring matrix H (Kornblith et al., eq. 3)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda p, q: np.trace(p @ h @ q @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_two_ways_and_its_invariances():
    g = np.random.default_rng(0)
    x = g.normal(size=(20, 7))
    y = x @ g.normal(size=(7, 5)) + 0.5 * g.normal(size=(20, 5))
    want = hsic_cka(x - x.mean(0), y - y.mean(0))
    assert 0.1 < want < 0.99
    assert compare.linear_cka(x, y) == pytest.approx(want, rel=1e-10)
    assert compare.linear_cka_gram(compare.centred_gram(x), compare.centred_gram(y)) == pytest.approx(want, rel=1e-10)
    q, _ = np.linalg.qr(g.normal(size=(7, 7)))
    assert compare.linear_cka(x @ q * 4.0 + 3.0, y) == pytest.approx(want, rel=1e-10)
    assert compare.linear_cka(x, x) == pytest.approx(1.0)


def test_cka_of_layers_with_themselves_and_under_permutation_and_scaling(nets, images):
    a, b, s = nets
    layers = ["conv1", "conv3", "conv5", "fc6"]
    same = compare.cka(a, a, images, layers, layers, batch_size=4)
    np.testing.assert_allclose(np.diag(same.matrix), 1.0, atol=1e-9)
    assert same.layers_a == layers and same.images == len(images)
    # the matrix against the feature-space formula on features gathered by hand (the pooled maps)
    rec = a.forward(images, switches=False)
    feats = {L: compare.cka_features(a.activation(rec, L).double(), 8).numpy() for L in layers}
    want = np.array([[compare.linear_cka(feats[p], feats[q]) for q in layers] for p in layers])
    np.testing.assert_allclose(same.matrix, want, atol=1e-9)
    np.testing.assert_allclose(same.matrix, same.matrix.T, atol=1e-12)
    for other in (b, s):  # conv3 permuted; conv3 scaled by 3: CKA does not move
        got = compare.cka(a, other, images, layers, layers)
        np.testing.assert_allclose(got.matrix, same.matrix, atol=1e-6)
        assert got.matrix[1, 1] == pytest.approx(1.0, abs=1e-6)


def test_bad_input_names_it(nets, images):
    a, b, _ = nets
    with pytest.raises(ValueError, match=r"by=position: expected two maps of the same height and width, "
                                         r"got layer conv1 \d+x\d+ and layer conv5 \d+x\d+"):
        compare.match_units(a, "conv1", b, "conv5", images, by="position")
    with pytest.raises(ValueError, match="fc layer"):
        compare.match_units(a, "conv5", b, "fc6", images, by="position")
    assert compare.match_units(a, "conv5", b, "fc6", images).by == "max"
    with pytest.raises(KeyError, match="unknown layer"):
        compare.match_units(a, "conv9", b, "conv3", images)
    with pytest.raises(ValueError, match="by: expected one of"):
        compare.match_units(a, "conv3", b, "conv3", images, by="mean")
    with pytest.raises(ValueError, match="at least one image"):
        compare.cka(a, b, images[:0])
    with pytest.raises(ValueError, match="grid"):
        compare.cka(a, b, images, ["conv3"], ["conv3"], grid=0)


def test_keys_name_the_models_images_and_layers(nets, images):
    a, b, _ = nets
    k = compare.compare_key(a, b, images, "conv3")
    assert k == compare.compare_key(a, b, images.clone(), "conv3")
    assert len({k, compare.compare_key(a, a, images, "conv3"), compare.compare_key(a, b, images[:5], "conv3"),
                compare.compare_key(a, b, images, "conv4")}) == 4


# ------------------------------------------------------------------ a graph net

@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return Net.from_module(torchvision.models.resnet18(weights=None, num_classes=10).eval(), input_size=64)


def test_graph_net_default_layers_identity_and_cka(resnet):
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    layers = compare.default_layers(resnet)
    assert layers == ["conv1", "relu", "maxpool"] + [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)] + \
        ["avgpool", "fc"]
    m = compare.match_units(resnet, "layer2.0", resnet, "layer2.0", x, one_to_one=True)
    live = ~np.isnan(m.correlation)
    assert live.mean() > 0.8
    np.testing.assert_array_equal(m.unit[live], np.arange(len(live))[live])
    c = compare.cka(resnet, resnet, x, ["layer1.0", "layer3.1", "fc"], ["layer1.0", "layer3.1", "fc"])
    np.testing.assert_allclose(np.diag(c.matrix), 1.0, atol=1e-9)
    assert ((c.matrix > 0) & (c.matrix <= 1 + 1e-9)).all()


# ------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def registry(tmp_path_factory, base, perm):
    """A models folder: ``zf`` (snapshots at epochs 1 and 2: epoch 2 permuted) and ``zf-perm``; a data set."""
    import json

    from conftest import make_sample_image
    from deconvlab.nets import save_checkpoint

    tmp = tmp_path_factory.mktemp("compare-cli")
    meta = zf_net(base).meta
    save_checkpoint(tmp / "models" / "zf" / "model.safetensors", base, meta)
    save_checkpoint(tmp / "models" / "zf" / "snapshots" / "epoch-001.safetensors", base, meta)
    save_checkpoint(tmp / "models" / "zf" / "snapshots" / "epoch-002.safetensors", permuted(base, perm), meta)
    save_checkpoint(tmp / "models" / "zf-perm" / "model.safetensors", permuted(base, perm), meta)
    (tmp / "models" / "registry.json").write_text(json.dumps({"default": "zf", "models": {
        "zf": {"checkpoint": "zf/model.safetensors", "snapshots": "zf/snapshots"},
        "zf-perm": {"checkpoint": "zf-perm/model.safetensors"}}}))
    for i in range(8):
        d = tmp / "data" / "val" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        make_sample_image(100, 90, seed=i).save(d / f"{i}.png")
    return tmp


def test_command_writes_the_heat_map_and_the_table_and_caches(registry, perm, monkeypatch, capsys):
    import json

    from deconvlab.cli.main import main

    monkeypatch.setenv("DECONVLAB_MODELS", str(registry / "models"))
    out, cache = registry / "out", registry / "cache"
    argv = ["compare", "--model", "zf", "--epoch", "1", "--other", "zf", "--other-epoch", "2", "--data",
            str(registry / "data"), "--n", "0", "--layers", "conv1", "conv3", "fc7", "--match", "conv3", "conv5:fc6",
            "--cache", str(cache), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    numbers = json.loads((out / "compare.json").read_text())
    assert (out / "compare.png").stat().st_size > 1000
    assert numbers["n"] == 8 and numbers["cka"]["layers_a"] == ["conv1", "conv3", "fc7"]
    cols = numbers["cka"]["layers_b"]
    assert cols == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]  # the default
    m = np.array(numbers["cka"]["cka"], dtype=float)
    np.testing.assert_allclose([m[i, cols.index(L)] for i, L in enumerate(["conv1", "conv3", "fc7"])], 1.0, atol=1e-5)
    conv3, mixed = numbers["matches"]
    assert (conv3["layer"], conv3["by"], mixed["other_layer"], mixed["by"]) == ("conv3", "position", "fc6", "max")
    inverse = torch.argsort(perm).tolist()
    rows = [u for u in conv3["units"] if u["best"] is not None]
    assert len(rows) > 0.8 * len(conv3["units"])
    assert all(u["best"] == u["one_to_one"] == inverse[u["unit"]] for u in rows)
    assert all(u["correlation"] == pytest.approx(1, abs=1e-5) for u in rows)
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 3  # the CKA matrix and two correlation matrices
    from deconvlab.analyses import compare as lib

    def refuse(*a, **k):
        raise AssertionError("recomputed a cached matrix")

    monkeypatch.setattr(lib, "correlations", refuse)
    monkeypatch.setattr(lib, "cka", refuse)
    capsys.readouterr()
    assert main(argv) == 0 and sorted(cache.glob("*.npz")) == files
    assert json.loads((out / "compare.json").read_text()) == numbers
    assert main(argv + ["--match", "conv1:conv5", "--by", "position"]) == 2
    assert "by=position: expected two maps of the same height and width" in capsys.readouterr().err
    assert main(["compare", "--model", "zf", "--epoch", "9", "--data", str(registry / "data")]) == 2
    assert "epoch: expected one of [1, 2]" in capsys.readouterr().err
