"""Build step of the wheel: copy the browser app and the default model into the package.

Not part of the installed package (``pyproject.toml`` finds packages only, and
this is a module): setuptools loads it through
``[tool.setuptools] cmdclass`` while it builds. The repository keeps one copy
of each file (``frontend/``, ``models/``); a wheel needs its own, because an
installed ``deconvlab`` has no checkout to read them from. Where the installed
package then finds them: ``deconvlab/_resources.py``.

==================  ==============================================  ============================================
command             what it adds                                    where
==================  ==============================================  ============================================
``build_py``        ``frontend/``'s app files (``is_app_file``: no  ``<build>/deconvlab/_shipped/frontend/``
                    ``tests/``, no ``README.md``)
``build_py``        the registry's default model: its checkpoint,   ``<build>/deconvlab/_shipped/models/``
                    ``MODEL_CARD.md``, ``card.json``, and a
                    ``registry.json`` naming only it, without
                    ``snapshots``
``sdist``           the same sources (and this file), so a wheel    the sdist's tree
                    built from the sdist (``python -m build``)
                    ships them too
==================  ==============================================  ============================================

The training snapshots stay out (65 MB, five times the model): they serve
only feature evolution (Fig. 4), which also needs a data set a fresh install
does not have; the server answers 404 "no training snapshots" and the browser
says "not available". An editable install (``pip install -e .``) copies
nothing: the package then reads the checkout's folders.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

REPO = Path(__file__).resolve().parent.parent  # backend/deconvlab_build.py -> the repository


def _resources():
    """``deconvlab/_resources.py`` loaded by path (the package's dependencies need not exist yet)."""
    path = REPO / "backend" / "deconvlab" / "_resources.py"
    spec = importlib.util.spec_from_file_location("_deconvlab_resources", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def frontend_files(repo: Path = REPO) -> list[Path]:
    """The browser app's files, relative to ``frontend/``."""
    front = repo / "frontend"
    if not (front / "index.html").is_file():
        raise FileNotFoundError(f"browser app: expected {front / 'index.html'}, got no such file")
    is_app = _resources().is_app_file
    return sorted(p.relative_to(front) for p in front.rglob("*")
                  if p.is_file() and is_app(p.relative_to(front).as_posix()))


def shipped_models(repo: Path = REPO) -> tuple[dict, list[Path]]:
    """The registry the wheel carries (the default model alone, no snapshots) and its files (relative to models/)."""
    models = repo / "models"
    reg = json.loads((models / "registry.json").read_text())
    name = reg["default"]
    if name not in reg["models"]:
        raise KeyError(f"models/registry.json: expected its default {name!r} among {sorted(reg['models'])}")
    entry = {k: v for k, v in reg["models"][name].items() if k != "snapshots"}
    files = [Path(entry[k]) for k in ("checkpoint", "card") if k in entry]
    if "card" in entry and (models / Path(entry["card"]).parent / "card.json").is_file():
        files.append(Path(entry["card"]).parent / "card.json")
    missing = [str(f) for f in files if not (models / f).is_file()]
    if missing:
        raise FileNotFoundError(f"default model {name!r}: expected {', '.join(missing)} under {models}")
    return {"default": name, "models": {name: entry}}, files


def copy_shipped(dest: Path, repo: Path = REPO) -> list[Path]:
    """Write the browser app and the default model under ``dest`` (the package folder); return the files."""
    out = []
    for rel in frontend_files(repo):
        out.append(_copy(repo / "frontend" / rel, dest / "_shipped" / "frontend" / rel))
    reg, files = shipped_models(repo)
    for rel in files:
        out.append(_copy(repo / "models" / rel, dest / "_shipped" / "models" / rel))
    target = dest / "_shipped" / "models" / "registry.json"
    target.write_text(json.dumps(reg, indent=2) + "\n")
    return out + [target]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst


class build_py(_build_py):
    """setuptools' ``build_py`` plus ``copy_shipped`` into the build folder (skipped when editable)."""

    def run(self):
        super().run()
        if self.editable_mode:  # `pip install -e .`: the checkout's frontend/ and models/ are read in place
            return
        self._shipped = copy_shipped(Path(self.build_lib) / "deconvlab")

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), *map(str, getattr(self, "_shipped", []))]


class sdist(_sdist):
    """setuptools' ``sdist`` plus the sources ``build_py`` copies from, so the sdist builds the same wheel."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        _, models = shipped_models()
        extra = [Path("backend/deconvlab_build.py"), *(Path("frontend") / f for f in frontend_files()),
                 Path("models/registry.json"), *(Path("models") / f for f in models)]
        for rel in extra:
            _copy(REPO / rel, Path(base_dir) / rel)
