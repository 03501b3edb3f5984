"""schemathesis over every operation of ``/openapi.json``, against a live server on 127.0.0.1 (issue 12).

The server is ``deconvlab serve`` (uvicorn, as ``conftest.live_server`` starts it) over the small
random ZFNet, a tiny data set and its top-k index, so that no route answers 503 for want of them.
Every check runs (``--checks all``; ``schemathesis.toml`` beside this file says which statuses count
as accepting schema-valid data, and why); examples and time are bounded (``-n``, ``--max-time``) and
the seed is fixed, so a run is repeatable. It fails on any 5xx, any status, header, content type or
body the document does not describe, and any schema-invalid request the server accepts.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import live_server, scratch_dir
from test_api_top import MODEL, make_dataset

HERE = Path(__file__).parent
EXAMPLES = 6  # test cases per operation and phase
SECONDS = 60  # the whole run's time budget (fuzzing repeats until it is spent)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(small_models_dir, small_net, tmp_path_factory):
    from deconvlab.index import build_index, default_index_path

    with scratch_dir(tmp_path_factory, "fuzz") as tmp:
        data = make_dataset(tmp / "data", per_class=2)
        env = {**os.environ, "DECONVLAB_MODELS": str(small_models_dir), "DECONVLAB_DATA": str(data),
               "DECONVLAB_STATE_DIR": str(tmp / "state"), "DECONVLAB_CACHE": str(tmp / "cache"),
               "DECONVLAB_DEVICE": "cpu", "DECONVLAB_INDEX_SPLIT": "val", "OMP_NUM_THREADS": "1",
               "DECONVLAB_OCCLUSION_MAX_PASSES": "64"}  # keep each fuzzed occlusion cheap
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DECONVLAB_CACHE", env["DECONVLAB_CACHE"])
            build_index(small_net, data, "val", out=default_index_path(MODEL, data, "val"), k=3, batch_size=4,
                        workers=0, progress=False)
        with live_server(env, tmp, timeout=120) as url:
            yield url, tmp


def _ids(url: str, image) -> dict:
    """An uploaded image and a stored occlusion of it, for the operations that need an id."""
    buf = io.BytesIO()
    image.resize((96, 80)).save(buf, "PNG")
    image_id = httpx.post(f"{url}/api/images", files={"file": ("a.png", buf.getvalue(), "image/png")},
                          timeout=60).json()["image_id"]
    occ = httpx.post(f"{url}/api/images/{image_id}/occlusion", json={"size": 112, "stride": 112, "layer": "conv1"},
                     timeout=60).json()["occlusion_id"]
    return {"DECONVLAB_FUZZ_IMAGE": image_id, "DECONVLAB_FUZZ_OCCLUSION": occ}


def test_schemathesis_finds_nothing(server, sample_image):
    url, tmp = server
    ids = _ids(url, sample_image)
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [exe, "--config-file", str(HERE / "schemathesis.toml"), "run", f"{url}/openapi.json",
           "--checks", "all", "--phases", "examples,coverage,fuzzing", "-n", str(EXAMPLES),
           "--max-time", str(SECONDS), "--seed", "20131112", "--workers", "1", "--request-timeout", "60",
           "--no-color", "--suppress-health-check", "all"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 240, cwd=tmp,
                       env={**os.environ, **ids})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts and counts[1] == counts[2] and int(counts[1]) >= 21 * 2, out[-3000:]  # every operation, twice+
