"""Benchmark of the top-k index (issue 4): scan throughput, build, unit latency, all projections.

    .venv/bin/python bench/bench_index.py [--limit N] [--units-per-layer N] [--projection-units N] [--threads N]

Measures, side by side in one run, on one split of the data set
(``DECONVLAB_DATA``, default Imagenette val, 3,925 images) with the default
model (``zfnet-imagenette``; a random-weight model of the same architecture
when it is not trained yet -- same cost, which the output says):

1. **scan vs forward**: the activation scan (:func:`deconvlab.index.scan.scan_values` plus
   the :class:`~deconvlab.index.tracker.TopK` update) against a plain forward pass
   (``module(x)``) over the same pre-decoded batches, batch by batch, the
   order alternating, so both share whatever else the machine is doing.
   Target: scan throughput >= 0.8x the forward's.
2. **build**: ``build_index`` end to end (JPEG decoding in DataLoader workers
   included), images/s.
3. **unit latency**: for units sampled from every layer, a *cold* request
   (empty cache: entries, the k patches and the k point-seed deconvnet
   projections) and a *warm* one (the same again), in ms, with and without PNG
   encoding of the 18 images, and the process CPU time of the cold one (all
   threads; on a busy machine the wall time also holds the waits). Targets:
   cold <= 300 ms, warm <= 20 ms.
4. **all projections**: the time to compute the projections of every unit's
   top-k (``TopKIndex.iter_projections``, 8 units per forward pass): the
   first ``--projection-units`` units of each layer are timed and the time
   scaled to the layer's units (``0``: every unit, no scaling; fc6 and fc7
   have 1,024 units each and dominate).

Writes ``bench/results/index.json`` and prints a Markdown table for
``bench/README.md``.

OpenMP's threads spin while they wait; on a machine whose cores are busy
with other work that costs 5-8x in wall time for small batches (measured:
a cold fc6 request took 1.9 s with 2 spinning threads, 0.4 s with 1 thread,
0.55 s with 2 passive ones, the CPU time the same ~0.27 s for the last two).
So this benchmark sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment
already sets it (the value used is recorded in the JSON); the server should
run the same way on a shared machine.
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
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see the docstring

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from deconvlab.engine import sparse_step  # noqa: E402
from deconvlab.data import data_root, decoded, list_split  # noqa: E402
from deconvlab.index import (TopK, TopKIndex, argmax_positions, build_index, index_layers,  # noqa: E402
                             scan_values)


def load_default():
    """(net, trained?) -- the default model, else a random-weight stand-in of the same architecture."""
    import deconvlab
    from deconvlab.nets import read_registry

    if "zfnet-imagenette" in read_registry()["models"]:
        return deconvlab.load("zfnet-imagenette", device="cpu"), True
    from deconvlab.nets import ModelMeta, ZFNetConfig, save_checkpoint, zfnet

    torch.manual_seed(0)
    cfg = ZFNetConfig(num_classes=10, width=0.5, fc_size=1024, norm="none")
    meta = ModelMeta(arch="zfnet", config=cfg.to_dict(), classes=[f"c{i}" for i in range(10)],
                     name="zfnet-random-standin")
    path = Path(tempfile.mkdtemp(prefix="bench-index-")) / "zfnet-random-standin.safetensors"
    save_checkpoint(path, zfnet(cfg).eval(), meta)
    return deconvlab.load(str(path), device="cpu"), False


def bench_scan(module, layers, images: np.ndarray, mean, std, batch_size: int) -> dict:
    mean_t = torch.tensor(mean).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std).view(1, 3, 1, 1) * 255
    units = sum(L.units for L in layers)
    tk = TopK(units, 9)
    t_fwd = t_scan = 0.0
    n = 0
    with torch.inference_mode():
        for b, s in enumerate(range(0, len(images), batch_size)):
            x = (torch.from_numpy(np.array(images[s:s + batch_size])).permute(0, 3, 1, 2).float()
                 - mean_t) / std_t
            idx = np.arange(s, s + len(x))
            for which in ((0, 1) if b % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                if which == 0:
                    module(x)
                    t_fwd += time.perf_counter() - t0
                else:
                    v, acts = scan_values(module, x, layers)  # what build_index does per batch
                    tk.update(v.numpy(), idx, partial(argmax_positions, acts, layers), np.zeros(len(x), np.uint64))
                    del acts
                    t_scan += time.perf_counter() - t0
            n += len(x)
    return {"images": n, "batch_size": batch_size, "forward_images_per_s": n / t_fwd,
            "scan_images_per_s": n / t_scan, "scan_over_forward": t_fwd / t_scan}


def png(a) -> bytes:
    from PIL import Image

    if isinstance(a, np.ndarray):  # a projection: mid-grey zero, scaled to its largest magnitude
        m = float(np.abs(a).max()) or 1.0
        a = Image.fromarray(np.clip(128 + 127 * a.transpose(1, 2, 0) / m, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    a.save(buf, "PNG")
    return buf.getvalue()


def unit_request(idx: TopKIndex, layer: str, unit: int, encode: bool, cpu: list | None = None) -> float:
    """Wall ms of one unit's entries, k patches and k projections (and their PNGs when ``encode``);
    appends the process CPU ms to ``cpu``."""
    t0, c0 = time.perf_counter(), time.process_time()
    es = idx.entries(layer, unit)
    for e in es:
        p = idx.patch(layer, unit, e["rank"])
        q = idx.projection(layer, unit, e["rank"])
        if encode:
            png(p), png(q)
    if cpu is not None:
        cpu.append((time.process_time() - c0) * 1000)
    return (time.perf_counter() - t0) * 1000


def bench_units(idx: TopKIndex, per_layer: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in idx.layers:
        units = idx.layer_info(layer)["units"]
        pick = sorted(rng.choice(units, size=min(per_layer, units), replace=False).tolist())
        cold, warm, cold_png, warm_png, cold_cpu = [], [], [], [], []
        for u in pick:
            idx.clear_cache()
            cold.append(unit_request(idx, layer, u, False, cold_cpu))
            warm.append(min(unit_request(idx, layer, u, False) for _ in range(3)))
            idx.clear_cache()
            cold_png.append(unit_request(idx, layer, u, True))
            warm_png.append(min(unit_request(idx, layer, u, True) for _ in range(3)))
        out[layer] = {"units": units, "sampled": len(pick),
                      "cold_ms_median": statistics.median(cold), "cold_ms_max": max(cold),
                      "cold_cpu_ms_median": statistics.median(cold_cpu),
                      "warm_ms_median": statistics.median(warm), "warm_ms_max": max(warm),
                      "cold_png_ms_median": statistics.median(cold_png), "cold_png_ms_max": max(cold_png),
                      "warm_png_ms_median": statistics.median(warm_png), "warm_png_ms_max": max(warm_png)}
    return out


def bench_all_projections(idx: TopKIndex, units: int = 0, units_per_batch: int = 8) -> dict:
    """Seconds to compute every unit's top-k projections (``iter_projections``), per layer.

    ``units`` > 0 times only the first ``units`` units of each layer and scales
    that layer's time by (its units / timed units): an extrapolation, marked
    as such per layer.
    """
    per_layer, timed = {}, {}
    for layer in idx.layers:
        n = idx.layer_info(layer)["units"]
        m = n if units <= 0 else min(units, n)
        t0 = time.perf_counter()
        for i, _ in enumerate(idx.iter_projections([layer], units_per_batch=units_per_batch)):
            if i + 1 == m:
                break
        dt = time.perf_counter() - t0
        per_layer[layer], timed[layer] = dt * n / m, m
        print(f"projections {layer}: {dt:.1f} s for {m} of {n} units"
              + (f" -> {per_layer[layer]:.0f} s for all" if m < n else ""), flush=True)
    return {"seconds": sum(per_layer.values()), "per_layer_s": per_layer, "timed_units": timed,
            "units_per_batch": units_per_batch,
            "estimate": any(timed[L] < idx.layer_info(L)["units"] for L in idx.layers)}


PARTS = ("scan", "build", "units", "projections")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="ImageFolder root (default: DECONVLAB_DATA)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--units-per-layer", type=int, default=5)
    ap.add_argument("--projection-units", type=int, default=64,
                    help="time the projections of the first N units of each layer and extrapolate (0: all units)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--index", default="", help="an index already built for this model and data, used by "
                                                "units/projections instead of building one (build is skipped)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "index.json"))
    a = ap.parse_args()
    parts = [p for p in a.parts.split(",") if p]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        ap.error(f"--parts: expected some of {list(PARTS)}, got {bad}")
    if a.index and "build" in parts:
        parts.remove("build")
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    net, trained = load_default()
    module, meta = net.module, net.meta
    root = Path(a.data or data_root(download_ok=False))
    sp = list_split(root, a.split)
    n = min(a.limit or len(sp), len(sp))
    layers = index_layers(module, meta.input_size)
    res = {"model": meta.name, "trained": trained, "data": str(root), "split": a.split, "images": n,
           "parts": parts, "torch_threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_at_start": os.getloadavg()[0]}

    print(f"model {meta.name} ({'trained' if trained else 'random weights, same architecture'}), "
          f"{n} {a.split} images, {torch.get_num_threads()} threads", flush=True)
    if "scan" in parts:
        images = decoded(sp, meta.input_size, progress=True)[:n]
        res["scan"] = bench_scan(module, layers, images, meta.mean, meta.std, a.batch_size)
        print(json.dumps(res["scan"]), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        data, out = root, Path(a.index) if a.index else None
        if out is None and ({"build", "units", "projections"} & set(parts)):
            if n < len(sp):  # a subset, through a symlinked ImageFolder
                data = Path(tmp) / "data"
                for rel in sp.files[:n]:
                    (data / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(root / rel, data / rel)
            t0 = time.perf_counter()
            out = build_index(net, data, a.split, out=Path(tmp) / "index", k=9, batch_size=a.batch_size,
                              workers=a.workers, progress=True)
            wall = time.perf_counter() - t0
            if "build" in parts:
                res["build"] = {"images": n, "wall_s": wall, "images_per_s": n / wall, "workers": a.workers}
                print(json.dumps(res["build"]), flush=True)
        if out is not None:
            idx = TopKIndex.open(out, net=net, data_root=data)
            res["index_images"] = idx.num_images
        if "units" in parts:
            # the server compiles the sparse deconvnet step at start-up; a cold request does not pay for it
            t0 = time.perf_counter()
            sparse_step.warm_up()
            res["sparse_step_warm_up_s"] = time.perf_counter() - t0
            res["units"] = bench_units(idx, a.units_per_layer)
            for layer, r in res["units"].items():
                print(layer, json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}),
                      flush=True)
        if "projections" in parts:
            res["all_projections"] = bench_all_projections(idx, a.projection_units)
            res["all_projections"]["units"] = sum(idx.layer_info(L)["units"] for L in idx.layers)

    res["load_average_at_end"] = os.getloadavg()[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    return 0


def table(res: dict) -> str:
    lines = [
        f"model `{res['model']}` ({'trained' if res['trained'] else 'random weights, same architecture'}), "
        f"{res['images']} {res['split']} images, {res['torch_threads']} torch threads "
        f"(OMP_WAIT_POLICY={res['omp_wait_policy']}), {res['cpus']} CPUs "
        f"(1-min load average {res['load_average_at_start']:.1f} at the start, {res['load_average_at_end']:.1f} "
        f"at the end: other work shares these CPUs)",
        "",
        "| measure | value | target |",
        "|---|---|---|",
    ]
    if "scan" in res:
        s = res["scan"]
        lines += [f"| plain forward | {s['forward_images_per_s']:.1f} img/s | |",
                  f"| activation scan (+ top-k update) | {s['scan_images_per_s']:.1f} img/s | |",
                  f"| scan / forward throughput | **{s['scan_over_forward']:.2f}x** | >= 0.8x |"]
    if "build" in res:
        b = res["build"]
        lines.append(f"| `build_index` end to end (decode in {b['workers']} workers) | {b['images_per_s']:.1f} img/s, "
                     f"{b['wall_s']:.0f} s | |")
    u = res.get("units", {})
    if u:
        cold = max(r["cold_ms_max"] for r in u.values())
        warm = max(r["warm_ms_max"] for r in u.values())
        cold_med = max(r["cold_ms_median"] for r in u.values())
        warm_med = max(r["warm_ms_median"] for r in u.values())
        lines += [f"| cold unit request (entries + 9 patches + 9 projections): slowest layer's median / slowest "
                  f"unit | **{cold_med:.0f} / {cold:.0f} ms** | <= 300 ms |",
                  f"| warm unit request: slowest layer's median / slowest unit | **{warm_med:.1f} / {warm:.1f} ms** "
                  f"| <= 20 ms |"]
    ap = res.get("all_projections")
    if ap:
        scaled = (f" (per layer, the first {max(ap['timed_units'].values())} units timed and scaled to all)"
                  if ap["estimate"] else "")
        lines.append(f"| projections of every unit's top-9 ({ap['units']} units, {ap['units_per_batch']} units "
                     f"per batch) | {ap['seconds']:.0f} s{scaled} | |")
    if u or ap:
        lines += ["", "| layer | units | cold median / max ms | cold CPU ms, median | warm median / max ms "
                      "| cold / warm with PNG, median ms | all projections s (units timed) |",
                  "|---|---|---|---|---|---|---|"]
        for layer in (u or ap["per_layer_s"]):
            r = u.get(layer)
            cells = (f"{r['units']} | {r['cold_ms_median']:.0f} / {r['cold_ms_max']:.0f} | "
                     f"{r['cold_cpu_ms_median']:.0f} | {r['warm_ms_median']:.1f} / {r['warm_ms_max']:.1f} | "
                     f"{r['cold_png_ms_median']:.0f} / {r['warm_png_ms_median']:.1f}") if r else " | | | |"
            proj = f"{ap['per_layer_s'][layer]:.0f} ({ap['timed_units'][layer]})" if ap else ""
            lines.append(f"| {layer} | {cells} | {proj} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
