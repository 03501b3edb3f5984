"""Benchmark of the REST API under load (issue 5): latency per route, throughput, 5xx count.

    .venv/bin/python bench/bench_api.py [--requests 48] [--concurrency 1 8 32] [--url http://127.0.0.1:8000]

Without ``--url`` it starts ``deconvlab serve`` itself on a free loopback port
(the registry's default model, ``DECONVLAB_DEVICE``, uploads in a temporary
folder; the top-k routes are included when ``DECONVLAB_DATA`` has an index for
the model) and stops it at the end.

For each concurrency level (1, 8 and 32 clients on loopback, one HTTP
connection each, asyncio + httpx) and each route, ``--requests`` requests are
sent by that many clients at once; every answer's latency and status are
kept. Units shift from one level to the next, so projections are computed
afresh at each level (records stay cached per image). Occlusion requests use a square size of their own per level (so each
level computes afresh) and cycle through the classes; a repeated request is
answered from the stored result, as it would be in use. Requests vary the image (8 uploads) and the unit so that both the
forward-record cache and fresh computations are measured; the first request
for an image pays its forward pass. Reported per route and level: p50 and p99
latency, throughput (answers per second over the route's wall time), and the
counts of 429 (queue full: the designed back-pressure, Retry-After) and 5xx
(target: zero). Writes ``bench/results/api.json`` and prints a Markdown table
for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_png(seed: int, w: int = 320, h: int = 240) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    for _ in range(8):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 10, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def run_level(base: str, routes: dict, n: int, conc: int) -> dict:
    """Every route in turn, ``n`` requests each by ``conc`` clients at once (connections kept alive)."""
    clients = [httpx.AsyncClient(base_url=base, timeout=300) for _ in range(conc)]
    try:
        out = {}
        for name, make in routes.items():
            out[name] = await run_route(clients, make, n)
            r = out[name]
            print(f"{name:34s} c={conc:2d} p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                  f"{r['throughput_rps']:7.1f}/s  429: {r['n_429']}  5xx: {r['n_5xx']}", flush=True)
        return out
    finally:
        for c in clients:
            await c.aclose()


async def run_route(clients: list, make_url, n: int) -> dict:
    """``n`` requests of one route by ``len(clients)`` clients at once."""
    conc = len(clients)
    lat: list[float] = []
    status: dict[int, int] = {}
    counter = iter(range(n))

    async def worker(c):
        if True:
            for i in counter:
                method, url, body = make_url(i)
                t = time.perf_counter()
                try:
                    r = await (c.post(url, json=body) if method == "POST" else c.get(url))
                    code = r.status_code
                    await r.aread()
                except httpx.HTTPError:
                    code = 599
                lat.append(time.perf_counter() - t)
                status[code] = status.get(code, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - t0
    ok = [x for x in lat]
    return {"requests": n, "concurrency": conc, "wall_s": wall, "throughput_rps": n / wall,
            "p50_ms": 1000 * pct(ok, 50), "p99_ms": 1000 * pct(ok, 99), "mean_ms": 1000 * statistics.mean(ok),
            "status": {str(k): v for k, v in sorted(status.items())},
            "n_429": status.get(429, 0), "n_5xx": sum(v for k, v in status.items() if k >= 500)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="", help="bench a running server instead of starting one")
    ap.add_argument("--requests", type=int, default=48, help="requests per route and concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default=os.environ.get("DECONVLAB_DEVICE", "auto"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "api.json"))
    a = ap.parse_args()

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop our server too
    proc = None
    tmp = tempfile.TemporaryDirectory()
    base = a.url.rstrip("/")
    if not base:
        port = free_port()
        env = {**os.environ, "DECONVLAB_DATA_DIR": tmp.name, "DECONVLAB_DEVICE": a.device}
        log = open(Path(tmp.name) / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "deconvlab.cli", "serve", "--port", str(port),
                                 "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {(Path(tmp.name) / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        ready = httpx.get(f"{base}/api/ready").json()
        models = httpx.get(f"{base}/api/models").json()
        model = models["default"]
        info = next(m for m in models["models"] if m["id"] == model)
        conv5 = next(d for d in info["layers"] if d["name"] == "conv5")
        c5 = conv5["channels"]
        ids = []
        for s in range(8):
            r = httpx.post(f"{base}/api/images", files={"file": (f"b{s}.png", synthetic_png(s), "image/png")})
            r.raise_for_status()
            ids.append(r.json()["image_id"])
        has_index = ready["index"].get(model) == "ready"

        conv2 = next(d for d in info["layers"] if d["name"] == "conv2")["channels"]
        level = [0]  # units shift by 37 per concurrency level, so projections are computed afresh at each

        def img(i):
            return ids[i % len(ids)]

        def u5(i):
            return (i + 37 * level[0]) % c5

        def u2(i):
            return (i + 37 * level[0]) % conv2

        routes = {
            "GET /api/health": lambda i: ("GET", "/api/health", None),
            "GET /api/models": lambda i: ("GET", "/api/models", None),
            "GET predictions": lambda i: ("GET", f"/api/images/{img(i)}/predictions?k=5", None),
            "GET layers/conv5": lambda i: ("GET", f"/api/images/{img(i)}/layers/conv5", None),
            "GET units/{u} (conv5)": lambda i: ("GET", f"/api/images/{img(i)}/layers/conv5/units/{u5(i)}", None),
            "GET map.png (conv5)": lambda i: ("GET", f"/api/images/{img(i)}/layers/conv5/units/{u5(i)}/map.png",
                                              None),
            "GET projection png (conv5)": lambda i: (
                "GET", f"/api/images/{img(i)}/layers/conv5/units/{u5(i)}/projection", None),
            "GET projection npy (conv2)": lambda i: (
                "GET", f"/api/images/{img(i)}/layers/conv2/units/{u2(i)}/projection?format=npy", None),
            "GET input.png": lambda i: ("GET", f"/api/images/{img(i)}/input.png", None),
            "GET filters.png": lambda i: ("GET", "/api/layers/conv1/filters.png", None),
            "POST occlusion (~64/32, 36 pos.)": None,  # set per level below
        }
        if has_index:
            routes["GET top (conv5)"] = lambda i: ("GET", f"/api/layers/conv5/units/{u5(i)}/top", None)
            routes["GET top patch.png"] = lambda i: ("GET", f"/api/layers/conv5/units/{u5(i)}/top/0/patch.png",
                                                     None)
        results: dict[str, dict[str, dict]] = {}
        for li, conc in enumerate(a.concurrency):
            level[0] = li
            # a square size of its own per level: distinct requests compute, repeats are answered
            # from the stored result (as in use), with one class index per request
            size = 64 + len(results.get("POST occlusion (~64/32, 36 pos.)", {}))
            routes["POST occlusion (~64/32, 36 pos.)"] = lambda i, size=size: (
                "POST", f"/api/images/{img(i)}/occlusion",
                {"size": size, "stride": 32, "layer": "conv5", "class_index": i % len(info["classes"])})
            per = asyncio.run(run_level(base, dict(routes), max(a.requests, conc), conc))
            for name, res in per.items():
                results.setdefault(name, {})[str(conc)] = res
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    total_5xx = sum(r["n_5xx"] for per in results.values() for r in per.values())
    out = {"bench": "api", "server": base if a.url else "deconvlab serve (started by the bench)",
           "model": model, "device": a.device, "machine": platform.platform(), "cpus": os.cpu_count(),
           "requests_per_route": a.requests, "concurrency": a.concurrency, "index": has_index,
           "results": results, "total_5xx": total_5xx}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print()
    levels = a.concurrency
    print("| route | " + " | ".join(f"c={c}: p50 / p99 ms, req/s" for c in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name, per in results.items():
        cells = []
        for c in levels:
            r = per[str(c)]
            extra = f", {r['n_429']}x429" if r["n_429"] else ""
            cells.append(f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}, {r['throughput_rps']:.1f}{extra}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n5xx answers in all: {total_5xx}")
    return 0 if total_5xx == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
