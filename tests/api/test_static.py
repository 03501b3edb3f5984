"""The static mounts (``api/static.py``): the browser app at ``/`` without its tests, Swagger UI's files.

Run against the checkout's ``frontend/`` (what an editable install serves;
the wheel's copy is served in ``tests/test_wheel.py``). No lifespan is run: the
mounts need no model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deconvlab._resources import frontend_dir, is_app_file
from deconvlab.api import create_app
from deconvlab.api.config import Settings
from deconvlab.api.static import DOCS_FILES

FRONT = Path(__file__).resolve().parents[2] / "frontend"


@pytest.fixture(scope="module")
def client(small_models_dir, tmp_path_factory):
    s = Settings(models=str(small_models_dir), state_dir=str(tmp_path_factory.mktemp("state")), device="cpu")
    assert s.frontend_path().resolve() == frontend_dir().resolve() == FRONT  # the checkout's copy, found without a setting
    return TestClient(create_app(s))


def test_every_app_file_is_served_as_it_is(client):
    files = [p for p in FRONT.rglob("*") if p.is_file() and is_app_file(p.relative_to(FRONT).as_posix())]
    assert any(p.name == "index.html" for p in files) and any(p.suffix == ".js" for p in files)
    for p in files:
        r = client.get("/" + p.relative_to(FRONT).as_posix())
        assert r.status_code == 200 and r.content == p.read_bytes(), p
    assert client.get("/").content == (FRONT / "index.html").read_bytes()


def test_the_app_tests_and_notes_are_not_served(client):
    tests = sorted((FRONT / "tests").glob("*.mjs"))
    assert tests  # there is something to hide
    for p in tests:
        assert client.get(f"/tests/{p.name}").status_code == 404
    for path in ("/README.md", "/tests/", "/tests", "/js/../tests/" + tests[0].name, "/%2e%2e/pyproject.toml"):
        assert client.get(path).status_code == 404, path


def test_docs_assets_come_from_fastapi_offline(client):
    import fastapi_offline

    folder = Path(fastapi_offline.__file__).parent / "static"
    for name in DOCS_FILES:
        r = client.get(f"/docs-static/{name}")
        assert r.status_code == 200 and r.content == (folder / name).read_bytes()
