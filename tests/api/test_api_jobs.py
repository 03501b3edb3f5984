"""Jobs that cost what they cost (issue 12): admission by forward passes, 429 with Retry-After, and an
abandoned occlusion that stops (its stored results do not grow after the client leaves)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from deconvlab.api import Settings, create_app
from test_api_routes import png_of
from deconvlab.api.runner import Cancelled, QueueFull, Runner, check_cancelled

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_runner_admits_by_passes_not_jobs():
    r = Runner(queue_size=100, retry_after=1, cache_bytes=0, max_passes=100)
    release = threading.Event()
    try:
        held = r.submit(release.wait, 30, cost=90)
        small = r.submit(lambda: "small", cost=10)  # 90 + 10 <= 100: admitted
        with pytest.raises(QueueFull) as e:
            r.submit(lambda: "big", cost=20)  # 100 + 20 > 100
        assert "100 forward passes waiting or running, the budget is 100" in str(e.value)
        assert r.pending == 2 and r.pending_passes == 100 and r.rejected == 1
    finally:
        release.set()
    assert held.result(30) is True and small.result(30) == "small"
    assert r.pending == 0 and r.pending_passes == 0
    assert r.submit(lambda: "alone", cost=10_000).result(30) == "alone"  # nothing pending: never refused
    r.shutdown()


def test_a_job_cancelled_before_it_starts_never_runs_and_a_running_one_stops():
    r = Runner(max_passes=10)
    release, ran = threading.Event(), []
    held = r.submit(release.wait, 30)
    cancel = threading.Event()
    waiting = r.submit(ran.append, "ran", cancel=cancel)
    cancel.set()
    release.set()
    with pytest.raises(Cancelled):
        waiting.result(30)
    assert held.result(30) and ran == [] and r.cancelled == 1

    steps, stop = [], threading.Event()

    def loop():
        for i in range(1000):
            check_cancelled()
            steps.append(i)
            if i == 3:
                stop.set()
            time.sleep(0.001)

    running = r.submit(loop, cancel=stop)
    with pytest.raises(Cancelled):
        running.result(30)
    assert steps == [0, 1, 2, 3] and r.cancelled == 2
    check_cancelled()  # outside a job: a no-op
    r.shutdown()


def test_an_occlusion_over_the_pass_budget_is_429_with_retry_after(small_models_dir, tmp_path, sample_image):
    s = Settings(models=str(small_models_dir), state_dir=str(tmp_path), queue_passes=100, retry_after_s=2)
    with TestClient(create_app(s)) as c:
        iid = c.post("/api/images", files={"file": ("a.png", png_of(sample_image), "image/png")}).json()["image_id"]
        runner = c.app.state.deconvlab.runner
        release = threading.Event()
        busy = runner.submit(release.wait, 30, cost=90)  # 90 of the 100 passes are taken
        try:
            body = {"size": 56, "stride": 42, "layer": "conv5"}  # 5 x 5 positions + 1 = 26 passes
            r = c.post(f"/api/images/{iid}/occlusion", json=body)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 2
            assert r.json()["detail"].startswith("inference queue full: 90 forward passes waiting or running")
            cheap = runner.submit(lambda: 1, cost=1)  # 90 + 1 <= 100: admitted, waits its turn
        finally:
            release.set()
            busy.result(30)
        assert cheap.result(30) == 1
        assert c.post(f"/api/images/{iid}/occlusion", json=body).status_code == 200  # room again


class _Server:
    """uvicorn in a thread of this process, so the test can look at the app's runner and files."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def test_an_abandoned_occlusion_stops_and_stores_nothing(small_models_dir, tmp_path, sample_image):
    s = Settings(models=str(small_models_dir), state_dir=str(tmp_path), device="cpu", occlusion_batch=4,
                 frontend_dir=str(tmp_path / "none"))
    app = create_app(s)
    with _Server(app) as url:
        state = app.state.deconvlab
        iid = httpx.post(f"{url}/api/images", files={"file": ("a.png", png_of(sample_image), "image/png")},
                         timeout=60).json()["image_id"]
        body = {"size": 8, "stride": 4, "layer": "conv5"}  # 55 x 55 positions + 1 = 3026 passes, 757 batches
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/api/images/{iid}/occlusion", json=body, timeout=1.0)
        left = time.monotonic()  # the client has gone (httpx closed the connection)
        while state.runner.pending and time.monotonic() < left + 120:
            time.sleep(0.05)
        stopped = time.monotonic() - left
        assert state.runner.pending == 0 and state.runner.cancelled == 1, "the job did not stop"
        assert stopped < 5, f"the job ran on for {stopped:.1f} s after its client left"
        time.sleep(0.5)
        assert not list((tmp_path / "occlusions").glob("*"))  # nothing stored, nothing half-written
        # the server still answers, and a cheap occlusion is stored as usual
        r = httpx.post(f"{url}/api/images/{iid}/occlusion", json={"size": 112, "stride": 112, "layer": "conv1"},
                       timeout=120)
        assert r.status_code == 200 and len(list((tmp_path / "occlusions").glob("*.json"))) == 1
