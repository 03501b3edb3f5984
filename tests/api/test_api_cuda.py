"""The GPU path (run by bench/gpu_check.sh): the served model resident on CUDA, its answers equal the CPU's.

Skipped where there is no CUDA device; nothing else depends on a GPU.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from deconvlab.api import Settings, create_app
from deconvlab.net import Net
from deconvlab.nets import load_checkpoint
from deconvlab.analyses.occlusion import occlusion

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    """The server turns TF32 off (full fp32); the library-level checks here do the same."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def gpu_client(small_models_dir, tmp_path_factory):
    s = Settings(models=str(small_models_dir), data_dir=str(tmp_path_factory.mktemp("state")), device="auto")
    with TestClient(create_app(s)) as c:
        yield c


@pytest.fixture(scope="module")
def gpu_net(small_checkpoint):
    module, meta = load_checkpoint(small_checkpoint)
    return Net(module, meta, device="cuda")


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_model_is_resident_on_the_gpu(gpu_client):
    net = gpu_client.app.state.deconvlab.models["zfnet-imagenette"].net
    assert net.device.type == "cuda"
    assert all(p.is_cuda for p in net.module.parameters())


def test_projections_on_the_gpu_equal_the_cpus(gpu_client, small_net, small_record, sample_image):
    iid = gpu_client.post("/api/images", files={"file": ("a.png", _png(sample_image), "image/png")}).json()["image_id"]
    for layer, unit, method in [("conv1", 3, "deconv"), ("conv5", 7, "deconv"), ("conv3", 2, "guided"),
                                ("fc6", 5, "backprop")]:
        r = gpu_client.get(f"/api/images/{iid}/layers/{layer}/units/{unit}/projection",
                           params={"method": method, "format": "npy"})
        assert r.status_code == 200, r.text
        got = np.load(io.BytesIO(r.content))
        want = small_net.project(small_record, layer, unit, method=method).numpy()
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0, err_msg=f"{layer} {unit} {method}")
    p = gpu_client.get(f"/api/images/{iid}/predictions", params={"k": 10}).json()["predictions"]
    cpu = small_record.probabilities()[0]
    for e in p:
        assert e["probability"] == pytest.approx(float(cpu[e["class_index"]]), abs=1e-4)


def test_occlusion_on_the_gpu_equals_the_cpus(gpu_net, small_net, sample_image):
    x = small_net.preprocess(sample_image)
    cpu = occlusion(small_net, x, 48, 16, "conv5")
    for method in ("incremental", "full"):
        gpu = occlusion(gpu_net, x.cuda(), 48, 16, "conv5", method=method)
        assert gpu.feature_map == cpu.feature_map and gpu.class_index == cpu.class_index
        np.testing.assert_allclose(gpu.activation, cpu.activation, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(gpu.probability, cpu.probability, atol=1e-4)
        assert (gpu.top_class != cpu.top_class).mean() <= 0.01
