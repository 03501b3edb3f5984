"""The two static mounts of the server: the browser app at ``/`` and Swagger UI's files for ``/docs``.

=====================  ==================================================  ===============================
mount                  files                                               found by
=====================  ==================================================  ===============================
``/``                  the browser app (``Settings.frontend_path()``),     ``deconvlab._resources``
                       only its app files: ``/tests/...`` is a 404
``/docs-static``       ``swagger-ui-bundle.js``, ``swagger-ui.css``,       Starlette's ``packages=``
                       ``favicon.png`` of the ``fastapi-offline`` package  (the package's ``static/``)
=====================  ==================================================  ===============================

``fastapi-offline`` documents one public name, ``FastAPIOffline`` (an app
factory that mounts its own copy of Swagger UI); its folder is the private
``_STATIC_PATH``. The files are package data in its ``static/`` folder, and
Starlette's ``StaticFiles(packages=[(package, folder)])`` is the public way to
serve a package's data folder: it finds the package with ``importlib``,
wherever it is installed, and fails at start-up if the folder is missing.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from fastapi.staticfiles import StaticFiles

from .._resources import is_app_file

DOCS_PACKAGE = ("fastapi_offline", "static")
DOCS_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


class AppFiles(StaticFiles):
    """``StaticFiles`` that answers only the browser app's files (``_resources.is_app_file``), 404 otherwise."""

    def lookup_path(self, path: str):
        rel = PurePosixPath(path.replace(os.sep, "/"))
        if rel.parts and not is_app_file(rel):  # "." (the folder itself) has no parts
            return "", None
        return super().lookup_path(path)


def frontend_files(directory: Path) -> StaticFiles:
    """The browser app in ``directory`` (which holds ``index.html``), served with ``index.html`` at ``/``."""
    return AppFiles(directory=directory, html=True)


def docs_files() -> StaticFiles:
    """Swagger UI's files from the installed ``fastapi-offline`` package (no network)."""
    files = StaticFiles(packages=[DOCS_PACKAGE])
    folder = Path(files.all_directories[0])
    missing = [f for f in DOCS_FILES if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"Swagger UI files: expected {', '.join(DOCS_FILES)} in {folder}, "
                           f"got no {', '.join(missing)} (reinstall fastapi-offline)")
    return files
