"""Feature evolution (Fig. 4) of a graph architecture: arch "resnet18" snapshots (as ``deconvlab train
--arch resnet18`` writes them) scanned with the index's scan loop, against a brute-force scan of every
image through each snapshot's ``net.forward``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deconvlab.analyses.evolution import build_evolution, default_units
from deconvlab.index import index_layers
from deconvlab.nets import ModelMeta, save_checkpoint
from deconvlab.nets.resnet import resnet18

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, N = 40, 20


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with two snapshots (epochs 1 and 5) and a 20-image ImageFolder."""
    root = tmp_path_factory.mktemp("evo")
    meta = ModelMeta(arch="resnet18", config={"num_classes": 3, "width": 0.25}, classes=["a", "b", "c"],
                     input_size=SIZE, name="resnet18-evo")
    for epoch, seed in ((1, 0), (5, 1)):
        torch.manual_seed(seed)
        save_checkpoint(root / "run" / "snapshots" / f"epoch-{epoch:03d}.safetensors", resnet18(3, 0.25).eval(),
                        meta)
    rng = np.random.default_rng(0)
    for i in range(N):
        a = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        p = root / "data" / "val" / f"c{i % 2}" / f"{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).resize((48, 44), Image.BILINEAR).save(p)
    return root


def test_resnet18_snapshots_scan_like_a_brute_force(run):
    ev = build_evolution(run / "run", run / "data", "val", n=0, batch_size=7)
    assert ev.epochs == [1, 5] and all(n.engine == "graph" for _, n in ev.nets)
    ev.scan()
    x = ev.load(ev.image_indices)
    for epoch, net in ev.nets:
        rec = net.forward(x)
        sc = ev.scans[epoch]
        assert [L.name for L in sc.layers] == [L.name for L in index_layers(net)]
        for L in sc.layers:
            a = net.activation(rec, L.name)
            per_image = a.flatten(2).amax(2) if a.dim() == 4 else a  # (N, C)
            best = per_image.argmax(0)  # first image on ties
            for u in (0, L.units // 2, L.units - 1):
                value, row, pos = sc.strongest(L.name, u)
                assert row == int(best[u]), (epoch, L.name, u)
                assert value == pytest.approx(float(per_image[best[u], u]), rel=1e-5, abs=1e-6)
                if a.dim() == 4:
                    flat = int(a[row, u].flatten().argmax())
                    assert pos == divmod(flat, a.shape[-1])
                else:
                    assert pos is None
    # the two snapshots differ, and a unit's steps and projection come out per snapshot
    assert not np.array_equal(ev.scans[1].value, ev.scans[5].value)
    units = default_units(ev, per_layer=1)
    assert units and {layer for layer, _ in units} <= {f"layer{s}.{b}" for s in range(1, 5) for b in range(2)}
    layer, unit = units[-1]
    steps = ev.unit(layer, unit)
    assert [s.epoch for s in steps] == [1, 5]
    net = ev.net(5)
    p = ev.projection(layer, unit, 5)
    rec = net.forward(x[steps[1].image_index:steps[1].image_index + 1])
    ref = net.project(rec, layer, unit, position=steps[1].position).numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-7)
    assert steps[1].box == net.receptive_field(layer, *steps[1].position)
