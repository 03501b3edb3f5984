"""Where the files the package needs at run time are: the browser app and the shipped models.

Issue 11 ("a real package"): a wheel carries its own copy of the browser app
and of the default model, so ``deconvlab serve`` works from any folder; a
checkout (``pip install -e .``, or ``PYTHONPATH=backend``) keeps using the one
copy in git. The wheel's copy is made by ``backend/deconvlab_build.py`` (the
``build_py`` step of ``pyproject.toml``) into ``deconvlab/_shipped/``; that
folder never exists in the source tree.

=================  ===================================  ==========================================
what               installed from a wheel               editable install / run from a checkout
=================  ===================================  ==========================================
browser app        ``<package>/_shipped/frontend/``     ``<checkout>/frontend/``
shipped models     ``<package>/_shipped/models/``       ``<checkout>/models/``
=================  ===================================  ==========================================

The package's copy wins when both exist. A folder counts only when it holds
what marks it (``index.html``; ``registry.json``). ``is_app_file`` is the one
rule for which files of ``frontend/`` are the app (the build copies those, the
server serves those): everything but ``FRONTEND_EXCLUDE`` at its top and
dot-files, so ``frontend/tests/`` is neither shipped nor served.

Standard library only: the build step loads this file by path, before the
package's dependencies exist.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

PACKAGE = Path(__file__).resolve().parent
SHIPPED = PACKAGE / "_shipped"  # what the wheel's build step writes (never in git)

# top-level entries of frontend/ that are not the browser app: the JS unit tests, the developers' notes
FRONTEND_EXCLUDE = frozenset({"tests", "README.md"})


def checkout_root() -> Path | None:
    """The repository whose ``backend/`` holds this package (editable install), else ``None``.

    Recognised by its layout (``<root>/backend/deconvlab`` beside ``<root>/pyproject.toml``),
    not assumed: an installed package has neither.
    """
    root = PACKAGE.parent.parent
    if PACKAGE.parent.name == "backend" and (root / "pyproject.toml").is_file():
        return root
    return None


def is_app_file(rel: str | PurePosixPath) -> bool:
    """Whether ``rel`` (a path relative to the frontend folder, ``/``-separated) is part of the app."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and parts[0] not in FRONTEND_EXCLUDE and not any(p.startswith(".") for p in parts)


def _first(*candidates: Path | None, marker: str) -> Path | None:
    for c in candidates:
        if c is not None and (c / marker).is_file():
            return c
    return None


def frontend_dir() -> Path | None:
    """The browser app's folder: the package's copy, else the checkout's ``frontend/``, else ``None``."""
    root = checkout_root()
    return _first(SHIPPED / "frontend", root / "frontend" if root else None, marker="index.html")


def shipped_models_dir() -> Path | None:
    """The models that came with the package: its copy, else the checkout's ``models/``, else ``None``."""
    root = checkout_root()
    return _first(SHIPPED / "models", root / "models" if root else None, marker="registry.json")
