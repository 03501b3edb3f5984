"""docker-compose.yml: the same server with a GPU reserved, models and data as volumes (no engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deconvlab.api import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (name,) = doc["services"]
    return doc, doc["services"][name]


def test_gpu_is_reserved(service):
    _, svc = service
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert svc["environment"]["DECONVLAB_DEVICE"] == "cuda"


def test_runs_the_same_server_with_models_and_data_volumes(service):
    doc, svc = service
    cmd = " ".join(svc["command"]) if isinstance(svc["command"], list) else svc["command"]
    assert "deconvlab serve --host 0.0.0.0 --port 8000" in cmd
    assert svc["ports"] == ["127.0.0.1:8000:8000"]  # published on loopback only
    vols = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for v in svc["volumes"]]  # ${VAR:-default} -> default
    targets = {v.split(":")[1]: v.split(":")[0] for v in vols}
    env = svc["environment"]
    assert env["DECONVLAB_MODELS"] in targets and targets[env["DECONVLAB_MODELS"]] == "./models"
    assert env["DECONVLAB_DATA"] in targets
    named = {v.split(":")[0] for v in vols if not v.startswith((".", "/"))}
    assert named <= set(doc.get("volumes", {}))
    # every DECONVLAB_* variable is one the server reads: a Settings field, or the library's cache dir
    for key in env:
        field = key.removeprefix("DECONVLAB_").lower()
        assert field in Settings.model_fields or key == "DECONVLAB_CACHE", key


def test_docker_compose_config_validates():
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run(cmd + ["version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        r = subprocess.run(cmd + ["config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
