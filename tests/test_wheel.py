"""The wheel: built from the repository, installed into a fresh venv, served from a folder outside the checkout.

Issue 11, "a real package": ``pip install`` of a wheel gives a ``deconvlab``
whose ``serve`` serves the browser app, the API and ``/docs`` from any working
folder, with the default model. The test fails if any file the server needs is
found only through the checkout.

==========  ===========================================================  ==============================================
step        what                                                         why
==========  ===========================================================  ==============================================
build       the checkout's files (``git ls-files -co --exclude-          no network (this venv's setuptools); no
            standard``: tracked and new, not ignored) linked or copied   ``build/`` or egg-info left in the checkout,
            to a temp folder; there an sdist, and from its tree ``pip    no stale ``build/lib`` in the wheel; the
            wheel --no-deps --no-build-isolation`` (``python -m          sdist must carry ``frontend/``, ``models/``
            build``'s route); each stage deleted once the next exists    and the build module; a small ``/tmp``
venv        ``python -m venv --without-pip``; the wheel installed by     a fresh environment holding one thing: the
            this venv's pip (``pip --python VENV/bin/python install      wheel
            --no-deps --no-index``)
deps        a ``.pth`` in the new venv's site-packages naming this       reuses torch & co. A folder a ``.pth`` adds
            venv's site-packages                                         is not a site dir, so *its* ``.pth`` files
                                                                         are not run: the editable install's
                                                                         ``__editable__.deconvlab-*.pth`` (which adds
                                                                         ``backend/``) never reaches the new venv.
                                                                         (``--system-site-packages`` would give the
                                                                         base Python's packages, which lack torch.)
hide        where mount namespaces are allowed (``unshare -m``, or       the checkout is gone for native code too:
            ``-Urm`` for a user): the venv's python runs with an empty   safetensors opens checkpoints from Rust, past
            tmpfs over the checkout and this venv's site-packages        any Python hook (a mutation that shipped an
            bound back in place                                          absolute path into the checkout passed the
                                                                         guard alone and fails with this)
guard       the same ``.pth`` imports a guard: an audit hook (PEP 578)   everywhere, and with a log naming the file
            that refuses (``PermissionError``) and logs every Python     (Python-level reads); this venv lives inside
            open or listing of a path inside the checkout, but this      the checkout, so its site-packages are
            venv's site-packages                                         allowed
serve       ``python -m deconvlab.cli serve`` (``tests/conftest.py``     any working folder; models from the package
            ``live_server``) in a temp folder, ``HOME`` and              (no user folder, no ``DECONVLAB_MODELS``)
            ``DECONVLAB_CACHE`` temp, no other ``DECONVLAB_*``
==========  ===========================================================  ==============================================

Checked: where the installed package finds its files (all inside the venv),
``/`` (the checkout's ``index.html``, byte for byte), that ``frontend/tests/``
is not served, ``/api/models``, ``/docs`` and its assets, and one deconvnet
projection of an uploaded image, compared with the same projection computed in
this process by the checkout's copy of the default model (two routes: the
wheel's model served over HTTP, the committed one in-process).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import live_server, scratch_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEPS = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})

GUARD = '''
"""Refuse and log every open or listing of a path inside the checkout (but the allowed folders)."""
import os, sys

_FORBID = os.environ["WHEEL_TEST_FORBID"].rstrip("/") + "/"
_ALLOW = tuple(p.rstrip("/") + "/" for p in os.environ["WHEEL_TEST_ALLOW"].split(os.pathsep))
_LOG = os.environ["WHEEL_TEST_LOG"]


def _hook(event, args):
    if event not in ("open", "os.listdir", "os.scandir") or not args or args[0] is None:
        return
    path = args[0]
    if isinstance(path, int):
        return
    path = os.path.abspath(os.fsdecode(path)) + "/"
    if path.startswith(_FORBID) and not path.startswith(_ALLOW):
        with open(_LOG, "a") as f:
            f.write(f"{event} {path[:-1]}\\n")
        raise PermissionError(f"the wheel test forbids the checkout: {event} {path[:-1]}")


sys.addaudithook(_hook)
'''

PROBE = '''
import json, os, sys
import deconvlab, deconvlab._resources as r

print(json.dumps({"package": deconvlab.__file__, "frontend": str(r.frontend_dir()),
                  "checkout_visible": os.path.exists(sys.argv[1]),
                  "models": str(r.shipped_models_dir()), "sys_path": sys.path}))
'''  # light (no torch): the package's own lookups; models_dir() and the served model are checked by serving


def _copy_checkout(dest: Path) -> None:
    """The files a checkout holds (tracked and new, not ignored), copied under ``dest``; without git,
    the folders the build reads, less caches and egg-info."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules")
        dest.mkdir(parents=True, exist_ok=True)
        for rel in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / rel, dest / rel)
        for rel in ("backend", "frontend", "models"):
            shutil.copytree(REPO / rel, dest / rel, ignore=skip)
        return
    for rel in filter(None, out.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a file deleted in the working tree is still listed until committed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, dest / rel)


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link where ``src`` and ``dest`` share a file system (no bytes written: the checkout holds
    122 MB of models, snapshots included), else a copy. The build only reads the tree, never writes a file
    it did not make, so a link cannot change the checkout."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[Path]:
    """Built as ``python -m build`` does it (an sdist, then the wheel from the sdist's tree), so the sdist
    is checked to carry what the wheel ships. This venv's setuptools builds it, with no network; a venv
    without setuptools builds the checkout's copy in an isolated environment (fetching setuptools).

    Each stage is deleted once the next one is made, and the wheel when the module ends: the copy of the
    checkout is the largest thing the suite writes, and a CI run once stopped at it with "No space left on
    device" in ``/tmp``."""
    with scratch_dir(tmp_path_factory, "wheel") as tmp:
        _copy_checkout(tmp / "src")
        tree, offline = tmp / "src", []
        if importlib.util.find_spec("setuptools"):
            subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                            "b.build_sdist(sys.argv[1])", str(tmp / "sdist")], check=True, cwd=tmp / "src",
                           capture_output=True)
            shutil.rmtree(tmp / "src")
            (sdist,) = (tmp / "sdist").glob("deconvlab-*.tar.gz")
            shutil.unpack_archive(sdist, tmp / "unpacked")
            sdist.unlink()
            (tree,), offline = (tmp / "unpacked").iterdir(), ["--no-build-isolation"]
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline,
                        "-w", str(tmp / "dist"), str(tree)], check=True, cwd=tmp)
        shutil.rmtree(tmp / ("unpacked" if offline else "src"))
        (whl,) = (tmp / "dist").glob("deconvlab-*.whl")
        yield whl


def _unshare_flags(scratch: Path) -> list[str] | None:
    """``unshare`` flags that give this user a private mount namespace here, else None."""
    scratch.mkdir(exist_ok=True)
    for flags in (["-m"], ["-Urm"]):  # root; an unprivileged user through a user namespace
        cmd = ["unshare", *flags, "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(scratch)]
        try:
            if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
                return flags
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def _hiding_python(tmp: Path, python: Path) -> Path | None:
    """A script that runs ``python`` with the checkout covered by an empty tmpfs (native code cannot
    reach it either: safetensors opens checkpoints from Rust, past any audit hook); the deps inside
    the checkout (this venv) are bound back. None where mount namespaces are not allowed."""
    flags = _unshare_flags(tmp / "scratch")
    if flags is None:
        return None
    inner = [d for d in DEPS if Path(d).is_relative_to(REPO)]
    lines = ["set -e"]
    lines += [f"mkdir -p {tmp}/keep/{i} && mount --bind {d} {tmp}/keep/{i}" for i, d in enumerate(inner)]
    lines += [f"mount -t tmpfs tmpfs {REPO}"]
    lines += [f"mkdir -p {d} && mount --bind {tmp}/keep/{i} {d}" for i, d in enumerate(inner)]
    lines += [f'exec {python} "$@"']
    (tmp / "hidden.sh").write_text("\n".join(lines) + "\n")
    wrapper = tmp / "python-without-checkout"
    wrapper.write_text(f'#!/bin/sh\nexec unshare {" ".join(flags)} --propagation private /bin/sh '
                       f'{tmp}/hidden.sh "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Iterator[dict]:
    """The wheel in a fresh venv with the checkout guarded off; the paths and the environment to run it.
    Deleted when the module ends (the installed package holds the default model)."""
    with scratch_dir(tmp_path_factory, "venv") as tmp:
        root = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
        python = root / "bin" / "python"
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], check=True, cwd=tmp)
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        (site / "_wheel_test_guard.py").write_text(GUARD)
        (site / "_wheel_test.pth").write_text("\n".join([*DEPS, "import _wheel_test_guard", ""]))
        for d in ("home", "cache", "work"):
            (tmp / d).mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp / "home"),
               "DECONVLAB_CACHE": str(tmp / "cache"), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
               "WHEEL_TEST_FORBID": str(REPO), "WHEEL_TEST_ALLOW": os.pathsep.join(DEPS),
               "WHEEL_TEST_LOG": str(tmp / "guard.log")}
        hiding = _hiding_python(tmp, python)
        yield {"python": hiding or python, "hidden": hiding is not None, "site": site, "env": env,
               "work": tmp / "work", "log": tmp / "guard.log", "cache": tmp / "cache"}


def _inside(path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _guard_log(venv) -> str:
    return venv["log"].read_text() if venv["log"].is_file() else ""


def test_the_installed_package_finds_everything_inside_the_venv(venv):
    out = subprocess.run([str(venv["python"]), "-c", PROBE, str(REPO / "frontend")], env=venv["env"], cwd=venv["work"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    site = venv["site"]
    assert _inside(found["package"], site), found["package"]
    assert _inside(found["frontend"], site) and Path(found["frontend"], "index.html").is_file(), found["frontend"]
    assert not Path(found["frontend"], "tests").exists()  # the JS unit tests are not shipped
    shipped = Path(found["models"])
    assert _inside(shipped, site), shipped
    reg = json.loads((shipped / "registry.json").read_text())
    assert reg["default"] == "zfnet-imagenette" and list(reg["models"]) == ["zfnet-imagenette"]
    assert "snapshots" not in reg["models"]["zfnet-imagenette"] and not (shipped / "zfnet-imagenette/snapshots").exists()
    assert (shipped / "zfnet-imagenette/model.safetensors").read_bytes() \
        == (REPO / "models/zfnet-imagenette/model.safetensors").read_bytes()
    assert not any(_inside(p, REPO) for p in found["sys_path"] if p and p not in DEPS), found["sys_path"]
    assert found["checkout_visible"] is not venv["hidden"]  # the mount namespace, where allowed, hides it
    assert _guard_log(venv) == ""


def _default_projection(image, layer: str, unit: int) -> np.ndarray:
    """The same projection in this process, by the checkout's copy of the default model."""
    import torch

    from deconvlab.net import Net
    from deconvlab.nets import load_checkpoint

    net = Net(*load_checkpoint(REPO / "models" / "zfnet-imagenette" / "model.safetensors"), device="cpu")
    with torch.no_grad():
        return net.project(net.forward(net.preprocess(image)), layer, unit).cpu().numpy()


def test_serve_from_a_folder_outside_the_checkout(venv, sample_image):
    import httpx

    with live_server(venv["env"], venv["work"], timeout=300, python=str(venv["python"])) as base:
        c = httpx.Client(base_url=base, timeout=60)
        r = c.get("/")
        assert r.status_code == 200 and r.content == (REPO / "frontend" / "index.html").read_bytes()
        assert c.get("/js/main.js").status_code == 200
        assert c.get("/tests/api.test.mjs").status_code == 404 and c.get("/README.md").status_code == 404
        models = c.get("/api/models").json()
        assert [m["id"] for m in models["models"]] == ["zfnet-imagenette"] and models["default"] == "zfnet-imagenette", \
            (venv["work"] / "server.log").read_text()[-3000:]
        docs = c.get("/docs")
        assert docs.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in docs.text
        assert c.get("/docs-static/swagger-ui-bundle.js").status_code == 200
        png = io.BytesIO()
        sample_image.save(png, "PNG")
        image_id = c.post("/api/images", files={"file": ("s.png", png.getvalue(), "image/png")}).json()["image_id"]
        units = c.get(f"/api/images/{image_id}/layers/conv5").json()["units"]
        unit = max(units, key=lambda u: u["max"])["unit"]
        r = c.get(f"/api/images/{image_id}/layers/conv5/units/{unit}/projection", params={"format": "npy"})
        assert r.status_code == 200, r.text
        served = np.load(io.BytesIO(r.content))
        assert c.get(f"/api/images/{image_id}/layers/conv5/units/{unit}/projection").headers["content-type"] \
            == "image/png"
    assert _guard_log(venv) == "", f"the server reached into the checkout:\n{_guard_log(venv)}"
    expected = _default_projection(sample_image, "conv5", unit)
    assert served.shape == expected.shape and np.abs(expected).max() > 0
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
