"""The public Python API: loading, layers, records, projections, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deconvlab
from conftest import small_zfnet_module
from deconvlab.net import Net
from deconvlab.nets import ZFNetConfig, zfnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_load_by_registry_name_and_by_path(models_env, small_checkpoint):
    net = deconvlab.load("zfnet-imagenette", device="cpu")
    assert isinstance(net, Net) and net.meta.name == "zfnet-imagenette" and net.device == torch.device("cpu")
    assert net.layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert len(net.meta.classes) == 10 and net.meta.classes[0] == "tench"
    by_path = deconvlab.load(str(small_checkpoint), device="auto")
    ref, _ = small_zfnet_module()
    for (k, a), b in zip(by_path.module.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a.cpu(), b), k
    with pytest.raises(KeyError, match="unknown model: expected a checkpoint path, 'torchvision:<arch>', a .pt2/TorchScript file "
                       "or one of \\['zfnet-imagenette'\\], got 'nope'"):
        deconvlab.load("nope")


def test_module_layer_and_layer_info(small_net):
    assert not small_net.module.training
    assert small_net.layer("conv5") is small_net.module.relu5
    assert small_net.layer("fc8") is small_net.module.fc8
    assert small_net.layer("pool2") is small_net.module.pool2
    info = small_net.layer_info()
    assert info[0] == {"name": "conv1", "kind": "conv", "type": "Conv2d", "channels": 24, "shape": (24, 110, 110),
                       "parent": None}
    assert info[-1] == {"name": "fc8", "kind": "fc", "type": "Linear", "channels": 10, "shape": (10,), "parent": None}
    with pytest.raises(KeyError) as e:
        small_net.layer("conv6")
    assert e.value.args[0] == ("unknown layer: expected one of ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', "
                               "'fc6', 'fc7', 'fc8', 'pool1', 'pool2', 'pool5'], got 'conv6'")


def test_record_holds_logits_activations_and_switches(small_net, small_record):
    rec = small_record
    with torch.no_grad():
        logits = small_net.module(rec.input)
    assert torch.allclose(rec.logits, logits, atol=1e-6)
    assert torch.allclose(rec.probabilities().sum(1), torch.ones(1))
    assert set(rec.activations) == set(small_net.layers)
    assert (rec.activations["conv5"] >= 0).all() and torch.equal(rec.activations["fc8"], rec.logits)
    # switches point at each pool window's maximum
    sw, relu1 = rec.switches["pool1"], rec.activations["conv1"]
    assert torch.equal(relu1.flatten(2).gather(2, sw.flatten(2)).view_as(sw), rec.outputs["pool1"])


def test_default_position_is_the_strongest_activation(small_net, small_record):
    act = small_record.activations["conv4"][0, 7]
    y, x = divmod(int(act.argmax()), act.shape[-1])
    assert torch.equal(small_net.project(small_record, "conv4", 7),
                       small_net.project(small_record, "conv4", 7, position=(y, x)))
    assert not torch.equal(small_net.project(small_record, "conv4", 7),
                           small_net.project(small_record, "conv4", 7, position=((y + 3) % 13, x)))


def test_project_many_keeps_order_and_batch_indices(small_net, sample_image):
    from conftest import make_sample_image

    x = torch.cat([small_net.preprocess(sample_image), small_net.preprocess(make_sample_image(seed=1))])
    rec = small_net.forward(x)
    items = [("conv5", 12, None), ("conv3", 7, (4, 9)), ("conv1", 3, None, 1), ("fc6", 5, None, 1),
             ("conv5", 2, None, 1), ("pool2", 1, (0, 0))]
    ps = small_net.project_many(rec, items, method="guided")
    assert ps.shape == (6, 3, 224, 224)
    for item, p in zip(items, ps):
        index = item[3] if len(item) == 4 else 0
        alone = small_net.project(rec.select(index), item[0], item[1], method="guided", position=item[2])
        assert torch.allclose(p, alone, rtol=1e-5, atol=1e-7 * float(alone.abs().max())), item
    # a record of one image alone gives the same as its row in the batch
    rec1 = small_net.forward(x[1:])
    alone, batched = small_net.project(rec1, "conv5", 2), small_net.project(rec, "conv5", 2, index=1)
    assert alone.abs().max() > 0
    assert torch.allclose(alone, batched, rtol=1e-4, atol=1e-5 * float(alone.abs().max()))


def test_numpy_integers_are_accepted(small_net, small_record):
    p = small_net.project(small_record, "conv2", np.int64(3), position=(np.int64(2), np.int32(5)))
    assert torch.equal(p, small_net.project(small_record, "conv2", 3, position=(2, 5)))


def test_bad_requests_get_clear_errors_and_lose_nothing(small_net, small_record):
    rec = small_record
    cases = [
        (dict(layer="conv5", unit=64), ValueError, "unit: expected 0..63, got 64"),
        (dict(layer="conv5", unit=-1), ValueError, "unit: expected 0..63, got -1"),
        (dict(layer="fc8", unit=10), ValueError, "unit: expected 0..9, got 10"),
        (dict(layer="conv5", unit=1, position=(13, 0)), ValueError,
         "position: expected (y, x) with y in 0..12 and x in 0..12, got (13, 0)"),
        (dict(layer="conv5", unit=1, position=(1,)), ValueError, "position: expected (y, x)"),
        (dict(layer="fc6", unit=1, position=(0, 0)), ValueError,
         "position: fc6 is a fully connected layer; expected None, got (0, 0)"),
        (dict(layer="conv5", unit=1, position=(1, 1), seed="map"), ValueError,
         "position: a map seed uses the whole feature map; expected None, got (1, 1)"),
        (dict(layer="conv5", unit=1, method="lrp"), ValueError,
         "method: expected one of ['deconv', 'guided', 'backprop'], got 'lrp'"),
        (dict(layer="conv5", unit=1, seed="box"), ValueError, "seed: expected one of ['point', 'map'], got 'box'"),
        (dict(layer="conv5", unit=1, index=1), ValueError, "index: expected 0..0, got 1"),
        (dict(layer="conv9", unit=1), KeyError, "unknown layer: expected one of ["),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc) as e:
            small_net.project(rec, **kwargs)
        text = e.value.args[0]
        assert text.startswith(msg), (kwargs, text)
    with pytest.raises(ValueError, match="items: expected at least one"):
        small_net.project_many(rec, [])
    with pytest.raises(ValueError, match="item: expected"):
        small_net.project_many(rec, ["conv5"])
    # the record is untouched and still projects
    assert small_net.project(rec, "conv5", 1).abs().max() > 0


def test_a_record_without_switches_cannot_be_projected(small_net, small_record):
    rec = small_net.forward(small_record.input, switches=False)
    assert not rec.switches and torch.equal(rec.logits, small_record.logits)
    with pytest.raises(ValueError, match="record with max-pool switches"):
        small_net.project(rec, "conv5", 1)


def test_batchnorm_after_a_conv_is_folded(small_record):
    model = zfnet(ZFNetConfig(num_classes=10, width=0.25, fc_size=64, norm="batch")).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    x = small_record.input
    with torch.no_grad():
        want = model(x)
    from deconvlab.nets import ModelMeta
    net = Net(model, ModelMeta(arch="zfnet"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.module.modules())
    assert torch.allclose(net.forward(x).logits, want, rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
def test_cuda_projections_equal_the_cpu_ones(small_checkpoint):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = deconvlab.load(str(small_checkpoint), device="cpu")
    gpu = deconvlab.load(str(small_checkpoint), device="cuda")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rc, rg = cpu.forward(x), gpu.forward(x)
    items = [("conv5", 3, None), ("conv2", 9, (5, 5), 1), ("fc7", 2, None), ("pool1", 4, None, 1)]
    for method in ("deconv", "guided", "backprop"):
        for seed in ("point", "map"):
            its = [it for it in items if seed == "point" or it[2] is None]
            a = cpu.project_many(rc, its, method=method, seed=seed)
            b = gpu.project_many(rg, its, method=method, seed=seed).cpu()
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max())), (method, seed)


def test_large_batches_are_split_and_give_the_same(small_net, small_record, monkeypatch):
    items = [("conv2", u, None) for u in range(10)] + [("fc7", 3, None)]
    whole = small_net.project_many(small_record, items)
    monkeypatch.setattr(small_net, "max_batch", 3)
    parts = small_net.project_many(small_record, items)
    assert torch.allclose(whole, parts, rtol=1e-6, atol=1e-9)


def test_forward_upto_a_layer_projects_the_same(small_net, small_record):
    rec = small_net.forward(small_record.input, upto="conv3")
    assert set(rec.activations) == {"conv1", "conv2", "conv3"} and "pool5" not in rec.switches
    assert torch.equal(rec.logits, small_record.activations["conv3"])
    items = [("conv3", 4, None), ("conv2", 1, (3, 3)), ("pool1", 2, None)]
    assert torch.equal(small_net.project_many(rec, items), small_net.project_many(small_record, items))
    with pytest.raises(ValueError, match="rec: expected a record that reaches conv5, got one that stops at conv3"):
        small_net.project(rec, "conv5", 0)
    with pytest.raises(KeyError, match="unknown layer"):
        small_net.forward(small_record.input, upto="conv7")
