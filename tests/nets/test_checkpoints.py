"""Checkpoints load without unpickling; registry names and paths resolve; torchvision weights
come from a local file or a local URL (127.0.0.1, never the internet) with torch.hub's hash check."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import pickle
import threading

import pytest
import torch

from conftest import fast_build, scratch_dir, small_zfnet_module
from deconvlab.nets import ModelMeta, load_checkpoint, resolve, save_checkpoint
from deconvlab.nets.torchvision_nets import alexnet, load_torchvision_weights, rename

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _empty_alexnet() -> torch.nn.Module:
    """A renamed AlexNet with uninitialised weights (loading overwrites every one of them)."""
    with torch.device("meta"):
        m = alexnet(num_classes=1000)
    return m.to_empty(device="cpu")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_safetensors_round_trip_keeps_weights_and_meta(tmp_path):
    model, meta = small_zfnet_module(seed=2)
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    back, meta2 = load_checkpoint(path)
    assert _same_weights(model, back)
    assert meta2 == meta and meta2.config["width"] == 0.25 and meta2.classes[9] == "parachute"
    assert not back.training
    # half precision on disk, float32 in memory, within fp16 rounding
    half, _ = load_checkpoint(save_checkpoint(tmp_path / "h.safetensors", model, meta, half=True))
    for (k, a), b in zip(model.state_dict().items(), half.state_dict().values()):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-3, atol=1e-4), k
    # the file is not a pickle: its header is safetensors' JSON
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert "deconvlab" in header["__metadata__"]


def test_pth_state_dicts_load_with_weights_only(tmp_path):
    model, meta = small_zfnet_module(seed=3)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    back, _ = load_checkpoint(tmp_path / "m.pth", meta=meta)
    assert _same_weights(model, back)
    with pytest.raises(ValueError, match="needs meta="):
        load_checkpoint(tmp_path / "m.pth")

    # a pickle that would run code is refused by weights_only
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "evil.pth", meta=meta)


def test_resolve_a_path_and_a_registry_name(models_env, small_checkpoint):
    m1, meta1 = resolve(str(small_checkpoint))
    m2, meta2 = resolve("zfnet-imagenette")
    assert _same_weights(m1, m2) and meta2.name == "zfnet-imagenette"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(small_checkpoint.parent / "missing.safetensors")


@pytest.fixture(scope="module")
def tv_alexnet_file(tmp_path_factory):
    """A random torchvision AlexNet state dict named like torchvision's files: alexnet-<sha256[:8]>.pth.

    Stored in half precision (122 MB instead of 244 MB: writing and hashing it is
    most of this file's time); loading copies it into the float32 model.
    """
    from torchvision.models import alexnet as tv_alexnet

    tv = fast_build(tv_alexnet, seed=7).half().float()  # weights exactly representable in fp16
    with scratch_dir(tmp_path_factory, "tvweights") as d:
        tmp = d / "alexnet.pth"
        torch.save({k: v.half() for k, v in tv.state_dict().items()}, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        path = d / f"alexnet-{digest[:8]}.pth"
        tmp.rename(path)
        yield tv, path


def test_torchvision_weights_from_a_local_file(tv_alexnet_file):
    tv, path = tv_alexnet_file
    model = _empty_alexnet()
    load_torchvision_weights("alexnet", model, path)
    assert _same_weights(model, rename(tv))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_torchvision_weights("alexnet", model, path.parent / "none.pth")
    with pytest.raises(ValueError, match=r"arch: expected one of \['alexnet', 'vgg16'\], got 'zfnet'"):
        load_torchvision_weights("zfnet", model, path)


def test_torchvision_weights_from_a_local_url_with_hash_check(tv_alexnet_file, tmp_path):
    tv, path = tv_alexnet_file
    # a second copy whose name carries a wrong hash prefix
    bad = path.parent / "alexnet-00000000.pth"
    if not bad.exists():
        bad.symlink_to(path.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        model = _empty_alexnet()
        load_torchvision_weights("alexnet", model, url, model_dir=tmp_path / "hub", progress=False)
        assert _same_weights(model, rename(tv))
        assert (tmp_path / "hub" / path.name).is_file()  # cached where we said
        with pytest.raises(RuntimeError, match="invalid hash value"):
            load_torchvision_weights("alexnet", _empty_alexnet(),
                                     url.replace(path.name, bad.name), model_dir=tmp_path / "hub2", progress=False)
    finally:
        server.shutdown()
        server.server_close()


def test_registry_entry_with_local_torchvision_weights(tv_alexnet_file, tmp_path, monkeypatch):
    tv, path = tv_alexnet_file
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / path.name).symlink_to(path)
    (tmp_path / "registry.json").write_text(json.dumps({"default": "alexnet-imagenet", "models": {
        "alexnet-imagenet": {"arch": "alexnet", "weights": f"weights/{path.name}"}}}))
    monkeypatch.setenv("DECONVLAB_MODELS", str(tmp_path))
    model, meta = resolve("alexnet-imagenet")
    assert meta.arch == "alexnet" and _same_weights(model, rename(tv))
    assert isinstance(meta, ModelMeta)
