"""Benchmark of one sanity request (issue 15): a conv5 unit of the default model, each method and mode.

    .venv/bin/python bench/bench_sanity.py [--model zfnet-imagenette] [--layer conv5] [--reps 3] [--threads 1]

What a ``GET .../units/{unit}/sanity`` computes, timed where it runs: the
library call (``deconvlab.sanity.randomization``: the trained model's forward
pass and projection, a private copy of the model, then one re-initialisation,
forward pass and projection per randomised layer, and the Spearman, SSIM and
edge-map numbers of each) on one image (the first val image of
``DECONVLAB_DATA``, else a synthetic picture), the layer's strongest unit, for
each method and mode: the median of ``--reps``. Then the route itself, once
per method, through the app (``TestClient``, CPU): the first request computes
and stores, a second is answered from the stored files. Writes
``bench/results/sanity.json`` and prints a Markdown row per method for
``bench/README.md``. The load average is recorded with the numbers: on a
busy machine every time here grows with it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("deconv", "guided", "backprop")
MODES = ("cascading", "independent")


def _image():
    from deconvlab.data import list_split, open_image

    root = os.environ.get("DECONVLAB_DATA", "")
    if root and (Path(root) / "val").is_dir():
        sp = list_split(root, "val")
        return open_image(sp.root / sp.files[0]), sp.files[0]
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_sample_image

    return make_sample_image(), "synthetic (tests/conftest.make_sample_image)"


def _library(net, x, layer, unit, reps) -> dict:
    from deconvlab.analyses import sanity

    out = {}
    sanity.randomization(net, x, layer, unit, "deconv")  # warm-up: Numba's kernel, first-call allocations
    for mode in MODES:
        for method in METHODS:
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                r = sanity.randomization(net, x, layer, unit, method, mode=mode)
                times.append(time.perf_counter() - t)
            out[f"{method}/{mode}"] = {"median_s": round(statistics.median(times), 3), "models": len(r.steps)}
    return out


def _route(model: str, image, layer: str, unit: int) -> dict:
    from fastapi.testclient import TestClient

    from deconvlab.api import Settings, create_app

    buf = io.BytesIO()
    image.save(buf, "PNG")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(serve_models=model, data_dir=tmp, data="", device="cpu", frontend_dir=tmp)
        with TestClient(create_app(settings)) as c:
            iid = c.post("/api/images", files={"file": ("a.png", buf.getvalue(), "image/png")}).json()["image_id"]
            url = f"/api/images/{iid}/layers/{layer}/units/{unit}/sanity"
            for method in METHODS:
                t = time.perf_counter()
                r = c.get(url, params={"method": method})
                first = time.perf_counter() - t
                assert r.status_code == 200, r.text
                t = time.perf_counter()
                c.get(url, params={"method": method})
                out[method] = {"first_s": round(first, 3), "stored_s": round(time.perf_counter() - t, 4)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zfnet-imagenette")
    ap.add_argument("--layer", default="conv5")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sanity.json"))
    args = ap.parse_args()
    import torch

    import deconvlab

    torch.set_num_threads(args.threads)
    net = deconvlab.load(args.model, device="cpu")
    image, name = _image()
    x = net.preprocess(image)
    a = net.activation(net.forward(x), args.layer)[0]
    unit = int(a.reshape(a.shape[0], -1).amax(dim=1).argmax())
    load_before = os.getloadavg()[0]
    lib = _library(net, x, args.layer, unit, args.reps)
    route = _route(args.model, image, args.layer, unit)
    res = {"model": args.model, "layer": args.layer, "unit": unit, "image": name, "threads": args.threads,
           "reps": args.reps, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
           "library": lib, "route": route}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("| method | models | cascading (library) | independent (library) | route, first | route, stored |")
    print("|---|---|---|---|---|---|")
    for m in METHODS:
        c, i = lib[f"{m}/cascading"], lib[f"{m}/independent"]
        print(f"| {m} | {c['models']} | {c['median_s']:.2f} s | {i['median_s']:.2f} s | "
              f"{route[m]['first_s']:.2f} s | {route[m]['stored_s'] * 1000:.1f} ms |")
    print(f"load average {res['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
