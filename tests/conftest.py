"""Shared fixtures: a small random-weight ZFNet, its checkpoint, a models folder, a ``Net``.

Nothing here depends on training or on the Imagenette data.

* ``small_zfnet_module()``: a quarter-width ZFNet (fc 128, 10 classes, no LRN),
  He-initialised from a fixed seed so activations are O(1) at every layer.
* ``small_checkpoint``: that model saved with ``save_checkpoint`` (safetensors
  with its ``ModelMeta``) in a session tmp dir.
* ``small_models_dir``: a models folder whose ``registry.json`` names it
  ``zfnet-imagenette`` (the default model); ``models_env`` points
  ``DECONVLAB_MODELS`` at it for one test.
* ``small_net`` / ``small_record``: a CPU ``Net`` over the checkpoint and the
  record of ``sample_image`` (a deterministic 256x200 RGB picture).
* ``one_torch_thread``: run a module's tests with one torch thread.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvlab.data import IMAGENETTE_LABELS
from deconvlab.nets import ModelMeta, ZFNetConfig, he_init, save_checkpoint, zfnet  # noqa: F401 (he_init: re-exported to tests)

SMALL_CONFIG = dict(num_classes=10, width=0.25, fc_size=128, norm="none")


def fast_build(builder, *args, seed: int = 0, **kwargs) -> nn.Module:
    """``builder(*args, **kwargs)`` made on the meta device (skipping its own slow random
    init), then allocated on the CPU and ``he_init``-ialised: e.g. ``fast_build(vgg16, 10)``."""
    with torch.device("meta"):
        model = builder(*args, **kwargs)
    return he_init(model.to_empty(device="cpu"), seed).eval()


def small_zfnet_module(seed: int = 0, **overrides) -> tuple[nn.Sequential, ModelMeta]:
    """A small random-weight ZFNet and its meta (Imagenette's 10 classes)."""
    cfg = ZFNetConfig(**{**SMALL_CONFIG, **overrides})
    model = he_init(zfnet(cfg), seed).eval()
    ids = sorted(IMAGENETTE_LABELS)[:cfg.num_classes]
    meta = ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=[IMAGENETTE_LABELS[i] for i in ids],
                     class_ids=ids, input_size=cfg.input_size, name="zfnet-small")
    return model, meta


def make_sample_image(width: int = 256, height: int = 200, seed: int = 0) -> Image.Image:
    """Smooth colour gradients, a few discs and noise: every layer has something to respond to."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, 40)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    On a machine whose cores are busy elsewhere, two OpenMP threads make every
    op wait for a time slice (several times slower); one thread is predictable.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sample_image() -> Image.Image:
    return make_sample_image()


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    model, meta = small_zfnet_module()
    path = tmp_path_factory.mktemp("models") / "zfnet-imagenette" / "model.safetensors"
    return save_checkpoint(path, model, meta)


@pytest.fixture(scope="session")
def small_models_dir(small_checkpoint) -> Path:
    root = small_checkpoint.parent.parent
    (root / "registry.json").write_text(json.dumps({
        "default": "zfnet-imagenette",
        "models": {"zfnet-imagenette": {"checkpoint": "zfnet-imagenette/model.safetensors"}},
    }))
    return root


@pytest.fixture
def models_env(small_models_dir, monkeypatch) -> Path:
    """``DECONVLAB_MODELS`` -> a folder where ``zfnet-imagenette`` is the small random ZFNet."""
    monkeypatch.setenv("DECONVLAB_MODELS", str(small_models_dir))
    return small_models_dir


@pytest.fixture(scope="session")
def small_net(small_checkpoint):
    from deconvlab.net import Net
    from deconvlab.nets import load_checkpoint

    module, meta = load_checkpoint(small_checkpoint)
    return Net(module, meta, device="cpu")


@pytest.fixture(scope="session")
def small_record(small_net, sample_image):
    return small_net.forward(small_net.preprocess(sample_image))


@contextlib.contextmanager
def scratch_dir(tmp_path_factory, name: str):
    """A folder from ``tmp_path_factory`` for a module-scoped fixture, deleted when the fixture ends.

    pytest deletes a passed test's ``tmp_path`` at once (``tmp_path_retention_policy``), but folders
    made by ``tmp_path_factory`` stay until the session ends; the few that hold models or indexes
    (tens of MB each) would add up to most of what the suite writes to ``/tmp``.
    """
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def live_server(env: dict, workdir: Path, timeout: float = 60.0, python: str | None = None):
    """Run ``deconvlab serve`` as a real uvicorn process on a free 127.0.0.1 port; yield its base URL.

    ``python``: the interpreter to run it with (default this one; the wheel test passes its venv's).

    Waits for ``/api/health``; fails the test with the server's log if it dies or
    does not answer in ``timeout`` seconds; terminates it (then kills) at the end.
    """
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = Path(workdir) / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([python or sys.executable, "-m", "deconvlab.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"server did not answer /api/health:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
