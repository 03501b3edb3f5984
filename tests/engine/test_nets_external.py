"""Models deconvlab did not build: torchvision by name, weights files, programs, user registry entries.

No network: torchvision's cache is a temporary ``TORCH_HOME`` holding a file
written here, and ``torch.hub``'s downloader is replaced by one that fails.
The refusal tests check both sides: the audit refuses, and (where it is cheap)
the unguarded loader really would have run the planted code.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from deconvlab.nets import ModelMeta, build, check_module, load_program, load_torchvision, register, resolve
from deconvlab.nets.program import audit_pt2
from deconvlab.nets.torchvision_any import cached_file, load_torchvision_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAN = []  # what the planted payloads did


def _planted():
    RAN.append("ran")
    return {}


class Planted:
    """A pickle that calls ``_planted`` when unpickled (a stand-in for ``os.system``)."""

    def __reduce__(self):
        return (_planted, ())


class Tiny(nn.Module):
    """conv -> F.relu -> max pool -> conv -> adaptive average pool -> linear (a student's CNN)."""

    def __init__(self, cin: int = 3, classes: int = 5):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(cin, 4, 3, padding=1), nn.Conv2d(4, 6, 3), nn.Linear(6, classes)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.c1(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c2(y)), 1).flatten(1))


def _seeded(arch: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(arch, weights=None, **kw).eval()


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """A fresh, empty torchvision cache and a downloader that fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(url, *a, **k):
        raise OSError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    RAN.clear()
    return tmp_path


def _export(model: nn.Module, path: Path, size: int, cin: int = 3) -> Path:
    ep = torch.export.export(model.eval(), (torch.randn(2, cin, size, size),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory) -> Path:
    """A 12 px Tiny exported once for the audit tests (each copies and edits it)."""
    torch.set_num_threads(1)
    return _export(Tiny(), tmp_path_factory.mktemp("pt2") / "good.pt2", 12)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a zip, passing each member's (name, bytes) through ``edit`` (which returns new bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))
    return dst


def _edit_json(suffix: str, change):
    def edit(name, data):
        if not name.endswith(suffix):
            return data
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj).encode()
    return edit


# ---------------------------------------------------------------- torchvision by name

@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_random_weights_are_torchvisions_own_module(arch):
    model, d = load_torchvision_model(arch, None, num_classes=7)
    assert type(model) is type(torchvision.models.get_model(arch, weights=None, num_classes=7))
    assert not model.training and d["classes"] == [str(i) for i in range(7)]
    assert (d["input_size"], d["mean"], d["std"]) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert check_module(model, 3, 48) == 7


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match=r"expected one of \[.*'resnet18'.*\], got 'resnet19'"):
        load_torchvision("resnet19")


def test_safetensors_and_pth_round_trip_and_num_classes_from_the_file(tmp_path):
    src = _seeded("squeezenet1_1", num_classes=10)
    state = src.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")  # a training checkpoint
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")  # nn.DataParallel's keys
    x = torch.randn(2, 3, 64, 64)
    for name in ("w.safetensors", "w.pth", "dp.pt"):
        model = load_torchvision("squeezenet1_1", tmp_path / name)  # num_classes not given: 10 from the file
        _same_state(model, src)
        assert torch.equal(model(x), src(x))


def test_mismatched_weights_name_the_keys(tmp_path):
    state = _seeded("squeezenet1_1", num_classes=10).state_dict()
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"mis-shaped: classifier\.1\.weight expected \(5, 512, 1, 1\), "
                                         r"got \(10, 512, 1, 1\)"):
        load_torchvision("squeezenet1_1", tmp_path / "w.pth", num_classes=5)
    del state["features.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w2.pth")
    with pytest.raises(ValueError) as e:
        load_torchvision("squeezenet1_1", tmp_path / "w2.pth")
    assert "missing keys (the model has them, the file does not): features.0.bias" in str(e.value)
    assert "unexpected keys (the file has them, the model does not): extra.weight" in str(e.value)
    with pytest.raises(ValueError, match="none of its classifier keys"):
        load_torchvision("resnet18", tmp_path / "w.pth")  # another architecture's file


def test_a_pickled_module_is_refused_not_unpickled(tmp_path):
    torch.save({"model": Planted()}, tmp_path / "evil.pth")
    RAN.clear()
    with pytest.raises(ValueError, match=r"refused .*evil\.pth: it holds pickled Python objects"):
        load_torchvision("squeezenet1_1", tmp_path / "evil.pth")
    assert RAN == []


def test_torchvision_weights_come_from_the_cache_with_their_categories(offline):
    member = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    src = _seeded("squeezenet1_1", seed=3)
    path = cached_file(member)
    assert str(path).startswith(str(offline / "torch_home" / "hub" / "checkpoints"))
    path.parent.mkdir(parents=True)
    torch.save(src.state_dict(), path)
    for weights in ("IMAGENET1K_V1", "DEFAULT", "torchvision"):
        model, d = load_torchvision_model("squeezenet1_1", weights)
        _same_state(model, src)
        assert d["classes"] == member.meta["categories"] and d["classes"][0] == "tench"
        assert d["weights"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"


def test_a_planted_cache_file_is_read_as_data_and_a_missing_one_says_where(offline):
    member = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    with pytest.raises(FileNotFoundError, match=r"not in torchvision's cache .*squeezenet1_1-b8a52dc0\.pth"):
        load_torchvision("squeezenet1_1", "DEFAULT")
    cached_file(member).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Planted()}, cached_file(member))
    with pytest.raises(ValueError, match="refused"):
        load_torchvision("squeezenet1_1", "IMAGENET1K_V1")
    assert RAN == []  # torchvision alone reads it with weights_only=False and would have run it
    with pytest.raises(ValueError, match=r"expected a file, one of \['torchvision', 'DEFAULT'\] or one of "
                                         r"\['IMAGENET1K_V1'\], got 'IMAGENET1K_V9'"):
        load_torchvision("squeezenet1_1", "IMAGENET1K_V9")


def test_build_makes_torchvision_archs_for_checkpoints():
    model = build(ModelMeta(arch="torchvision:squeezenet1_1", config={"num_classes": 3}))
    assert check_module(model, 3, 40) == 3


# ---------------------------------------------------------------- check_module

class _Out(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.bn = fn, nn.BatchNorm2d(3)

    def forward(self, x):
        return self.fn(self.bn(x))


@pytest.mark.parametrize("fn, message", [
    (lambda x: x, r"expected output of shape \(N, classes\) for a \(1, 3, 16, 16\) input, got \(1, 3, 16, 16\) "
                  r"\(a feature map"),
    (lambda x: (x.mean((2, 3)), x), r"got tuple of 2 \(\(1, 3\), \(1, 3, 16, 16\)\)"),
    (lambda x: {"out": x}, r"got dict with keys \['out'\]"),
    (lambda x: x.flatten(), r"got \(768,\)"),
    (lambda x: x.mean((2, 3)).long(), r"expected floating logits, got torch\.int64"),
    (lambda x: x[:, :, :, :, 0], r"expected a module that takes a \(1, 3, 16, 16\) image tensor; its forward "
                                 r"raised IndexError"),
])
def test_check_module_says_what_it_expected_and_got(fn, message):
    m = _Out(fn).train()
    stats = m.bn.running_mean.clone()
    with pytest.raises(ValueError, match=message):
        check_module(m, 3, 16)
    assert m.training and m.bn.training and torch.equal(m.bn.running_mean, stats)  # left as it was


def test_check_module_counts_classes_and_checks_its_arguments():
    assert check_module(Tiny(classes=9), 3, 12) == 9
    assert check_module(Tiny(cin=1, classes=2), 1, 28) == 2
    with pytest.raises(ValueError, match="input_size: expected a positive int, got 0"):
        check_module(Tiny(), 3, 0)
    with pytest.raises(ValueError, match="its forward raised RuntimeError"):
        check_module(Tiny(cin=1), 3, 28)  # an RGB image into a grayscale net


# ---------------------------------------------------------------- programs

def test_export_round_trip_and_resolve(tmp_path):
    torch.manual_seed(0)
    tiny = Tiny().eval()
    path = _export(tiny, tmp_path / "tiny.pt2", 20)
    assert audit_pt2(path.read_bytes()) == []
    prog = load_program(path)
    x = torch.randn(3, 3, 20, 20)
    assert torch.allclose(prog(x), tiny(x), atol=1e-6)
    tree = load_program(path, unflatten=True)
    assert {"c1", "c2", "fc"} <= {n for n, _ in tree.named_modules()}
    assert torch.allclose(tree(x), tiny(x), atol=1e-6)
    module, meta = resolve(str(path))
    assert (meta.arch, meta.input_size, meta.classes, meta.config["batch"]) == ("export", 20, list("01234"),
                                                                                  "dynamic")


@pytest.mark.parametrize("what, edit, message", [
    ("a pickled weight", _edit_json("_weights_config.json",
                                    lambda o: o["config"]["c1.weight"].update(use_pickle=True)),
     r"'c1\.weight' is a pickled object"),
    ("a name FX pastes into code", _edit_json("_weights_config.json", lambda o: o["config"].update(
        {'c1"), print(1), ("': o["config"].pop("c1.weight")})), r"expected dotted words"),
    ("a guard .module() would exec", _edit_json("models/model.json",
                                                lambda o: o.update(guards_code=["__import__('os').getpid() > 0"])),
     r"guard .*__import__.*would exec it"),
    ("a torch attribute as an operator", _edit_json("models/model.json", lambda o: o["graph_module"]["graph"][
        "nodes"][0].update(target="torch.os.system")), r"operator 'torch\.os\.system'"),
])
def test_export_audit_refuses_what_would_run(tmp_path, tiny_pt2, what, edit, message):
    assert audit_pt2(tiny_pt2.read_bytes()) == []
    bad = _rewrite(tiny_pt2, tmp_path / "bad.pt2", edit)
    with pytest.raises(ValueError, match=r"refused .*bad\.pt2: loading this torch\.export archive would run "
                                         r"more than data \(.*" + message):
        load_program(bad)


def test_export_audit_refuses_the_old_layout_riding_along(tmp_path, tiny_pt2):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(tiny_pt2.read_bytes())
    with zipfile.ZipFile(bad, "a") as z:  # what torch.export.load reads, pickles included, after a RuntimeError
        z.writestr("version", "8.1")
        z.writestr("serialized_state_dict.pt", b"")
    with pytest.raises(ValueError, match=r"members of the old torch\.export layout .*'version'"):
        load_program(bad)


def test_export_audit_refuses_sample_inputs_that_torch_would_unpickle(tmp_path, tiny_pt2):
    good = tiny_pt2
    buf = io.BytesIO()
    torch.save((Planted(),), buf)
    bad = _rewrite(good, tmp_path / "bad.pt2",
                   lambda name, data: buf.getvalue() if "sample_inputs/" in name else data)
    RAN.clear()
    with pytest.raises(ValueError, match=r"sample inputs that torch\.load\(weights_only=True\) refuses"):
        load_program(bad)
    assert RAN == []
    try:  # the other side: torch.export.load itself falls back to weights_only=False and runs it
        torch.export.load(str(bad))
    except Exception:  # noqa: BLE001 (what it raises after running the payload does not matter)
        pass
    assert RAN == ["ran"]


def test_torchscript_needs_trust_and_then_round_trips(tmp_path):
    torch.manual_seed(1)
    tiny = Tiny().eval()
    torch.jit.script(tiny).save(str(tmp_path / "tiny.ts"))
    with pytest.raises(ValueError, match=r"refused .*tiny\.ts: a TorchScript file is a program.*no safe mode"):
        load_program(tmp_path / "tiny.ts")
    with pytest.raises(ValueError, match="a TorchScript file is a program"):
        resolve(str(tmp_path / "tiny.ts"))
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(load_program(tmp_path / "tiny.ts", trust=True)(x), tiny(x), atol=1e-6)
    module, meta = resolve(str(tmp_path / "tiny.ts"), trust=True)
    assert meta.arch == "torchscript" and len(meta.classes) == 5
    (tmp_path / "tiny.pt").write_bytes((tmp_path / "tiny.ts").read_bytes())  # the usual suffix, by content
    with pytest.raises(ValueError, match="a TorchScript file is a program"):
        resolve(str(tmp_path / "tiny.pt"))
    with pytest.raises(ValueError, match=r"tiny\.pt is a torchscript program, not a state dict"):
        load_torchvision("squeezenet1_1", tmp_path / "tiny.pt")


def test_a_torch_save_of_a_module_is_not_a_program(tmp_path):
    torch.save(Tiny(), tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="a torch.save pickle, not a program"):
        load_program(tmp_path / "whole.pt")


# ---------------------------------------------------------------- register / resolve

def test_register_writes_an_entry_that_resolve_reads_back(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "registry.json").write_text(json.dumps({"default": "keep", "models": {"keep": {"checkpoint": "k"}}}))
    src = _seeded("squeezenet1_1", seed=5, num_classes=4)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(models / "mine.safetensors"))
    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\nowl\n")
    path = register("mine", "torchvision:squeezenet1_1", weights=models / "mine.safetensors",
                    classes=tmp_path / "classes.txt", input_size=64, models_dir=models)
    reg = json.loads(path.read_text())
    assert reg["models"]["keep"] == {"checkpoint": "k"} and reg["default"] == "keep"
    assert reg["models"]["mine"]["weights"] == "mine.safetensors"  # relative to the models folder
    module, meta = resolve("mine", models)
    _same_state(module, src)
    assert (meta.classes, meta.input_size, meta.arch) == (["cat", "dog", "fox", "owl"], 64,
                                                          "torchvision:squeezenet1_1")
    with pytest.raises(ValueError, match=r"classes: expected 4 names \(the model's outputs\), got 2"):
        register("bad", "torchvision:squeezenet1_1", weights=models / "mine.safetensors",
                 classes=["a", "b"], input_size=64, models_dir=models)
    assert "bad" not in json.loads(path.read_text())["models"]
    reg["models"]["mine"]["classes"] = ["a", "b"]  # an entry edited by hand
    path.write_text(json.dumps(reg))
    with pytest.raises(ValueError, match=r"classes: expected 4 names \(the model's outputs\), got 2"):
        resolve("mine", models)


def test_register_a_grayscale_program(tmp_path):
    torch.manual_seed(2)
    tiny = Tiny(cin=1, classes=3).eval()
    pt2 = _export(tiny, tmp_path / "gray.pt2", 28, cin=1)
    register("gray", "export", weights=pt2, classes=["a", "b", "c"], input_size=28, mean=[0.1307], std=[0.3081],
             models_dir=tmp_path)
    module, meta = resolve("gray", tmp_path)
    assert (meta.mean, meta.std, meta.config["in_channels"], meta.classes) == ((0.1307,), (0.3081,), 1,
                                                                                ["a", "b", "c"])
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(module(x), tiny(x), atol=1e-6)
    register("plain", "export", weights=pt2, models_dir=tmp_path)  # size and channels from the export
    _, meta = resolve("plain", tmp_path)
    assert (meta.input_size, meta.mean, meta.std, meta.classes) == (28, (0.449,), (0.226,), ["0", "1", "2"])
    with pytest.raises(ValueError, match=r"a \(1, 3, 28, 28\) image tensor; its forward raised"):
        register("rgb", "export", weights=pt2, input_size=28, mean=[0.5] * 3, std=[0.2] * 3, models_dir=tmp_path)
    with pytest.raises(ValueError, match=r"mean/std: expected 1 \(grayscale\) or 3 \(RGB\) values each, got 2"):
        register("two", "export", weights=pt2, input_size=28, mean=[0.1, 0.2], std=[1, 1], models_dir=tmp_path)


def test_resolve_torchvision_names_with_weights(tmp_path):
    src = _seeded("squeezenet1_1", seed=7, num_classes=6)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    module, meta = resolve("torchvision:squeezenet1_1", weights=tmp_path / "w.pth")
    _same_state(module, src)
    assert meta.classes == [str(i) for i in range(6)] and meta.config["num_classes"] == 6
    with pytest.raises(ValueError, match="weights= is for 'torchvision:<arch>' names"):
        resolve("zfnet-imagenette", weights=tmp_path / "w.pth")
